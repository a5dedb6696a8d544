"""Keras and ONNX conversions against hand-written equations in each format's own layout.

Each reference below is written from the format's documentation, with ITS gate order and
weight layout (Keras: ``kernel (I, G*H)`` used as ``x @ kernel``, batch-major data; ONNX:
``W (D, G*H, I)`` used as ``x @ W.T``, time-major data, ``Y (T, D, B, H)``). Random weights
go through the formula and through the converted fastrnn module; float64 agrees to ~1e-10.
No Keras or ONNX runtime is needed.
"""
from __future__ import annotations

import numpy as np
import pytest

from fastrnn import convert
from fastrnn.convert import from_keras, from_onnx, onnx_attributes, to_keras, to_onnx
from fastrnn.nn import recurrent
from fastrnn.nn.cells import GRUCell, LSTMCell, RNNCell

T, B, I, H = 5, 3, 4, 6
RTOL = {np.float64: 1e-10, np.float32: 1e-5}


def sigmoid(a):
    return 1 / (1 + np.exp(-a))


ACT = {"tanh": np.tanh, "relu": lambda a: np.maximum(a, 0)}


def split(a, n):
    return np.split(a, n, axis=-1)


def assert_close(actual, expected, dtype=np.float64, name=""):
    scale = max(float(np.max(np.abs(expected))), 1e-30)
    error = float(np.max(np.abs(np.asarray(actual, np.float64) - expected))) / scale
    assert actual.shape == expected.shape, name
    assert error <= RTOL[dtype], f"{name}: relative error {error:.3g}"


def scan(step, xs, state):
    """Run ``state = step(x_t, state)`` over xs; outputs are state[0] (h) at every step."""
    ys = []
    for x in xs:
        state = step(x, state)
        ys.append(state[0])
    return np.stack(ys), state


# -- Keras equations (keras/src/layers/rnn/*.py), batch-major, ``x @ kernel`` ---------------
def keras_simple_rnn_step(w, activation):
    kernel, recurrent_kernel, bias = w
    return lambda x, s: (ACT[activation](x @ kernel + bias + s[0] @ recurrent_kernel),)


def keras_lstm_step(w, activation=None):
    kernel, recurrent_kernel, bias = w

    def step(x, s):
        h, c = s
        i, f, g, o = split(x @ kernel + h @ recurrent_kernel + bias, 4)  # Keras: i, f, c, o
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        return sigmoid(o) * np.tanh(c), c
    return step


def keras_gru_step(w, reset_after):
    kernel, recurrent_kernel, bias = w
    k_z, k_r, k_h = split(kernel, 3)                       # Keras: z, r, h
    u_z, u_r, u_h = split(recurrent_kernel, 3)

    def step(x, s):
        h = s[0]
        if reset_after:                                    # bias (2, 3H): input, recurrent
            x_z, x_r, x_h = split(x @ kernel + bias[0], 3)
            r_z, r_r, r_h = split(h @ recurrent_kernel + bias[1], 3)
            z, r = sigmoid(x_z + r_z), sigmoid(x_r + r_r)
            hh = np.tanh(x_h + r * r_h)
        else:                                              # one input bias (3H,)
            b_z, b_r, b_h = split(bias, 3)
            z = sigmoid(x @ k_z + b_z + h @ u_z)
            r = sigmoid(x @ k_r + b_r + h @ u_r)
            hh = np.tanh(x @ k_h + b_h + (r * h) @ u_h)
        return (z * h + (1 - z) * hh,)
    return step


KERAS_STEPS = {"SimpleRNN": keras_simple_rnn_step, "LSTM": keras_lstm_step, "GRU": keras_gru_step}
KERAS_GATES = {"SimpleRNN": 1, "LSTM": 4, "GRU": 3}


def keras_weights(rng, kind, reset_after=True, dtype=np.float64):
    G = KERAS_GATES[kind]
    shapes = [(I, G * H), (H, G * H), (2, G * H) if kind == "GRU" and reset_after else (G * H,)]
    return [rng.uniform(-0.6, 0.6, s).astype(dtype) for s in shapes]


def keras_reference(kind, weights, x, states, option, bidirectional):
    """Keras layer (return_sequences, return_state) on x (B, T, I): outputs (B, T, D*H)
    and final states per direction. Bidirectional: the backward layer sees the reversed
    sequence and its outputs are reversed back (merge_mode='concat')."""
    per = len(weights) // (2 if bidirectional else 1)
    outputs, finals = [], []
    for d in range(2 if bidirectional else 1):
        step = KERAS_STEPS[kind](weights[d * per:(d + 1) * per], option)
        xs = np.swapaxes(x, 0, 1)[::-1 if d else 1]
        ys, final = scan(step, xs, states[d])
        outputs.append(np.swapaxes(ys[::-1 if d else 1], 0, 1))
        finals.append(final)
    return np.concatenate(outputs, axis=-1), finals


def run_module(module, x, states):
    """fastrnn module on x with per-direction initial states [(h,) or (h, c)] -> (y, finals)."""
    stacked = [np.stack([s[k] for s in states]) for k in range(len(states[0]))]
    hx = tuple(stacked) if isinstance(module, recurrent.LSTM) else stacked[0]
    y, final = module(x, hx)
    final = final if isinstance(final, tuple) else (final,)
    return y, [tuple(f[d] for f in final) for d in range(len(states))]


def random_states(rng, kind_gates, D, dtype=np.float64):
    n = 2 if kind_gates == 4 else 1
    return [tuple(rng.standard_normal((B, H)).astype(dtype) for _ in range(n))
            for _ in range(D)]


KERAS_CASES = [("SimpleRNN", "tanh"), ("SimpleRNN", "relu"), ("LSTM", None),
               ("GRU", True), ("GRU", False)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind, option", KERAS_CASES)
def test_from_keras_matches_keras_equations(kind, option, bidirectional, dtype):
    rng = np.random.default_rng(0)
    D = 2 if bidirectional else 1
    weights = sum((keras_weights(rng, kind, option is not False) for _ in range(D)), [])
    x = rng.standard_normal((B, T, I))
    states = random_states(rng, KERAS_GATES[kind], D)
    kwargs = ({"activation": option} if kind == "SimpleRNN" else
              {"reset_after": option} if kind == "GRU" else {})
    module = from_keras(kind, [w.astype(dtype) for w in weights], batch_first=True,
                        dtype=dtype, **kwargs)
    assert module.bidirectional == bidirectional and module.dtype == dtype
    y_ref, finals_ref = keras_reference(kind, weights, x, states, option, bidirectional)
    y, finals = run_module(module, x.astype(dtype),
                           [tuple(s.astype(dtype) for s in st) for st in states])
    assert_close(y, y_ref, dtype, "y")
    for got, ref in zip(finals, finals_ref):
        for g, r in zip(got, ref):
            assert_close(g, r, dtype, "final state")


def test_from_keras_without_bias():
    rng = np.random.default_rng(1)
    weights = keras_weights(rng, "LSTM")
    module = from_keras("LSTM", weights[:2], batch_first=True, dtype=np.float64)
    assert not module.bias
    x, states = rng.standard_normal((B, T, I)), random_states(rng, 4, 1)
    y_ref, _ = keras_reference("LSTM", weights[:2] + [np.zeros(4 * H)], x, states, None, False)
    assert_close(run_module(module, x, states)[0], y_ref)
    assert len(to_keras(module)) == 2


# -- ONNX equations (onnx.ai operators RNN, LSTM, GRU), time-major, ``x @ W.T`` -----------
def onnx_rnn_step(W, R, Wb, Rb, activation):
    return lambda x, s: (ACT[activation.lower()](x @ W.T + s[0] @ R.T + Wb + Rb),)


def onnx_lstm_step(W, R, Wb, Rb, option=None):
    Wi, Wo, Wf, Wc = np.split(W, 4)                        # ONNX: i, o, f, c
    Ri, Ro, Rf, Rc = np.split(R, 4)
    (Wbi, Wbo, Wbf, Wbc), (Rbi, Rbo, Rbf, Rbc) = np.split(Wb, 4), np.split(Rb, 4)

    def step(x, s):
        h, c = s
        i = sigmoid(x @ Wi.T + h @ Ri.T + Wbi + Rbi)
        f = sigmoid(x @ Wf.T + h @ Rf.T + Wbf + Rbf)
        ct = np.tanh(x @ Wc.T + h @ Rc.T + Wbc + Rbc)
        c = f * c + i * ct
        o = sigmoid(x @ Wo.T + h @ Ro.T + Wbo + Rbo)
        return o * np.tanh(c), c
    return step


def onnx_gru_step(W, R, Wb, Rb, linear_before_reset):
    Wz, Wr, Wh = np.split(W, 3)                            # ONNX: z, r, h
    Rz, Rr, Rh = np.split(R, 3)
    (Wbz, Wbr, Wbh), (Rbz, Rbr, Rbh) = np.split(Wb, 3), np.split(Rb, 3)

    def step(x, s):
        h = s[0]
        z = sigmoid(x @ Wz.T + h @ Rz.T + Wbz + Rbz)
        r = sigmoid(x @ Wr.T + h @ Rr.T + Wbr + Rbr)
        if linear_before_reset:
            ht = np.tanh(x @ Wh.T + r * (h @ Rh.T + Rbh) + Wbh)
        else:
            ht = np.tanh(x @ Wh.T + (r * h) @ Rh.T + Rbh + Wbh)
        return ((1 - z) * ht + z * h,)
    return step


ONNX_STEPS = {"RNN": onnx_rnn_step, "LSTM": onnx_lstm_step, "GRU": onnx_gru_step}
ONNX_GATES = {"RNN": 1, "LSTM": 4, "GRU": 3}


def onnx_weights(rng, op, D, dtype=np.float64):
    G = ONNX_GATES[op]
    return [rng.uniform(-0.6, 0.6, s).astype(dtype)
            for s in ((D, G * H, I), (D, G * H, H), (D, 2 * G * H))]


def onnx_reference(op, W, R, B_, x, states, option):
    """ONNX node on X (T, B, I): Y (T, D, B, H) and final states; direction 1 is reverse."""
    Y, finals = [], []
    for d in range(W.shape[0]):
        Wb, Rb = np.split(B_[d], 2)
        ys, final = scan(ONNX_STEPS[op](W[d], R[d], Wb, Rb, option), x[::-1 if d else 1],
                         states[d])
        Y.append(ys[::-1 if d else 1])
        finals.append(final)
    return np.stack(Y, axis=1), finals


ONNX_CASES = [("RNN", "Tanh"), ("RNN", "Relu"), ("LSTM", None), ("GRU", 0), ("GRU", 1)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize("op, option", ONNX_CASES)
def test_from_onnx_matches_onnx_equations(op, option, direction, dtype):
    rng = np.random.default_rng(2)
    D = 2 if direction == "bidirectional" else 1
    W, R, B_ = onnx_weights(rng, op, D)
    x = rng.standard_normal((T, B, I))
    states = random_states(rng, ONNX_GATES[op], D)
    kwargs = ({"activations": [option] * D} if op == "RNN" else
              {"linear_before_reset": option} if op == "GRU" else {})
    module = from_onnx(op, W.astype(dtype), R.astype(dtype), B_.astype(dtype),
                       direction=direction, hidden_size=H, dtype=dtype, **kwargs)
    Y_ref, finals_ref = onnx_reference(op, W, R, B_, x, states, option)
    y, finals = run_module(module, x.astype(dtype),
                           [tuple(s.astype(dtype) for s in st) for st in states])
    assert_close(y, Y_ref.transpose(0, 2, 1, 3).reshape(T, B, D * H), dtype, "Y")
    for got, ref in zip(finals, finals_ref):
        for g, r in zip(got, ref):
            assert_close(g, r, dtype, "Y_h / Y_c")


def test_from_onnx_without_bias_and_batch_major_layout():
    rng = np.random.default_rng(3)
    W, R, _ = onnx_weights(rng, "GRU", 1)
    module = from_onnx("GRU", W, R, None, linear_before_reset=1, layout=1, dtype=np.float64)
    assert not module.bias and module.batch_first and module.reset_after
    x, states = rng.standard_normal((T, B, I)), random_states(rng, 3, 1)
    Y_ref, _ = onnx_reference("GRU", W, R, np.zeros((1, 6 * H)), x, states, 1)
    y, _ = run_module(module, x.transpose(1, 0, 2), states)
    assert_close(y.transpose(1, 0, 2), Y_ref[:, 0])
    assert to_onnx(module)[2] is None


def test_onnx_string_attributes_may_be_bytes():
    """onnx.helper.get_attribute_value returns STRINGS attributes as bytes."""
    W, R, B_ = onnx_weights(np.random.default_rng(4), "RNN", 2)
    module = from_onnx("RNN", W, R, B_, direction=b"bidirectional",
                       activations=[b"Relu", b"Relu"])
    assert module.bidirectional and module.nonlinearity == "relu"


def test_zero_peepholes_are_accepted():
    rng = np.random.default_rng(4)
    W, R, B_ = onnx_weights(rng, "LSTM", 1)
    a = from_onnx("LSTM", W, R, B_, P=np.zeros((1, 3 * H)), dtype=np.float64)
    b = from_onnx("LSTM", W, R, B_, dtype=np.float64)
    for key, value in a.state_dict().items():
        np.testing.assert_array_equal(value, b.state_dict()[key])


def test_nonzero_peepholes_build_a_peephole_lstm():
    rng = np.random.default_rng(5)
    W, R, B_ = onnx_weights(rng, "LSTM", 2)
    P = rng.standard_normal((2, 3 * H))
    module = from_onnx("LSTM", W, R, B_, P=P, direction="bidirectional", dtype=np.float64)
    assert module.peepholes
    np.testing.assert_array_equal(module.weight_p_l0.value, P[0])
    np.testing.assert_array_equal(module.weight_p_l0_reverse.value, P[1])


# -- round trips -------------------------------------------------------------------------------
MODULES = [(recurrent.RNN, {}), (recurrent.RNN, {"nonlinearity": "relu"}),
           (recurrent.LSTM, {}), (recurrent.GRU, {}), (recurrent.GRU, {"reset_after": False})]


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype
        np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cls, kwargs", MODULES)
def test_onnx_round_trip_is_exact(cls, kwargs, bidirectional, bias):
    module = cls(I, H, bias=bias, bidirectional=bidirectional, dtype=np.float64, seed=5,
                 **kwargs)
    W, R, B_ = to_onnx(module)
    D = 2 if bidirectional else 1
    assert W.shape[:2] == R.shape[:2] == (D, W.shape[1]) and (B_ is None) == (not bias)
    assert_same_state(from_onnx(W=W, R=R, B=B_, dtype=np.float64, **onnx_attributes(module)),
                      module)
    again = to_onnx(from_onnx(W=W, R=R, B=B_, dtype=np.float64, **onnx_attributes(module)))
    for a, b in zip(again, (W, R, B_)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind, option", KERAS_CASES)
def test_keras_round_trip_is_exact(kind, option, bidirectional):
    rng = np.random.default_rng(6)
    D = 2 if bidirectional else 1
    weights = sum((keras_weights(rng, kind, option is not False) for _ in range(D)), [])
    kwargs = ({"activation": option} if kind == "SimpleRNN" else
              {"reset_after": option} if kind == "GRU" else {})
    module = from_keras(kind, weights, dtype=np.float64, **kwargs)
    back = to_keras(module)
    assert len(back) == len(weights)
    for a, b in zip(back, weights):
        np.testing.assert_array_equal(a, b)
    assert_same_state(from_keras(kind, back, dtype=np.float64, **kwargs), module)


@pytest.mark.parametrize("cls, kwargs", MODULES)
def test_to_keras_folds_two_biases_into_the_same_function(cls, kwargs):
    """A torch-style module (nonzero b_hh) goes to Keras with b_ih + b_hh where Keras has
    one bias: the state differs, the function does not."""
    module = cls(I, H, dtype=np.float64, seed=7, **kwargs)
    kind = {"RNN": "SimpleRNN"}.get(cls.__name__, cls.__name__)
    options = ({"activation": module.nonlinearity} if kind == "SimpleRNN" else
               {"reset_after": module.reset_after} if kind == "GRU" else {})
    back = from_keras(kind, to_keras(module), dtype=np.float64, **options)
    rng = np.random.default_rng(8)
    x, states = rng.standard_normal((T, B, I)), random_states(rng, cls._gates, 1)
    assert_close(run_module(back, x, states)[0], run_module(module, x, states)[0])


@pytest.mark.parametrize("cell, cls", [(RNNCell(I, H, seed=0), recurrent.RNN),
                                       (LSTMCell(I, H, seed=0), recurrent.LSTM),
                                       (GRUCell(I, H, seed=0, reset_after=False),
                                        recurrent.GRU)])
def test_cells_convert_like_one_layer_modules(cell, cls):
    W, R, B_ = to_onnx(cell)
    module = from_onnx(W=W, R=R, B=B_, **onnx_attributes(cell))
    assert isinstance(module, cls)
    for name, value in cell.state_dict().items():
        np.testing.assert_array_equal(module.state_dict()[f"{name}_l0"], value)
    for a, b in zip(to_keras(cell), to_keras(module)):
        np.testing.assert_array_equal(a, b)


def test_gate_permutation_tables_are_permutations():
    for table in (convert.KERAS_GATES, convert.ONNX_GATES):
        for kind, order in table.items():
            assert sorted(order) == sorted(convert.TORCH_GATES[kind])


# -- errors ------------------------------------------------------------------------------------
def _keras(kind="LSTM", **kwargs):
    return keras_weights(np.random.default_rng(0), kind, **kwargs)


@pytest.mark.parametrize("call, match", [
    (lambda: from_keras("ConvLSTM2D", _keras()), "kind must be one of"),
    (lambda: from_keras("LSTM", _keras()[:1]), "got 1 arrays"),
    (lambda: from_keras("LSTM", _keras() + _keras()[:2]), "got 5 arrays"),
    (lambda: from_keras("LSTM", [np.ones((I, 4 * H + 1))] + _keras()[1:]),
     "multiple of 4, got 25"),
    (lambda: from_keras("LSTM", [_keras()[0], np.ones((H, 3 * H)), _keras()[2]]),
     r"recurrent_kernel must have shape \(6, 24\), got \(6, 18\)"),
    (lambda: from_keras("GRU", _keras("GRU", reset_after=False)),
     r"bias must have shape \(2, 18\), got \(18,\) \(a GRU with one bias row is "
     "reset_after=False\\)"),
    (lambda: from_keras("GRU", _keras("GRU"), reset_after=False), "is reset_after=True"),
    (lambda: from_keras("LSTM", _keras(), recurrent_activation="hard_sigmoid"),
     "hard_sigmoid"),
    (lambda: from_keras("GRU", _keras("GRU"), activation="relu"), "activation='relu'"),
    (lambda: from_keras("SimpleRNN", _keras("SimpleRNN"), activation="sigmoid"),
     "'tanh' or 'relu', got 'sigmoid'"),
    (lambda: from_keras("LSTM", [np.ones((2, 2, 2))] + _keras()[1:]), "kernel must be a 2-D"),
    (lambda: from_keras("LSTM", _keras()[:2] + [np.ones((I, 8)), np.ones((2, 8))]),
     "the two directions' w_ih differ"),
])
def test_keras_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _onnx(op="LSTM", D=1):
    return onnx_weights(np.random.default_rng(0), op, D)


@pytest.mark.parametrize("call, match", [
    (lambda: from_onnx("Scan", *_onnx()), "op_type must be one of"),
    (lambda: from_onnx("LSTM", *_onnx(), P=np.ones((1, 3 * H + 1))),
     r"P must have shape \(1, 18\), got \(1, 19\)"),
    (lambda: from_onnx("GRU", *_onnx("GRU"), P=np.ones((1, 3 * H))),
     r"P \(peepholes\) is an LSTM input, got one for GRU"),
    (lambda: from_onnx("LSTM", *_onnx(), clip=3.0), "clip=3.0"),
    (lambda: from_onnx("LSTM", *_onnx(), input_forget=1), "input_forget=1"),
    (lambda: from_onnx("LSTM", *_onnx(), direction="reverse"),
     "direction='reverse' is not supported"),
    (lambda: from_onnx("LSTM", *_onnx(), direction="backward"),
     "direction must be one of .* got 'backward'"),
    (lambda: from_onnx("LSTM", *_onnx(D=2)), r"W must have shape \(1, 24, 4\), got \(2, 24, 4\)"),
    (lambda: from_onnx("LSTM", *_onnx(), direction="bidirectional"), "W must have shape"),
    (lambda: from_onnx("LSTM", *_onnx()[:2], np.ones((1, 4 * H))), "B must have shape"),
    (lambda: from_onnx("LSTM", *_onnx(), hidden_size=H + 1), "hidden_size=7"),
    (lambda: from_onnx("LSTM", *_onnx(), activations=["HardSigmoid", "Tanh", "Tanh"]),
     "got \\['HardSigmoid', 'Tanh', 'Tanh'\\]"),
    (lambda: from_onnx("RNN", *_onnx("RNN", D=2), direction="bidirectional",
                       activations=["Tanh", "Relu"]), "same for both directions"),
    (lambda: from_onnx("RNN", *_onnx("RNN"), activations=["Sigmoid"]), "got \\['Sigmoid'\\]"),
    (lambda: from_onnx("LSTM", *_onnx(), linear_before_reset=1), "GRU attribute"),
    (lambda: from_onnx("GRU", *_onnx("GRU"), linear_before_reset=2), "0 or 1, got 2"),
    (lambda: from_onnx("GRU", *_onnx("GRU"), layout=2), "layout must be 0 or 1"),
    (lambda: from_onnx("GRU", np.ones((1, 3 * H)), *_onnx("GRU")[1:]), "W must be a 3-D"),
    (lambda: from_onnx("GRU", np.ones((1, 3 * H + 2, I)), *_onnx("GRU")[1:]),
     "multiple of 3, got 20"),
])
def test_onnx_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_export_errors():
    with pytest.raises(ValueError, match="num_layers > 1"):
        to_keras(recurrent.LSTM(I, H, num_layers=2))
    with pytest.raises(ValueError, match="num_layers > 1"):
        to_onnx(recurrent.GRU(I, H, num_layers=2))
    with pytest.raises(TypeError, match="got dict"):
        to_onnx({"weight_ih_l0": np.ones((H, I))})
