"""Recurrent (variational) dropout, Keras semantics: one mask ``(B, H)`` per sequence, layer
and direction multiplies ``h_{t-1}`` where the recurrent product reads it, at every step.

The C kernels (every cell, ISA variant, dtype, lengths, threads) against the NumPy reference
with the same mask; the reference against finite differences; the mask constant over time
(a whole-sequence call equals single steps with the one mask); and the layers'
``recurrent_dropout=p``: masks drawn in train mode only, eval unchanged, gradients equal to
the reference's under the layer's own masks.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from fastrnn import GRU, LSTM, RNN, ops, reference
import test_ops_vs_reference as ops_vs_reference
from helpers import assert_runs_close, numeric_grad

CELLS = ops_vs_reference.CELLS  # name: (kernel prefix, gates, options)
SHAPES = [(1, 1, 1, 1), (5, 2, 7, 7), (3, 4, 5, 33), (4, 2, 65, 65), (3, 17, 5, 9),
          (2, 40, 7, 33),
          (110, 5, 3, 9)]   # backward in two chunks of steps (103 steps * 5 rows >= 512)
TOLERANCE = {np.float32: 3e-5, np.float64: 1e-10}
P = 0.4


def make_case(cell, shape, dtype, *, lengths=True, bias=True, seed=0):
    """test_ops_vs_reference's case (initial states given) and a dropout mask (B, H)."""
    case = ops_vs_reference.make_case(cell, shape, dtype, lengths=lengths, bias=bias,
                                      initial=True, seed=seed)
    rng = np.random.default_rng(seed + 1)
    case["mask"] = ((rng.random(case["states"][0].shape) >= P) / (1 - P)).astype(dtype)
    return case


def forward(backend, cell, case, training=True, **overrides):
    kernel, _, options = CELLS[cell]
    args = {"lengths": case["lengths"], "training": training,
            "recurrent_mask": case["mask"], **options, **overrides}
    return getattr(backend, f"{kernel}_forward")(case["x"], *case["states"], *case["weights"],
                                                 **args)


def run(backend, cell, case):
    *outputs, cache = forward(backend, cell, case)
    kernel = CELLS[cell][0]
    return outputs, getattr(backend, f"{kernel}_backward")(case["dy"], *case["d_states"], cache)


# -- kernels against the reference, the same mask ---------------------------------------------
@pytest.mark.usefixtures("isa")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
def test_kernels_match_reference(cell, shape, dtype, lengths):
    case = make_case(cell, shape, dtype, lengths=lengths)
    assert_runs_close(run(ops, cell, case), run(reference, cell, case), dtype, TOLERANCE)


@pytest.mark.parametrize("cell", CELLS)
def test_kernels_with_peepholes_and_without_bias(cell):
    case = make_case(cell, (4, 3, 5, 6), np.float64, bias=False)
    extra = {}
    if cell == "lstm":
        extra["peepholes"] = np.random.default_rng(4).standard_normal(18)
    want_out, want_grads = None, None
    for backend in (reference, ops):
        *out, cache = forward(backend, cell, case, **extra)
        grads = getattr(backend, f"{CELLS[cell][0]}_backward")(case["dy"], *case["d_states"],
                                                                cache)
        if want_out is None:
            want_out, want_grads = out, grads
    assert_runs_close((out, grads), (want_out, want_grads), np.float64, TOLERANCE)


@pytest.mark.parametrize("shape", [(6, 2, 5, 65), (4, 40, 7, 33)],
                         ids=["units-split", "batch-split"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "gru_reset_before", "rnn_tanh"])
def test_kernels_on_threads_match_reference(cell, shape, restore_threads):
    case = make_case(cell, shape, np.float32)
    want = run(reference, cell, case)
    for threads in (1, 2, 3):
        restore_threads(threads)
        assert_runs_close(run(ops, cell, case), want, np.float32, TOLERANCE)


@pytest.mark.parametrize("backend", [ops, reference], ids=["ops", "reference"])
@pytest.mark.parametrize("cell", CELLS)
def test_inference_forward_equals_training_forward(backend, cell):
    case = make_case(cell, (5, 3, 4, 9), np.float64)
    train = forward(backend, cell, case)[:-1]
    infer = forward(backend, cell, case, training=False)[:-1]
    for a, b in zip(train, infer):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", [ops, reference], ids=["ops", "reference"])
@pytest.mark.parametrize("cell", CELLS)
def test_mask_of_ones_is_no_dropout(backend, cell):
    case = make_case(cell, (4, 3, 5, 6), np.float64)
    case["mask"] = np.ones_like(case["mask"])
    with_mask = forward(backend, cell, case)[:-1]
    without = forward(backend, cell, case, recurrent_mask=None)[:-1]
    for a, b in zip(with_mask, without):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-15)


# -- the mask is constant over time and only in the recurrent product ---------------------------
@pytest.mark.parametrize("backend", [ops, reference], ids=["ops", "reference"])
@pytest.mark.parametrize("cell", CELLS)
def test_mask_is_the_same_at_every_step(backend, cell):
    """A whole-sequence call equals T single-step calls that each get the one mask."""
    case = make_case(cell, (6, 3, 4, 5), np.float64, lengths=False)
    y, *finals, _ = forward(backend, cell, case)
    states = list(case["states"])
    for t in range(6):
        step = dict(case, x=case["x"][t:t + 1], states=states)
        y_t, *states, _ = forward(backend, cell, step, training=False)
        np.testing.assert_allclose(y_t[0], y[t], rtol=1e-12, atol=1e-14)
    for a, b in zip(states, finals):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", [ops, reference], ids=["ops", "reference"])
def test_zero_mask_cuts_the_recurrence_not_the_state(backend):
    """With an all-zero mask a GRU's gates see no h_{t-1}, but its update still carries
    h_{t-1}: h_t = (1 - z) n + z h_{t-1} with r, z, n from the input alone."""
    case = make_case("gru", (3, 2, 4, 5), np.float64, lengths=False)
    case["mask"] = np.zeros_like(case["mask"])
    y, h_n, _ = forward(backend, "gru", case)
    w_ih, w_hh, b_ih, b_hh = case["weights"]
    h = case["states"][0]
    for t in range(3):
        a = case["x"][t] @ w_ih.T + b_ih
        r, z, n_in = np.split(a, 3, axis=-1)
        r, z = 1 / (1 + np.exp(-(r + b_hh[:5]))), 1 / (1 + np.exp(-(z + b_hh[5:10])))
        n = np.tanh(n_in + r * b_hh[10:])
        h = (1 - z) * n + z * h
        np.testing.assert_allclose(y[t], h, rtol=1e-12)
    np.testing.assert_allclose(h_n, h, rtol=1e-12)


# -- the reference against finite differences ---------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
def test_reference_gradients_match_finite_differences(cell):
    case = make_case(cell, (3, 3, 2, 3), np.float64)
    case["lengths"] = np.array([3, 1, 2])
    if cell == "rnn_relu":   # keep every relu pre-activation away from the kink
        case["weights"] = [w * 0.3 if w is not None else None for w in case["weights"]]
    _, grads = run(reference, cell, case)
    kernel = CELLS[cell][0]

    def loss():
        y, *finals, _ = forward(reference, cell, case, training=False)
        return np.sum(y * case["dy"]) + sum(np.sum(f * d)
                                            for f, d in zip(finals, case["d_states"]))

    names = ["dh0", "dc0"][:len(case["states"])]
    wanted = dict(zip(names, case["states"]))
    wanted.update(dx=case["x"], **dict(zip(["dw_ih", "dw_hh", "db_ih", "db_hh"],
                                           case["weights"])))
    for name, value in wanted.items():
        np.testing.assert_allclose(getattr(grads, name), numeric_grad(loss, value), rtol=1e-6,
                                   atol=1e-8, err_msg=f"{kernel} {name}")


# -- the layers ---------------------------------------------------------------------------------
LAYERS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}


def _layer(kind, p=P, **kwargs):
    options = dict(num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    options.update(kwargs)
    return LAYERS[kind](3, 5, recurrent_dropout=p, **options)


def _tape_masks(layer):
    return [[cache.options["recurrent_mask"] for cache in caches] for caches in layer._tape.caches]


@pytest.mark.parametrize("kind", LAYERS)
def test_layer_masks_train_only_fresh_per_call_and_per_direction(kind):
    layer = _layer(kind)
    x = np.random.default_rng(1).standard_normal((4, 60, 3))
    layer(x)
    first = _tape_masks(layer)
    flat = [m for caches in first for m in caches]
    assert all(m.shape == (60, 5) and m.dtype == np.float64 for m in flat)
    values = np.unique(np.concatenate([m.ravel() for m in flat]))
    np.testing.assert_allclose(values, [0, 1 / (1 - P)])
    dropped = np.mean(np.concatenate([m.ravel() for m in flat]) == 0)
    assert abs(dropped - P) < 0.05
    assert not np.array_equal(flat[0], flat[1]) and not np.array_equal(flat[0], flat[2])
    layer(x)
    assert not np.array_equal(_tape_masks(layer)[0][0], first[0][0])
    layer.eval()
    layer(x)
    assert all(m is None for caches in _tape_masks(layer) for m in caches)


@pytest.mark.parametrize("kind", LAYERS)
def test_layer_eval_equals_module_without_recurrent_dropout(kind):
    layer = _layer(kind)
    plain = _layer(kind, p=0.0, seed=9)
    plain.load_state_dict(layer.state_dict())
    x = np.random.default_rng(2).standard_normal((5, 3, 3))
    y_train, _ = layer(x, lengths=[5, 2, 4])
    layer.eval()
    y_eval, h_eval = layer(x, lengths=[5, 2, 4])
    y_plain, h_plain = plain(x, lengths=[5, 2, 4])
    np.testing.assert_array_equal(y_eval, y_plain)
    for a, b in zip(np.atleast_1d(h_eval), np.atleast_1d(h_plain)):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(y_train, y_eval)


@pytest.mark.parametrize("kind", LAYERS)
def test_layer_step_runs_without_dropout(kind):
    layer = _layer(kind, bidirectional=False)
    x = np.random.default_rng(3).standard_normal((4, 2, 3))
    layer.eval()
    y, _ = layer(x)
    layer.train()
    state = None
    for t in range(4):
        out, state = layer.step(x[t], state)
        np.testing.assert_allclose(out, y[t], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", LAYERS)
def test_layer_gradients_equal_reference_with_its_mask(kind):
    """One layer: y and every gradient equal the reference's under the mask the layer drew."""
    layer = LAYERS[kind](3, 5, recurrent_dropout=P, dtype=np.float64, seed=0)
    rng = np.random.default_rng(4)
    x, lengths = rng.standard_normal((4, 3, 3)), np.array([4, 1, 3])
    y, _ = layer(x, lengths=lengths)
    mask = _tape_masks(layer)[0][0]
    dy = rng.standard_normal(y.shape)
    layer.zero_grad()
    layer.backward(dy)
    weights = [getattr(layer, f"{k}_l0").value for k in
               ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    states = [None] * (2 if kind == "lstm" else 1)
    *out, cache = getattr(reference, f"{kind}_forward")(x, *states, *weights, lengths=lengths,
                                                        recurrent_mask=mask)
    grads = getattr(reference, f"{kind}_backward")(dy, *[None] * len(states), cache)
    np.testing.assert_allclose(y, out[0], rtol=1e-12, atol=1e-14)
    for k, g in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), grads[-4:]):
        np.testing.assert_allclose(getattr(layer, f"{k}_l0").grad, g, rtol=1e-10, atol=1e-12,
                                   err_msg=k)


def test_layer_stack_gradients_match_finite_differences():
    """A 2-layer bidirectional LSTM with recurrent dropout, the masks fixed by reseeding."""
    layer = _layer("lstm", bias=False)
    rng = np.random.default_rng(5)
    x, wy = rng.standard_normal((4, 2, 3)), rng.standard_normal((4, 2, 10))

    def loss():
        layer._rng = np.random.default_rng(7)    # the same masks at every call
        y, _ = layer(x, lengths=[4, 3])
        return np.sum(y * wy)

    loss()
    layer.zero_grad()
    layer.backward(wy)
    for name in ("weight_hh_l0", "weight_hh_l1_reverse", "weight_ih_l1"):
        p = getattr(layer, name)
        np.testing.assert_allclose(p.grad, numeric_grad(loss, p), rtol=1e-6, atol=1e-8,
                                   err_msg=name)


def test_onnx_export_is_the_eval_module():
    """ONNX graphs are inference graphs: recurrent dropout (training only) leaves them as
    the eval module computes."""
    pytest.importorskip("onnx", reason="fastrnn.onnx needs the onnx package")
    layer = _layer("lstm", dtype=np.float32)
    layer.eval()
    x = np.random.default_rng(6).standard_normal((4, 2, 3)).astype(np.float32)
    y, (h_n, c_n) = layer(x)
    got = fastrnn.onnx.load(fastrnn.onnx.export(layer)).run({"x": x})
    np.testing.assert_allclose(got["y"], y, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got["h_n"], h_n, rtol=1e-6, atol=1e-7)


# -- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [1.0, -0.1, "0.2", True])
def test_bad_recurrent_dropout_raises(value):
    with pytest.raises(ValueError, match=r"recurrent_dropout must be a number in \[0, 1\)"):
        LSTM(3, 4, recurrent_dropout=value)


@pytest.mark.parametrize("backend", [ops, reference], ids=["ops", "reference"])
def test_bad_mask_raises_naming_it(backend):
    case = make_case("lstm", (2, 3, 4, 5), np.float64)
    case["mask"] = np.ones((3, 4))
    with pytest.raises(ValueError, match=r"recurrent_mask must have shape \(3, 5\), got \(3, 4\)"):
        run(backend, "lstm", case)
    case["mask"] = np.ones((3, 5), np.float32)
    with pytest.raises(ValueError, match="recurrent_mask must have the dtype of x"):
        run(backend, "lstm", case)
