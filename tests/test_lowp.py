"""Reduced-precision inference (bfloat16, int8): the kernels, every ISA level, against the
NumPy twin and float32.

What is proved, and within which bound (both precisions unless said):

* Rounding: the C kernels and ``reference.bf16_round`` round float32 to bf16 identically
  (nearest even, subnormals to zero, NaN kept), on activations and on weights; int8
  products (exact integer sums, scaled in float32) equal NumPy's bit for bit.
* ISA levels: avx2, avx512 (bf16 widened to float32, FMAs) and avx512_bf16 (vdpbf16ps)
  give the same bits, for every cell, size and option; the portable build the same bits
  wherever its cell math does (its products always agree), else within 1e-6.
* One step from any state: kernel and reference agree within 1e-5 (the same operands;
  bf16: only the order of the float32 additions differs; int8: only the bias and cell
  math). A whole sequence equals its steps chained one call at a time, and any thread
  split equals one thread, bit for bit.
* A whole sequence against the reference: within 3e-3 (bf16), 1e-2 (int8) -- over many
  steps a state element within a float32 rounding of a bf16 tie (an int8 quantisation
  boundary) lands on the other side in one of them, which moves the next products by one
  bf16 ulp (one int8 step).
* Against float32 on the same weights (PyTorch's uniform init): the bound per cell and size
  in ``F32_BOUNDS`` (about 3x the error measured when written).
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import import_backend

ops = import_backend("ops")
from fastrnn import _core, nn, no_grad, reference  # noqa: E402

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
CASES = [  # (cell, options)
    ("rnn", {}), ("rnn", {"nonlinearity": "relu"}), ("lstm", {}),
    ("gru", {"reset_after": True}), ("gru", {"reset_after": False}),
]
SHAPES = [(1, 1, 1, 1), (5, 3, 7, 33), (4, 20, 16, 17), (3, 2, 40, 65), (2, 9, 33, 8)]
PRECISIONS = ["bfloat16", "int8"]


def _weights(rng, cell, I, H, bias=True):
    G, bound = GATES[cell], 1 / np.sqrt(H)
    shapes = [(G * H, I), (G * H, H), (G * H,), (G * H,)]
    w = [rng.uniform(-bound, bound, s).astype(np.float32) for s in shapes]
    return w if bias else w[:2] + [None, None]


def _states(rng, cell, B, H, given):
    n = 2 if cell == "lstm" else 1
    return [rng.standard_normal((B, H)).astype(np.float32) if given else None
            for _ in range(n)]


def _run(module, cell, x, states, weights, options, **kw):
    """(y, final states) of module.<cell>_forward."""
    out = getattr(module, f"{cell}_forward")(x, *states, *weights, **options, **kw)
    return out[0], out[1:-1]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# -- rounding ------------------------------------------------------------------------------

def test_bf16_round_known_values():
    x = np.array([1.0, 1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8, 1 + 2.0 ** -7 + 2.0 ** -9, -2.5,
                  3.4e38, np.inf, -np.inf, 1e-40, -1e-40, 0.0], np.float32)
    # ties go to the even neighbour; 2^-9 past 1 + 2^-7 is below halfway: down
    want = np.array([1.0, 1.0, 1 + 2.0 ** -6, 1 + 2.0 ** -7, -2.5, np.inf,
                     np.inf, -np.inf, 0.0, -0.0, 0.0], np.float32)
    got = reference.bf16_round(x)
    np.testing.assert_array_equal(got, want)
    assert np.signbit(got[9]) and not np.signbit(got[8])
    assert np.isnan(reference.bf16_round(np.float32(np.nan)))
    assert (reference.bf16_round(x).view(np.uint32) & 0xFFFF == 0).all()


def test_kernel_rounds_activations_and_weights_like_numpy(rng, isa):
    """relu(x . I) exposes the kernel's rounding of x; one-hot inputs that of w_ih."""
    H = 37
    x = np.abs(rng.standard_normal((1, 4, H)) * np.exp(rng.uniform(-30, 30, (1, 4, H))))
    x = x.astype(np.float32)
    eye = np.eye(H, dtype=np.float32)
    zeros = np.zeros((H, H), np.float32)
    y = ops.rnn_forward(x, None, eye, zeros, nonlinearity="relu", training=False,
                        precision="bfloat16")[0]
    np.testing.assert_array_equal(y, reference.bf16_round(x))
    w_ih = np.abs(rng.standard_normal((H, H))).astype(np.float32)
    y = ops.rnn_forward(eye[:, None, :], None, w_ih, zeros, nonlinearity="relu",
                        training=False, precision="bfloat16")[0]
    np.testing.assert_array_equal(y[:, 0, :], reference.bf16_round(w_ih).T)


# -- kernels ---------------------------------------------------------------------------------

@pytest.mark.parametrize("cell,options", CASES)
@pytest.mark.parametrize("T,B,I,H", SHAPES)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_isa_level_gives_the_same_bits(rng, precision, cell, options, T, B, I, H):
    """The SIMD levels agree bit for bit. The portable build, compiled without FMA, rounds
    the cell math (not the products) differently, as its float32 kernels do: bit for bit
    for the ReLU RNN, whose epilogue only adds, and within 1e-6 otherwise."""
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    weights = _weights(rng, cell, I, H)
    states = _states(rng, cell, B, H, True)
    lengths = rng.integers(1, T + 1, B)
    before, results = _core.get_isa(), {}
    try:
        for name in _core.available_isas():
            _core.set_isa(name)
            y, finals = _run(ops, cell, x, states, weights, options, lengths=lengths,
                             training=False, precision=precision)
            results[name] = [y, *finals]
    finally:
        _core.set_isa(before)
    simd = [name for name in results if name != "portable"]
    exact = simd + (["portable"] if options.get("nonlinearity") == "relu" or not simd else [])
    for name in results:
        for a, b in zip(results[name], results[exact[0]]):
            if name in exact:
                np.testing.assert_array_equal(a, b, err_msg=name)
            else:
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=name)


@pytest.mark.usefixtures("isa")
@pytest.mark.parametrize("cell,options", CASES)
@pytest.mark.parametrize("I,H", [(16, 17), (33, 65), (129, 16)])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_rows_bits_do_not_depend_on_its_batch(rng, precision, cell, options, I, H):
    """The input projection of a bf16 or int8 RNN / LSTM runs inside the recurrent tile:
    from 16 rows on within each step's tile, below that as tiles stored before the loop.
    Both add the two finished products the same way, so every row of a batch of 20 (the
    per-step path) has the bits of the same row run alone (B = 1, stored tiles) or in a
    batch of 5 (stored tiles, several rows per tile)."""
    T, B = 6, 20
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    weights = _weights(rng, cell, I, H)
    states = _states(rng, cell, B, H, True)
    y, finals = _run(ops, cell, x, states, weights, options, training=False,
                     precision=precision)
    for rows in (slice(7, 8), slice(0, 5), slice(15, 20)):
        y_part, finals_part = _run(ops, cell, x[:, rows], [s[rows] for s in states], weights,
                                   options, training=False, precision=precision)
        np.testing.assert_array_equal(y_part, y[:, rows])
        for a, b in zip(finals_part, finals):
            np.testing.assert_array_equal(a, b[rows])


@pytest.mark.usefixtures("isa")
@pytest.mark.parametrize("cell,options", CASES)
@pytest.mark.parametrize("T,B,I,H", SHAPES)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_steps_match_the_reference_and_chain_to_the_sequence(rng, precision, cell, options, T, B, I, H):
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    weights = _weights(rng, cell, I, H, bias=H != 17)
    states = _states(rng, cell, B, H, B != 3)
    y_seq, finals_seq = _run(ops, cell, x, states, weights, options, training=False,
                             precision=precision)
    for t in range(T):
        y_t, new = _run(ops, cell, x[t:t + 1], states, weights, options, training=False,
                        precision=precision)
        y_ref, _ = _run(reference, cell, x[t:t + 1], states, weights, options,
                        training=False, precision=precision)
        np.testing.assert_allclose(y_t, y_ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(y_t[0], y_seq[t])
        states = list(new)
    for a, b in zip(states, finals_seq):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cell,options", CASES)
@pytest.mark.parametrize("T,B,I,H", SHAPES + [(30, 16, 64, 64)])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_sequences_match_the_reference_within_the_bound(rng, precision, cell, options, T, B, I, H):
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    weights = _weights(rng, cell, I, H)
    states = _states(rng, cell, B, H, True)
    lengths = rng.integers(1, T + 1, B)
    got = _run(ops, cell, x, states, weights, options, lengths=lengths, training=False,
               precision=precision)
    want = _run(reference, cell, x, states, weights, options, lengths=lengths,
                training=False, precision=precision)
    bound = 3e-3 if precision == "bfloat16" else 1e-2
    np.testing.assert_allclose(got[0], want[0], atol=bound, rtol=0)
    for a, b in zip(got[1], want[1]):
        np.testing.assert_allclose(a, b, atol=bound, rtol=0)


# Max |reduced - float32| of the outputs, x ~ N(0, 1), weights U(-1/sqrt(H), 1/sqrt(H)),
# about 3x what was measured when written (bf16, int8).
F32_BOUNDS = {
    ("rnn", (50, 16, 64, 64)): (2e-2, 6e-2), ("rnn", (30, 8, 128, 256)): (2e-2, 6e-2),
    ("lstm", (50, 16, 64, 64)): (8e-3, 2.5e-2), ("lstm", (30, 8, 128, 256)): (6e-3, 2e-2),
    ("gru", (50, 16, 64, 64)): (1.2e-2, 3.5e-2), ("gru", (30, 8, 128, 256)): (9e-3, 3e-2),
}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("cell,shape", list(F32_BOUNDS))
def test_error_against_float32_is_bounded(rng, precision, cell, shape):
    T, B, I, H = shape
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    weights = _weights(rng, cell, I, H)
    states = _states(rng, cell, B, H, False)
    low = _run(ops, cell, x, states, weights, {}, training=False, precision=precision)[0]
    full = _run(ops, cell, x, states, weights, {}, training=False)[0]
    error = np.abs(low - full).max()
    assert 0 < error <= F32_BOUNDS[cell, shape][PRECISIONS.index(precision)]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("cell,options", CASES)
@pytest.mark.parametrize("B", [24, 2])     # the batch split; the hidden split
def test_thread_splits_give_the_same_bits(rng, precision, cell, options, B):
    import fastrnn
    x = rng.standard_normal((6, B, 64)).astype(np.float32)
    weights = _weights(rng, cell, 64, 256)
    run = lambda: _run(ops, cell, x, _states(rng, cell, B, 256, False), weights,  # noqa: E731
                       options, training=False, precision=precision)[0]
    one = run()
    try:
        fastrnn.set_num_threads(2)
        two = run()
    finally:
        fastrnn.set_num_threads(1)
    np.testing.assert_array_equal(one, two)


def test_a_bf16_pack_runs_bf16_and_float32_can_be_forced(rng):
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    w = _weights(rng, "lstm", 5, 9)
    packs = ops.pack_weights("lstm", w[1], precision="bfloat16", w_ih=w[0], backward=False)
    assert packs.precision == "bfloat16" and packs.backward is None
    by_pack = ops.lstm_forward(x, None, None, *w, training=False, packs=packs)[0]
    by_name = ops.lstm_forward(x, None, None, *w, training=False, precision="bfloat16")[0]
    full = ops.lstm_forward(x, None, None, *w, training=False)[0]
    forced = ops.lstm_forward(x, None, None, *w, training=False, packs=packs,
                              precision="float32")[0]
    np.testing.assert_array_equal(by_pack, by_name)
    np.testing.assert_array_equal(forced, full)
    assert not np.array_equal(by_pack, full)


@pytest.mark.parametrize("backend", ["ops", "reference"])
def test_bad_precision_arguments(rng, backend):
    module = ops if backend == "ops" else reference
    x = rng.standard_normal((2, 1, 3)).astype(np.float32)
    w = _weights(rng, "rnn", 3, 4)
    with pytest.raises(ValueError, match="precision must be one of"):
        module.rnn_forward(x, None, *w, training=False, precision="float16")
    with pytest.raises(ValueError, match="inference only"):
        module.rnn_forward(x, None, *w, precision="int8")   # bf16 trains: test_mixed_precision
    with pytest.raises(TypeError, match="needs float32"):
        module.rnn_forward(x.astype(np.float64), None, *[a.astype(np.float64) for a in w],
                           training=False, precision="bfloat16")
    with pytest.raises(ValueError, match="needs w_ih"):
        ops.pack_weights("rnn", w[1], precision="bfloat16")
    with pytest.raises(ValueError, match="does not support recurrent_mask"):
        module.rnn_forward(x, None, *w, training=False, precision="int8",
                           recurrent_mask=np.ones((1, 4), np.float32))


# -- layers ----------------------------------------------------------------------------------

def _assert_steps_give(layer, x, y):
    """layer.step over x (T, B, I), one step at a time, gives y bit for bit."""
    steps, state = [], None
    for t in range(x.shape[0]):
        out, state = layer.step(x[t], state)
        steps.append(out)
    np.testing.assert_array_equal(np.stack(steps), y)


@pytest.mark.parametrize("cls", [nn.RNN, nn.LSTM, nn.GRU])
def test_layers_in_bf16_match_the_functional_path(rng, cls):
    layer = cls(6, 11, dtype="bfloat16", seed=3)
    assert layer.precision == "bfloat16" and layer.dtype == np.float32
    x = rng.standard_normal((5, 4, 6)).astype(np.float32)
    y, _ = layer(x)
    cell = cls.__name__.lower()
    weights = layer._weights(0, 0)
    want = _run(ops, cell, x, _states(rng, cell, 4, 11, False), weights, {},
                training=False, precision="bfloat16")[0]
    np.testing.assert_array_equal(y, want)
    _assert_steps_give(layer, x, y)   # (its backward: tests/test_mixed_precision.py)


def test_to_bfloat16_and_back_on_a_deep_bidirectional_layer(rng):
    layer = nn.LSTM(8, 16, num_layers=2, bidirectional=True, batch_first=True, seed=5)
    x = rng.standard_normal((3, 12, 8)).astype(np.float32)
    lengths = np.array([12, 5, 1])
    with no_grad():
        full, _ = layer(x, lengths=lengths)
    layer.to("bfloat16")
    assert "precision='bfloat16'" in repr(layer)
    low, (h, c) = layer(x, lengths=lengths)
    assert 0 < np.abs(low - full).max() < 5e-3
    assert (low[1, 5:] == 0).all() and (low[2, 1:] == 0).all()
    layer.to(np.float32)
    assert layer.precision == "float32"
    with no_grad():
        again, _ = layer(x, lengths=lengths)
    np.testing.assert_array_equal(again, full)


def test_torch_bfloat16_dtype_spelling():
    torch = pytest.importorskip("torch")
    layer = nn.GRU(3, 4).to(torch.bfloat16)
    assert layer.precision == "bfloat16"


# -- int8 ------------------------------------------------------------------------------------

def test_quantize_rows_known_values():
    q, s = reference.quantize_rows(np.array([[1.0, -0.5, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0],
                                             [-3.0, 1.5, 0.0118, 0.0119]], np.float32))
    np.testing.assert_array_equal(s, np.float32([1 / 127, 1, 3 / 127]))
    np.testing.assert_array_equal(q, [[127, -64, 32, 0], [0, 0, 0, 0], [-127, 64, 0, 1]])
    assert q.dtype == np.int8 and s.dtype == np.float32


@pytest.mark.usefixtures("isa")
@pytest.mark.parametrize("I", [1, 7, 64, 300])
def test_int8_products_equal_numpy_bit_for_bit(rng, I):
    """A ReLU RNN step from zero state without bias is relu(x w_ih^T) alone: the int8
    product, exactly as reference._int8_matmul forms it."""
    x = rng.standard_normal((1, 5, I)).astype(np.float32)
    w_ih = rng.standard_normal((19, I)).astype(np.float32)
    w_hh = rng.standard_normal((19, 19)).astype(np.float32)
    got = ops.rnn_forward(x, None, w_ih, w_hh, nonlinearity="relu", training=False,
                          precision="int8")[0]
    want = reference.rnn_forward(x, None, w_ih, w_hh, nonlinearity="relu", training=False,
                                 precision="int8")[0]
    np.testing.assert_array_equal(got, want)


# Sizes on both sides of every tile edge (vectors of 4, 8, 16 lanes; blocks of 1-4 of them),
# and batches on both sides of every row tile (3 and 4 rows on AVX2 and portable, 6 and 8
# on AVX-512; one row takes two blocks at once).
EDGES = [1, 7, 15, 16, 17, 31, 33, 63, 65, 127, 129]
ROWS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 17]
INT8_CELLS = [("rnn", {}), ("lstm", {}), ("gru", {"reset_after": True}),
              ("gru", {"reset_after": False})]


def _int8_panels(rng, cell, options, I, H, low=-1.0):
    """An int8 pack of random weights (uniform in [low, 1)) at the current ISA level, and
    the (W_q, s) of each of its panels in order: the w_hh products, then w_ih."""
    G = GATES[cell]
    w_ih = rng.uniform(low, 1, (G * H, I)).astype(np.float32)
    w_hh = rng.uniform(low, 1, (G * H, H)).astype(np.float32)
    packs = ops.pack_weights(cell, w_hh, precision="int8", w_ih=w_ih, **options)
    (q_ih, s_ih), (q_hh, s_hh) = packs.quantized
    split = cell == "gru" and not options["reset_after"]          # r, z apart from n
    rows = [slice(0, 2 * H), slice(2 * H, 3 * H)] if split else [slice(None)]
    return packs.forward, [(q_hh[r], s_hh[r]) for r in rows] + [(q_ih, s_ih)]


def _assert_panel_products_exact(rng, pack, panels, batches, low=-1.0):
    for index, (q, s) in enumerate(panels):
        for B in batches:
            a = rng.uniform(low, 1, (B, q.shape[1])).astype(np.float32)
            a[0, 0] = 0                                             # a row with a zero
            got = _core.lowp_product(pack, index, a, q.shape[0])
            want = reference._int8_matmul(a, reference._Int8Weight(q, s))
            np.testing.assert_array_equal(got, want, err_msg=f"panel {index}, B={B}")


@pytest.mark.usefixtures("isa")
@pytest.mark.parametrize("cell,options", INT8_CELLS)
@pytest.mark.parametrize("H", EDGES)
def test_int8_panel_products_equal_numpy_bit_for_bit(rng, cell, options, H):
    """Every panel of an int8 pack (vpmaddwd pairs on AVX2, vpdpbusd quads on AVX512-VNNI,
    exact floats elsewhere), every tile shape: the exact integer sums, scaled as NumPy
    scales them."""
    I = EDGES[(EDGES.index(H) + 4) % len(EDGES)]                   # I != H, edges too
    pack, panels = _int8_panels(rng, cell, options, I, H)
    _assert_panel_products_exact(rng, pack, panels, ROWS)


@pytest.mark.usefixtures("isa")
@pytest.mark.parametrize("I", [1300, 3001])
def test_int8_products_stay_exact_past_float32_integers(rng, I):
    """Positive operands near 127 sum past 2^24 beyond K = 1040 (FR_I8_EXACT_K), where
    float32 sums of the int8 products would round: still the exact integers."""
    pack, panels = _int8_panels(rng, "lstm", {}, I, 9, low=0.9)
    q, s = panels[1]
    a = rng.uniform(0.9, 1, (7, I)).astype(np.float32)
    sums = reference.quantize_rows(a)[0].astype(np.int64) @ q.T.astype(np.int64)
    assert sums.min() > 2 ** 24
    for B in (1, 4, 7):
        got = _core.lowp_product(pack, 1, a[:B], q.shape[0])
        want = reference._int8_matmul(a[:B], reference._Int8Weight(q, s))
        np.testing.assert_array_equal(got, want, err_msg=f"B={B}")


def test_lowp_product_rejects_what_the_pack_lacks(rng):
    pack, panels = _int8_panels(rng, "gru", {"reset_after": True}, 5, 6)
    a = np.ones((2, 6), np.float32)
    with pytest.raises(ValueError, match=r"no panel 2 of shape \(K, N\) = \(6, 18\)"):
        _core.lowp_product(pack, 2, a, 18)
    with pytest.raises(ValueError, match=r"no panel 0 of shape \(K, N\) = \(6, 17\)"):
        _core.lowp_product(pack, 0, a, 17)


@pytest.mark.usefixtures("isa")
@pytest.mark.parametrize("T,B,I,H", [(5, 17, 33, 65), (4, 1, 7, 129), (3, 13, 129, 16),
                                     (6, 3, 1100, 31), (2, 40, 63, 17)])
def test_int8_relu_rnn_sequences_equal_numpy_bit_for_bit(rng, T, B, I, H):
    """Without biases a ReLU RNN only adds the two int8 products: a whole sequence, with a
    state and lengths, bit for bit the reference (the per-step input projection from 16
    rows on, before the loop below; the pair tile at B = 1)."""
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    w_ih = (rng.standard_normal((H, I)) / np.sqrt(I)).astype(np.float32)
    w_hh = (rng.standard_normal((H, H)) / np.sqrt(H)).astype(np.float32)
    h0 = rng.standard_normal((B, H)).astype(np.float32)
    lengths = rng.integers(1, T + 1, B)
    got, want = (module.rnn_forward(x, h0, w_ih, w_hh, nonlinearity="relu", training=False,
                                    precision="int8", lengths=lengths)
                 for module in (ops, reference))
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def _outputs(out):
    """[y, *final states] of a layer's (y, state) -- state an array or a tuple of them."""
    y, state = out
    return [y, *(state if isinstance(state, tuple) else (state,))]


@pytest.mark.usefixtures("isa")
@pytest.mark.parametrize("cls", [nn.RNN, nn.LSTM, nn.GRU])
def test_int8_bidirectional_layers_any_thread_count_same_bits(rng, cls):
    """A deep bidirectional int8 layer with lengths: 2 and 3 threads (batch split at 24
    rows, hidden split at 2) give the bits of 1 thread, and stay near float32."""
    import fastrnn
    layer = cls(20, 129, num_layers=2, bidirectional=True, seed=4)
    quantized = fastrnn.quantize_dynamic(layer)
    for B in (24, 2):
        x = rng.standard_normal((7, B, 20)).astype(np.float32)
        lengths = rng.integers(1, 8, B)
        with no_grad():
            full, _ = layer(x, lengths=lengths)
        runs = []
        try:
            for threads in (1, 2, 3):
                fastrnn.set_num_threads(threads)
                runs.append(quantized(x, lengths=lengths))
        finally:
            fastrnn.set_num_threads(1)
        for run in runs[1:]:
            for a, b in zip(_outputs(run), _outputs(runs[0])):
                np.testing.assert_array_equal(a, b)
        assert 0 < np.abs(runs[0][0] - full).max() < 5e-2


@pytest.mark.parametrize("cls", [nn.RNN, nn.LSTM, nn.GRU])
def test_quantize_dynamic_layers(rng, cls):
    import fastrnn
    layer = cls(6, 11, num_layers=2, bidirectional=True, seed=3)
    x = rng.standard_normal((5, 4, 6)).astype(np.float32)
    with no_grad():
        full, _ = layer(x)
    quantized = fastrnn.quantize_dynamic(layer)
    assert quantized is not layer and layer.precision == "float32"
    assert quantized.precision == "int8" and "precision='int8'" in repr(quantized)
    y, _ = quantized(x)
    assert 0 < np.abs(y - full).max() < 3e-2
    # the Parameters hold what the int8 values stand for; the functional path agrees
    cell = cls.__name__.lower()
    (q_ih, s_ih), (q_hh, s_hh) = quantized._int8[0, 0]
    np.testing.assert_array_equal(quantized.weight_ih_l0.value, q_ih * s_ih[:, None])
    single = cls(6, 11, seed=3)
    one = fastrnn.quantize_dynamic(single)
    want = _run(ops, cell, x, _states(rng, cell, 4, 11, False), one._weights(0, 0), {},
                training=False, precision="int8")[0]
    np.testing.assert_array_equal(one(x)[0], want)
    _assert_steps_give(one, x, want)
    with pytest.raises(RuntimeError, match="int8 module runs inference only"):
        quantized.backward(np.ones_like(y))
    assert fastrnn.quantize_dynamic(layer, inplace=True) is layer and layer.precision == "int8"


def test_quantized_checkpoints_load_back_bit_for_bit(rng, tmp_path):
    import fastrnn
    model = fastrnn.quantize_dynamic(fastrnn.LanguageModel(17, hidden=24, embed=5, layers=2,
                                                           cell="gru", seed=2))
    ids = rng.integers(0, 17, (3, 11))
    path = tmp_path / "int8.ckpt"
    model.save(path)
    loaded = fastrnn.LanguageModel.load(path)
    with no_grad():
        np.testing.assert_array_equal(loaded(ids)[0], model(ids)[0])
    state = loaded.state_dict()
    assert state["net.rnn.weight_hh_l1.int8"].dtype == np.int8
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(state[name], value)
    state["net.rnn.weight_hh_l1.scale"] = state["net.rnn.weight_hh_l1.scale"][:-1]
    with pytest.raises(ValueError, match="weight_hh_l1.scale"):
        loaded.load_state_dict(state)


def test_quantize_dynamic_bad_input():
    import fastrnn
    with pytest.raises(TypeError, match="fastrnn Module"):
        fastrnn.quantize_dynamic(object())
    with pytest.raises(ValueError, match="no RNN, LSTM or GRU"):
        fastrnn.quantize_dynamic(nn.Linear(3, 4))
    with pytest.raises(ValueError, match="float32 layers"):
        fastrnn.quantize_dynamic(nn.LSTM(3, 4, dtype="float64"))


def test_cli_sample_with_reduced_precision(tmp_path, capsys):
    import fastrnn
    from fastrnn import cli
    from fastrnn.data import Vocabulary
    vocab = Vocabulary.from_text("abcdef \n")
    path = tmp_path / "lm.ckpt"
    fastrnn.LanguageModel(vocab, hidden=16, embed=4, seed=0).save(path)
    texts = {}
    for precision in ("float32", "bf16", "int8"):
        assert cli.main(["sample", str(path), "--length", "40", "--seed", "1", "--greedy",
                         "--precision", precision]) == 0
        texts[precision] = capsys.readouterr().out
        assert len(texts[precision]) >= 40
    with pytest.raises(SystemExit):
        cli.main(["sample", str(path), "--precision", "float16"])
