"""Linear, Embedding, Dropout, cross-entropy and MSE: finite differences, hand-computed
values, errors, and live PyTorch parity when torch is importable."""
from __future__ import annotations

import math

import numpy as np
import pytest

import fastrnn
from fastrnn.losses import CrossEntropyLoss, MSELoss, cross_entropy, log_softmax, mse
from fastrnn.nn.layers import Dropout, Embedding, Linear
from helpers import numeric_grad




# -- Linear ---------------------------------------------------------------------------

def test_linear_init_shapes_and_seed():
    layer = Linear(5, 3, seed=0)
    assert [name for name, _ in layer.named_parameters()] == ["weight", "bias"]
    assert layer.weight.shape == (3, 5) and layer.bias.shape == (3,)
    assert layer.weight.dtype == np.float32
    k = 1 / math.sqrt(5)
    assert np.abs(layer.weight.value).max() <= k and np.abs(layer.bias.value).max() <= k
    np.testing.assert_array_equal(layer.weight.value, Linear(5, 3, seed=0).weight.value)
    assert not np.array_equal(layer.weight.value, Linear(5, 3, seed=1).weight.value)
    assert [n for n, _ in Linear(5, 3, bias=False).named_parameters()] == ["weight"]


def test_linear_forward_any_leading_dims():
    layer = Linear(4, 2, dtype=np.float64, seed=1)
    x = np.random.default_rng(0).standard_normal((3, 2, 4))
    y = layer(x)
    assert y.shape == (3, 2, 2)
    np.testing.assert_allclose(y, np.einsum("tbi,oi->tbo", x, layer.weight.value)
                               + layer.bias.value, rtol=1e-14)
    assert layer(x[0, 0]).shape == (2,)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_backward_finite_differences(bias):
    rng = np.random.default_rng(2)
    layer = Linear(4, 3, bias=bias, dtype=np.float64, seed=3)
    x = rng.standard_normal((2, 5, 4))
    dy = rng.standard_normal((2, 5, 3))
    loss = lambda: float(np.sum(layer(x) * dy))
    layer.zero_grad()
    layer(x)
    dx = layer.backward(dy)
    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(layer.weight.grad, numeric_grad(loss, layer.weight),
                               rtol=1e-7, atol=1e-9)
    if bias:
        np.testing.assert_allclose(layer.bias.grad, numeric_grad(loss, layer.bias),
                                   rtol=1e-7, atol=1e-9)


def test_linear_grads_accumulate_and_no_grad_caches_nothing():
    layer = Linear(3, 2, dtype=np.float64, seed=0)
    x, dy = np.ones((4, 3)), np.ones((4, 2))
    layer(x)
    layer.backward(dy)
    once = layer.weight.grad.copy()
    layer.backward(dy)
    np.testing.assert_array_equal(layer.weight.grad, 2 * once)
    layer.zero_grad()
    assert not layer.weight.grad.any()
    layer.eval()                      # eval switches dropout only: backward still works
    layer(x)
    layer.backward(dy)
    np.testing.assert_array_equal(layer.weight.grad, once)
    with fastrnn.no_grad():
        layer(x)
    with pytest.raises(RuntimeError, match="grad enabled"):
        layer.backward(dy)


def test_linear_errors():
    layer = Linear(3, 2, seed=0)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 3\), got \(4, 5\)"):
        layer(np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="x must have dtype float32.*float64"):
        layer(np.zeros((4, 3)))
    layer(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"dy must have shape \(4, 2\), got \(5, 2\)"):
        layer.backward(np.zeros((5, 2), np.float32))
    with pytest.raises(ValueError, match="in_features must be a positive integer, got 0"):
        Linear(0, 2)
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        Linear(2, 2, dtype=np.int32)


def _assert_within_rounding(ours, theirs, magnitude, terms):
    """``|ours - theirs| <= 2 terms eps magnitude`` elementwise: the forward error bound of
    two float64 sums of ``terms`` products whose absolute values sum to ``magnitude``
    (rtol alone fails where cancellation leaves a result near zero)."""
    bound = 2 * terms * np.finfo(np.float64).eps * magnitude
    np.testing.assert_array_less(np.abs(np.asarray(ours) - np.asarray(theirs)),
                                 bound + np.finfo(np.float64).tiny)


def test_linear_matches_torch():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)                       # torch's own init, reproducible
    ours = Linear(6, 4, dtype=np.float64, seed=0)
    theirs = torch.nn.Linear(6, 4, dtype=torch.float64)
    ours.load_state_dict(theirs.state_dict())
    x = np.random.default_rng(1).standard_normal((3, 2, 6))
    dy = np.random.default_rng(2).standard_normal((3, 2, 4))
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    yt.backward(torch.tensor(dy))
    w, b = np.abs(ours.weight.value), np.abs(ours.bias.value)
    rows_x, rows_dy = np.abs(x).reshape(-1, 6), np.abs(dy).reshape(-1, 4)
    _assert_within_rounding(ours(x), yt.detach().numpy(), np.abs(x) @ w.T + b, 7)
    _assert_within_rounding(ours.backward(dy), xt.grad.numpy(), np.abs(dy) @ w, 4)
    _assert_within_rounding(ours.weight.grad, theirs.weight.grad.numpy(),
                            rows_dy.T @ rows_x, 6)
    _assert_within_rounding(ours.bias.grad, theirs.bias.grad.numpy(), rows_dy.sum(0), 6)


# -- Embedding ------------------------------------------------------------------------

def test_embedding_forward_and_init():
    emb = Embedding(10, 4, padding_idx=2, seed=0)
    assert emb.weight.shape == (10, 4) and emb.weight.dtype == np.float32
    assert not emb.weight.value[2].any()
    big = Embedding(200, 50, seed=1).weight.value
    assert abs(big.mean()) < 0.05 and abs(big.std() - 1) < 0.05   # N(0, 1)
    idx = np.array([[1, 2, 3], [3, 3, 9]])
    np.testing.assert_array_equal(emb(idx), emb.weight.value[idx])
    assert emb(np.int64(5)).shape == (4,)
    assert Embedding(10, 4, padding_idx=-1).padding_idx == 9


def test_embedding_backward_repeats_and_padding():
    emb = Embedding(6, 3, padding_idx=0, dtype=np.float64, seed=0)
    idx = np.array([[1, 0, 1], [5, 1, 0]])
    dy = np.arange(18, dtype=np.float64).reshape(2, 3, 3)
    emb(idx)
    assert emb.backward(dy) is None
    expected = np.zeros((6, 3))
    for pos in np.ndindex(idx.shape):
        if idx[pos] != 0:
            expected[idx[pos]] += dy[pos]
    np.testing.assert_array_equal(emb.weight.grad, expected)
    assert not emb.weight.grad[0].any()


def test_embedding_errors():
    emb = Embedding(5, 2, seed=0)
    with pytest.raises(IndexError, match=r"\[0, 5\).*got 5"):
        emb(np.array([0, 5]))
    with pytest.raises(IndexError, match="got -1"):
        emb(np.array([-1]))
    with pytest.raises(TypeError, match="indices must be an integer array.*float"):
        emb(np.array([0.0]))
    with pytest.raises(ValueError, match="padding_idx must be an int in"):
        Embedding(5, 2, padding_idx=5)
    emb(np.array([[0, 1]]))
    with pytest.raises(ValueError, match=r"dy must have shape \(1, 2, 2\)"):
        emb.backward(np.zeros((2, 2), np.float32))
    with fastrnn.no_grad():
        emb(np.array([0]))
    with pytest.raises(RuntimeError, match="grad enabled"):
        emb.backward(np.zeros((1, 2), np.float32))


def test_embedding_matches_torch():
    torch = pytest.importorskip("torch")
    ours = Embedding(7, 3, padding_idx=1, dtype=np.float64, seed=0)
    theirs = torch.nn.Embedding(7, 3, padding_idx=1, dtype=torch.float64)
    ours.load_state_dict(theirs.state_dict())
    idx = np.array([[1, 2, 2], [6, 1, 0]])
    dy = np.random.default_rng(0).standard_normal((2, 3, 3))
    out = theirs(torch.tensor(idx))
    out.backward(torch.tensor(dy))
    np.testing.assert_array_equal(ours(idx), out.detach().numpy())
    ours.backward(dy)
    np.testing.assert_allclose(ours.weight.grad, theirs.weight.grad.numpy(), rtol=1e-14)


# -- Dropout --------------------------------------------------------------------------

def test_dropout_training_mask_scale_and_backward():
    drop = Dropout(0.25, seed=0)
    x = np.ones((200, 100))
    y = drop(x)
    assert set(np.unique(y)) <= {0.0, 1 / 0.75}
    assert abs((y == 0).mean() - 0.25) < 0.01
    dy = np.full_like(x, 3.0)
    np.testing.assert_array_equal(drop.backward(dy), 3.0 * y)
    np.testing.assert_array_equal(Dropout(0.25, seed=0)(x), y)   # seeded
    assert not np.array_equal(drop(x), y)                         # fresh mask per call


def test_dropout_eval_edges_and_errors():
    x = np.arange(6.0, dtype=np.float32).reshape(2, 3)
    drop = Dropout(0.5, seed=0).eval()
    assert drop(x) is not None and np.array_equal(drop(x), x)
    np.testing.assert_array_equal(drop.backward(x), x)
    np.testing.assert_array_equal(Dropout(0.0)(x), x)
    one = Dropout(1.0)
    assert not one(x).any() and not one.backward(np.ones_like(x)).any()
    assert Dropout(0.5)(x).dtype == np.float32
    for p in (-0.1, 1.5, "a"):
        with pytest.raises(ValueError, match="p must be a probability in"):
            Dropout(p)
    with pytest.raises(TypeError, match="floating-point"):
        Dropout(0.5)(np.ones(3, np.int64))
    drop = Dropout(0.5)
    drop(x)
    with pytest.raises(ValueError, match="forward input's shape"):
        drop.backward(np.ones(4, np.float32))


# -- cross-entropy --------------------------------------------------------------------

def _ce_case(seed=0, shape=(4, 3), C=5, dtype=np.float64):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal(shape + (C,)).astype(dtype)
    targets = rng.integers(0, C, shape)
    return logits, targets


def test_cross_entropy_hand_computed():
    loss, grad = cross_entropy(np.zeros((2, 4)), np.array([1, 3]))
    assert loss == pytest.approx(math.log(4), rel=1e-15)
    expected = np.full((2, 4), 0.25)
    expected[[0, 1], [1, 3]] -= 1
    np.testing.assert_allclose(grad, expected / 2, rtol=1e-15)
    loss, _ = cross_entropy(np.array([[0.0, math.log(3)]]), np.array([1]), reduction="sum")
    assert loss == pytest.approx(-math.log(3 / 4), rel=1e-14)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_cross_entropy_finite_differences(reduction, label_smoothing):
    logits, targets = _ce_case(seed=1, shape=(3, 4), C=5)
    targets[0, 1] = -100
    mask = np.random.default_rng(2).uniform(0, 1, (3, 4))
    f = lambda: cross_entropy(logits, targets, mask, reduction=reduction,
                              label_smoothing=label_smoothing)[0]
    _, grad = cross_entropy(logits, targets, mask, reduction=reduction,
                            label_smoothing=label_smoothing)
    np.testing.assert_allclose(grad, numeric_grad(f, logits), rtol=1e-6, atol=1e-10)
    assert not grad[0, 1].any()


def test_cross_entropy_mask_is_a_weighted_mean():
    logits, targets = _ce_case(seed=3, shape=(5, 2))
    mask = np.ones((5, 2), bool)
    mask[3:, 1] = False
    masked, _ = cross_entropy(logits, targets, mask)
    kept, _ = cross_entropy(logits[mask], targets[mask])
    assert masked == pytest.approx(kept, rel=1e-14)
    ignored = np.where(mask, targets, -1)
    assert cross_entropy(logits, ignored, ignore_index=-1)[0] == pytest.approx(kept, rel=1e-14)


def test_cross_entropy_stable_and_class_api():
    logits = np.array([[1e4, 0.0, -1e4]], np.float32)
    crit = CrossEntropyLoss()
    loss = crit(logits, np.array([1]))
    assert loss == pytest.approx(1e4, rel=1e-6)
    grad = crit.backward()
    assert grad.dtype == np.float32 and np.isfinite(grad).all()
    np.testing.assert_allclose(grad, [[1, -1, 0]], atol=1e-6)
    np.testing.assert_allclose(np.exp(log_softmax(logits)).sum(-1), 1, rtol=1e-6)


def test_cross_entropy_all_ignored_is_nan_with_zero_grad():
    loss, grad = cross_entropy(np.ones((2, 3)), np.array([-100, -100]))
    assert math.isnan(loss) and not grad.any()
    loss, grad = cross_entropy(np.ones((2, 3)), np.array([-100, -100]), reduction="sum")
    assert loss == 0.0 and not grad.any()


def test_cross_entropy_errors():
    logits = np.zeros((2, 3))
    with pytest.raises(IndexError, match=r"\[0, 3\) or equal ignore_index \(-100\), got 3"):
        cross_entropy(logits, np.array([0, 3]))
    with pytest.raises(ValueError, match=r"targets must have shape \(2,\).*got \(3,\)"):
        cross_entropy(logits, np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="targets must be an integer array"):
        cross_entropy(logits, np.array([0.0, 1.0]))
    with pytest.raises(TypeError, match="logits must be a floating-point array"):
        cross_entropy(np.zeros((2, 3), int), np.array([0, 1]))
    with pytest.raises(ValueError, match="reduction must be one of"):
        CrossEntropyLoss(reduction="none")
    with pytest.raises(ValueError, match="label_smoothing"):
        cross_entropy(logits, np.array([0, 1]), label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"mask must have shape \(2,\)"):
        cross_entropy(logits, np.array([0, 1]), np.ones(3))
    with pytest.raises(ValueError, match="mask weights must be >= 0"):
        cross_entropy(logits, np.array([0, 1]), np.array([1.0, -1.0]))
    with pytest.raises(RuntimeError, match="needs a loss computed first"):
        CrossEntropyLoss().backward()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cross_entropy_matches_torch(reduction, label_smoothing, dtype):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    logits, targets = _ce_case(seed=4, shape=(6, 3), C=7, dtype=dtype)
    targets[2, 0] = targets[5, 2] = -100
    zt = torch.tensor(logits.reshape(-1, 7), requires_grad=True)
    expected = F.cross_entropy(zt, torch.tensor(targets.reshape(-1)), reduction=reduction,
                               label_smoothing=label_smoothing)
    expected.backward()
    loss, grad = cross_entropy(logits, targets, reduction=reduction,
                               label_smoothing=label_smoothing)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    assert loss == pytest.approx(expected.item(), rel=rtol)
    np.testing.assert_allclose(grad.reshape(-1, 7), zt.grad.numpy(), rtol=rtol, atol=rtol)


def test_cross_entropy_mask_matches_torch_weighted():
    torch = pytest.importorskip("torch")
    logits, targets = _ce_case(seed=5, shape=(4, 3), C=6)
    mask = np.random.default_rng(6).uniform(0, 2, (4, 3))
    zt = torch.tensor(logits, requires_grad=True)
    per = torch.nn.functional.cross_entropy(zt.reshape(-1, 6), torch.tensor(targets.reshape(-1)),
                                            reduction="none")
    w = torch.tensor(mask.reshape(-1))
    expected = (per * w).sum() / w.sum()
    expected.backward()
    loss, grad = cross_entropy(logits, targets, mask)
    assert loss == pytest.approx(expected.item(), rel=1e-12)
    np.testing.assert_allclose(grad, zt.grad.numpy(), rtol=1e-12, atol=1e-15)


# -- MSE ------------------------------------------------------------------------------

def test_mse_hand_computed():
    loss, grad = mse(np.array([1.0, 2.0, 4.0]), np.array([1.0, 0.0, 1.0]))
    assert loss == pytest.approx((0 + 4 + 9) / 3, rel=1e-15)
    np.testing.assert_allclose(grad, [0, 4 / 3, 2], rtol=1e-15)
    crit = MSELoss(reduction="sum")
    assert crit(np.array([[1.0, 3.0]]), np.array([[0.0, 0.0]])) == 10.0
    np.testing.assert_array_equal(crit.backward(), [[2.0, 6.0]])


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse_mask_broadcast_finite_differences(reduction):
    rng = np.random.default_rng(7)
    pred, target = rng.standard_normal((2, 5, 3, 2))
    mask = rng.uniform(0, 1, (5, 3)) > 0.3
    f = lambda: mse(pred, target, mask, reduction=reduction)[0]
    loss, grad = mse(pred, target, mask, reduction=reduction)
    np.testing.assert_allclose(grad, numeric_grad(f, pred), rtol=1e-6, atol=1e-10)
    kept = mse(pred[mask], target[mask], reduction=reduction)[0]
    assert loss == pytest.approx(kept, rel=1e-14)


def test_mse_dtype_and_errors():
    pred = np.ones((2, 3), np.float32)
    loss, grad = mse(pred, np.zeros((2, 3)))
    assert loss == 1.0 and grad.dtype == np.float32
    assert mse(pred, np.zeros((2, 3)), np.ones((2, 3), bool))[1].dtype == np.float32
    with pytest.raises(ValueError, match=r"target must have pred's shape \(2, 3\), got \(3, 2\)"):
        mse(pred, np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"mask must have shape \(2, 3\)"):
        mse(pred, np.zeros((2, 3)), np.ones(3))
    with pytest.raises(TypeError, match="pred must be a floating-point array"):
        mse(np.ones(3, int), np.ones(3))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse_matches_torch(reduction):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    pred, target = rng.standard_normal((2, 4, 3, 2))
    pt = torch.tensor(pred, requires_grad=True)
    expected = torch.nn.functional.mse_loss(pt, torch.tensor(target), reduction=reduction)
    expected.backward()
    loss, grad = mse(pred, target, reduction=reduction)
    assert loss == pytest.approx(expected.item(), rel=1e-13)
    np.testing.assert_allclose(grad, pt.grad.numpy(), rtol=1e-13)
