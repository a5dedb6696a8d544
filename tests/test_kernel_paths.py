"""Every path of the per-step kernels against the NumPy reference, and thread splits against
one thread bit for bit.

The recurrent product runs on a packed panel (csrc/gemm/) in column blocks of
``units = nv / G * VLEN`` hidden units (VLEN = 4/8/16 floats for portable/AVX2/AVX-512)
and row tiles of up to 8 rows, directly on w_hh when a call has fewer than 8 rows in all
(T * B < 8), with the input projection step by step from B = 16 on. The sizes below sit
on both sides of each of those edges, under every ISA variant (the ``isa`` fixture).
"""
from __future__ import annotations

import numpy as np
import pytest

from fastrnn import _core, ops, reference
from test_ops_vs_reference import CELLS, assert_close, make_case, run

HIDDEN_EDGES = (1, 7, 15, 16, 17, 31, 33, 63, 65, 127, 129)
BATCH_EDGES = (1, 2, 5, 6, 7, 8, 9, 15, 16, 17, 33, 65)


def compare(cell, shape, dtype, **options):
    case = make_case(cell, shape, dtype, lengths=True, bias=True, initial=True, **options)
    got_out, got_grads = run(ops, cell, case)
    want_out, want_grads = run(reference, cell, case)
    for name, got, want in zip(["y", "h_n", "c_n"], got_out, want_out):
        assert_close(name, got, want, dtype)
    for name, got, want in zip(want_grads._fields, got_grads, want_grads):
        assert_close(name, got, want, dtype)


@pytest.mark.usefixtures("isa")
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("H", HIDDEN_EDGES)
def test_hidden_sizes_around_tile_edges(cell, H):
    compare(cell, (3, 3, 5, H), np.float32)


@pytest.mark.usefixtures("isa")
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("B", BATCH_EDGES)
def test_batch_sizes_around_tile_and_path_edges(cell, B):
    compare(cell, (2, B, 9, 17), np.float32)


@pytest.mark.usefixtures("isa")
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("H", (33, 65, 129))
def test_a_single_row_walks_its_blocks_both_ways(cell, H):
    """Every other step walks the panel's column blocks (for one row: pairs of blocks, the
    last one single when their count is odd) from the last to the first: 9 steps of one
    row, H giving 3 to 33 blocks at the ISA levels' widths."""
    compare(cell, (9, 1, 5, H), np.float32)


@pytest.mark.usefixtures("isa")
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", [(1, 7, 3, 5), (1, 8, 3, 5), (7, 1, 3, 5), (8, 1, 3, 5)],
                         ids=["direct-7rows", "packed-8rows", "direct-7steps", "packed-8steps"])
def test_direct_and_packed_products(cell, shape):
    compare(cell, shape, np.float64)


@pytest.mark.usefixtures("isa")
@pytest.mark.parametrize("cell", CELLS)
def test_float64_wide_shapes(cell):
    compare(cell, (3, 20, 33, 65), np.float64)


# Backward runs its time loop in chunks of ceil(512 / B) steps (seq.h grad_chunk_steps),
# taking each chunk's weight gradients before the next: one step short of a chunk, exactly
# chunks, one step over, and B past 512 (a chunk per step).
CHUNK_SHAPES = [(512, 1, 3, 5), (513, 1, 3, 5), (206, 5, 4, 7), (207, 5, 4, 7),
                (3, 600, 2, 3)]


@pytest.mark.usefixtures("isa")
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", CHUNK_SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
def test_backward_chunks_of_steps(cell, shape):
    compare(cell, shape, np.float64)


def outputs_and_grads(cell, case):
    out, grads = run(ops, cell, case)
    return list(out) + list(grads)


@pytest.mark.usefixtures("isa")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", [(5, 40, 9, 33), (4, 2, 16, 256), (3, 1, 8, 256),
                                   (30, 40, 9, 33)],
                         ids=["batch-split", "hidden-split-2rows", "hidden-split-1row",
                              "batch-split-backward-chunks"])
def test_threads_bitwise_equal_one_thread(cell, shape, dtype, restore_threads):
    """Batch split (40 rows) and hidden-unit split (1-2 rows, 256 units: a step is big enough
    to split) on 2 and 3 threads give exactly the 1-thread results."""
    case = make_case(cell, shape, dtype, lengths=True, bias=True, initial=True)
    restore_threads(1)
    want = outputs_and_grads(cell, case)
    for threads in (2, 3):
        restore_threads(threads)
        got = outputs_and_grads(cell, case)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b, err_msg=f"{threads} threads")


PACK_CELLS = {"rnn_tanh": "rnn", "lstm": "lstm", "gru": "gru",
              "gru_reset_before": "gru_reset_before"}


@pytest.mark.usefixtures("isa")
@pytest.mark.parametrize("cell", PACK_CELLS)
@pytest.mark.parametrize("shape", [(1, 1, 4, 33), (6, 20, 5, 17)], ids=["step", "sequence"])
def test_packed_weights_give_the_same_results(cell, shape):
    """A pack made once (ops.pack_weights) is read in place of packing per call."""
    case = make_case(cell, shape, np.float32, lengths=False, bias=True, initial=True)
    kernel, _, options = CELLS[cell]
    packs = ops.pack_weights(kernel, case["weights"][1], **options)
    want = outputs_and_grads(cell, case)
    got = outputs_and_grads(cell, dict(case, packs=packs))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_a_pack_for_something_else_is_ignored():
    """A pack of another cell, size or ISA is never misread: the kernel packs itself."""
    case = make_case("lstm", (4, 3, 5, 9), np.float64, lengths=False, bias=True, initial=True)
    want = outputs_and_grads("lstm", case)
    other_size = ops.pack_weights("lstm", np.ones((4 * 8, 8)))
    other_cell = ops.pack_weights("gru", np.ones((3 * 9, 9)))
    for packs in (other_size, other_cell):
        got = outputs_and_grads("lstm", dict(case, packs=packs))
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
    if len(_core.available_isas()) > 1:
        previous = _core.get_isa()
        _core.set_isa("portable")
        try:
            portable = ops.pack_weights("lstm", case["weights"][1])
        finally:
            _core.set_isa(previous)
        got = outputs_and_grads("lstm", dict(case, packs=portable))
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


def _rows(case, rows):
    """The case restricted to batch rows ``rows`` (a slice)."""
    sub = dict(case, x=case["x"][:, rows], dy=case["dy"][:, rows],
               states=[None if s is None else s[rows] for s in case["states"]],
               d_states=[s[rows] for s in case["d_states"]])
    sub["lengths"] = None if case["lengths"] is None else case["lengths"][rows]
    return {k: np.ascontiguousarray(v) if isinstance(v, np.ndarray) else v
            for k, v in sub.items()}


@pytest.mark.usefixtures("isa")
@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru", "gru_reset_before"])
@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_a_rows_forward_does_not_depend_on_its_batch(cell, training):
    """RNN and LSTM sum a row's input and recurrent products in one order at every batch
    size (in the tile from 16 rows on, from stored tiles below); GRU projects its input on
    the w_ih panel step by step from 16 rows on and for the whole sequence below, with the
    same sums. So a row's forward gives the same bits alone, in a small batch and in a big
    one (batch-composition invariance: what bit-equal distributed scoring relies on).
    T * B >= 8 rows: panels, not the direct product of tiny calls."""
    case = make_case(cell, (8, 40, 9, 33), np.float32, lengths=True, bias=True, initial=True)
    whole = run(ops, cell, case, training=training)[0]
    for rows in (slice(0, 1), slice(3, 10), slice(5, 22), slice(8, 40)):
        part = run(ops, cell, _rows(case, rows), training=training)[0]
        for got, want in zip(part, whole):
            np.testing.assert_array_equal(got, want[..., rows, :] if got.ndim == 3
                                          else want[rows], err_msg=f"rows {rows}")
