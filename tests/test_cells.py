"""RNNCell, LSTMCell, GRUCell: PyTorch parity over hand-written loops, the reference, errors.

The loop loss is ``sum_t sum(h_t * wh_t) (+ sum(c_T * wc))``, so each step's upstream
gradient is ``wh_t`` plus what flows back from the next step.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from fastrnn import reference
from fastrnn.nn.cells import GRUCell, LSTMCell, RNNCell

RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}
DTYPES = (np.float64, np.float32)
# name -> (class, constructor keywords, torch class name)
CELLS = {
    "rnn_tanh": (RNNCell, {}, "RNNCell"),
    "rnn_relu": (RNNCell, {"nonlinearity": "relu"}, "RNNCell"),
    "lstm": (LSTMCell, {}, "LSTMCell"),
    "gru": (GRUCell, {}, "GRUCell"),
}
STEPS, B, I, H = 4, 3, 5, 7


def assert_close(actual, expected, dtype, name=""):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    scale = max(float(np.max(np.abs(expected))), 1e-30)
    error = float(np.max(np.abs(actual - expected))) / scale
    assert error <= RTOL[np.dtype(dtype)], f"{name}: relative error {error:.3g}"


def is_lstm(cell):
    return isinstance(cell, LSTMCell)


def random_problem(rng, dtype, batch_shape, steps=STEPS):
    """Inputs per step, initial state (h, c) and loss weights per step."""
    def draw(*shape):
        return rng.standard_normal(batch_shape + shape).astype(dtype)
    return {"xs": [draw(I) for _ in range(steps)], "h0": draw(H), "c0": draw(H),
            "wh": [draw(H) for _ in range(steps)], "wc": draw(H)}


def run_fastrnn(cell, p):
    """Forward loop, then the stack backward; returns outputs and every gradient."""
    lstm = is_lstm(cell)
    state = (p["h0"], p["c0"]) if lstm else p["h0"]
    hs = []
    for x in p["xs"]:
        state = cell(x, state)
        hs.append(state[0] if lstm else state)
    c_last = state[1] if lstm else None
    dh, dc, dxs = np.zeros_like(p["h0"]), p["wc"], []
    for wh in reversed(p["wh"]):
        if lstm:
            dx, (dh, dc) = cell.backward(dh + wh, dc)
        else:
            dx, dh = cell.backward(dh + wh)
        dxs.append(dx)
    out = {"h": np.stack(hs), "dx": np.stack(dxs[::-1]), "dh0": dh}
    if lstm:
        out.update(c=c_last, dc0=dc)
    out.update({f"d{name}": p.grad for name, p in cell.named_parameters()})
    return out


def run_torch(torch, cell, p):
    """The same loop in torch with autograd, with the weights copied from ``cell``."""
    lstm = is_lstm(cell)
    kwargs = {"nonlinearity": cell.nonlinearity} if isinstance(cell, RNNCell) else {}
    tcell = getattr(torch.nn, type(cell).__name__)(I, H, bias=cell.bias, **kwargs)
    tcell = tcell.to(torch.float64 if cell.dtype == np.float64 else torch.float32)
    tcell.load_state_dict({k: torch.from_numpy(v) for k, v in cell.state_dict().items()})
    t = {k: [torch.tensor(a, requires_grad=True) for a in v] if isinstance(v, list)
         else torch.tensor(v, requires_grad=True) for k, v in p.items()}
    state = (t["h0"], t["c0"]) if lstm else t["h0"]
    loss, hs = 0, []
    for x, wh in zip(t["xs"], t["wh"]):
        state = tcell(x, state)
        h = state[0] if lstm else state
        hs.append(h)
        loss = loss + (h * wh).sum()
    if lstm:
        loss = loss + (state[1] * t["wc"]).sum()
    loss.backward()
    out = {"h": torch.stack(hs).detach().numpy(),
           "dx": torch.stack([x.grad for x in t["xs"]]).numpy(), "dh0": t["h0"].grad.numpy()}
    if lstm:
        out.update(c=state[1].detach().numpy(), dc0=t["c0"].grad.numpy())
    out.update({f"d{name}": q.grad.numpy() for name, q in tcell.named_parameters()})
    return out


@pytest.mark.parametrize("batch_shape", [(B,), ()], ids=["batched", "unbatched"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", CELLS)
def test_torch_parity_loop(name, dtype, bias, batch_shape):
    torch = pytest.importorskip("torch")
    cls, kwargs, _ = CELLS[name]
    cell = cls(I, H, bias=bias, dtype=dtype, seed=1, **kwargs)
    p = random_problem(np.random.default_rng(2), dtype, batch_shape)
    ours, theirs = run_fastrnn(cell, p), run_torch(torch, cell, p)
    assert set(ours) == set(theirs)
    for key in theirs:
        assert ours[key].dtype == np.dtype(dtype), key
        assert_close(ours[key], theirs[key], dtype, key)


@pytest.mark.parametrize("name", CELLS)
def test_torch_names_and_init_range(name):
    torch = pytest.importorskip("torch")
    cls, kwargs, torch_name = CELLS[name]
    cell = cls(I, H, seed=0, **kwargs)
    tcell = getattr(torch.nn, torch_name)(I, H, **kwargs)
    ours, theirs = cell.state_dict(), tcell.state_dict()
    assert list(ours) == list(theirs)
    for key in ours:
        assert ours[key].shape == tuple(theirs[key].shape)
        assert ours[key].dtype == np.float32
        assert np.max(np.abs(ours[key])) <= 1 / np.sqrt(H)


# -- against the NumPy reference (no torch) -------------------------------------------------
REFERENCE_CELLS = {**{k: v[:2] for k, v in CELLS.items()},
                   "gru_reset_before": (GRUCell, {"reset_after": False})}


def reference_step(cell, x, states, dstates):
    """One step of ``fastrnn.reference`` with T = 1 and its backward."""
    weights = [getattr(cell, n).value if hasattr(cell, n) else None
               for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    options = {"rnn": {"nonlinearity": getattr(cell, "nonlinearity", "tanh")},
               "gru": {"reset_after": getattr(cell, "reset_after", True)}}.get(cell._kind, {})
    out = getattr(reference, f"{cell._kind}_forward")(x[None], *states, *weights, **options)
    grads = getattr(reference, f"{cell._kind}_backward")(None, *dstates, out[-1])
    return out[1:-1], grads


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", REFERENCE_CELLS)
def test_one_step_equals_reference(name, dtype):
    cls, kwargs = REFERENCE_CELLS[name]
    cell = cls(I, H, dtype=dtype, seed=3, **kwargs)
    rng = np.random.default_rng(4)
    n = 2 if is_lstm(cell) else 1
    x = rng.standard_normal((B, I)).astype(dtype)
    states = [rng.standard_normal((B, H)).astype(dtype) for _ in range(n)]
    dstates = [rng.standard_normal((B, H)).astype(dtype) for _ in range(n)]
    expected_states, g = reference_step(cell, x, states, dstates)

    got = cell(x, tuple(states)) if n == 2 else (cell(x, states[0]),)
    for a, e in zip(got, expected_states):
        assert_close(a, e, dtype, "state")
    dx, dprev = cell.backward(*dstates)
    dprev = dprev if n == 2 else (dprev,)
    assert_close(dx, g.dx[0], dtype, "dx")
    for a, e in zip(dprev, g[1:1 + n]):
        assert_close(a, e, dtype, "dstate")
    for (pname, p), e in zip(cell.named_parameters(), g[-4:]):
        assert_close(p.grad, e, dtype, pname)


def test_gradients_accumulate_and_zero_grad():
    cell = GRUCell(I, H, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((B, I))
    for _ in range(2):
        cell(x)
        cell.backward(np.ones((B, H)))
    twice = cell.weight_ih.grad.copy()
    cell.zero_grad()
    cell(x)
    cell.backward(np.ones((B, H)))
    np.testing.assert_allclose(twice, 2 * cell.weight_ih.grad, rtol=1e-12)


def test_none_state_and_none_gradient_are_zeros():
    cell = LSTMCell(I, H, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((B, I))
    zeros = np.zeros((B, H))
    h1, c1 = cell(x)
    h2, c2 = cell(x, (zeros, zeros))
    np.testing.assert_array_equal(h1, h2)
    np.testing.assert_array_equal(c1, c2)
    dx_a, (dh_a, dc_a) = cell.backward(None, np.ones((B, H)))
    dx_b, (dh_b, dc_b) = cell.backward(zeros, np.ones((B, H)))
    np.testing.assert_array_equal(dx_a, dx_b)
    np.testing.assert_array_equal(dc_a, dc_b)


def test_no_grad_keeps_no_cache_and_eval_still_backpropagates():
    cell = RNNCell(I, H, seed=0).eval()
    with fastrnn.no_grad():
        h = cell(np.ones((B, I), np.float32))
    assert h.shape == (B, H)
    with pytest.raises(RuntimeError, match="no forward left.*no_grad"):
        cell.backward(np.ones((B, H), np.float32))
    cell(np.ones((B, I), np.float32))     # eval mode, grad enabled: a cache is kept
    dx, _ = cell.backward(np.ones((B, H), np.float32))
    assert dx.shape == (B, I)


def test_backward_pops_in_reverse_order_and_clear_cache():
    cell = RNNCell(I, H, seed=0)
    cell(np.ones((2, I), np.float32))      # batch 2
    cell(np.ones((1, I), np.float32))      # batch 1: backward undoes this one first
    dx, _ = cell.backward(np.ones((1, H), np.float32))
    assert dx.shape == (1, I)
    dx, _ = cell.backward(np.ones((2, H), np.float32))
    assert dx.shape == (2, I)
    cell(np.ones((2, I), np.float32))
    cell.clear_cache()
    with pytest.raises(RuntimeError):
        cell.backward(None)


# -- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, match", [
    ({"input_size": 0}, ValueError, "input_size"),
    ({"hidden_size": -1}, ValueError, "hidden_size"),
    ({"hidden_size": 2.5}, TypeError, "hidden_size"),
    ({"dtype": np.int32}, TypeError, "dtype"),
    ({"dtype": "float16"}, TypeError, "dtype"),
])
def test_bad_constructor_arguments(kwargs, error, match):
    arguments = {"input_size": I, "hidden_size": H, **kwargs}
    with pytest.raises(error, match=match):
        LSTMCell(**arguments)


def test_bad_nonlinearity():
    with pytest.raises(ValueError, match="nonlinearity"):
        RNNCell(I, H, nonlinearity="sigmoid")


@pytest.mark.parametrize("call, error, match", [
    (lambda c: c(np.ones((B, I + 1), np.float32)), ValueError, "x must have shape"),
    (lambda c: c(np.ones((1, B, I), np.float32)), ValueError, "x must have shape"),
    (lambda c: c(np.ones((B, I), np.float64)), ValueError,
     r"x must have the cell's dtype \(float32\), got dtype float64"),
    (lambda c: c(np.ones((B, I), np.float32), np.ones((B, H + 1), np.float32)),
     ValueError, "h must have shape"),
    (lambda c: c(np.ones(I, np.float32), np.ones((1, H), np.float32)),
     ValueError, "unbatched"),
    (lambda c: c(np.ones((B, I), np.float32), np.ones((B, H))), ValueError, "h must have"),
    (lambda c: c.backward(np.ones((B, H), np.float32)), RuntimeError, "no forward left"),
])
def test_bad_calls(call, error, match):
    with pytest.raises(error, match=match):
        call(GRUCell(I, H, seed=0))


def test_bad_lstm_state_and_gradient():
    cell = LSTMCell(I, H, seed=0)
    x = np.ones((B, I), np.float32)
    with pytest.raises(TypeError, match="pair"):
        cell(x, np.zeros((B, H), np.float32))
    cell(x)
    with pytest.raises(ValueError, match="dc must have shape"):
        cell.backward(None, np.ones((B + 1, H), np.float32))
    cell.backward(None, np.ones((B, H), np.float32))  # the cache survived the bad call


@pytest.mark.parametrize("make", [
    lambda dtype: RNNCell(5, 7, nonlinearity="relu", seed=1, dtype=dtype),
    lambda dtype: RNNCell(5, 7, bias=False, seed=1, dtype=dtype),
    lambda dtype: LSTMCell(5, 7, seed=1, dtype=dtype),
    lambda dtype: GRUCell(5, 7, seed=1, dtype=dtype),
    lambda dtype: GRUCell(5, 7, reset_after=False, seed=1, dtype=dtype),
], ids=["rnn-relu", "rnn-nobias", "lstm", "gru", "gru-reset-before"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_eval_fast_path_matches_training_path(make, dtype):
    """Eval mode runs the unchecked C step; it must give the training path's states."""
    cell = make(dtype)
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(dtype)
    state = None
    for _ in range(3):
        trained = cell.train()(x, state)
        inferred = cell.eval()(x, state)
        cell.clear_cache()
        as_tuple = (lambda s: s if isinstance(s, tuple) else (s,))
        for got, want in zip(as_tuple(inferred), as_tuple(trained)):
            np.testing.assert_allclose(got, want, rtol=1e-6 if dtype == np.float32 else 1e-13,
                                       atol=1e-7)
        state = trained
