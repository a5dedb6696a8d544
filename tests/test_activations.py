"""The float32 activations and cell loops on vector types (csrc/act.h): every SIMD level
gives the same bits whether H fills whole vectors or ends in a zero-padded tail, in
inference and in the training forward (which saves the activated gates), and a saturated
tanh is exactly +-1, as float32 tanh."""
import numpy as np
import pytest

from fastrnn import _core, ops

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
CASES = [("rnn", {}), ("rnn", {"nonlinearity": "relu"}), ("lstm", {}),
         ("gru", {"reset_after": True}), ("gru", {"reset_after": False})]
SIMD = [name for name in _core.available_isas() if name != "portable"]


def _problem(rng, cell, B, I, H, scale=1.0):
    bound = scale / np.sqrt(H)
    G = GATES[cell]
    weights = [rng.uniform(-bound, bound, s).astype(np.float32)
               for s in [(G * H, I), (G * H, H), (G * H,), (G * H,)]]
    states = [rng.standard_normal((B, H)).astype(np.float32)
              for _ in range(2 if cell == "lstm" else 1)]
    return weights, states


def _outputs_at_each_level(cell, options, x, weights, states, training):
    before, results = _core.get_isa(), {}
    try:
        for name in SIMD:
            _core.set_isa(name)
            out = getattr(ops, f"{cell}_forward")(x, *states, *weights, **options,
                                                 training=training)
            results[name] = [np.array(a) for a in out[:-1]]
    finally:
        _core.set_isa(before)
    return results


@pytest.mark.skipif(len(SIMD) < 2, reason="one SIMD level on this CPU")
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("H", [1, 7, 8, 9, 15, 16, 17, 33])
@pytest.mark.parametrize("cell,options", CASES)
def test_simd_levels_agree_on_either_side_of_a_vector(cell, options, H, training):
    rng = np.random.default_rng(H)
    T, B, I = 3, 5, 6
    x = (3 * rng.standard_normal((T, B, I))).astype(np.float32)
    weights, states = _problem(rng, cell, B, I, H, scale=4.0)
    results = _outputs_at_each_level(cell, options, x, weights, states, training)
    for name in SIMD[1:]:
        for got, want in zip(results[name], results[SIMD[0]]):
            np.testing.assert_array_equal(got, want, err_msg=f"{name} vs {SIMD[0]}")


@pytest.mark.usefixtures("isa")
def test_a_saturated_tanh_is_exactly_one():
    """RNN tanh with pre-activations of +-(8 .. 1e30): h = +-1 exactly (the approximation
    at the clamp is 1 - 4.8e-7; a huge recurrent weight times 1 - h^2 must see 0)."""
    H = 19
    big = np.geomspace(8, 1e30, H).astype(np.float32)
    x = np.stack([big, -big]).reshape(1, 2, H).astype(np.float32)
    w_ih = np.eye(H, dtype=np.float32)
    w_hh = np.zeros((H, H), np.float32)
    y = ops.rnn_forward(x, None, w_ih, w_hh, None, None)[0]
    np.testing.assert_array_equal(y[0, 0], np.ones(H, np.float32))
    np.testing.assert_array_equal(y[0, 1], -np.ones(H, np.float32))
