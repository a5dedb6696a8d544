"""The layers ``fastrnn.nn.recurrent.RNN / LSTM / GRU`` against PyTorch and themselves.

* Live parity with torch (when importable) over random configurations: cell, 1-3 layers,
  bidirectional, batch_first, lengths (packed sequences), bias, initial states, float32 and
  float64; outputs, final states and every gradient (x, initial states, all parameters).
* Golden vectors from ``tests/golden/make_layer_golden.py`` (in ``tests/golden/layers/``) so
  the same parity is checked without torch.
* Dropout (eval ignores it; training backward against finite differences), state_dict with
  torch, init='keras', GRU reset_after=False against the NumPy reference, step() against
  forward(), and the errors for bad arguments.

The loss is ``sum(y * wy) + sum(h_n * wh) (+ sum(c_n * wc))``, so the upstream gradients
are ``dy = wy``, ``dh_n = wh``, ``dc_n = wc``.
"""
from __future__ import annotations

import pathlib

import numpy as np
import pytest

import fastrnn
from fastrnn import reference
from fastrnn.nn.recurrent import GRU, LSTM, RNN
from helpers import load_script

GOLDEN_DIR = pathlib.Path(__file__).resolve().parent / "golden"
LAYER_GOLDEN_FILES = sorted((GOLDEN_DIR / "layers").glob("*.npz"))
RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}
DTYPES = (np.float64, np.float32)
CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")


golden = load_script(GOLDEN_DIR / "make_layer_golden.py", "fastrnn_make_layer_golden")


# --------------------------------------------------------------------------- helpers

def build(cell: str, dtype=np.float64, **kwargs):
    """A fastrnn module for ``cell`` ('rnn_tanh', 'rnn_relu', 'lstm', 'gru', 'gru_before')."""
    kwargs.setdefault("seed", 0)
    if cell.startswith("rnn"):
        return RNN(nonlinearity=cell[4:], dtype=dtype, **kwargs)
    if cell == "gru_before":
        return GRU(reset_after=False, dtype=dtype, **kwargs)
    return {"lstm": LSTM, "gru": GRU}[cell](dtype=dtype, **kwargs)


def run_fastrnn(module, arrays: dict) -> dict:
    """Training forward + backward with the loss above; the keys of ``torch_run_layers``."""
    module.train()
    module.zero_grad()
    lstm = isinstance(module, LSTM)
    h0 = arrays.get("h0")
    state = ((h0, arrays.get("c0")) if h0 is not None else None) if lstm else h0
    y, hidden = module(arrays["x"], state, lengths=arrays.get("lengths"))
    out = {"y": y}
    if lstm:
        out["h_n"], out["c_n"] = hidden
        out["dx"] = module.backward(arrays["wy"], arrays["wh"], arrays["wc"])
        out["dc0"] = module.grad_c0
    else:
        out["h_n"] = hidden
        out["dx"] = module.backward(arrays["wy"], arrays["wh"])
    out["dh0"] = module.grad_h0
    for name, p in module.named_parameters():
        out["grad." + name] = p.grad.copy()
    return out


def rel_error(actual, expected) -> float:
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"shape {actual.shape}, expected {expected.shape}"
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1.0e-30)
    if not np.any(expected):
        scale = 1.0
    return float(np.max(np.abs(actual - expected), initial=0.0)) / scale


def assert_close(actual, expected, dtype, what: str) -> float:
    """Fail unless max |actual - expected| <= rtol * max |expected|; returns the error."""
    assert np.asarray(actual).dtype == np.dtype(dtype), f"{what}: dtype {np.asarray(actual).dtype}"
    error = rel_error(actual, expected)
    assert error <= RTOL[np.dtype(dtype)], f"{what}: relative error {error:.3g}"
    return error


def assert_results_close(actual: dict, expected: dict, dtype, what: str) -> dict:
    """Compare every key torch produced; returns {key: relative error}."""
    return {key: assert_close(actual[key], value, dtype, f"{what} {key}")
            for key, value in expected.items()}


def cast(arrays: dict, dtype) -> dict:
    return {k: (v if k == "lengths" else np.asarray(v, dtype)) for k, v in arrays.items()}


def random_config(seed: int):
    """(cell, config, T, B, lengths, with_states) for one live-parity case."""
    rng = np.random.default_rng(1000 + seed)
    cell = CELLS[seed % len(CELLS)]
    T, B = int(rng.integers(1, 7)), int(rng.integers(1, 5))
    config = dict(input_size=int(rng.integers(1, 6)), hidden_size=int(rng.integers(1, 7)),
                  num_layers=int(rng.integers(1, 4)), bias=bool(rng.random() < 0.8),
                  batch_first=bool(rng.integers(2)), bidirectional=bool(rng.integers(2)))
    lengths = rng.integers(1, T + 1, B).tolist() if rng.random() < 0.6 else None
    return cell, config, T, B, lengths, bool(rng.random() < 0.7)


# --------------------------------------------------------------------------- live torch parity

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("seed", range(24))
def test_live_torch_parity(seed, dtype):
    pytest.importorskip("torch")
    cell, config, T, B, lengths, with_states = random_config(seed)
    module = build(cell, dtype, seed=seed, **config)
    arrays = cast(golden.make_arrays(cell, config, T, B, lengths, with_states,
                                     np.random.default_rng(seed)), dtype)
    expected = golden.torch_run_layers(cell, config, module.state_dict(), arrays)
    actual = run_fastrnn(module, arrays)
    assert_results_close(actual, expected, dtype, f"{cell} {config} T={T} B={B} {lengths}")


@pytest.mark.parametrize("cell", CELLS)
def test_live_torch_parity_fixed_hard_case(cell):
    """3 layers, bidirectional, batch_first, lengths including 1 and T, in float32."""
    pytest.importorskip("torch")
    config = dict(input_size=5, hidden_size=7, num_layers=3, bias=True, batch_first=True,
                  bidirectional=True)
    module = build(cell, np.float32, **config)
    arrays = cast(golden.make_arrays(cell, config, 6, 4, [6, 1, 3, 6], True,
                                     np.random.default_rng(5)), np.float32)
    expected = golden.torch_run_layers(cell, config, module.state_dict(), arrays)
    assert_results_close(run_fastrnn(module, arrays), expected, np.float32, cell)


def test_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    module = build("lstm", np.float32, input_size=3, hidden_size=4, num_layers=2)
    reference_module = torch.nn.LSTM(3, 4, 2)
    module.load_state_dict(reference_module.state_dict())      # tensors, directly
    x = torch.randn(5, 2, 3)
    h0, c0 = torch.randn(2, 2, 4), torch.randn(2, 2, 4)
    y, (h_n, c_n) = module(x, (h0, c0), lengths=torch.tensor([5, 3]))
    with torch.no_grad():
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 3]),
                                                         enforce_sorted=False)
        y_t, (h_t, c_t) = reference_module(packed, (h0, c0))
        y_t, _ = torch.nn.utils.rnn.pad_packed_sequence(y_t, total_length=5)
    for ours, theirs in ((y, y_t), (h_n, h_t), (c_n, c_t)):
        assert_close(ours, theirs.numpy(), np.float32, "torch tensors")


def test_eval_mode_ignores_dropout_like_torch():
    torch = pytest.importorskip("torch")
    config = dict(input_size=3, hidden_size=4, num_layers=3, bias=True, batch_first=False,
                  bidirectional=True)
    module = build("gru", np.float64, dropout=0.5, **config).eval()
    reference_module = torch.nn.GRU(dropout=0.5, **config).double().eval()
    reference_module.load_state_dict({k: torch.from_numpy(v)
                                      for k, v in module.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    with torch.no_grad():
        y_t, h_t = reference_module(torch.from_numpy(x))
    y, h_n = module(x)
    assert_close(y, y_t.numpy(), np.float64, "eval y")
    assert_close(h_n, h_t.numpy(), np.float64, "eval h_n")


# --------------------------------------------------------------------------- golden vectors

def load_layer_golden(path):
    data = np.load(path)
    cell = str(data["cell"])
    config = {key: data[f"config.{key}"].item() for key in golden.CONFIG_KEYS}
    params = {k[len("param."):]: data[k] for k in data.files if k.startswith("param.")}
    arrays = {k: data[k] for k in ("x", "h0", "c0", "lengths", "wy", "wh", "wc")
              if k in data.files}
    results = {k: data[k] for k in data.files
               if k in ("y", "h_n", "c_n", "dx", "dh0", "dc0") or k.startswith("grad.")}
    return cell, config, params, arrays, results


def test_layer_golden_files_match_case_list():
    assert sorted(p.stem for p in LAYER_GOLDEN_FILES) == sorted(golden.CASES), (
        "tests/golden/layers is out of date: rerun `python tests/golden/make_layer_golden.py`")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("path", LAYER_GOLDEN_FILES, ids=lambda p: p.stem)
def test_layer_golden(path, dtype):
    cell, config, params, arrays, expected = load_layer_golden(path)
    module = build(cell, dtype, **config)
    module.load_state_dict(params)
    assert list(module.state_dict()) == list(params), "parameter names/order differ from torch"
    assert_results_close(run_fastrnn(module, cast(arrays, dtype)), expected, dtype, path.stem)


# --------------------------------------------------------------------------- dropout

def test_dropout_active_only_in_training():
    module = build("lstm", np.float64, input_size=3, hidden_size=4, num_layers=2, dropout=0.5)
    plain = build("lstm", np.float64, input_size=3, hidden_size=4, num_layers=2)
    plain.load_state_dict(module.state_dict())
    x = np.random.default_rng(1).standard_normal((5, 2, 3))
    y_eval, _ = module.eval()(x)
    np.testing.assert_array_equal(y_eval, plain.eval()(x)[0])
    y_train, _ = module.train()(x)
    assert not np.allclose(y_train, y_eval), "training mode must apply dropout"
    mask = module._tape.masks[1]
    assert module._tape.masks[0] is None, "no dropout on the input of the first layer"
    assert set(np.unique(mask)) <= {0.0, 2.0} and 0 < np.count_nonzero(mask) < mask.size


def _fd_loss(module, x, weights, seed):
    """The loss with the dropout masks drawn from a fixed RNG state (same masks each call)."""
    module._rng = np.random.default_rng(seed)
    y, (h_n, c_n) = module(x)
    return np.sum(y * weights[0]) + np.sum(h_n * weights[1]) + np.sum(c_n * weights[2])


def test_dropout_backward_matches_finite_differences():
    module = build("lstm", np.float64, input_size=2, hidden_size=3, num_layers=3,
                   bidirectional=True, dropout=0.4, seed=3)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 2, 2))
    weights = (rng.standard_normal((4, 2, 6)), rng.standard_normal((6, 2, 3)),
               rng.standard_normal((6, 2, 3)))
    module.train()
    _fd_loss(module, x, weights, seed=9)
    dx = module.backward(*weights)
    numeric = {"dx": (x, dx)}
    for name in ("weight_ih_l1", "weight_hh_l0_reverse", "bias_ih_l2"):
        numeric[name] = (getattr(module, name), getattr(module, name).grad)
    eps = 1e-6
    for what, (value, analytic) in numeric.items():
        fd = np.zeros(value.shape)
        for index in np.ndindex(value.shape):
            saved = value[index]
            value[index] = saved + eps
            plus = _fd_loss(module, x, weights, seed=9)
            value[index] = saved - eps
            minus = _fd_loss(module, x, weights, seed=9)
            value[index] = saved
            fd[index] = (plus - minus) / (2 * eps)
        assert rel_error(analytic, fd) < 1e-7, what


# --------------------------------------------------------------------------- backward details

def test_gradients_accumulate_and_zero_grad_resets():
    module = build("gru", np.float64, input_size=3, hidden_size=4, num_layers=2)
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    dy = np.ones((4, 2, 4))
    module(x)
    module.backward(dy)
    once = {name: p.grad.copy() for name, p in module.named_parameters()}
    module(x)
    module.backward(dy)
    for name, p in module.named_parameters():
        np.testing.assert_allclose(p.grad, 2 * once[name], rtol=1e-12, err_msg=name)
    module.zero_grad()
    assert all(not np.any(p.grad) for p in module.parameters())


def test_backward_none_upstream_is_zero():
    module = build("lstm", np.float64, input_size=3, hidden_size=4, bidirectional=True)
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    module(x)
    dx = module.backward(None)
    assert not np.any(dx) and not np.any(module.grad_h0) and not np.any(module.grad_c0)
    assert module.grad_h0.shape == (2, 2, 4)


def test_unbatched_equals_batch_of_one():
    module = build("lstm", np.float64, input_size=3, hidden_size=4, num_layers=2,
                   bidirectional=True, batch_first=True)
    rng = np.random.default_rng(0)
    x, h0, c0 = (rng.standard_normal(shape) for shape in ((5, 3), (4, 4), (4, 4)))
    dy = rng.standard_normal((5, 8))
    y, (h_n, c_n) = module(x, (h0, c0))
    dx = module.backward(dy, h_n, c_n)
    grad_h0 = module.grad_h0
    y1, (h1, c1) = module(x[None], (h0[:, None], c0[:, None]))   # batch_first: (1, T, I)
    dx1 = module.backward(dy[None], h1, c1)
    assert y.shape == (5, 8) and h_n.shape == (4, 4) and dx.shape == (5, 3)
    for a, b in ((y, y1[0]), (h_n, h1[:, 0]), (c_n, c1[:, 0]), (dx, dx1[0]),
                 (grad_h0, module.grad_h0[:, 0])):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_full_lengths_equal_no_lengths():
    module = build("gru", np.float64, input_size=3, hidden_size=4, num_layers=2,
                   bidirectional=True)
    x = np.random.default_rng(0).standard_normal((4, 3, 3))
    y, h_n = module(x)
    y_l, h_l = module(x, lengths=[4, 4, 4])
    np.testing.assert_allclose(y_l, y, rtol=1e-13)
    np.testing.assert_allclose(h_l, h_n, rtol=1e-13)


# --------------------------------------------------------------------------- state_dict

def test_state_dict_round_trip_with_torch():
    torch = pytest.importorskip("torch")
    for source in (torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True),
                   torch.nn.GRU(4, 3, num_layers=3, bias=False),
                   torch.nn.RNN(2, 3, nonlinearity="relu", bidirectional=True)):
        cls = {torch.nn.LSTM: LSTM, torch.nn.GRU: GRU, torch.nn.RNN: RNN}[type(source)]
        kwargs = dict(num_layers=source.num_layers, bias=source.bias,
                      bidirectional=source.bidirectional)
        module = cls(source.input_size, source.hidden_size, **kwargs)
        module.load_state_dict(source.state_dict())
        assert list(module.state_dict()) == list(source.state_dict())
        target = type(source)(source.input_size, source.hidden_size, **kwargs)
        target.load_state_dict({k: torch.from_numpy(v) for k, v in module.state_dict().items()})
        for name, value in source.state_dict().items():
            assert torch.equal(target.state_dict()[name], value), name


def test_parameter_names_follow_torch_order():
    module = build("lstm", input_size=3, hidden_size=2, num_layers=2, bidirectional=True)
    names = [name for name, _ in module.named_parameters()]
    assert names[:8] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                         "weight_ih_l0_reverse", "weight_hh_l0_reverse", "bias_ih_l0_reverse",
                         "bias_hh_l0_reverse"]
    assert module.weight_ih_l1.shape == (8, 4) and module.weight_hh_l1_reverse.shape == (8, 2)
    no_bias = build("gru", input_size=3, hidden_size=2, bias=False)
    assert [n for n, _ in no_bias.named_parameters()] == ["weight_ih_l0", "weight_hh_l0"]


@pytest.mark.parametrize("change, error, key", [
    (lambda sd: sd.pop("bias_hh_l1_reverse"), KeyError, "bias_hh_l1_reverse"),
    (lambda sd: sd.update(weight_ih_l2=np.zeros((12, 6))), KeyError, "weight_ih_l2"),
    (lambda sd: sd.update(weight_hh_l0=np.zeros((12, 4))), ValueError, "weight_hh_l0"),
])
def test_load_state_dict_errors_name_the_key(change, error, key):
    module = build("gru", input_size=3, hidden_size=3, num_layers=2, bidirectional=True)
    before = module.state_dict()
    state = module.state_dict()
    state = {k: v + 1 for k, v in state.items()}
    change(state)
    with pytest.raises(error, match=key):
        module.load_state_dict(state)
    for name, value in module.state_dict().items():      # nothing was written
        np.testing.assert_array_equal(value, before[name])


# --------------------------------------------------------------------------- initialisation

@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_keras_init(cell):
    module = build(cell, input_size=5, hidden_size=4, num_layers=2, bidirectional=True,
                   init="keras", seed=1)
    H, G = 4, module._gates
    for name, p in module.named_parameters():
        w = p.value
        if name.startswith("weight_hh"):
            # Keras' recurrent kernel (H, G*H) = w.T has orthonormal rows.
            np.testing.assert_allclose(w.T @ w, np.eye(H), atol=1e-12, err_msg=name)
        elif name.startswith("weight_ih"):
            limit = np.sqrt(6.0 / (w.shape[1] + G * H))
            assert np.max(np.abs(w)) <= limit and np.max(np.abs(w)) > 0.5 * limit, name
        elif name.startswith("bias_ih") and cell == "lstm":
            expected = np.zeros(4 * H)
            expected[H:2 * H] = 1.0                       # forget gate
            np.testing.assert_array_equal(w, expected, err_msg=name)
        else:
            assert not np.any(w), name


def test_pytorch_init_and_seeds():
    a = build("lstm", np.float32, input_size=3, hidden_size=16, num_layers=2, seed=7)
    b = build("lstm", np.float32, input_size=3, hidden_size=16, num_layers=2,
              seed=np.random.default_rng(7))
    c = build("lstm", np.float32, input_size=3, hidden_size=16, num_layers=2, seed=8)
    for (name, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert p.dtype == np.float32 and np.max(np.abs(p.value)) <= 0.25, name
        np.testing.assert_array_equal(p.value, q.value)
        assert not np.array_equal(p.value, r.value)


# --------------------------------------------------------------------------- GRU reset_after=False

def test_gru_reset_before_against_reference():
    rng = np.random.default_rng(2)
    module = build("gru_before", input_size=3, hidden_size=4, bidirectional=True)
    x, h0 = rng.standard_normal((5, 2, 3)), rng.standard_normal((2, 2, 4))
    dy, dh_n = rng.standard_normal((5, 2, 8)), rng.standard_normal((2, 2, 4))
    y, h_n = module(x, h0)
    dx = module.backward(dy, dh_n)
    for d, (flip, suffix) in enumerate(((slice(None), ""), (slice(None, None, -1), "_reverse"))):
        weights = [getattr(module, f"{kind}_l0{suffix}").value
                   for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        y_r, h_r, cache = reference.gru_forward(x[flip], h0[d], *weights, reset_after=False)
        part = slice(4 * d, 4 * d + 4)
        np.testing.assert_allclose(y[:, :, part], y_r[flip], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(h_n[d], h_r, rtol=1e-12, atol=1e-14)
        grads = reference.gru_backward(dy[flip][:, :, part], dh_n[d], cache)
        np.testing.assert_allclose(module.grad_h0[d], grads.dh0, rtol=1e-10, atol=1e-13)
        for kind, g in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), grads[2:]):
            np.testing.assert_allclose(getattr(module, f"{kind}_l0{suffix}").grad, g,
                                       rtol=1e-10, atol=1e-13)
        dx = dx - grads.dx[flip]
    np.testing.assert_allclose(dx, 0, atol=1e-13)


# --------------------------------------------------------------------------- streaming

@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "lstm", "gru", "gru_before"])
def test_step_equals_forward(cell):
    module = build(cell, input_size=3, hidden_size=5, num_layers=3, dropout=0.3).eval()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 2, 3))
    states = [rng.standard_normal((3, 2, 5)) for _ in range(2)]
    initial = tuple(states) if cell == "lstm" else states[0]
    y, final = module(x, initial)
    state = initial
    for t in range(6):
        out, state = module.step(x[t], state)
        np.testing.assert_allclose(out, y[t], rtol=1e-12, atol=1e-14)
    pairs = zip(state, final) if cell == "lstm" else [(state, final)]
    for ours, theirs in pairs:
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)
    out0, state0 = module.step(x[0])                      # state None = zeros
    np.testing.assert_allclose(out0, module(x[:1])[0][0], rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- errors

BAD_CONSTRUCTORS = [
    (dict(input_size=0, hidden_size=3), ValueError, "input_size"),
    (dict(input_size=3, hidden_size=2.5), TypeError, "hidden_size"),
    (dict(input_size=3, hidden_size=3, num_layers=0), ValueError, "num_layers"),
    (dict(input_size=3, hidden_size=3, dropout=1.5), ValueError, "dropout"),
    (dict(input_size=3, hidden_size=3, bidirectional="yes"), TypeError, "bidirectional"),
    (dict(input_size=3, hidden_size=3, batch_first=1), TypeError, "batch_first"),
    (dict(input_size=3, hidden_size=3, dtype=np.int32), TypeError, "dtype"),
    (dict(input_size=3, hidden_size=3, init="xavier"), ValueError, "init"),
    (dict(input_size=3, hidden_size=3, seed="a"), TypeError, "seed"),
]


@pytest.mark.parametrize("kwargs, error, match", BAD_CONSTRUCTORS)
def test_bad_constructor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        LSTM(**kwargs)


def test_bad_cell_specific_arguments():
    with pytest.raises(ValueError, match="nonlinearity"):
        RNN(3, 3, nonlinearity="sigmoid")
    with pytest.raises(TypeError, match="reset_after"):
        GRU(3, 3, reset_after=None)
    with pytest.warns(UserWarning, match="dropout"):
        GRU(3, 3, dropout=0.5)


def _lstm():
    return build("lstm", input_size=3, hidden_size=4, num_layers=2)


def _forward_no_grad(module, x):
    with fastrnn.no_grad():
        return module(x)


X = np.zeros((5, 2, 3))
BAD_CALLS = [
    (lambda m: m(X.astype(np.float32)), ValueError, "x must have the module's dtype float64"),
    (lambda m: m(np.zeros((5, 2, 4))), ValueError, "input_size=3"),
    (lambda m: m(np.zeros((5, 2, 1, 3))), ValueError, "x must have 3 dimensions"),
    (lambda m: m(X, np.zeros((2, 2, 4))), TypeError, r"pair \(h0, c0\)"),
    (lambda m: m(X, (np.zeros((1, 2, 4)), None)), ValueError, r"h0 must have shape \(2, 2, 4\)"),
    (lambda m: m(X, (None, np.zeros((2, 2, 4), np.float32))), ValueError, "c0"),
    (lambda m: m(X, lengths=[0, 5]), ValueError, "lengths"),
    (lambda m: m(X, lengths=[1, 2, 3]), ValueError, "lengths"),
    (lambda m: m(X[:, 0], lengths=[3]), ValueError, "unbatched"),
    (lambda m: m.backward(np.zeros((5, 2, 4))), RuntimeError, "forward with grad enabled"),
    (lambda m: (m(X), m.backward(np.zeros((5, 2, 3)))), ValueError,
     r"dy must have shape \(5, 2, 4\)"),
    (lambda m: (m(X), m.backward(None, np.zeros((2, 4)))), ValueError, "dh_n"),
    (lambda m: (_forward_no_grad(m, X), m.backward(None)), RuntimeError,
     r"grad disabled \(inside fastrnn.no_grad\(\)"),
    (lambda m: (m(X), m.backward(None), m.backward(None)), RuntimeError, "one backward"),
    (lambda m: m.step(X), ValueError, "x_t must have shape"),
    (lambda m: m.step(X[0], (np.zeros((2, 4)), None)), ValueError, "state h"),
]


@pytest.mark.parametrize("call, error, match", BAD_CALLS)
def test_bad_call_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call(_lstm())


def test_step_rejects_bidirectional():
    with pytest.raises(ValueError, match="unidirectional"):
        build("gru", input_size=3, hidden_size=4, bidirectional=True).step(np.zeros((1, 3)))


def test_step_accepts_non_contiguous_input():
    lstm = LSTM(4, 5, num_layers=2, seed=0).eval()
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    strided = np.asfortranarray(x)                   # same values, Fortran order
    assert not strided.flags.c_contiguous
    want_out, want_state = lstm.step(x)
    got_out, got_state = lstm.step(strided)
    np.testing.assert_array_equal(got_out, want_out)
    for got, want in zip(got_state, want_state):
        np.testing.assert_array_equal(got, want)
