"""Fuzzing the layers (RNN, LSTM, GRU), the cells and step() (hypothesis): random shapes
and options, every memory layout, wrong dtypes and shapes, bad lengths and states, absurd
constructor sizes. Every call matches the reference (fastrnn.reference run on the layer's
own weights, or the whole-sequence forward for step()) or raises
TypeError/ValueError/MemoryError.

Short under the default ``fuzz-ci`` profile; ``FASTRNN_FUZZ=long`` for the long campaign."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

import fastrnn
from fastrnn import reference
from fuzz_helpers import (BAD_DTYPES, CALLS, CLEAN_ERRORS, FLOATS, as_dtype, assert_close,
                          clean, lay_out, layouts)

LAYERS = {"rnn": fastrnn.RNN, "lstm": fastrnn.LSTM, "gru": fastrnn.GRU}
CELLS = {"rnn": fastrnn.RNNCell, "lstm": fastrnn.LSTMCell, "gru": fastrnn.GRUCell}
SIZES = st.sampled_from([1, 2, 3, 7, 8, 9, 17])
BATCHES = st.sampled_from([0, 1, 2, 3, 5, 9])
STEPS = st.sampled_from([1, 2, 3, 6])


@st.composite
def layer_cases(draw):
    cell = draw(st.sampled_from(sorted(LAYERS)))
    dtype = np.dtype(draw(st.sampled_from(FLOATS)))
    T, B, I, H = draw(STEPS), draw(BATCHES), draw(SIZES), draw(SIZES)
    layer = LAYERS[cell](I, H, num_layers=draw(st.sampled_from([1, 1, 2])),
                         bias=draw(st.booleans()), batch_first=draw(st.booleans()),
                         dtype=dtype, seed=draw(st.integers(0, 1000)))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    x = rng.standard_normal((B, T, I) if layer.batch_first else (T, B, I)).astype(dtype)
    lengths = rng.integers(1, T + 1, size=B) if draw(st.booleans()) else None
    return {"cell": cell, "layer": layer, "x": x, "lengths": lengths, "T": T, "B": B,
            "rng": rng, "dtype": dtype}


def reference_forward(case):
    """The layer run through fastrnn.reference, layer by layer (time-major inside)."""
    layer, cell = case["layer"], case["cell"]
    x = np.swapaxes(case["x"], 0, 1) if layer.batch_first else case["x"]
    finals = []
    for k in range(layer.num_layers):
        names = [f"weight_ih_l{k}", f"weight_hh_l{k}"]
        if layer.bias:
            names += [f"bias_ih_l{k}", f"bias_hh_l{k}"]
        weights = [getattr(layer, n).value for n in names] + [None] * (4 - len(names))
        states = (None, None) if cell == "lstm" else (None,)
        y, *state, _ = getattr(reference, f"{cell}_forward")(x, *states, *weights,
                                                            lengths=case["lengths"])
        finals.append(state[0])
        x = y
    return (np.swapaxes(x, 0, 1) if layer.batch_first else x), np.stack(finals)


@given(case=layer_cases(), layout=layouts())
def test_layers_match_reference_in_any_layout(case, layout):
    """A layer's forward on x of any layout equals the reference on its weights; its
    backward runs and gives dx like x."""
    layer = case["layer"]
    x = lay_out(case["x"], layout)
    CALLS["n"] += 2
    y, state = layer(x, lengths=case["lengths"])
    h_n = state[0] if case["cell"] == "lstm" else state
    want_y, want_h = reference_forward(case)
    assert_close("y", y, want_y)
    assert_close("h_n", h_n, want_h)
    dy = lay_out(case["rng"].standard_normal(y.shape).astype(case["dtype"]), layout)
    dx = layer.backward(dy)
    assert dx.shape == x.shape and dx.dtype == x.dtype and np.isfinite(dx).all()


@given(case=layer_cases(), layout=layouts())
def test_step_matches_the_whole_sequence(case, layout):
    """step() over the time steps, with states fed back, equals the forward over the
    sequence (no lengths: step has none)."""
    layer = case["layer"]
    x = case["x"] if not layer.batch_first else np.swapaxes(case["x"], 0, 1)  # (T, B, I)
    with fastrnn.no_grad():
        CALLS["n"] += 1
        full, _ = layer(case["x"])
        state, outs = None, []
        for t in range(case["T"]):
            CALLS["n"] += 1
            out, state = layer.step(lay_out(np.ascontiguousarray(x[t]), layout), state)
            outs.append(out)
    full = np.swapaxes(full, 0, 1) if layer.batch_first else full
    assert_close("step outputs", np.stack(outs), full)


def _bad_value(draw, like, dtype):
    """A wrong version of an argument shaped ``like``: dtype, shape, kind or junk."""
    kind = draw(st.sampled_from(["dtype", "shape", "ndim", "junk", "scalar", "list"]))
    if kind == "dtype":
        return as_dtype(np.zeros(like), draw(st.sampled_from(
            BAD_DTYPES + tuple(d for d in FLOATS if d != dtype))))
    if kind == "shape":
        return np.zeros(tuple(s + draw(st.sampled_from([1, -1 if s else 1])) for s in like),
                        dtype)
    if kind == "ndim":
        return np.zeros(like + (1,), dtype)
    if kind == "scalar":
        return np.float64(draw(st.sampled_from([0.0, np.nan, 1.0])))
    if kind == "list":
        return [[1.0]]
    return draw(st.sampled_from(["x", object(), {"a": 1}, (1, 2, 3), 1j]))


@given(case=layer_cases(), data=st.data(),
       target=st.sampled_from(["x", "hx", "lengths", "step_x", "step_state", "dy"]))
def test_layers_refuse_bad_arguments_cleanly(case, data, target):
    """One wrong argument to forward, backward or step: a clean TypeError/ValueError (or,
    when the change happens to be valid, a result of the right shape)."""
    layer, T, B = case["layer"], case["T"], case["B"]
    I, H, L = layer.input_size, layer.hidden_size, layer.num_layers
    draw = data.draw
    if target == "x":
        clean(lambda: layer(_bad_value(draw, case["x"].shape, case["dtype"])))
    elif target == "hx":
        bad = _bad_value(draw, (L, B, H), case["dtype"])
        clean(lambda: layer(case["x"], (bad, bad) if case["cell"] == "lstm" else bad))
    elif target == "lengths":
        lengths = draw(st.sampled_from([np.zeros(B, int), np.full(B, T + 1), -np.ones(B, int),
                                        np.ones(B), np.ones(B + 1, int), np.ones((B, 1), int),
                                        np.ones(B, bool), np.ones(B, object), "3", 2.5,
                                        np.full(B, 2 ** 63 - 1, np.uint64)]))
        clean(lambda: layer(case["x"], lengths=lengths))
    elif target == "step_x":
        clean(lambda: layer.step(_bad_value(draw, (B, I), case["dtype"])))
    elif target == "step_state":
        bad = _bad_value(draw, (L, B, H), case["dtype"])
        state = draw(st.sampled_from([(bad, bad), bad, (bad,), [bad, bad, bad]]))
        clean(lambda: layer.step(np.zeros((B, I), case["dtype"]), state))
    else:
        y, _ = layer(case["x"])
        clean(lambda: layer.backward(_bad_value(draw, y.shape, case["dtype"])))


@st.composite
def cell_cases(draw):
    kind = draw(st.sampled_from(sorted(CELLS)))
    dtype = np.dtype(draw(st.sampled_from(FLOATS)))
    I, H, B = draw(SIZES), draw(SIZES), draw(BATCHES)
    cell = CELLS[kind](I, H, bias=draw(st.booleans()), dtype=dtype,
                       seed=draw(st.integers(0, 1000)))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    x = rng.standard_normal((B, I)).astype(dtype)
    h = rng.standard_normal((B, H)).astype(dtype) if draw(st.booleans()) else None
    c = rng.standard_normal((B, H)).astype(dtype) if draw(st.booleans()) else None
    return {"kind": kind, "cell": cell, "x": x, "h": h, "c": c, "dtype": dtype}


def cell_reference(case):
    cell, kind = case["cell"], case["kind"]
    weights = [cell.weight_ih.value, cell.weight_hh.value,
               cell.bias_ih.value if cell.bias else None, cell.bias_hh.value if cell.bias else None]
    states = (case["h"], case["c"]) if kind == "lstm" else (case["h"],)
    _, *new, _ = getattr(reference, f"{kind}_forward")(case["x"][None], *states, *weights)
    return new


@given(case=cell_cases(), layout=layouts(), grad=st.booleans())
def test_cells_match_reference_in_any_layout(case, layout, grad):
    cell, kind = case["cell"], case["kind"]
    x, h, c = (lay_out(case[n], layout) for n in ("x", "h", "c"))
    CALLS["n"] += 1
    with fastrnn.enable_grad() if grad else fastrnn.no_grad():
        out = cell(x, (h, c)) if kind == "lstm" else cell(x, h)
    got = list(out) if kind == "lstm" else [out]
    for i, (g, w) in enumerate(zip(got, cell_reference(case))):
        assert_close(f"state {i}", g, w)


@given(case=cell_cases(), data=st.data(), target=st.sampled_from(["x", "h", "c", "state"]))
def test_cells_refuse_bad_arguments_cleanly(case, data, target):
    cell, kind, B = case["cell"], case["kind"], case["x"].shape[0]
    H, I = cell.hidden_size, cell.input_size
    x, h, c = case["x"], case["h"], case["c"]
    if target == "x":
        x = _bad_value(data.draw, (B, I), case["dtype"])
    elif target == "h":
        h = _bad_value(data.draw, (B, H), case["dtype"])
    elif target == "c":
        c = _bad_value(data.draw, (B, H), case["dtype"])
    state = ((h, c) if target != "state" else data.draw(st.sampled_from([(h,), h, [h, c, c]]))) \
        if kind == "lstm" else h
    for grad in (True, False):
        with fastrnn.enable_grad() if grad else fastrnn.no_grad():
            clean(lambda: cell(x, state))


ABSURD_SIZES = [0, -1, 2 ** 31, 2 ** 40, 2 ** 62, 2 ** 63, 2 ** 64, 1.5, "3", None, True,
                np.int64(-5), float("nan")]


@given(kind=st.sampled_from(sorted(LAYERS)), which=st.sampled_from(["input", "hidden", "layers"]),
       size=st.sampled_from(ABSURD_SIZES), is_cell=st.booleans(),
       dtype=st.sampled_from(["float32", "float64", "bfloat16", "float16", "int32", None,
                              np.complex64, "", "not-a-dtype"]))
def test_constructors_refuse_absurd_sizes_and_dtypes(kind, which, size, is_cell, dtype):
    """Sizes that are not positive ints, or whose weights could never fit in memory (past
    2**31 or 2**63 elements), and unsupported dtypes: a clean error, never an attempt to
    allocate the weights."""
    args = {"input": (size, 4, 1), "hidden": (4, size, 1), "layers": (4, 4, size)}[which]
    if is_cell:
        build = lambda: CELLS[kind](args[0], args[1], dtype=dtype)   # noqa: E731
    else:
        build = lambda: LAYERS[kind](*args, dtype=dtype)              # noqa: E731
    valid_dtype = dtype in ("float32", "float64")
    valid_size = (type(size) is int and 1 <= size <= 4) or (is_cell and which == "layers")
    if valid_dtype and valid_size:
        return
    with pytest.raises(CLEAN_ERRORS):
        CALLS["n"] += 1
        build()


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("args", [(4, 4, 2 ** 31), (4, 4, 2 ** 62), (2 ** 20, 2 ** 16, 1),
                                  (8, 2 ** 15, 4)])
def test_layers_check_their_size_before_building(kind, args, monkeypatch):
    """Parameters that cannot fit (num_layers=2**31 used to grow layer by layer until the
    machine ran out): MemoryError at once, with the machine's RAM taken to be 4 GiB."""
    from fastrnn import _common
    monkeypatch.setattr(_common, "physical_memory", lambda: 4 << 30)
    with pytest.raises(MemoryError, match="parameters needs about"):
        LAYERS[kind](*args)
