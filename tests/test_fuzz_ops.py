"""Fuzzing fastrnn.ops against fastrnn.reference (hypothesis): random shapes (0, 1, odd
sizes), every memory layout, NaN/inf, wrong dtypes, bad lengths, foreign caches and absurd
sizes. Every call matches the reference or raises TypeError/ValueError/MemoryError, the
same type in both backends, and never writes into its inputs.

Short under the default ``fuzz-ci`` profile; ``FASTRNN_FUZZ=long`` runs the long campaign
(tests/fuzz_helpers.py)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

from fastrnn import ops, reference
from fastrnn._common import GATES
from fuzz_helpers import (BAD_DTYPES, CALLS, CLEAN_ERRORS, FLOATS, as_dtype, assert_close,
                          clean, lay_out, layouts, same_outcome, sprinkle)

SIZES = st.sampled_from([1, 1, 2, 3, 5, 7, 8, 9, 16, 17, 33])
BATCHES = st.sampled_from([0, 1, 1, 2, 3, 5, 8, 9, 17])
STEPS = st.sampled_from([1, 1, 2, 3, 5, 9])
LENGTH_DTYPES = (np.int8, np.uint8, np.int16, np.int32, np.int64, np.uint64)
ARGS = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh")


@st.composite
def cases(draw, specials=True):
    """One forward+backward call's arguments (valid ones), plus its cell and options."""
    cell = draw(st.sampled_from(sorted(GATES)))
    dtype = np.dtype(draw(st.sampled_from(FLOATS)))
    T, B, I, H = draw(STEPS), draw(BATCHES), draw(SIZES), draw(SIZES)
    G = GATES[cell]
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    k = 1 / np.sqrt(H)

    def rand(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(dtype)

    arrays = {"x": rand(T, B, I), "w_ih": rand(G * H, I, scale=k), "w_hh": rand(G * H, H, scale=k)}
    if draw(st.booleans()):
        arrays.update(b_ih=rand(G * H, scale=k), b_hh=rand(G * H, scale=k))
    for name in ("h0", "c0") if cell == "lstm" else ("h0",):
        arrays[name] = rand(B, H) if draw(st.booleans()) else None
    upstream = {"dy": rand(T, B, H) if draw(st.booleans()) else None,
                "dh_n": rand(B, H) if draw(st.booleans()) else None}
    if cell == "lstm":
        upstream["dc_n"] = rand(B, H) if draw(st.booleans()) else None
    if specials and draw(st.integers(0, 4)) == 0:   # NaN/inf in one argument
        name = draw(st.sampled_from(sorted(n for n, a in arrays.items() if a is not None)))
        sprinkle(rng, arrays[name], draw(st.integers(1, 3)))
    lengths = None
    if draw(st.booleans()):
        lengths = rng.integers(1, T + 1, size=B).astype(draw(st.sampled_from(LENGTH_DTYPES)))
    options = {}
    if cell == "rnn":
        options["nonlinearity"] = draw(st.sampled_from(["tanh", "relu"]))
    if cell == "gru":
        options["reset_after"] = draw(st.booleans())
    return {"cell": cell, "dtype": dtype, "arrays": arrays, "upstream": upstream,
            "lengths": lengths, "options": options}


def forward_args(case, arrays=None, lengths="same"):
    a = case["arrays"] if arrays is None else arrays
    states = (a.get("h0"), a.get("c0")) if case["cell"] == "lstm" else (a.get("h0"),)
    return (a["x"], *states, a["w_ih"], a["w_hh"], a.get("b_ih"), a.get("b_hh"))


def call(module, case, arrays=None, upstream=None, lengths="same", training=True, packs=None):
    """Forward, then backward when training: ``(forward outputs, grads or None)``."""
    cell = case["cell"]
    forward = getattr(module, f"{cell}_forward")
    backward = getattr(module, f"{cell}_backward")
    lengths = case["lengths"] if isinstance(lengths, str) else lengths
    extra = {} if packs is None else {"packs": packs}
    *outputs, cache = forward(*forward_args(case, arrays), lengths=lengths, training=training,
                              **case["options"], **extra)
    if not training:
        assert cache is None
        return outputs, None
    up = case["upstream"] if upstream is None else upstream
    names = ("dy", "dh_n", "dc_n") if cell == "lstm" else ("dy", "dh_n")
    return outputs, backward(*(up[n] for n in names), cache)


def compare(got, want, specials=frozenset()):
    """Outputs match exactly in their NaN/inf pattern and gradients too, unless the inputs
    held NaN/inf (``specials``: the names of those inputs; see assert_close). Specials in
    the recurrence (w_hh, h0, c0) relax the outputs too: with h0 None the kernels skip the
    zero initial state's product (the reference, like PyTorch, computes 0 * NaN), and an
    infinite state meets a saturated gate as 0 * inf in one algebraic form of the update
    and not in the other (GRU's (1 - z) n + z h vs n + z (h - n))."""
    (got_out, got_grads), (want_out, want_grads) = got, want
    recurrent = specials & {"w_hh", "h0", "c0"}
    for i, (g, w) in enumerate(zip(got_out, want_out)):
        assert_close(f"output {i}", g, w, nan_exact=not recurrent)
    if want_grads is not None:
        for name, g, w in zip(want_grads._fields, got_grads, want_grads):
            assert_close(name, g, w, nan_exact="finite" if recurrent else not specials)


def has_specials(case) -> set:
    """Names of the arguments holding NaN or inf."""
    return {n for n, a in case["arrays"].items() if a is not None and not np.isfinite(a).all()}


def laid_out(draw, arrays):
    return {name: lay_out(a, draw(layouts())) for name, a in arrays.items()}


@given(case=cases(), data=st.data(), training=st.booleans(), packed=st.booleans())
def test_any_layout_matches_reference(case, data, training, packed):
    """ops on arrays of any layout (Fortran, negative strides, strided, read-only,
    misaligned) gives the reference's results on contiguous copies, NaN/inf included, and
    leaves its inputs unchanged."""
    arrays = laid_out(data.draw, case["arrays"])
    upstream = laid_out(data.draw, case["upstream"])
    before = {n: None if a is None else a.copy() for n, a in {**arrays, **upstream}.items()}
    packs = None
    if packed:
        packs = clean(lambda: ops.pack_weights(case["cell"], arrays["w_hh"],
                                               **case["options"]))
    want = call(reference, case, training=training)
    CALLS["n"] += 2
    got = call(ops, case, arrays, upstream, training=training, packs=packs)
    compare(got, want, has_specials(case))
    for name, a in {**arrays, **upstream}.items():
        if a is not None:
            assert np.array_equal(a, before[name], equal_nan=True), f"{name} was modified"


def _wrong_dtype(data, case):
    name = data.draw(st.sampled_from([n for n, a in case["arrays"].items() if a is not None]))
    arrays = dict(case["arrays"])
    other = data.draw(st.sampled_from(BAD_DTYPES + tuple(d for d in FLOATS
                                                          if d != case["dtype"])))
    arrays[name] = as_dtype(arrays[name], other)
    return {"arrays": arrays}


def _wrong_shape(data, case):
    name = data.draw(st.sampled_from(ARGS[:5] if case["cell"] == "lstm" else
                                     ("x", "h0", "w_ih", "w_hh", "b_ih")))
    arrays = dict(case["arrays"])
    shape = tuple(data.draw(st.lists(st.integers(0, 6), max_size=4)))
    arrays[name] = np.zeros(shape, case["dtype"])
    return {"arrays": arrays}


def _bad_lengths(data, case):
    T, B = case["arrays"]["x"].shape[:2]
    choice = data.draw(st.sampled_from(["zero", "negative", "over", "float", "shape", "2d",
                                        "bool", "object", "scalar", "huge", "list", "nan"]))
    lengths = {
        "zero": np.zeros(B, np.int64), "negative": -np.ones(B, np.int64),
        "over": np.full(B, T + 1), "float": np.full(B, 1.0), "shape": np.ones(B + 1, np.int64),
        "2d": np.ones((B, 1), np.int64), "bool": np.ones(B, bool),
        "object": np.ones(B, object), "scalar": np.int64(1), "huge": np.full(B, 2 ** 63 - 1),
        "list": [1] * B, "nan": np.full(B, np.nan),
    }[choice]
    return {"lengths": lengths}


def _foreign_upstream(data, case):
    up = dict(case["upstream"])
    name = data.draw(st.sampled_from(sorted(up)))
    T, B, _ = case["arrays"]["x"].shape
    H = case["arrays"]["w_hh"].shape[1]
    shape = (T, B, H) if name == "dy" else (B, H)
    kind = data.draw(st.sampled_from(["dtype", "shape", "object", "int"]))
    other = np.float32 if case["dtype"] == np.float64 else np.float64
    up[name] = {"dtype": np.zeros(shape, other), "shape": np.zeros(shape + (1,), case["dtype"]),
                "object": np.zeros(shape, object), "int": np.zeros(shape, np.int32)}[kind]
    return {"upstream": up}


MUTATIONS = {"dtype": _wrong_dtype, "shape": _wrong_shape, "lengths": _bad_lengths,
             "upstream": _foreign_upstream}


@given(case=cases(specials=False), data=st.data(), mutation=st.sampled_from(sorted(MUTATIONS)))
def test_bad_arguments_raise_the_same_clean_error(case, data, mutation):
    """One argument made wrong (dtype, shape, lengths, upstream gradient): both backends
    raise the same TypeError/ValueError -- or, where the change happens to be valid, agree."""
    change = MUTATIONS[mutation](data, case)

    def run(module):
        return lambda: call(module, case, change.get("arrays"), change.get("upstream"),
                            change.get("lengths", "same"))

    results = same_outcome(run(ops), run(reference))
    if results is not None:
        compare(*results)


@given(case=cases(specials=False), other=cases(specials=False))
def test_caches_from_another_call(case, other):
    """A backward given the cache of another cell, backend, dtype or size raises a clean
    error (or, when the other call is of the same kind and size, works)."""
    _, _, *rest = getattr(reference, f"{other['cell']}_forward")(
        *forward_args(other), lengths=other["lengths"], **other["options"])
    foreign = {"reference": rest[-1]}
    *_, foreign["ops"] = getattr(ops, f"{other['cell']}_forward")(
        *forward_args(other), lengths=other["lengths"], **other["options"])
    names = ("dy", "dh_n", "dc_n") if case["cell"] == "lstm" else ("dy", "dh_n")
    backward = getattr(ops, f"{case['cell']}_backward")
    for source, cache in foreign.items():
        out = clean(lambda: backward(*(case["upstream"][n] for n in names), cache))
        if source == "reference":
            assert out is None, "ops accepted a cache of the reference backend"
    for junk in (None, object(), {"inputs": 1}, (1, 2)):
        clean(lambda: backward(*(case["upstream"][n] for n in names), junk))


ABSURD = [2 ** 31, 2 ** 31 + 1, 2 ** 32, 2 ** 40, 2 ** 62, 2 ** 63 - 1]


def _huge(shape, dtype):
    """A zero-strided view of the given (huge) shape: costs nothing until copied."""
    return np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape, (0,) * len(shape))


@pytest.mark.parametrize("cell", sorted(GATES))
@given(which=st.sampled_from(["T", "B", "I", "H", "TB"]), size=st.sampled_from(ABSURD),
       dtype=st.sampled_from(FLOATS))
def test_absurd_sizes_are_refused_before_allocating(cell, which, size, dtype):
    """Sizes whose products pass 2**31 or 2**63 (zero-strided views, so the arrays
    themselves cost nothing): a clean error before anything of that size is allocated."""
    G = GATES[cell]
    T, B, I, H = 2, 2, 3, 4
    if which == "TB":
        T = B = int(np.sqrt(size)) + 1
    else:
        T, B, I, H = (size if which == n else v for n, v in zip("TBIH", (T, B, I, H)))
    try:
        x = _huge((T, B, I), dtype)
        w_ih, w_hh = _huge((G * H, I), dtype), _huge((G * H, H), dtype)
    except (ValueError, OverflowError):   # NumPy itself refuses shapes past 2**63 bytes
        return
    states = (None, None) if cell == "lstm" else (None,)
    for module in (ops, reference):
        forward = getattr(module, f"{cell}_forward")
        with pytest.raises(CLEAN_ERRORS):
            CALLS["n"] += 1
            forward(x, *states, w_ih, w_hh)


@given(cell=st.sampled_from(sorted(GATES)), H=st.sampled_from([0, -1, 2 ** 31, 2 ** 62]),
       dtype=st.sampled_from(FLOATS + (np.int32, np.float16, object)))
def test_pack_weights_refuses_bad_weights(cell, H, dtype):
    G = GATES[cell]
    try:
        w_hh = _huge((G * max(H, 1), max(H, 1)), dtype) if H > 0 else np.zeros((0, 0), dtype)
    except (ValueError, OverflowError):
        return
    with pytest.raises(CLEAN_ERRORS):
        CALLS["n"] += 1
        ops.pack_weights(cell, w_hh)


@given(m=st.integers(0, 9), k=st.integers(0, 9), n=st.integers(0, 9),
       layout_a=layouts(), layout_b=layouts(), trans_a=st.booleans(), trans_b=st.booleans(),
       dtype=st.sampled_from(FLOATS), seed=st.integers(0, 2 ** 16))
def test_gemm_matches_numpy(m, k, n, layout_a, layout_b, trans_a, trans_b, dtype, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    CALLS["n"] += 1
    got = ops.gemm(lay_out(a, layout_a), lay_out(b, layout_b), trans_a=trans_a, trans_b=trans_b)
    want = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b)
    assert_close("gemm", got, want.astype(dtype))


@given(bad=st.sampled_from(BAD_DTYPES), shape=st.lists(st.integers(0, 4), max_size=3))
def test_gemm_refuses_bad_operands(bad, shape):
    a = np.zeros((2, 2))
    wrong = [(as_dtype(a, bad), a), (a, a.astype(np.float32))]
    if len(shape) != 2 or shape[0] != 2:     # (2, 2) @ (2, n) would be valid
        wrong.append((a, np.zeros(shape)))
    for args in wrong:
        with pytest.raises(CLEAN_ERRORS):
            CALLS["n"] += 1
            ops.gemm(*args)


@pytest.mark.parametrize("cell", sorted(GATES))
@pytest.mark.parametrize("shape,error", [
    ((2 ** 30 + 1, 2, 1), ValueError),      # T*B past 2**31: 8 GiB of x if it were copied
    ((2 ** 28, 1, 2 ** 3), MemoryError),    # within BLAS's ints, but 8+ GiB of x and y
    ((3, 2, 2 ** 31), ValueError),          # I past 2**31
])
def test_huge_views_are_refused_before_any_copy(cell, shape, error, monkeypatch):
    """A zero-strided x whose contiguous copy would be gigabytes: refused by the size checks
    before the copy (tracemalloc sees no large allocation). The machine's RAM is taken to be
    4 GiB, so the MemoryError case does not depend on this machine."""
    import tracemalloc
    from fastrnn import _common
    monkeypatch.setattr(_common, "physical_memory", lambda: 4 << 30)
    G, H = GATES[cell], 3
    x = _huge(shape, np.float32)
    w_ih, w_hh = _huge((G * H, shape[2]), np.float32), np.zeros((G * H, H), np.float32)
    states = (None, None) if cell == "lstm" else (None,)
    for module in (ops, reference):
        tracemalloc.start()
        try:
            match = r"T=\d+, B=\d+, I=\d+, H=3 needs about" if error is MemoryError else None
            with pytest.raises(error, match=match):
                getattr(module, f"{cell}_forward")(x, *states, w_ih, w_hh)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20, f"{module.__name__} allocated {peak} bytes before refusing"


def test_misaligned_arrays_reach_the_kernels_aligned():
    """np.ascontiguousarray keeps a misaligned array as it is (a misaligned double * is
    undefined behaviour in C; UBSan reported it in the packing code): the kernels' inputs
    are copied to aligned memory instead, with the same values."""
    from fastrnn._common import c_array
    from fuzz_helpers import LAYOUTS
    a = LAYOUTS["misaligned"](np.arange(12.0).reshape(3, 4))
    assert not a.flags.aligned and a.flags.c_contiguous
    b = c_array(a)
    assert b.flags.aligned and b.flags.c_contiguous and np.array_equal(a, b)


def _huge_recurrent_weight_case(seed: int) -> dict:
    """An LSTM call whose w_hh holds 1e30 in the o gate's row of the last unit."""
    rng = np.random.default_rng(seed)
    T, B, I, H = 5, 1, 17, 3
    k = 1 / np.sqrt(H)

    def rand(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    w_hh = rand(4 * H, H, scale=k)
    w_hh[4 * H - 1, H - 1] = 1e30
    arrays = {"x": rand(T, B, I), "w_ih": rand(4 * H, I, scale=k), "w_hh": w_hh,
              "b_ih": rand(4 * H, scale=k), "b_hh": rand(4 * H, scale=k), "h0": None,
              "c0": None}
    upstream = {"dy": None, "dh_n": rand(B, H), "dc_n": rand(B, H)}
    return {"cell": "lstm", "dtype": np.dtype(np.float32), "arrays": arrays,
            "upstream": upstream, "lengths": None, "options": {}}


@pytest.mark.usefixtures("isa")
@pytest.mark.parametrize("seed", range(6))
def test_a_huge_recurrent_weight_matches_the_reference(seed):
    """Found by the fuzz test above: 1e30 in w_hh drives the o gate's pre-activation to
    about -1e29 wherever the state is negative. Its sigmoid must then be exactly 0, as in
    float32 (the kernels' exp once stopped at 88.3, leaving 4.6e-39); 1e30 times the
    state that tiny gate makes next step turned it into outputs and gradients unboundedly
    far from the reference's."""
    case = _huge_recurrent_weight_case(seed)
    with np.errstate(all="ignore"):
        want = call(reference, case)
    compare(call(ops, case), want, has_specials(case))


@pytest.mark.usefixtures("isa")
@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_a_huge_recurrent_weight_saturating_tanh_matches_the_reference(cell):
    """Found by the fuzz test in CI: an RNN with w_hh = -1e30 (T = 2, B = I = H = 1)
    saturates tanh. It must return exactly +-1 there, as float32 tanh does: 1 - 4.8e-7
    left 1 - y^2 = 9.5e-7, which the 1e30 weight turned into dx 5e23 times the
    reference's."""
    G = {"rnn": 1, "gru": 3}[cell]
    w_hh = np.full((G, 1), 0.35, np.float32)
    w_hh[-1, 0] = -1e30
    arrays = {"x": np.array([[[1.3]], [[-0.13]]], np.float32),
              "w_ih": np.full((G, 1), 0.64, np.float32), "w_hh": w_hh,
              "b_ih": None, "b_hh": None, "h0": np.array([[0.36]], np.float32)}
    case = {"cell": cell, "dtype": np.dtype(np.float32), "arrays": arrays,
            "upstream": {"dy": None, "dh_n": np.array([[1.304]], np.float32)},
            "lengths": None, "options": {}}
    with np.errstate(all="ignore"):
        want = call(reference, case)
    compare(call(ops, case), want, has_specials(case))
