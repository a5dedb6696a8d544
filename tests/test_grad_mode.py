"""Grad mode separate from eval mode, as in PyTorch.

``train()``/``eval()`` switch dropout only; ``fastrnn.no_grad()`` / ``inference_mode()``
decide whether a forward keeps what backward needs, and select the kernels' inference path.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

import fastrnn
from fastrnn import ops
from fastrnn.nn import GRU, LSTM, RNN, Embedding, GRUCell, Linear, LSTMCell, RNNCell

T, B, I, H = 5, 3, 4, 6
LAYERS = [RNN, LSTM, GRU]
CELLS = [RNNCell, LSTMCell, GRUCell]


def _x(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.fixture
def lstm_training_flags(monkeypatch):
    """The ``training`` flag of every ``ops.lstm_forward`` call, in order."""
    calls = []
    real = ops.lstm_forward

    def spy(*args, **kwargs):
        calls.append(kwargs["training"])
        return real(*args, **kwargs)

    monkeypatch.setattr(ops, "lstm_forward", spy)
    return calls


# -- the switches ---------------------------------------------------------------------

def test_no_grad_context_nests_and_restores():
    assert fastrnn.is_grad_enabled()
    with fastrnn.no_grad():
        assert not fastrnn.is_grad_enabled()
        with fastrnn.enable_grad():
            assert fastrnn.is_grad_enabled()
        assert not fastrnn.is_grad_enabled()
    assert fastrnn.is_grad_enabled()


def test_no_grad_restores_after_an_exception():
    with pytest.raises(KeyError):
        with fastrnn.no_grad():
            raise KeyError("boom")
    assert fastrnn.is_grad_enabled()


def test_the_same_no_grad_object_can_be_reentered():
    switch = fastrnn.no_grad()
    with switch:
        with switch:
            assert not fastrnn.is_grad_enabled()
        assert not fastrnn.is_grad_enabled()
    assert fastrnn.is_grad_enabled()


def test_no_grad_and_inference_mode_as_decorators():
    @fastrnn.no_grad()
    def inside_no_grad():
        return fastrnn.is_grad_enabled()

    @fastrnn.inference_mode()
    def inside_inference():
        return fastrnn.is_grad_enabled(), fastrnn.is_inference_mode_enabled()

    assert inside_no_grad() is False
    assert inside_inference() == (False, True)
    assert fastrnn.is_grad_enabled() and not fastrnn.is_inference_mode_enabled()
    assert inside_no_grad.__name__ == "inside_no_grad"


def test_inference_mode_false_changes_nothing():
    with fastrnn.inference_mode(False):
        assert fastrnn.is_grad_enabled()
    with fastrnn.no_grad(), fastrnn.inference_mode(False):
        assert not fastrnn.is_grad_enabled()
    with pytest.raises(TypeError, match="True or False"):
        fastrnn.inference_mode("yes")


def test_set_grad_enabled_as_call_and_as_context():
    try:
        fastrnn.set_grad_enabled(False)
        assert not fastrnn.is_grad_enabled()
        fastrnn.set_grad_enabled(True)
        assert fastrnn.is_grad_enabled()
        with fastrnn.set_grad_enabled(False):
            assert not fastrnn.is_grad_enabled()
        assert fastrnn.is_grad_enabled()
    finally:
        fastrnn.set_grad_enabled(True)
    with pytest.raises(TypeError, match="True or False"):
        fastrnn.set_grad_enabled("no")


def test_set_grad_enabled_as_decorator_leaves_the_caller_alone():
    @fastrnn.set_grad_enabled(False)
    def inside():
        return fastrnn.is_grad_enabled()

    assert fastrnn.is_grad_enabled()
    assert inside() is False
    assert fastrnn.is_grad_enabled()


def test_grad_mode_is_per_thread():
    seen = {}

    def worker():
        seen["worker"] = fastrnn.is_grad_enabled()

    with fastrnn.no_grad():
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
        seen["main"] = fastrnn.is_grad_enabled()
    assert seen == {"worker": True, "main": False}


def test_torch_like_names_are_exported():
    for name in ("no_grad", "enable_grad", "inference_mode", "set_grad_enabled",
                 "is_grad_enabled", "is_inference_mode_enabled"):
        assert name in fastrnn.__all__ and hasattr(fastrnn, name)


# -- layers: eval keeps the tape, no_grad drops it --------------------------------------

def _backward(layer, dy):
    return layer.backward(dy)


@pytest.mark.parametrize("layer_class", LAYERS)
def test_eval_mode_backward_equals_train_mode_without_dropout(layer_class):
    x, dy = _x(T, B, I), _x(T, B, 2 * H, seed=1)
    layers = [layer_class(I, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=3)
              for _ in range(2)]
    layers[1].eval()
    results = []
    for layer in layers:
        y, _ = layer(x)
        dx = _backward(layer, dy)
        results.append((y, dx, [p.grad.copy() for p in layer.parameters()]))
    (y0, dx0, g0), (y1, dx1, g1) = results
    np.testing.assert_array_equal(y1, y0)
    np.testing.assert_array_equal(dx1, dx0)
    for a, b in zip(g0, g1):
        np.testing.assert_array_equal(b, a)


@pytest.mark.parametrize("layer_class", LAYERS)
def test_eval_mode_switches_dropout_off_but_keeps_gradients(layer_class):
    x, dy = _x(T, B, I), _x(T, B, H, seed=1)
    with_dropout = layer_class(I, H, num_layers=2, dropout=0.5, dtype=np.float64, seed=3)
    without = layer_class(I, H, num_layers=2, dtype=np.float64, seed=3)
    with_dropout.eval()
    y, _ = with_dropout(x)
    np.testing.assert_array_equal(y, without(x)[0])
    np.testing.assert_array_equal(with_dropout.backward(dy), without.backward(dy))


@pytest.mark.parametrize("layer_class", LAYERS)
def test_no_grad_forward_matches_and_backward_raises(layer_class):
    x = _x(T, B, I)
    layer = layer_class(I, H, dtype=np.float64, seed=0)
    y_grad, _ = layer(x)
    with fastrnn.no_grad():
        y_fast, _ = layer(x)
    np.testing.assert_allclose(y_fast, y_grad, rtol=1e-12, atol=1e-14)
    with pytest.raises(RuntimeError, match=r"grad disabled \(inside fastrnn.no_grad"):
        layer.backward(np.ones_like(y_grad))


@pytest.mark.parametrize("switch", [fastrnn.no_grad, fastrnn.inference_mode])
def test_no_grad_selects_the_kernels_inference_path(lstm_training_flags, switch):
    calls = lstm_training_flags
    layer = LSTM(I, H, num_layers=2, seed=0).eval()
    x = _x(T, B, I).astype(np.float32)
    layer(x)
    assert calls == [True, True]           # eval mode alone still saves for backward
    with switch():
        _, (h_n, c_n) = layer(x)
    assert calls[2:] == [False, False]     # nothing saved under no_grad
    assert h_n.shape == c_n.shape == (2, B, H)


# -- cells ----------------------------------------------------------------------------

@pytest.mark.parametrize("cell_class", CELLS)
def test_cell_eval_backpropagates_and_no_grad_keeps_nothing(cell_class):
    x = _x(B, I)
    cell = cell_class(I, H, dtype=np.float64, seed=0).eval()
    out = cell(x)
    h = out[0] if isinstance(out, tuple) else out
    dx, _ = cell.backward(np.ones_like(h))
    assert dx.shape == (B, I) and np.abs(dx).sum() > 0
    with fastrnn.no_grad():
        fast = cell(x)
    np.testing.assert_allclose(fast[0] if isinstance(fast, tuple) else fast, h,
                               rtol=1e-12, atol=1e-14)
    assert cell._caches == []
    with pytest.raises(RuntimeError, match="no_grad"):
        cell.backward(np.ones_like(h))


# -- feed-forward layers --------------------------------------------------------------

def test_linear_and_embedding_follow_grad_mode():
    linear = Linear(I, 2, dtype=np.float64, seed=0).eval()
    linear(_x(B, I))
    assert linear.backward(np.ones((B, 2))).shape == (B, I)
    with fastrnn.no_grad():
        linear(_x(B, I))
    with pytest.raises(RuntimeError, match="no_grad"):
        linear.backward(np.ones((B, 2)))
    embedding = Embedding(5, 2, seed=0).eval()
    embedding(np.array([1, 2]))
    embedding.backward(np.ones((2, 2), np.float32))
    assert embedding.weight.grad[1:3].sum() == 4
    with fastrnn.no_grad():
        embedding(np.array([1, 2]))
    with pytest.raises(RuntimeError, match="no_grad"):
        embedding.backward(np.ones((2, 2), np.float32))


# -- models ---------------------------------------------------------------------------

def test_model_inference_context_is_eval_plus_no_grad():
    model = fastrnn.SequenceClassifier(input_size=I, num_classes=3, hidden=H, seed=0)
    assert model.training and fastrnn.is_grad_enabled()
    with model.inference():
        assert not model.training and not fastrnn.is_grad_enabled()
    assert model.training and fastrnn.is_grad_enabled()


def test_model_predict_takes_the_fast_path_and_backward_then_raises(lstm_training_flags):
    calls = lstm_training_flags
    model = fastrnn.SequenceClassifier(input_size=I, num_classes=3, hidden=H, seed=0)
    x = _x(4, T, I).astype(np.float32)
    model.predict(x)
    model.evaluate(x, np.array([0, 1, 2, 0]))
    assert calls and not any(calls)
    with fastrnn.no_grad():
        model(x)
    with pytest.raises(RuntimeError, match="grad enabled"):
        model.backward(np.ones((4, 3), np.float32))
    model.eval()
    out = model(x)       # eval mode, grad enabled: backward works (saliency, attribution)
    model.backward(np.ones_like(out))
    assert calls[-1] is True


def test_language_model_generation_saves_nothing(lstm_training_flags):
    calls = lstm_training_flags
    vocab = fastrnn.data.Vocabulary.from_text("abc\n")
    model = fastrnn.LanguageModel(vocab, hidden=8, embed=4, seed=0)
    text = model.generate("ab", length=5, seed=0)
    assert text.startswith("ab") and len(text) == 7
    assert calls and not any(calls)


def test_one_no_grad_object_shared_by_threads():
    switch = fastrnn.no_grad()
    inside, leave = threading.Barrier(4), threading.Barrier(4)
    seen = []

    def worker():
        with switch:
            inside.wait()            # all four threads are inside the same object
            seen.append(fastrnn.is_grad_enabled())
            leave.wait()
        seen.append(fastrnn.is_grad_enabled())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(seen) == [False] * 4 + [True] * 4
    assert fastrnn.is_grad_enabled()
