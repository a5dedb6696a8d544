"""Layer-normalised LSTM and GRU (Ba et al. 2016, per gate block):

    LSTM: a_t = g_ih * LN(x_t w_ihᵀ) + g_hh * LN(h_{t-1} w_hhᵀ) + b_ih + b_hh
          h_t = o * tanh(g_c * LN(c_t) + b_c)
    GRU:  [xr xz xn] = g_ih * LN(x_t w_ihᵀ) + b_ih,  [hr hz hn] = g_hh * LN(h_{t-1} w_hhᵀ) + b_hh

The C kernels (csrc/lstm_ln.c, csrc/gru_ln.c; every ISA variant, float32/float64, lengths,
recurrent dropout, threads) against the NumPy reference; the reference against the
equations written out here and against finite differences; ``LSTM/GRU(layer_norm=True)``
end to end.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from fastrnn import GRU, LSTM, LayerNormGRUGrads, LayerNormLSTMGrads, ops, reference
from helpers import assert_runs_close, numeric_grad

SHAPES = [(1, 1, 1, 2), (5, 3, 4, 7), (3, 4, 5, 33), (4, 2, 65, 65), (3, 20, 5, 9),
          (2, 40, 7, 33)]
TOLERANCE = {np.float32: 3e-5, np.float64: 1e-10}


CELLS = ("lstm", "gru")
GRADS = {"lstm": LayerNormLSTMGrads, "gru": LayerNormGRUGrads}


def make_case(shape, dtype, *, cell="lstm", lengths=True, bias=True, mask=False, seed=0):
    T, B, I, H = shape
    G, n_states = (4, 2) if cell == "lstm" else (3, 1)
    rng = np.random.default_rng(seed)

    def rand(*s, scale=1.0):
        return (scale * rng.standard_normal(s)).astype(dtype)

    scale = 1 / np.sqrt(H)
    ln = 1 + 0.3 * rng.standard_normal(10 * H if cell == "lstm" else 6 * H)
    if cell == "lstm":
        ln[9 * H:] -= 1   # b_c, a shift around 0
    options = {"layer_norm": ln.astype(dtype),
               "lengths": rng.integers(1, T + 1, size=B) if lengths else None}
    if mask:
        options["recurrent_mask"] = ((rng.random((B, H)) >= 0.3) / 0.7).astype(dtype)
    return {"cell": cell, "x": rand(T, B, I), "states": [rand(B, H) for _ in range(n_states)],
            "weights": [rand(G * H, I, scale=scale), rand(G * H, H, scale=scale),
                        rand(G * H, scale=scale) if bias else None,
                        rand(G * H, scale=scale) if bias else None],
            "options": options,
            "upstream": [rand(T, B, H)] + [rand(B, H) for _ in range(n_states)]}


def run(backend, case, training=True):
    cell = case["cell"]
    *out, cache = getattr(backend, f"{cell}_forward")(case["x"], *case["states"],
                                                      *case["weights"], training=training,
                                                      **case["options"])
    if not training:
        return out, None
    return out, getattr(backend, f"{cell}_backward")(*case["upstream"], cache)


def assert_all_close(got, want, dtype):
    assert type(got[1]).__name__.startswith("LayerNorm")
    assert_runs_close(got, want, dtype, TOLERANCE)


def _flat_run(run_result):
    out, grads = run_result
    return list(out) + list(grads), [f"output {i}" for i in range(len(out))] + [*grads._fields]


def _relative(a, b):
    return float(np.abs(a.astype(np.float64) - b).max()) / max(float(np.abs(b).max()), 1.0)


def assert_kernel_matches(case, dtype):
    """float64: the kernel within 1e-10 of the reference. float32: a layer norm of a block
    with little spread amplifies rounding, so the float32 reference itself can be 1e-4 off
    the float64 one; the kernel must be within 2e-5 of the float64 reference or no worse
    than twice the float32 reference's own error."""
    got = run(ops, case)
    if dtype == np.float64:
        return assert_all_close(got, run(reference, case), dtype)
    case64 = {k: v for k, v in case.items()}
    cast = lambda a: None if a is None else np.asarray(a, np.float64)   # noqa: E731
    case64.update(x=cast(case["x"]), states=[cast(a) for a in case["states"]],
                  weights=[cast(a) for a in case["weights"]],
                  upstream=[cast(a) for a in case["upstream"]],
                  options={k: (v if k == "lengths" else cast(v))
                           for k, v in case["options"].items()})
    assert isinstance(got[1], GRADS[case["cell"]])
    (got_values, names), (ref32, _) = _flat_run(got), _flat_run(run(reference, case))
    ref64, _ = _flat_run(run(reference, case64))
    for name, a, r32, r64 in zip(names, got_values, ref32, ref64):
        if r64 is None:
            assert a is None, name
            continue
        assert a.dtype == np.float32, name
        error, own = _relative(a, r64), _relative(r32, r64)
        assert error <= max(2e-5, 2 * own), f"{name}: {error:.3g} (float32 reference {own:.3g})"


# -- the kernel against the reference ---------------------------------------------------------
@pytest.mark.usefixtures("isa")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("cell", CELLS)
def test_kernel_matches_reference(cell, shape, dtype, lengths):
    assert_kernel_matches(make_case(shape, dtype, cell=cell, lengths=lengths), dtype)


@pytest.mark.parametrize("variant", [{"mask": True}, {"bias": False}],
                         ids=["recurrent-dropout", "no-bias"])
@pytest.mark.parametrize("cell", CELLS)
def test_kernel_with_dropout_or_without_bias(cell, variant):
    case = make_case((4, 3, 5, 9), np.float64, cell=cell, **variant)
    assert_all_close(run(ops, case), run(reference, case), np.float64)


@pytest.mark.parametrize("cell", CELLS)
def test_kernel_on_threads_matches_reference(cell, restore_threads):
    case = make_case((4, 40, 7, 33), np.float32, cell=cell, mask=True)
    for threads in (1, 2, 3):
        restore_threads(threads)
        assert_kernel_matches(case, np.float32)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", [ops, reference], ids=["ops", "reference"])
def test_inference_forward_equals_training_forward(backend, cell):
    case = make_case((5, 3, 4, 9), np.float64, cell=cell)
    for a, b in zip(run(backend, case)[0], run(backend, case, training=False)[0]):
        np.testing.assert_array_equal(a, b)


# -- the reference against first principles -----------------------------------------------------
def _ln(v):
    return (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-5)


def test_reference_first_step_is_the_equations():
    case = make_case((1, 2, 3, 4), np.float64, lengths=False)
    x, (h0, c0), (w_ih, w_hh, b_ih, b_hh) = case["x"][0], case["states"], case["weights"]
    g_ih, g_hh, g_c, b_c = np.split(case["options"]["layer_norm"], [16, 32, 36])
    blocks = [slice(k * 4, (k + 1) * 4) for k in range(4)]
    ax, ah = x @ w_ih.T, h0 @ w_hh.T
    a = np.concatenate([g_ih[s] * _ln(ax[:, s]) + g_hh[s] * _ln(ah[:, s]) for s in blocks],
                       axis=-1) + b_ih + b_hh
    sig = 1 / (1 + np.exp(-a))
    c = sig[:, 4:8] * c0 + sig[:, :4] * np.tanh(a[:, 8:12])
    h = sig[:, 12:] * np.tanh(g_c * _ln(c) + b_c)
    (y, h_n, c_n), _ = run(reference, case, training=False)
    np.testing.assert_allclose(c_n, c, rtol=1e-13)
    np.testing.assert_allclose(h_n, h, rtol=1e-13)


def test_reference_gru_first_step_is_the_equations():
    case = make_case((1, 2, 3, 4), np.float64, cell="gru", lengths=False)
    x, (h0,), (w_ih, w_hh, b_ih, b_hh) = case["x"][0], case["states"], case["weights"]
    g_ih, g_hh = np.split(case["options"]["layer_norm"], 2)
    blocks = [slice(k * 4, (k + 1) * 4) for k in range(3)]
    px = np.concatenate([g_ih[s] * _ln((x @ w_ih.T)[:, s]) for s in blocks], -1) + b_ih
    ph = np.concatenate([g_hh[s] * _ln((h0 @ w_hh.T)[:, s]) for s in blocks], -1) + b_hh
    r, z = (1 / (1 + np.exp(-(px[:, s] + ph[:, s]))) for s in blocks[:2])
    n = np.tanh(px[:, 8:] + r * ph[:, 8:])
    (y, h_n), _ = run(reference, case, training=False)
    np.testing.assert_allclose(h_n, (1 - z) * n + z * h0, rtol=1e-13)


@pytest.mark.parametrize("variant", [{}, {"mask": True}, {"bias": False}],
                         ids=["plain", "recurrent-dropout", "no-bias"])
@pytest.mark.parametrize("cell", CELLS)
def test_reference_gradients_match_finite_differences(cell, variant):
    case = make_case((3, 3, 2, 4), np.float64, cell=cell, **variant)
    case["options"]["lengths"] = np.array([3, 1, 2])
    _, grads = run(reference, case)

    def loss():
        out, _ = run(reference, case, training=False)
        return sum(np.sum(o * u) for o, u in zip(out, case["upstream"]))

    wanted = {"dx": case["x"], "dlayer_norm": case["options"]["layer_norm"],
              **dict(zip(["dh0", "dc0"], case["states"])),
              **dict(zip(["dw_ih", "dw_hh", "db_ih", "db_hh"], case["weights"]))}
    for name, value in wanted.items():
        if value is None:
            assert getattr(grads, name) is None, name
            continue
        np.testing.assert_allclose(getattr(grads, name), numeric_grad(loss, value), rtol=1e-6,
                                   atol=1e-8, err_msg=name)


# -- the layer ----------------------------------------------------------------------------------
def test_layer_parameters_names_and_init():
    layer = LSTM(3, 4, num_layers=2, bidirectional=True, layer_norm=True)
    names = list(layer.state_dict())
    assert names[:8] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                         "ln_weight_ih_l0", "ln_weight_hh_l0", "ln_weight_c_l0", "ln_bias_c_l0"]
    np.testing.assert_array_equal(layer.ln_weight_hh_l1_reverse.value, np.ones(16))
    np.testing.assert_array_equal(layer.ln_bias_c_l0.value, np.zeros(4))
    assert "layer_norm=True" in repr(layer)


@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_layer_gradients_match_finite_differences(cls):
    """Every kind of parameter of a 2-layer bidirectional stack with lengths and recurrent
    dropout (masks fixed by reseeding), the norm gains moved off their init."""
    layer = cls(3, 4, num_layers=2, bidirectional=True, layer_norm=True, dtype=np.float64,
                seed=0, recurrent_dropout=0.3)
    rng = np.random.default_rng(1)
    for name, p in layer.named_parameters():
        if name.startswith("ln_"):
            p[...] = p.value + 0.3 * rng.standard_normal(p.shape)
    x, wy = rng.standard_normal((4, 2, 3)), rng.standard_normal((4, 2, 8))

    def loss():
        layer._rng = np.random.default_rng(7)
        y, _ = layer(x, lengths=[4, 2])
        return np.sum(y * wy)

    loss()
    layer.zero_grad()
    layer.backward(wy)
    names = ["ln_weight_ih_l0", "ln_weight_hh_l1_reverse", "weight_hh_l0_reverse", "bias_ih_l1"]
    if cls is LSTM:
        names += ["ln_weight_c_l1", "ln_bias_c_l0_reverse"]
    for name in names:
        p = getattr(layer, name)
        np.testing.assert_allclose(p.grad, numeric_grad(loss, p), rtol=1e-6, atol=1e-8,
                                   err_msg=name)


@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_layer_step_matches_forward(cls):
    layer = cls(3, 4, num_layers=2, layer_norm=True, dtype=np.float64, seed=0)
    x = np.random.default_rng(2).standard_normal((5, 2, 3))
    y, final = layer(x)
    state = None
    for t in range(5):
        out, state = layer.step(x[t], state)
        np.testing.assert_allclose(out, y[t], rtol=1e-12, atol=1e-14)
    for a, b in zip(np.atleast_1d(state), np.atleast_1d(final)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_gru_layer_names_and_reset_before_refused():
    layer = GRU(3, 4, layer_norm=True)
    assert list(layer.state_dict())[4:] == ["ln_weight_ih_l0", "ln_weight_hh_l0"]
    assert "layer_norm=True" in repr(layer)
    with pytest.raises(ValueError, match="layer_norm=True needs reset_after=True"):
        GRU(3, 4, layer_norm=True, reset_after=False)


@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_onnx_export_refuses_layer_norm(cls):
    pytest.importorskip("onnx", reason="fastrnn.onnx needs the onnx package")
    with pytest.raises(ValueError, match=r"layer_norm=True.*no layer normalisation"):
        fastrnn.onnx.export(cls(3, 4, layer_norm=True))


# -- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [{"peepholes": True}, {"proj_size": 2}])
def test_layer_norm_with_other_variants_raises(kwargs):
    with pytest.raises(ValueError, match="layer_norm=True cannot be combined with peepholes or "
                                         "proj_size"):
        LSTM(3, 4, layer_norm=True, **kwargs)


@pytest.mark.parametrize("backend", [ops, reference], ids=["ops", "reference"])
def test_bad_layer_norm_raises_naming_it(backend):
    case = make_case((2, 3, 4, 5), np.float64)
    case["options"]["layer_norm"] = np.ones(49)
    with pytest.raises(ValueError, match=r"layer_norm must have shape \(50,\), got \(49,\)"):
        run(backend, case)
    case["options"]["layer_norm"] = np.ones(50)
    case["options"]["peepholes"] = np.zeros(15)
    with pytest.raises(ValueError, match="layer_norm cannot be combined with peepholes"):
        run(backend, case)
