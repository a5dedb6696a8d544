"""Peephole LSTM (ONNX's LSTM with input P): ``peepholes (3H,) = [p_i, p_o, p_f]``.

    a_i += p_i * c_{t-1},   a_f += p_f * c_{t-1},   a_o += p_o * c_t

The C kernels (every ISA variant, float32/float64, lengths, threads) against the NumPy
reference; the reference against central finite differences; the reference's first step
against the equations written out here; and ``LSTM(peepholes=True)`` end to end (its
``weight_p_l{k}`` gradients against finite differences, step(), errors).
"""
from __future__ import annotations

import numpy as np
import pytest

from fastrnn import LSTM, PeepholeLSTMGrads, ops, reference
from helpers import assert_runs_close, numeric_grad

SHAPES = [(1, 1, 1, 1), (5, 2, 7, 7), (3, 4, 5, 33), (4, 2, 65, 65), (3, 17, 5, 9),
          (2, 40, 7, 33),
          (110, 5, 3, 9)]   # backward in two chunks of steps (103 steps * 5 rows >= 512)
TOLERANCE = {np.float32: 2e-5, np.float64: 1e-10}


def make_case(shape, dtype, *, lengths=True, bias=True, initial=True, seed=0):
    T, B, I, H = shape
    rng = np.random.default_rng(seed)

    def rand(*s, scale=1.0):
        return (scale * rng.standard_normal(s)).astype(dtype)

    scale = 1 / np.sqrt(H)
    return {
        "x": rand(T, B, I),
        "states": [rand(B, H) if initial else None for _ in range(2)],
        "weights": [rand(4 * H, I, scale=scale), rand(4 * H, H, scale=scale),
                    rand(4 * H, scale=scale) if bias else None,
                    rand(4 * H, scale=scale) if bias else None],
        "peepholes": rand(3 * H, scale=0.5),
        "lengths": rng.integers(1, T + 1, size=B) if lengths else None,
        "dy": rand(T, B, H),
        "d_states": [rand(B, H) for _ in range(2)],
    }


def run(backend, case, training=True):
    y, h_n, c_n, cache = backend.lstm_forward(case["x"], *case["states"], *case["weights"],
                                              lengths=case["lengths"], training=training,
                                              peepholes=case["peepholes"])
    if not training:
        return (y, h_n, c_n), None
    return (y, h_n, c_n), backend.lstm_backward(case["dy"], *case["d_states"], cache)


def assert_all_close(got, want, dtype):
    assert isinstance(got[1], PeepholeLSTMGrads)
    assert_runs_close(got, want, dtype, TOLERANCE)


# -- kernels against the reference ---------------------------------------------------------
@pytest.mark.usefixtures("isa")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
def test_kernels_match_reference(shape, dtype, lengths):
    case = make_case(shape, dtype, lengths=lengths)
    assert_all_close(run(ops, case), run(reference, case), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias,initial", [(False, False), (False, True), (True, False)])
def test_kernels_without_bias_or_initial_state(dtype, bias, initial):
    case = make_case((4, 3, 5, 6), dtype, bias=bias, initial=initial)
    got, want = run(ops, case), run(reference, case)
    assert_all_close(got, want, dtype)
    if not bias:
        assert got[1].db_ih is None and got[1].db_hh is None


@pytest.mark.parametrize("shape", [(6, 2, 5, 65), (4, 40, 7, 33)],
                         ids=["units-split", "batch-split"])
def test_kernels_on_threads_match_reference(shape, restore_threads):
    case = make_case(shape, np.float32)
    want = run(reference, case)
    for threads in (1, 2, 3):
        restore_threads(threads)
        assert_all_close(run(ops, case), want, np.float32)


@pytest.mark.parametrize("backend", [ops, reference], ids=["ops", "reference"])
def test_inference_forward_equals_training_forward(backend):
    case = make_case((5, 3, 4, 9), np.float64)
    (y, h, c), _ = run(backend, case)
    (y_inf, h_inf, c_inf), _ = run(backend, case, training=False)
    for a, b in ((y, y_inf), (h, h_inf), (c, c_inf)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", [ops, reference], ids=["ops", "reference"])
def test_zero_peepholes_are_plain_lstm(backend):
    case = make_case((4, 3, 5, 6), np.float64)
    case["peepholes"] = np.zeros_like(case["peepholes"])
    out, grads = run(backend, case)
    y, h, c, cache = backend.lstm_forward(case["x"], *case["states"], *case["weights"],
                                          lengths=case["lengths"])
    plain = backend.lstm_backward(case["dy"], *case["d_states"], cache)
    for a, b in zip(out, (y, h, c)):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-15)
    for name, a, b in zip(plain._fields, grads, plain):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15, err_msg=name)


# -- the reference against first principles -----------------------------------------------
def _sigmoid(a):
    return 1 / (1 + np.exp(-a))


def test_reference_first_step_is_onnx_equations():
    """One step written out with ONNX's names: P = [p_i, p_o, p_f], gates i, f, g(c), o."""
    case = make_case((1, 2, 3, 4), np.float64, lengths=False)
    x, (h0, c0), (w_ih, w_hh, b_ih, b_hh) = case["x"][0], case["states"], case["weights"]
    p_i, p_o, p_f = np.split(case["peepholes"], 3)
    a = x @ w_ih.T + b_ih + h0 @ w_hh.T + b_hh
    a_i, a_f, a_g, a_o = np.split(a, 4, axis=-1)
    i, f = _sigmoid(a_i + p_i * c0), _sigmoid(a_f + p_f * c0)
    c = f * c0 + i * np.tanh(a_g)
    h = _sigmoid(a_o + p_o * c) * np.tanh(c)
    (y, h_n, c_n), _ = run(reference, case, training=False)
    np.testing.assert_allclose(c_n, c, rtol=1e-13)
    np.testing.assert_allclose(h_n, h, rtol=1e-13)
    np.testing.assert_allclose(y[0], h, rtol=1e-13)


@pytest.mark.parametrize("shape,lengths", [((3, 2, 3, 4), [1, 3]), ((1, 1, 1, 1), [1]),
                                           ((4, 3, 2, 3), [4, 1, 3])],
                         ids=["small", "tiny", "mixed"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_reference_gradients_match_finite_differences(shape, lengths, bias):
    case = make_case(shape, np.float64, bias=bias)
    case["lengths"] = np.array(lengths)
    _, grads = run(reference, case)
    x, (h0, c0), weights, w_p = case["x"], case["states"], case["weights"], case["peepholes"]

    def loss():
        (y, h_n, c_n), _ = run(reference, case, training=False)
        return (np.sum(y * case["dy"]) + np.sum(h_n * case["d_states"][0])
                + np.sum(c_n * case["d_states"][1]))

    wanted = {"dx": x, "dh0": h0, "dc0": c0, "dw_ih": weights[0], "dw_hh": weights[1],
              "db_ih": weights[2], "db_hh": weights[3], "dw_p": w_p}
    for name, value in wanted.items():
        analytic = getattr(grads, name)
        if value is None:
            assert analytic is None, name
            continue
        np.testing.assert_allclose(analytic, numeric_grad(loss, value), rtol=1e-7, atol=1e-9,
                                   err_msg=name)


# -- the layer ------------------------------------------------------------------------------
def _layer(bias=True, **kwargs):
    layer = LSTM(3, 4, num_layers=2, bias=bias, peepholes=True, dtype=np.float64, seed=0,
                 **kwargs)
    return layer


def test_layer_parameters_and_names():
    layer = _layer(bidirectional=True)
    names = list(layer.state_dict())
    assert names[:5] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                         "weight_p_l0"]
    assert "weight_p_l1_reverse" in names and layer.weight_p_l1_reverse.shape == (12,)
    assert "peepholes=True" in repr(layer)
    assert not LSTM(3, 4).peepholes and "weight_p_l0" not in LSTM(3, 4).state_dict()
    keras = LSTM(3, 4, peepholes=True, init="keras")
    np.testing.assert_array_equal(keras.weight_p_l0.value, 0)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_layer_gradients_match_finite_differences(bias):
    """Every parameter of a 2-layer bidirectional peephole stack with lengths, including
    weight_p_l{k}[_reverse] (and the alignment of gradients to parameters without bias)."""
    layer = _layer(bias=bias, bidirectional=True)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 2, 3))
    lengths = np.array([4, 2])
    wy = rng.standard_normal((4, 2, 8))

    def loss():
        y, _ = layer(x, lengths=lengths)
        return np.sum(y * wy)

    loss()
    layer.zero_grad()
    layer.backward(wy)
    for name, p in layer.named_parameters():
        if name.startswith(("weight_p", "bias_hh_l1", "weight_hh_l0_reverse")):
            np.testing.assert_allclose(p.grad, numeric_grad(loss, p), rtol=1e-6, atol=1e-8,
                                       err_msg=name)


def test_layer_step_matches_forward():
    layer = _layer()
    x = np.random.default_rng(2).standard_normal((5, 2, 3))
    y, (h_n, c_n) = layer(x)
    state = None
    for t in range(5):
        out, state = layer.step(x[t], state)
        np.testing.assert_allclose(out, y[t], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(state[0], h_n, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(state[1], c_n, rtol=1e-12, atol=1e-14)


def test_layer_state_dict_round_trip():
    a, b = _layer(), LSTM(3, 4, num_layers=2, peepholes=True, dtype=np.float64, seed=5)
    b.load_state_dict(a.state_dict())
    x = np.random.default_rng(3).standard_normal((3, 2, 3))
    np.testing.assert_array_equal(a(x)[0], b(x)[0])


# -- errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", [ops, reference], ids=["ops", "reference"])
def test_bad_peepholes_raise_naming_them(backend):
    case = make_case((2, 2, 3, 4), np.float64)
    case["peepholes"] = np.zeros(8)
    with pytest.raises(ValueError, match=r"peepholes must have shape \(12,\), got \(8,\)"):
        run(backend, case)
    case["peepholes"] = np.zeros(12, np.float32)
    with pytest.raises(ValueError, match="peepholes must have the dtype of x"):
        run(backend, case)


def test_layer_peepholes_flag_is_checked():
    with pytest.raises(TypeError, match="peepholes must be True or False, got 'yes'"):
        LSTM(3, 4, peepholes="yes")
