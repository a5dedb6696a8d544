"""fastrnn.reference against central finite differences, and its forward semantics.

The reference backend is what the C kernels are tested against, so its gradients are checked
here from first principles: every gradient of every cell, in float64, against central
differences of the scalar loss L = sum(y*Wy) + sum(h_n*Wh) (+ sum(c_n*Wc)), whose upstream
gradients are dy = Wy, dh_n = Wh, dc_n = Wc.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from fastrnn import reference as ref
from helpers import numeric_grad

EPS = 1e-6
RTOL, ATOL = 1e-7, 1e-9


@dataclass(frozen=True)
class Cell:
    """One cell configuration, driven through a uniform interface."""

    name: str
    kind: str                       # "rnn", "lstm" or "gru"
    options: dict = field(default_factory=dict)

    @property
    def gates(self):
        return {"rnn": 1, "lstm": 4, "gru": 3}[self.kind]

    @property
    def state_names(self):
        return ("h0", "c0") if self.kind == "lstm" else ("h0",)

    def forward(self, p, lengths=None, training=True):
        """Returns y, final states (tuple), cache."""
        fn = getattr(ref, f"{self.kind}_forward")
        states = [p[name] for name in self.state_names]
        out = fn(p["x"], *states, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                 lengths=lengths, training=training, **self.options)
        return out[0], tuple(out[1:-1]), out[-1]

    def backward(self, dy, dstates, cache):
        return getattr(ref, f"{self.kind}_backward")(dy, *dstates, cache)


CELLS = [
    Cell("rnn_tanh", "rnn", {"nonlinearity": "tanh"}),
    Cell("rnn_relu", "rnn", {"nonlinearity": "relu"}),
    Cell("lstm", "lstm"),
    Cell("gru_reset_after", "gru", {"reset_after": True}),
    Cell("gru_reset_before", "gru", {"reset_after": False}),
]
CELL_IDS = [cell.name for cell in CELLS]

# (T, B, I, H, lengths)
SHAPES = {
    "small": (3, 2, 3, 4, [1, 2]),      # neither row runs the full T; one stops after step 0
    "tiny": (1, 1, 1, 1, [1]),
    "mixed": (4, 3, 2, 3, [4, 1, 3]),
}


def make_params(cell, T, B, I, H, bias=True, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    G = cell.gates

    def rand(*shape, scale=0.5):
        return (scale * rng.standard_normal(shape)).astype(dtype)

    p = {"x": rand(T, B, I, scale=1.0), "w_ih": rand(G * H, I), "w_hh": rand(G * H, H),
         "b_ih": rand(G * H) if bias else None, "b_hh": rand(G * H) if bias else None}
    for name in cell.state_names:
        p[name] = rand(B, H)
    return p


def relu_preactivations(p, lengths):
    """Pre-activations a_t of the valid steps of a relu RNN, computed independently."""
    T, B, _ = p["x"].shape
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    h, seen = p["h0"], []
    for t in range(T):
        a = p["x"][t] @ p["w_ih"].T + h @ p["w_hh"].T
        if p["b_ih"] is not None:
            a = a + p["b_ih"] + p["b_hh"]
        valid = (t < lengths)[:, None]
        seen.append(a[valid[:, 0]])
        h = np.where(valid, np.maximum(a, 0), h)
    return np.concatenate(seen)


def safe_params(cell, shape, bias, lengths):
    """Parameters whose relu pre-activations stay far from the kink (finite differences
    across it would be meaningless); any seed will do for smooth cells."""
    T, B, I, H = shape
    for seed in range(100):
        p = make_params(cell, T, B, I, H, bias=bias, seed=seed)
        if cell.name != "rnn_relu" or np.abs(relu_preactivations(p, lengths)).min() > 1e-3:
            return p
    raise AssertionError("no kink-free seed found")




def upstream(cell, y, states, seed=1):
    """Random loss weights Wy (like y) and one per final state (like h_n, c_n)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal(y.shape), tuple(rng.standard_normal(s.shape) for s in states)


@pytest.mark.parametrize("use_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
def test_gradients_match_finite_differences(cell, shape, bias, use_lengths):
    T, B, I, H, lengths = SHAPES[shape]
    lengths = np.array(lengths, dtype=np.int64) if use_lengths else None
    p = safe_params(cell, (T, B, I, H), bias, lengths)
    y, states, cache = cell.forward(p, lengths)
    wy, wstates = upstream(cell, y, states)
    grads = cell.backward(wy, wstates, cache)._asdict()

    def loss():
        y, states, _ = cell.forward(p, lengths, training=False)
        return np.sum(y * wy) + sum(np.sum(s * w) for s, w in zip(states, wstates))

    for name, value in p.items():
        analytic = grads["d" + name]
        if value is None:
            assert analytic is None, f"d{name} should be None without a bias"
            continue
        assert analytic.shape == value.shape and analytic.dtype == np.float64
        np.testing.assert_allclose(analytic, numeric_grad(loss, value), rtol=RTOL, atol=ATOL,
                                   err_msg=f"d{name}")


@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
def test_inference_matches_training(cell):
    p = make_params(cell, 3, 2, 3, 4)
    lengths = np.array([3, 2])
    y, states, cache = cell.forward(p, lengths, training=True)
    y_inf, states_inf, cache_inf = cell.forward(p, lengths, training=False)
    assert cache is not None and cache_inf is None
    np.testing.assert_array_equal(y_inf, y)
    for s_inf, s in zip(states_inf, states):
        np.testing.assert_array_equal(s_inf, s)
    with pytest.raises(ValueError, match="training=True"):
        cell.backward(None, (None,) * len(states), cache_inf)


@pytest.mark.parametrize("which", ["dy", "states", "all"])
@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
def test_none_upstream_is_zero(cell, which):
    p = make_params(cell, 3, 2, 3, 4)
    y, states, cache = cell.forward(p)
    wy, wstates = upstream(cell, y, states)
    zero_y, zero_states = np.zeros_like(wy), tuple(np.zeros_like(w) for w in wstates)
    none_states = (None,) * len(states)
    dy, dstates, zdy, zstates = {
        "dy": (None, wstates, zero_y, wstates),
        "states": (wy, none_states, wy, zero_states),
        "all": (None, none_states, zero_y, zero_states),
    }[which]
    with_none = cell.backward(dy, dstates, cache)
    with_zeros = cell.backward(zdy, zstates, cache)
    for a, b in zip(with_none, with_zeros):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
def test_lengths_match_truncated_sequences(cell):
    """Each row with lengths equals that row run alone on its first lengths[b] steps,
    forward and backward; outputs and dx past a length are zero."""
    T, B = 4, 3
    lengths = np.array([2, 4, 1])
    p = make_params(cell, T, B, 3, 4)
    y, states, cache = cell.forward(p, lengths)
    wy, wstates = upstream(cell, y, states)
    grads = cell.backward(wy, wstates, cache)._asdict()

    summed = {name: 0 for name in ("dw_ih", "dw_hh", "db_ih", "db_hh")}
    for b, n in enumerate(lengths):
        row = {k: v[b:b + 1] for k, v in p.items() if k in ("h0", "c0")}
        row.update({k: v for k, v in p.items() if k not in ("x", "h0", "c0")})
        row["x"] = p["x"][:n, b:b + 1]
        y_b, states_b, cache_b = cell.forward(row)
        np.testing.assert_allclose(y[:n, b:b + 1], y_b, rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(y[n:, b], 0)
        for s, s_b in zip(states, states_b):
            np.testing.assert_allclose(s[b:b + 1], s_b, rtol=1e-12, atol=1e-14)

        g_b = cell.backward(wy[:n, b:b + 1], tuple(w[b:b + 1] for w in wstates),
                            cache_b)._asdict()
        np.testing.assert_allclose(grads["dx"][:n, b:b + 1], g_b["dx"], rtol=1e-10, atol=1e-12)
        np.testing.assert_array_equal(grads["dx"][n:, b], 0)
        for name in cell.state_names:
            np.testing.assert_allclose(grads["d" + name][b:b + 1], g_b["d" + name],
                                       rtol=1e-10, atol=1e-12)
        for name in summed:
            summed[name] = summed[name] + g_b[name]
    for name, total in summed.items():
        np.testing.assert_allclose(grads[name], total, rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
def test_float32_stays_float32(cell):
    p = make_params(cell, 3, 2, 3, 4, dtype=np.float32)
    y, states, cache = cell.forward(p, np.array([3, 1]))
    assert y.dtype == np.float32
    assert all(s.dtype == np.float32 for s in states)
    grads = cell.backward(np.ones_like(y), tuple(np.ones_like(s) for s in states), cache)
    assert all(g.dtype == np.float32 for g in grads)
    p64 = {k: v.astype(np.float64) for k, v in p.items()}
    y64, _, _ = cell.forward(p64, np.array([3, 1]))
    np.testing.assert_allclose(y, y64, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
def test_inputs_untouched_and_outputs_fresh(cell):
    p = make_params(cell, 3, 2, 3, 4)
    before = {k: v.copy() for k, v in p.items()}
    y, states, cache = cell.forward(p, np.array([3, 2]))
    wy, wstates = upstream(cell, y, states)
    wy_before = wy.copy()
    grads = cell.backward(wy, wstates, cache)
    for k, v in p.items():
        np.testing.assert_array_equal(v, before[k])
    np.testing.assert_array_equal(wy, wy_before)
    outputs = [y, *states, *grads]
    for out in outputs:
        for other in [*p.values(), wy, *wstates]:
            assert not np.shares_memory(out, other)
