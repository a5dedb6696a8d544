"""LSTM with a projection, PyTorch's ``proj_size``: ``h_t = (o * tanh(c_t)) w_hrᵀ``.

The C kernels (every ISA variant, float32/float64, lengths, threads, with peepholes and
recurrent dropout too) against the NumPy reference; the reference against finite
differences; ``LSTM(proj_size=P)`` against ``torch.nn.LSTM(proj_size=P)`` (outputs, states,
every gradient; state_dict both ways) when torch is importable.
"""
from __future__ import annotations

import pathlib

import numpy as np
import pytest

import fastrnn
from fastrnn import LSTM, ProjectedLSTMGrads, ops, reference
from helpers import assert_runs_close, numeric_grad

SHAPES = [(1, 1, 1, 2, 1), (5, 3, 4, 7, 3), (3, 4, 5, 33, 17), (4, 2, 65, 65, 64),
          (3, 20, 5, 9, 4), (2, 40, 7, 33, 5),
          (110, 5, 3, 9, 4)]   # (T, B, I, H, P); the last: backward in two chunks of steps
TOLERANCE = {np.float32: 3e-5, np.float64: 1e-10}


def make_case(shape, dtype, *, lengths=True, bias=True, peepholes=False, mask=False, seed=0):
    T, B, I, H, P = shape
    rng = np.random.default_rng(seed)

    def rand(*s, scale=1.0):
        return (scale * rng.standard_normal(s)).astype(dtype)

    scale = 1 / np.sqrt(H)
    options = {"w_hr": rand(P, H, scale=scale), "lengths": None}
    if lengths:
        options["lengths"] = rng.integers(1, T + 1, size=B)
    if peepholes:
        options["peepholes"] = rand(3 * H, scale=0.5)
    if mask:
        options["recurrent_mask"] = ((rng.random((B, P)) >= 0.3) / 0.7).astype(dtype)
    return {
        "x": rand(T, B, I), "states": [rand(B, P), rand(B, H)],
        "weights": [rand(4 * H, I, scale=scale), rand(4 * H, P, scale=scale),
                    rand(4 * H, scale=scale) if bias else None,
                    rand(4 * H, scale=scale) if bias else None],
        "options": options,
        "upstream": [rand(T, B, P), rand(B, P), rand(B, H)],
    }


def run(backend, case, training=True):
    *out, cache = backend.lstm_forward(case["x"], *case["states"], *case["weights"],
                                       training=training, **case["options"])
    if not training:
        return out, None
    return out, backend.lstm_backward(*case["upstream"], cache)


def assert_all_close(got, want, dtype):
    assert isinstance(got[1], ProjectedLSTMGrads)
    assert_runs_close(got, want, dtype, TOLERANCE)


# -- kernels against the reference ------------------------------------------------------------
@pytest.mark.usefixtures("isa")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}P{}".format(*s))
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
def test_kernels_match_reference(shape, dtype, lengths):
    case = make_case(shape, dtype, lengths=lengths)
    assert_all_close(run(ops, case), run(reference, case), dtype)


@pytest.mark.parametrize("variant", [{"peepholes": True}, {"mask": True},
                                     {"peepholes": True, "mask": True, "bias": False}],
                         ids=["peepholes", "recurrent-dropout", "all-no-bias"])
@pytest.mark.parametrize("shape", [(4, 3, 5, 9, 4), (180, 3, 5, 9, 4)],
                         ids=["one-chunk", "two-chunks"])
def test_kernels_with_other_variants_match_reference(variant, shape):
    case = make_case(shape, np.float64, **variant)
    got, want = run(ops, case), run(reference, case)
    assert_all_close(got, want, np.float64)
    assert (got[1].dw_p is None) == ("peepholes" not in variant)


@pytest.mark.parametrize("shape", [(6, 2, 5, 65, 33), (4, 40, 7, 33, 9)],
                         ids=["units-split", "batch-split"])
def test_kernels_on_threads_match_reference(shape, restore_threads):
    case = make_case(shape, np.float32)
    want = run(reference, case)
    for threads in (1, 2, 3):
        restore_threads(threads)
        assert_all_close(run(ops, case), want, np.float32)


@pytest.mark.parametrize("backend", [ops, reference], ids=["ops", "reference"])
def test_inference_forward_equals_training_forward(backend):
    case = make_case((5, 3, 4, 9, 5), np.float64)
    for a, b in zip(run(backend, case)[0], run(backend, case, training=False)[0]):
        np.testing.assert_array_equal(a, b)


def test_identity_projection_is_plain_lstm():
    """w_hr = I (P = H, allowed in the functional API) computes the plain LSTM."""
    case = make_case((4, 3, 5, 6, 6), np.float64)
    case["options"]["w_hr"] = np.eye(6)
    out, grads = run(ops, case)
    opts = {k: v for k, v in case["options"].items() if k != "w_hr"}
    *plain, cache = ops.lstm_forward(case["x"], *case["states"], *case["weights"], **opts)
    plain_grads = ops.lstm_backward(*case["upstream"], cache)
    for a, b in zip(out, plain):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-14)
    for name, a, b in zip(plain_grads._fields, grads, plain_grads):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13, err_msg=name)


# -- the reference against finite differences ---------------------------------------------------
@pytest.mark.parametrize("peepholes", [False, True], ids=["plain", "peepholes"])
def test_reference_gradients_match_finite_differences(peepholes):
    case = make_case((3, 3, 2, 4, 3), np.float64, peepholes=peepholes)
    case["options"]["lengths"] = np.array([3, 1, 2])
    _, grads = run(reference, case)

    def loss():
        out, _ = run(reference, case, training=False)
        return sum(np.sum(o * u) for o, u in zip(out, case["upstream"]))

    wanted = {"dx": case["x"], "dh0": case["states"][0], "dc0": case["states"][1],
              "dw_hr": case["options"]["w_hr"],
              **dict(zip(["dw_ih", "dw_hh", "db_ih", "db_hh"], case["weights"]))}
    if peepholes:
        wanted["dw_p"] = case["options"]["peepholes"]
    for name, value in wanted.items():
        np.testing.assert_allclose(getattr(grads, name), numeric_grad(loss, value), rtol=1e-7,
                                   atol=1e-9, err_msg=name)


# -- PyTorch's numbers without torch: golden vectors (tests/golden/make_proj_golden.py) -----------
GOLDEN = pathlib.Path(__file__).resolve().parent / "golden" / "proj"


@pytest.mark.parametrize("backend", [ops, reference], ids=["ops", "reference"])
@pytest.mark.parametrize("case", ["basic", "lengths"])
def test_matches_torch_golden_vectors(backend, case):
    g = np.load(GOLDEN / f"lstm_proj_{case}.npz")
    lengths = g["lengths"] if "lengths" in g.files else None
    y, h_n, c_n, cache = backend.lstm_forward(g["x"], g["h0"], g["c0"], g["w_ih"], g["w_hh"],
                                              g["b_ih"], g["b_hh"], w_hr=g["w_hr"],
                                              lengths=lengths)
    grads = backend.lstm_backward(g["wy"], g["wh"], g["wc"], cache)
    for name, got in (("y", y), ("h_n", h_n), ("c_n", c_n)):
        np.testing.assert_allclose(got, g[name], rtol=1e-12, atol=1e-14, err_msg=name)
    for name in ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh", "dw_hr"):
        np.testing.assert_allclose(getattr(grads, name), g[name], rtol=1e-11, atol=1e-13,
                                   err_msg=name)


# -- the layer against torch --------------------------------------------------------------------
CONFIGS = [dict(num_layers=1), dict(num_layers=2, bidirectional=True),
           dict(num_layers=2, batch_first=True, bias=False),
           dict(num_layers=3, bidirectional=True, batch_first=True)]


def _pair(torch, dtype, I=4, H=7, P=3, **config):
    torch.manual_seed(0)
    theirs = torch.nn.LSTM(I, H, proj_size=P, **config).to(
        torch.float64 if dtype == np.float64 else torch.float32)
    ours = LSTM(I, H, proj_size=P, dtype=dtype, **config)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_layer_matches_torch(config, dtype, lengths):
    torch = pytest.importorskip("torch")
    ours, theirs = _pair(torch, dtype, **config)
    T, B, I, H, P = 5, 3, 4, 7, 3
    L, D = config["num_layers"], 2 if config.get("bidirectional") else 1
    rng = np.random.default_rng(1)
    bf = config.get("batch_first", False)
    x = rng.standard_normal((B, T, I) if bf else (T, B, I)).astype(dtype)
    h0, c0 = (rng.standard_normal((L * D, B, n)).astype(dtype) for n in (P, H))
    lens = np.array([5, 2, 4]) if lengths else None
    y, (h_n, c_n) = ours(x, (h0, c0), lengths=lens)

    xt = torch.tensor(x, requires_grad=True)
    h0t, c0t = (torch.tensor(a, requires_grad=True) for a in (h0, c0))
    inp = xt
    if lengths:
        inp = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lens), batch_first=bf,
                                                      enforce_sorted=False)
    yt, (ht, ct) = theirs(inp, (h0t, c0t))
    if lengths:
        yt, _ = torch.nn.utils.rnn.pad_packed_sequence(yt, batch_first=bf, total_length=T)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    assert y.shape == tuple(yt.shape) and h_n.shape == (L * D, B, P) and c_n.shape == (L * D, B, H)
    for a, b in ((y, yt), (h_n, ht), (c_n, ct)):
        np.testing.assert_allclose(a, b.detach().numpy(), **tol)

    wy, wh, wc = (rng.standard_normal(a.shape).astype(dtype) for a in (y, h_n, c_n))
    ((yt * torch.tensor(wy)).sum() + (ht * torch.tensor(wh)).sum()
     + (ct * torch.tensor(wc)).sum()).backward()
    dx = ours.backward(wy, wh, wc)
    np.testing.assert_allclose(dx, xt.grad.numpy(), **tol)
    np.testing.assert_allclose(ours.grad_h0, h0t.grad.numpy(), **tol)
    np.testing.assert_allclose(ours.grad_c0, c0t.grad.numpy(), **tol)
    for name, p in theirs.named_parameters():
        np.testing.assert_allclose(getattr(ours, name).grad, p.grad.numpy(), err_msg=name,
                                   **tol)


def test_state_dict_moves_both_ways_with_torch():
    torch = pytest.importorskip("torch")
    ours = LSTM(4, 7, num_layers=2, bidirectional=True, proj_size=3, dtype=np.float64, seed=2)
    theirs = torch.nn.LSTM(4, 7, num_layers=2, bidirectional=True, proj_size=3).double()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    x = np.random.default_rng(3).standard_normal((5, 2, 4))
    with torch.no_grad():
        yt, _ = theirs(torch.tensor(x))
    np.testing.assert_allclose(ours(x)[0], yt.numpy(), rtol=1e-12, atol=1e-14)


# -- the layer on its own -----------------------------------------------------------------------
def test_layer_shapes_names_and_repr():
    layer = LSTM(4, 7, num_layers=2, bidirectional=True, proj_size=3, peepholes=True)
    assert layer.weight_hh_l0.shape == (28, 3) and layer.weight_hr_l0.shape == (3, 7)
    assert layer.weight_ih_l1.shape == (28, 6) and layer.weight_p_l1_reverse.shape == (21,)
    names = list(layer.state_dict())
    assert names[:6] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                         "weight_hr_l0", "weight_p_l0"]
    assert "proj_size=3" in repr(layer)
    y, (h, c) = layer(np.zeros((5, 2, 4), np.float32))
    assert y.shape == (5, 2, 6) and h.shape == (4, 2, 3) and c.shape == (4, 2, 7)
    keras = LSTM(4, 7, proj_size=3, init="keras")
    assert np.abs(keras.weight_hr_l0.value).max() > 0


def test_layer_step_matches_forward_and_keeps_the_tape():
    layer = LSTM(4, 7, num_layers=2, proj_size=3, dtype=np.float64, seed=0,
                 recurrent_dropout=0.3)
    x = np.random.default_rng(4).standard_normal((5, 2, 4))
    layer.eval()
    y, (h_n, c_n) = layer(x)
    layer.train()
    y_train, _ = layer(x)                 # a tape with dropout masks, for the backward below
    state = None
    for t in range(5):
        out, state = layer.step(x[t], state)
        np.testing.assert_allclose(out, y[t], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(state[0], h_n, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(state[1], c_n, rtol=1e-12, atol=1e-14)
    assert layer.training
    dx = layer.backward(np.ones_like(y_train))
    assert dx.shape == x.shape


def test_layer_recurrent_dropout_masks_the_projected_state():
    layer = LSTM(4, 7, proj_size=3, recurrent_dropout=0.5, dtype=np.float64, seed=0)
    layer(np.zeros((2, 5, 4)))
    assert layer._tape.caches[0][0].options["recurrent_mask"].shape == (5, 3)


def test_onnx_export_refuses_proj_size():
    pytest.importorskip("onnx", reason="fastrnn.onnx needs the onnx package")
    with pytest.raises(ValueError, match=r"proj_size=3.*no output projection"):
        fastrnn.onnx.export(LSTM(4, 7, proj_size=3))


# -- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("value,error,match", [
    (7, ValueError, r"proj_size must be 0 \(no projection\) or in \[1, hidden_size=7\), got 7"),
    (-1, ValueError, r"got -1"),
    (2.0, TypeError, r"proj_size must be an int, got 2.0"),
])
def test_bad_proj_size_raises(value, error, match):
    with pytest.raises(error, match=match):
        LSTM(4, 7, proj_size=value)


@pytest.mark.parametrize("backend", [ops, reference], ids=["ops", "reference"])
def test_bad_projection_shapes_raise_naming_them(backend):
    case = make_case((2, 3, 4, 7, 3), np.float64)
    case["weights"][1] = np.zeros((28, 7))
    with pytest.raises(ValueError, match=r"w_hh must have shape \(28, 3\), got \(28, 7\)"):
        run(backend, case)
    case = make_case((2, 3, 4, 7, 3), np.float64)
    case["states"][0] = np.zeros((3, 7))
    with pytest.raises(ValueError, match=r"h0 must have shape \(3, 3\), got \(3, 7\)"):
        run(backend, case)
    case["options"]["w_hr"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"w_hr must have shape \(P, H\), got \(3,\)"):
        run(backend, case)
