"""One NaN stays in its row: a NaN or inf in one sequence of a batch never changes another
sequence's outputs, final states or input/state gradients (ops and reference alike).

The weight gradients are sums over the batch, so they do take the bad row's NaN (as in
PyTorch); everything indexed by the batch must not. The comparison is bitwise: the clean
rows see exactly the same operations whatever the poisoned row holds.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from fastrnn import _core, ops, reference
from fastrnn.nn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
N_STATES = {"rnn": 1, "lstm": 2, "gru": 1}
BAD = 2                                  # the poisoned row

# NumPy warns about the NaNs the reference computes on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _case(cell, dtype, B, T=6, I=7, H=33, seed=0):
    rng = np.random.default_rng(seed)
    G = GATES[cell]

    def r(*shape):
        return (rng.standard_normal(shape) * 0.5).astype(dtype)

    weights = [r(G * H, I), r(G * H, H), r(G * H), r(G * H)]
    states = [r(B, H) for _ in range(N_STATES[cell])]
    return r(T, B, I), states, weights, r(T, B, H), [r(B, H) for _ in states]


def _poison(where, value, x, states):
    x, states = x.copy(), [s.copy() for s in states]
    if where == "x":
        x[1, BAD, 3] = value
    else:
        states[0][BAD, 5] = value
    return x, states


def _run(backend, cell, x, states, weights, dy, dfinals, lengths):
    *outs, cache = getattr(backend, f"{cell}_forward")(x, *states, *weights, lengths=lengths)
    grads = getattr(backend, f"{cell}_backward")(dy, *dfinals, cache)
    per_row = [outs[0], grads.dx]              # (T, B, .)
    per_batch = list(outs[1:]) + list(grads[1:1 + len(states)])   # (B, H)
    return per_row, per_batch


def _assert_other_rows_equal(got, want, B):
    keep = [b for b in range(B) if b != BAD]
    seq_got, state_got = got
    seq_want, state_want = want
    for a, b in zip(seq_got, seq_want):
        np.testing.assert_array_equal(a[:, keep], b[:, keep])
    for a, b in zip(state_got, state_want):
        np.testing.assert_array_equal(a[keep], b[keep])


@pytest.mark.parametrize("backend", [ops, reference], ids=["ops", "reference"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["x", "h0"])
@pytest.mark.parametrize("B", [3, 5, 40, 70])   # small-batch, hidden-split, batch-split paths
def test_non_finite_value_stays_in_its_row(backend, cell, dtype, value, where, B):
    x, states, weights, dy, dfinals = _case(cell, dtype, B)
    bad_x, bad_states = _poison(where, value, x, states)
    previous = _core.get_isa()
    try:
        for isa in _core.available_isas() if backend is ops else [previous]:
            _core.set_isa(isa)      # every instruction-set variant of the kernels
            clean = _run(backend, cell, x, states, weights, dy, dfinals, None)
            poisoned = _run(backend, cell, bad_x, bad_states, weights, dy, dfinals, None)
            _assert_other_rows_equal(poisoned, clean, B)
            if np.isnan(value):
                assert np.isnan(poisoned[0][0][:, BAD]).any()   # it did reach its own row
    finally:
        _core.set_isa(previous)


@pytest.mark.parametrize("backend", [ops, reference], ids=["ops", "reference"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_nan_stays_in_its_row_with_lengths(backend, cell):
    B = 6
    x, states, weights, dy, dfinals = _case(cell, np.float64, B)
    lengths = np.array([6, 2, 4, 1, 6, 3])
    clean = _run(backend, cell, x, states, weights, dy, dfinals, lengths)
    bad_x, bad_states = _poison("x", np.nan, x, states)
    poisoned = _run(backend, cell, bad_x, bad_states, weights, dy, dfinals, lengths)
    _assert_other_rows_equal(poisoned, clean, B)


@pytest.mark.parametrize("backend", [ops, reference], ids=["ops", "reference"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_nan_in_upstream_gradient_stays_in_its_row(backend, cell):
    B = 5
    x, states, weights, dy, dfinals = _case(cell, np.float32, B)
    clean = _run(backend, cell, x, states, weights, dy, dfinals, None)
    bad_dy = dy.copy()
    bad_dy[3, BAD, 0] = np.nan
    poisoned = _run(backend, cell, x, states, weights, bad_dy, dfinals, None)
    _assert_other_rows_equal(poisoned, clean, B)


@pytest.mark.parametrize("layer_class", [RNN, LSTM, GRU])
def test_nan_stays_in_its_row_through_stacked_bidirectional_layers(layer_class):
    B = 5
    layer = layer_class(7, 9, num_layers=2, bidirectional=True, seed=0)
    x = np.random.default_rng(0).standard_normal((6, B, 7)).astype(np.float32)
    dy = np.ones((6, B, 18), np.float32)
    y, _ = layer(x)
    dx = layer.backward(dy)
    bad = x.copy()
    bad[4, BAD, 0] = np.nan
    y_bad, _ = layer(bad)
    dx_bad = layer.backward(dy)
    keep = [b for b in range(B) if b != BAD]
    np.testing.assert_array_equal(y_bad[:, keep], y[:, keep])
    np.testing.assert_array_equal(dx_bad[:, keep], dx[:, keep])
    with fastrnn.no_grad():
        np.testing.assert_array_equal(layer(bad)[0][:, keep], y[:, keep])


@pytest.mark.parametrize("cell_class", [RNNCell, LSTMCell, GRUCell])
def test_nan_stays_in_its_row_in_cells_and_step(cell_class):
    B = 4
    cell = cell_class(7, 9, seed=0)
    x = np.random.default_rng(0).standard_normal((B, 7)).astype(np.float32)
    bad = x.copy()
    bad[BAD, 1] = np.nan
    keep = [b for b in range(B) if b != BAD]
    for grad_enabled in (True, False):
        with fastrnn.set_grad_enabled(grad_enabled):
            clean, poisoned = cell(x), cell(bad)
        if not isinstance(clean, tuple):
            clean, poisoned = (clean,), (poisoned,)
        assert not np.isfinite(poisoned[0][BAD]).all()
        for a, b in zip(poisoned, clean):
            np.testing.assert_array_equal(a[keep], b[keep])
    cell.clear_cache()
