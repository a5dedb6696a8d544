"""PyTorch's semantics where users rely on them: empty batches, exception types, dtype and
device arguments, PackedSequence, ``.to()``/``.float()``/``.double()``, torch state dicts.

Each exception type here is the one torch 2.13 raises for the same mistake (checked live
below when torch is importable): ``TypeError`` for an argument of the wrong type,
``ValueError`` for a wrong value or inputs whose dtypes do not match.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from fastrnn import ops, reference
from fastrnn.nn import (GRU, LSTM, RNN, Embedding, GRUCell, Linear, LSTMCell, Module,
                        RNNCell)

T, I, H = 4, 3, 5
LAYERS = [RNN, LSTM, GRU]
CELLS = [RNNCell, LSTMCell, GRUCell]
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
N_STATES = {"rnn": 1, "lstm": 2, "gru": 1}


def _rng(seed=0):
    return np.random.default_rng(seed)


def _weights(cell, dtype=np.float64, seed=0):
    G, r = GATES[cell], _rng(seed)
    return [r.standard_normal(s).astype(dtype) * 0.5
            for s in ((G * H, I), (G * H, H), (G * H,), (G * H,))]


# -- empty batches (B = 0) --------------------------------------------------------------

@pytest.mark.parametrize("backend", [ops, reference], ids=["ops", "reference"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_empty_batch_functional(backend, cell, with_lengths):
    n = N_STATES[cell]
    x = np.zeros((T, 0, I))
    lengths = np.zeros(0, np.int64) if with_lengths else None
    *outputs, cache = getattr(backend, f"{cell}_forward")(x, *[None] * n, *_weights(cell),
                                                          lengths=lengths)
    assert outputs[0].shape == (T, 0, H)
    assert all(s.shape == (0, H) for s in outputs[1:])
    grads = getattr(backend, f"{cell}_backward")(np.zeros((T, 0, H)), *[None] * n, cache)
    assert grads.dx.shape == (T, 0, I) and grads.dh0.shape == (0, H)
    for g, w in zip(grads[-4:], _weights(cell)):
        assert g.shape == w.shape and not g.any()


@pytest.mark.parametrize("layer_class", LAYERS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_empty_batch_layer(layer_class, batch_first):
    layer = layer_class(I, H, num_layers=2, bidirectional=True, batch_first=batch_first,
                        dtype=np.float64, seed=0)
    x = np.zeros((0, T, I) if batch_first else (T, 0, I))
    y, state = layer(x)
    assert y.shape == ((0, T, 2 * H) if batch_first else (T, 0, 2 * H))
    for s in (state if isinstance(state, tuple) else (state,)):
        assert s.shape == (4, 0, H)
    dx = layer.backward(np.zeros_like(y))
    assert dx.shape == x.shape
    assert not any(p.grad.any() for p in layer.parameters())
    assert layer.grad_h0.shape == (4, 0, H)
    y, _ = layer(x, lengths=np.zeros(0, np.int64))
    assert y.shape[-1] == 2 * H
    with fastrnn.no_grad():
        assert layer(x)[0].shape == y.shape


@pytest.mark.parametrize("layer_class", LAYERS)
def test_empty_batch_step(layer_class):
    layer = layer_class(I, H, num_layers=2, seed=0)
    out, state = layer.step(np.zeros((0, I), np.float32))
    assert out.shape == (0, H)
    for s in (state if isinstance(state, tuple) else (state,)):
        assert s.shape == (2, 0, H)


@pytest.mark.parametrize("cell_class", CELLS)
def test_empty_batch_cell(cell_class):
    cell = cell_class(I, H, dtype=np.float64, seed=0)
    out = cell(np.zeros((0, I)))
    states = out if isinstance(out, tuple) else (out,)
    assert all(s.shape == (0, H) for s in states)
    dx, _ = cell.backward(*[np.zeros((0, H))] * len(states))
    assert dx.shape == (0, I)
    with fastrnn.no_grad():
        out = cell(np.zeros((0, I)))
    assert all(s.shape == (0, H) for s in (out if isinstance(out, tuple) else (out,)))


def test_empty_batch_matches_torch():
    torch = pytest.importorskip("torch")
    theirs = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True)
    x = torch.zeros(T, 0, I, requires_grad=True)
    y, (h, c) = theirs(x)
    ours = LSTM(I, H, num_layers=2, bidirectional=True)
    y2, (h2, c2) = ours(np.zeros((T, 0, I), np.float32))
    assert y2.shape == tuple(y.shape) and h2.shape == tuple(h.shape) == c2.shape


# -- exception types of constructor arguments -------------------------------------------

def _constructors():
    """(name, build(first, second)) for every module taking two sizes."""
    return [(c.__name__, c) for c in LAYERS + CELLS] + [("Linear", Linear),
                                                        ("Embedding", Embedding)]


@pytest.mark.parametrize("name, build", _constructors())
@pytest.mark.parametrize("bad, error", [(3.0, TypeError), ("10", TypeError),
                                        (True, TypeError), (None, TypeError),
                                        (0, ValueError), (-1, ValueError)])
@pytest.mark.parametrize("position", [0, 1])
def test_size_arguments_raise_pytorchs_types(name, build, bad, error, position):
    sizes = [3, 4]
    sizes[position] = bad
    with pytest.raises(error, match=repr(bad) if bad is not None else "None"):
        build(*sizes)


@pytest.mark.parametrize("bad", [3.0, "10", 0, -1])
def test_lstm_size_errors_have_torchs_types(bad):
    torch = pytest.importorskip("torch")
    with pytest.raises(Exception) as theirs:
        torch.nn.LSTM(bad, 4)
    with pytest.raises(Exception) as ours:
        LSTM(bad, 4)
    assert type(ours.value) is type(theirs.value)


# -- dtype arguments -------------------------------------------------------------------

_VOCAB = fastrnn.data.Vocabulary.from_sequences(["abc"])


def _dtype_builders():
    builders = [(c.__name__, lambda dtype, c=c: c(3, 4, dtype=dtype)) for c in LAYERS + CELLS]
    builders += [("Linear", lambda dtype: Linear(3, 4, dtype=dtype)),
                 ("Embedding", lambda dtype: Embedding(3, 4, dtype=dtype)),
                 ("SequenceClassifier", lambda dtype: fastrnn.SequenceClassifier(
                     input_size=3, num_classes=2, hidden=4, dtype=dtype)),
                 ("LanguageModel", lambda dtype: fastrnn.LanguageModel(5, hidden=4, embed=2,
                                                                      dtype=dtype)),
                 ("SequenceRegressor", lambda dtype: fastrnn.SequenceRegressor(
                     input_size=3, hidden=4, dtype=dtype)),
                 ("Seq2Seq", lambda dtype: fastrnn.Seq2Seq(_VOCAB, _VOCAB, hidden=4, embed=2,
                                                           dtype=dtype)),
                 ("OneToManyGenerator", lambda dtype: fastrnn.OneToManyGenerator(
                     3, _VOCAB, hidden=4, embed=2, dtype=dtype))]
    return builders


@pytest.mark.parametrize("name, build", _dtype_builders())
@pytest.mark.parametrize("bad", ["bfloat16", "nonsense", None, "", np.float16, np.int64,
                                 "int32", object, 3])
def test_unsupported_dtype_raises_type_error_naming_it(name, build, bad):
    if bad == "bfloat16" and name in {c.__name__ for c in LAYERS}:
        pytest.skip("the recurrent layers take dtype='bfloat16' (tests/test_bf16.py)")
    with pytest.raises(TypeError, match="dtype must be float32 or float64") as raised:
        build(bad)
    assert repr(bad) in str(raised.value)


def _parameter_dtypes(module):
    return {p.dtype for p in module.parameters()}


@pytest.mark.parametrize("name, build", _dtype_builders())
@pytest.mark.parametrize("spelling", ["float64", np.float64, np.dtype("float64"), "f8",
                                      "torch.float64"])
def test_dtype_spellings_are_normalised(name, build, spelling):
    module = build(spelling)
    assert _parameter_dtypes(module) == {np.dtype(np.float64)}
    if hasattr(module, "dtype"):
        assert module.dtype == np.float64
        assert "None" not in repr(module)


@pytest.mark.parametrize("name, build", _dtype_builders())
def test_torch_dtypes_are_normalised(name, build):
    torch = pytest.importorskip("torch")
    module = build(torch.float64)
    assert _parameter_dtypes(module) == {np.dtype(np.float64)}
    assert build(torch.float32).dtype == np.float32 if hasattr(module, "dtype") else True
    if name in {c.__name__ for c in LAYERS}:   # bf16 inference (tests/test_bf16.py)
        assert build(torch.bfloat16).precision == "bfloat16"
        return
    with pytest.raises(TypeError, match="torch.bfloat16"):
        build(torch.bfloat16)


def test_torch_dtype_module_runs_and_reports_its_dtype():
    torch = pytest.importorskip("torch")
    lstm = LSTM(3, 4, dtype=torch.float64)
    assert "dtype=float64" in repr(lstm)
    y, _ = lstm(np.zeros((2, 1, 3)))
    assert y.dtype == np.float64


# -- dtype mismatches of inputs: ValueError, and hints that name supported dtypes ---------

def test_layer_input_dtype_mismatch_is_value_error_like_torch():
    lstm = LSTM(3, 4)
    with pytest.raises(ValueError, match=r"module's dtype float32, got float64.*\.to\("):
        lstm(np.zeros((2, 1, 3)))
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError):
        torch.nn.LSTM(3, 4)(torch.zeros(2, 1, 3, dtype=torch.float64))


@pytest.mark.parametrize("bad_dtype", [np.int64, np.int32, np.float16, np.complex128, bool])
def test_hints_suggest_only_supported_dtypes(bad_dtype):
    x = np.zeros((2, 1, 3), bad_dtype)
    for module, call in ((LSTM(3, 4), lambda m: m(x)), (Linear(3, 4), lambda m: m(x[0])),
                         (LSTMCell(3, 4), lambda m: m(x[0]))):
        with pytest.raises(ValueError) as raised:
            call(module)
        message = str(raised.value)
        assert np.dtype(bad_dtype).name in message       # names what it got
        assert f"np.{np.dtype(bad_dtype).name}" not in message   # ...without suggesting it
        assert "astype(np.float32)" in message


def test_cell_message_names_the_cells_dtype():
    cell = GRUCell(3, 4)
    with pytest.raises(ValueError, match=r"x must have the cell's dtype \(float32\), got "
                                         r"dtype float64"):
        cell(np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"h must have the cell's dtype \(float32\)"):
        cell(np.zeros((1, 3), np.float32), np.zeros((1, 4)))


def test_ops_dtype_mismatch_is_value_error_and_bad_x_dtype_type_error():
    w = _weights("rnn", np.float32)
    with pytest.raises(ValueError, match=r"h0 must have the dtype of x \(float32\)"):
        ops.rnn_forward(np.zeros((2, 1, I), np.float32), np.zeros((1, H)), *w)
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        ops.rnn_forward(np.zeros((2, 1, I), np.int64), None, *w)


# -- device ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, build", [(c.__name__, c) for c in LAYERS + CELLS]
                         + [("Linear", Linear), ("Embedding", Embedding)])
def test_device_cpu_accepted_others_refused(name, build):
    build(3, 4, device="cpu")
    build(3, 4, device="cpu:0")
    with pytest.raises(ValueError, match="fastrnn runs on the CPU"):
        build(3, 4, device="cuda")
    with pytest.raises(TypeError, match="device"):
        build(3, 4, device=3)


def test_torch_devices():
    torch = pytest.importorskip("torch")
    LSTM(3, 4, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="fastrnn runs on the CPU"):
        LSTM(3, 4, device=torch.device("meta"))
    lstm = LSTM(3, 4)
    assert lstm.to(torch.device("cpu")) is lstm and lstm.cpu() is lstm
    with pytest.raises(ValueError, match="CPU"):
        lstm.to("cuda:0")
    with pytest.raises(ValueError, match="CPU"):
        lstm.cuda()


# -- .to(dtype), .float(), .double() ------------------------------------------------------

@pytest.mark.parametrize("make", [lambda: LSTM(3, 4, num_layers=2, seed=0),
                                  lambda: GRUCell(3, 4, seed=0),
                                  lambda: Linear(3, 4, seed=0)])
def test_double_and_float_cast_parameters_and_return_self(make):
    module = make()
    values = {n: p.value.copy() for n, p in module.named_parameters()}
    assert module.double() is module
    assert _parameter_dtypes(module) == {np.dtype(np.float64)}
    assert {p.grad.dtype for p in module.parameters()} == {np.dtype(np.float64)}
    for n, p in module.named_parameters():
        np.testing.assert_array_equal(p.value, values[n].astype(np.float64))
    assert module.float() is module
    assert _parameter_dtypes(module) == {np.dtype(np.float32)}
    for n, p in module.named_parameters():
        np.testing.assert_array_equal(p.value, values[n])


def test_to_dtype_then_forward_backward_match_a_float64_module():
    cast = LSTM(3, 4, seed=0)
    built = LSTM(3, 4, dtype="float64")
    built.load_state_dict(cast.state_dict())
    cast(np.zeros((2, 1, 3), np.float32))       # a float32 tape, dropped by the cast
    assert cast.to("float64") is cast and cast.dtype == np.float64
    assert "float64" in repr(cast)
    x = _rng().standard_normal((5, 2, 3))
    y_cast, _ = cast(x)
    np.testing.assert_array_equal(y_cast, built(x)[0])
    np.testing.assert_array_equal(cast.backward(np.ones_like(y_cast)),
                                  built.backward(np.ones_like(y_cast)))
    assert cast.to(np.float32, device="cpu").dtype == np.float32
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        cast.to("float16")
    assert cast.to("bfloat16").precision == "bfloat16" and cast.dtype == np.float32


def test_to_drops_the_tape_of_the_old_dtype():
    lstm = LSTM(3, 4, seed=0)
    lstm(np.zeros((2, 1, 3), np.float32))
    lstm.double()
    with pytest.raises(RuntimeError, match="preceding forward"):
        lstm.backward(np.zeros((2, 1, 4)))


def test_model_double_updates_its_config_and_checkpoint(tmp_path):
    model = fastrnn.SequenceClassifier(input_size=3, num_classes=2, hidden=4, seed=0)
    assert model.double() is model
    assert model.dtype == np.float64 and model.config["dtype"] == "float64"
    x = _rng().standard_normal((2, 5, 3))
    out = model.predict_proba(x)
    model.save(tmp_path / "m.ckpt")
    loaded = fastrnn.SequenceClassifier.load(tmp_path / "m.ckpt")
    assert loaded.dtype == np.float64
    np.testing.assert_array_equal(loaded.predict_proba(x), out)


# -- state_dict(format="torch") ------------------------------------------------------------

def test_torch_refuses_numpy_state_dicts_so_format_torch_exists():
    torch = pytest.importorskip("torch")
    ours = LSTM(3, 4, num_layers=2, bidirectional=True, seed=0)
    theirs = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    with pytest.raises(RuntimeError, match="expected torch.Tensor"):
        theirs.load_state_dict(ours.state_dict())
    theirs.load_state_dict(ours.state_dict(format="torch"))
    x = _rng().standard_normal((5, 2, 3)).astype(np.float32)
    y, _ = ours(x)
    with torch.no_grad():
        y_torch, _ = theirs(torch.from_numpy(x))
    np.testing.assert_allclose(y, y_torch.numpy(), rtol=1e-5, atol=1e-6)


def test_state_dict_format_argument():
    lstm = LSTM(3, 4)
    assert all(isinstance(v, np.ndarray) for v in lstm.state_dict().values())
    with pytest.raises(ValueError, match="format must be 'numpy' or 'torch'"):
        lstm.state_dict(format="jax")


def test_state_dict_torch_round_trip_through_a_cell():
    torch = pytest.importorskip("torch")
    ours = GRUCell(3, 4, seed=0)
    theirs = torch.nn.GRUCell(3, 4)
    theirs.load_state_dict(ours.state_dict(format="torch"))
    other = GRUCell(3, 4, seed=1)
    other.load_state_dict(theirs.state_dict())
    for a, b in zip(ours.parameters(), other.parameters()):
        np.testing.assert_array_equal(a.value, b.value)


# -- PackedSequence ---------------------------------------------------------------------

def _packed_case(torch, batch_first=False):
    lengths = [3, 5, 1, 5]
    x = _rng(2).standard_normal((5, 4, 3))
    tx = torch.tensor(x.transpose(1, 0, 2) if batch_first else x, requires_grad=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(tx, torch.tensor(lengths),
                                                     batch_first=batch_first,
                                                     enforce_sorted=False)
    return tx, packed


@pytest.mark.parametrize("layer_name", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_packed_sequence_forward_backward_match_torch(layer_name, batch_first):
    torch = pytest.importorskip("torch")
    kwargs = dict(num_layers=2, bidirectional=True, batch_first=batch_first)
    theirs = getattr(torch.nn, layer_name)(3, H, dtype=torch.float64, **kwargs)
    ours = getattr(fastrnn, layer_name)(3, H, dtype=torch.float64, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    tx, packed = _packed_case(torch, batch_first)
    y_torch, state_torch = theirs(packed)
    y, state = ours(packed)
    assert type(y) is type(y_torch)
    np.testing.assert_array_equal(y.batch_sizes.numpy(), y_torch.batch_sizes.numpy())
    np.testing.assert_array_equal(y.sorted_indices.numpy(), y_torch.sorted_indices.numpy())
    np.testing.assert_allclose(y.data.numpy(), y_torch.data.detach().numpy(), rtol=1e-10,
                               atol=1e-12)
    states = state if isinstance(state, tuple) else (state,)
    states_torch = state_torch if isinstance(state_torch, tuple) else (state_torch,)
    for s, st in zip(states, states_torch):
        np.testing.assert_allclose(s, st.detach().numpy(), rtol=1e-10, atol=1e-12)
    dy = _rng(3).standard_normal(tuple(y_torch.data.shape))
    y_torch.data.backward(torch.tensor(dy))
    dy_packed = type(y)(torch.tensor(dy), y.batch_sizes, y.sorted_indices, y.unsorted_indices)
    dx = ours.backward(dy_packed)
    # dx comes back packed like x; torch's gradient is of the padded x it packed.
    dx_padded, _ = torch.nn.utils.rnn.pad_packed_sequence(dx, batch_first=batch_first)
    np.testing.assert_allclose(dx_padded.numpy(), tx.grad.numpy(), rtol=1e-9, atol=1e-12)
    for (name, p) in ours.named_parameters():
        np.testing.assert_allclose(p.grad, getattr(theirs, name).grad.numpy(), rtol=1e-9,
                                   atol=1e-12)


def test_packed_sequence_with_initial_state_and_sorted_batch():
    torch = pytest.importorskip("torch")
    theirs = torch.nn.GRU(3, H, dtype=torch.float64)
    ours = GRU(3, H, dtype=np.float64)
    ours.load_state_dict(theirs.state_dict())
    x = torch.tensor(_rng().standard_normal((5, 3, 3)))
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, [5, 4, 2])   # sorted: no indices
    h0 = _rng(1).standard_normal((1, 3, H))
    y_torch, h_torch = theirs(packed, torch.tensor(h0))
    y, h = ours(packed, h0)
    np.testing.assert_allclose(y.data.numpy(), y_torch.data.detach().numpy(), rtol=1e-10)
    np.testing.assert_allclose(h, h_torch.detach().numpy(), rtol=1e-10)


def test_packed_sequence_refuses_lengths():
    torch = pytest.importorskip("torch")
    _, packed = _packed_case(torch)
    with pytest.raises(ValueError, match="lengths must be None when x is a PackedSequence"):
        LSTM(3, H, dtype=np.float64)(packed, lengths=[5, 5, 5, 5])


def test_packed_sequence_of_the_wrong_dtype():
    torch = pytest.importorskip("torch")
    _, packed = _packed_case(torch)     # float64 data
    with pytest.raises(ValueError, match="module's dtype float32, got float64"):
        LSTM(3, H)(packed)


def test_module_base_class_has_the_torch_habits():
    for name in ("to", "float", "double", "cpu", "cuda", "state_dict"):
        assert callable(getattr(Module, name))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_empty_batch_unchecked_step_in_a_subprocess(cell):
    """ops.*_step with B = 0 returns empty states; run in a child process so that a heap
    overrun in C (which an empty batch once caused) fails this test, not the whole run."""
    import subprocess
    import sys
    code = f"""
import numpy as np
from fastrnn import ops
G, n = {GATES[cell]}, {N_STATES[cell]}
w = [np.ones(s, np.float32) for s in ((G * 5, 3), (G * 5, 5), (G * 5,), (G * 5,))]
states = [np.zeros((0, 5), np.float32)] * n
for _ in range(100):
    out = ops.{cell}_step(np.zeros((0, 3), np.float32), *states, *w)
assert all(s.shape == (0, 5) for s in out)
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
