"""Bad input raises a clear Python exception (naming the argument, the expected and the
received value) before any C code runs, and both backends raise the same one."""
from __future__ import annotations

import numpy as np
import pytest

from fastrnn import ops, reference

T, B, I, H = 4, 3, 5, 6


def good_lstm_args(dtype=np.float32):
    rng = np.random.default_rng(0)
    r = lambda *s: rng.standard_normal(s).astype(dtype)  # noqa: E731
    return {"x": r(T, B, I), "h0": r(B, H), "c0": r(B, H), "w_ih": r(4 * H, I),
            "w_hh": r(4 * H, H), "b_ih": r(4 * H), "b_hh": r(4 * H)}


@pytest.fixture(params=[ops, reference], ids=["ops", "reference"])
def module(request):
    return request.param


BAD_ARGUMENTS = [  # (argument, bad value builder, exception, message fragments)
    ("x", lambda a: a["x"][0], ValueError, ["x must have 3 dimensions", f"({B}, {I})"]),
    ("x", lambda a: a["x"].astype(np.int32), TypeError, ["x must be float32 or float64", "int32"]),
    ("x", lambda a: a["x"].astype(np.float16), TypeError, ["x must be float32 or float64"]),
    ("x", lambda a: np.zeros((0, B, I), np.float32), ValueError, ["T (x.shape[0]) must be at least 1", "got 0"]),
    ("x", lambda a: np.zeros((T, B, 0), np.float32), ValueError, ["I (x.shape[2])", "got 0"]),
    ("h0", lambda a: a["h0"][:2], ValueError, ["h0 must have shape (3, 6)", "got (2, 6)"]),
    ("c0", lambda a: a["c0"].T, ValueError, ["c0 must have shape (3, 6)", "got (6, 3)"]),
    ("w_ih", lambda a: a["w_ih"][:, :2], ValueError, ["w_ih must have shape (24, 5)", "got (24, 2)"]),
    ("w_hh", lambda a: a["w_hh"][:5], ValueError, ["w_hh must have shape (4*H, H)", "got (5, 6)"]),
    ("w_hh", lambda a: np.zeros((0, 0), np.float32), ValueError, ["w_hh must have shape"]),
    ("b_ih", lambda a: a["b_ih"][:3], ValueError, ["b_ih must have shape (24,)", "got (3,)"]),
    ("b_hh", lambda a: a["b_hh"].astype(np.float64), ValueError, ["b_hh must have the dtype of x (float32)", "float64"]),
    ("w_ih", lambda a: a["w_ih"].astype(np.float64), ValueError, ["w_ih must have the dtype of x"]),
]


@pytest.mark.parametrize("name,make_bad,error,fragments", BAD_ARGUMENTS,
                         ids=[f"{row[0]}-{i}" for i, row in enumerate(BAD_ARGUMENTS)])
def test_bad_forward_argument(module, name, make_bad, error, fragments):
    args = good_lstm_args()
    args[name] = make_bad(args)
    with pytest.raises(error) as raised:
        module.lstm_forward(**args)
    for fragment in fragments:
        assert fragment in str(raised.value)


@pytest.mark.parametrize("lengths,fragment", [
    ([1, 2], "lengths must have shape (3,), got (2,)"),
    ([0, 2, 3], "lengths must lie in [1, T=4], got values in [0, 3]"),
    ([1, 5, 3], "lengths must lie in [1, T=4], got values in [1, 5]"),
    ([-1, 2, 3], "got values in [-1, 3]"),
    ([1.0, 2.0, 3.0], "lengths must hold integers, got dtype float64"),
])
def test_bad_lengths(module, lengths, fragment):
    with pytest.raises((ValueError, TypeError)) as raised:
        module.lstm_forward(**good_lstm_args(), lengths=np.array(lengths))
    assert fragment in str(raised.value)


def test_bad_nonlinearity(module):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu', got 'sigmoid'"):
        module.rnn_forward(rng.standard_normal((T, B, I)), None, rng.standard_normal((H, I)),
                           rng.standard_normal((H, H)), nonlinearity="sigmoid")


def test_gru_weights_must_have_three_gates(module):
    args = good_lstm_args()
    with pytest.raises(ValueError, match=r"w_hh must have shape \(3\*H, H\) for GRU, got \(24, 6\)"):
        module.gru_forward(args["x"], args["h0"], args["w_ih"], args["w_hh"])


def test_backward_needs_a_training_cache(module):
    *_, cache = module.lstm_forward(**good_lstm_args(), training=False)
    assert cache is None
    with pytest.raises(ValueError, match="cache is None: run the forward with training=True"):
        module.lstm_backward(None, None, None, cache)


def test_backward_rejects_a_cache_from_another_cell_or_backend(module):
    *_, cache = module.lstm_forward(**good_lstm_args())
    with pytest.raises(TypeError, match="cache must come from gru_forward"):
        module.gru_backward(None, None, cache)
    other = reference if module is ops else ops
    with pytest.raises(TypeError, match="cache comes from the"):
        other.lstm_backward(None, None, None, cache)


@pytest.mark.parametrize("name,shape", [("dy", (T, B, H + 1)), ("dh_n", (B + 1, H)),
                                        ("dc_n", (B, H, 1))])
def test_bad_upstream_gradient_shape(module, name, shape):
    *_, cache = module.lstm_forward(**good_lstm_args())
    upstream = {"dy": None, "dh_n": None, "dc_n": None, name: np.zeros(shape, np.float32)}
    with pytest.raises(ValueError, match=rf"{name} must have shape"):
        module.lstm_backward(upstream["dy"], upstream["dh_n"], upstream["dc_n"], cache)


def test_upstream_gradient_dtype_must_match(module):
    *_, cache = module.lstm_forward(**good_lstm_args())
    with pytest.raises(ValueError, match="dy must have the dtype of x"):
        module.lstm_backward(np.zeros((T, B, H)), None, None, cache)


def test_torch_tensors_are_accepted(module):
    torch = pytest.importorskip("torch")
    args = good_lstm_args()
    want = module.lstm_forward(**args)[0]
    got = module.lstm_forward(**{k: torch.from_numpy(v) for k, v in args.items()})[0]
    np.testing.assert_array_equal(got, want)
