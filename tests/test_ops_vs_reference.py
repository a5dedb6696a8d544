"""fastrnn.ops (C) against fastrnn.reference (NumPy): forward and backward, every cell x
dtype x instruction-set variant (portable, AVX2, AVX-512 where the CPU has them), over
edge sizes (T=1, B=1, H=1), odd sizes that hit SIMD tails (7, 33, 65), I != H, batches
on both sides of the small-batch kernel's threshold, with and without lengths, biases
and initial states."""
from __future__ import annotations

import numpy as np
import pytest

import helpers
from fastrnn import ops, reference

CELLS = helpers.KERNEL_CELLS
SHAPES = [  # (T, B, I, H)
    (1, 1, 1, 1), (1, 3, 4, 5), (4, 1, 3, 1), (5, 2, 7, 7), (6, 3, 33, 7),
    (3, 4, 5, 33), (4, 2, 65, 65), (2, 7, 16, 65),
    (3, 17, 5, 9), (3, 32, 4, 6),   # the input projection step by step (B >= 16)
    (2, 33, 5, 9), (2, 40, 7, 33),
]
TOLERANCE = {np.float32: 2e-5, np.float64: 1e-10}


# Every test runs once per instruction-set variant of the kernels this CPU has.
pytestmark = pytest.mark.usefixtures("isa")


def make_case(cell, shape, dtype, *, lengths, bias, initial, seed=0):
    """Random inputs, weights and upstream gradients for one configuration."""
    kernel, G, _ = CELLS[cell]
    T, B, I, H = shape
    rng = np.random.default_rng(seed)

    def rand(*s, scale=1.0):
        return (scale * rng.standard_normal(s)).astype(dtype)

    n_states = 2 if kernel == "lstm" else 1
    scale = 1 / np.sqrt(H)
    return {
        "x": rand(T, B, I),
        "states": [rand(B, H) if initial else None for _ in range(n_states)],
        "weights": [rand(G * H, I, scale=scale), rand(G * H, H, scale=scale),
                    rand(G * H, scale=scale) if bias else None,
                    rand(G * H, scale=scale) if bias else None],
        "lengths": rng.integers(1, T + 1, size=B) if lengths else None,
        "dy": rand(T, B, H),
        "d_states": [rand(B, H) for _ in range(n_states)],
    }


def run(module, cell, case, training=True):
    """Forward then backward through ``module``; returns (forward outputs, grads)."""
    kernel, _, options = CELLS[cell]
    forward = getattr(module, f"{kernel}_forward")
    backward = getattr(module, f"{kernel}_backward")
    if "packs" in case:
        options = dict(options, packs=case["packs"])
    *outputs, cache = forward(case["x"], *case["states"], *case["weights"],
                              lengths=case["lengths"], training=training, **options)
    if not training:
        return outputs, None
    return outputs, backward(case["dy"], *case["d_states"], cache)


def assert_close(name, got, want, dtype):
    helpers.assert_close(name, got, want, dtype, TOLERANCE)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
def test_forward_backward_match_reference(cell, shape, dtype, lengths):
    case = make_case(cell, shape, dtype, lengths=lengths, bias=True, initial=True)
    got_out, got_grads = run(ops, cell, case)
    want_out, want_grads = run(reference, cell, case)
    for i, (got, want) in enumerate(zip(got_out, want_out)):
        assert_close(f"output {i}", got, want, dtype)
    for name, got, want in zip(want_grads._fields, got_grads, want_grads):
        assert_close(name, got, want, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bias,initial", [(False, False), (False, True), (True, False)])
def test_without_bias_or_initial_state(cell, dtype, bias, initial):
    case = make_case(cell, (4, 3, 5, 6), dtype, lengths=True, bias=bias, initial=initial)
    got_out, got_grads = run(ops, cell, case)
    want_out, want_grads = run(reference, cell, case)
    for got, want in zip(list(got_out) + list(got_grads), list(want_out) + list(want_grads)):
        assert_close("value", got, want, dtype)
    if not bias:
        assert got_grads.db_ih is None and got_grads.db_hh is None


@pytest.mark.parametrize("cell", CELLS)
def test_inference_matches_training_forward(cell):
    case = make_case(cell, (6, 3, 5, 7), np.float32, lengths=True, bias=True, initial=True)
    trained, _ = run(ops, cell, case, training=True)
    kernel, _, options = CELLS[cell]
    *inferred, cache = getattr(ops, f"{kernel}_forward")(
        case["x"], *case["states"], *case["weights"], lengths=case["lengths"],
        training=False, **options)
    assert cache is None
    for got, want in zip(inferred, trained):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("cell", CELLS)
def test_none_upstream_gradients_mean_zero(cell):
    case = make_case(cell, (3, 2, 4, 5), np.float64, lengths=False, bias=True, initial=True)
    kernel, _, options = CELLS[cell]
    forward = getattr(ops, f"{kernel}_forward")
    backward = getattr(ops, f"{kernel}_backward")
    *_, cache = forward(case["x"], *case["states"], *case["weights"], **options)
    with_none = backward(None, *[None] * len(case["d_states"]), cache)
    with_zero = backward(np.zeros_like(case["dy"]),
                         *[np.zeros_like(d) for d in case["d_states"]], cache)
    for got, want in zip(with_none, with_zero):
        np.testing.assert_array_equal(got, want)
        assert not np.any(got)


def test_non_contiguous_inputs_are_copied():
    case = make_case("lstm", (5, 3, 4, 6), np.float64, lengths=False, bias=True, initial=True)
    x_strided = np.asfortranarray(case["x"])
    w_ih_strided = np.ascontiguousarray(case["weights"][0].T).T
    assert not x_strided.flags.c_contiguous and not w_ih_strided.flags.c_contiguous
    want = ops.lstm_forward(case["x"], *case["states"], *case["weights"])[0]
    got = ops.lstm_forward(x_strided, *case["states"], w_ih_strided,
                           *case["weights"][1:])[0]
    np.testing.assert_array_equal(got, want)


def test_backward_twice_from_one_cache_is_repeatable():
    case = make_case("gru", (4, 2, 3, 5), np.float64, lengths=True, bias=True, initial=True)
    *_, cache = ops.gru_forward(case["x"], *case["states"], *case["weights"],
                                lengths=case["lengths"])
    first = ops.gru_backward(case["dy"], case["d_states"][0], cache)
    second = ops.gru_backward(case["dy"], case["d_states"][0], cache)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_kernels_run_concurrently_from_threads():
    """The GIL is released and kernels keep no global state: threads agree with serial."""
    from concurrent.futures import ThreadPoolExecutor
    cases = [make_case("lstm", (20, 8, 32, 32), np.float32, lengths=True, bias=True,
                       initial=True, seed=seed) for seed in range(8)]
    serial = [run(ops, "lstm", case) for case in cases]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda case: run(ops, "lstm", case), cases))
    for (out_a, grads_a), (out_b, grads_b) in zip(serial, threaded):
        for a, b in zip(list(out_a) + list(grads_a), list(out_b) + list(grads_b)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", [(6, 13, 5, 9), (4, 40, 7, 33)],
                         ids=["projection-before", "projection-per-step"])
def test_batch_split_across_threads_matches_reference(cell, shape, dtype, restore_threads):
    """Blocks of rows on 1, 2 and 3 threads (uneven blocks) give the reference's results."""
    case = make_case(cell, shape, dtype, lengths=True, bias=True, initial=True)
    want_out, want_grads = run(reference, cell, case)
    for threads in (1, 2, 3):
        restore_threads(threads)
        got_out, got_grads = run(ops, cell, case)
        for got, want in zip(list(got_out) + list(got_grads),
                             list(want_out) + list(want_grads)):
            assert_close(f"{threads} threads", got, want, dtype)
