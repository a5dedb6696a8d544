"""One benchmark group per (cell, shape, mode, threads); one entry per library.

The runner factories are those of the report (:mod:`fastrnn.bench`), so both time the
same code. Each entry's outputs are checked against fastrnn's before it is timed.
"""
from __future__ import annotations

import pytest

from fastrnn import bench

ENTRIES = bench.available_entries(bench.ENTRIES)
CASES = bench.make_cases(bench.CELLS, bench.SHAPES, bench.MODES, [1, 2])


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.label)
def test_cell(benchmark, case, entry, peers, fastrnn_outputs, jax_threads):
    if entry == "jax" and case.threads != jax_threads:
        pytest.skip(f"XLA's threads are fixed at import ({jax_threads}): "
                    f"rerun with FASTRNN_BENCH_JAX_THREADS={case.threads}")
    peer = peers(entry)
    bench.limit_threads(case.threads)
    peer.set_threads(case.threads)
    runner = peer.make(case, bench.make_problem(case))
    if runner is None:
        pytest.skip(f"{entry} has no {case.mode} for this case")
    outputs, _ = runner.check()                       # warm-up, outside the timing
    if entry != "fastrnn":
        error = bench._max_rel_error(outputs, fastrnn_outputs(case))
        assert error is None or error <= 1e-3, f"{entry} differs from fastrnn by {error:.2e}"
    benchmark.group = case.label
    benchmark.extra_info.update(flops=case.flops, B=case.B, T=case.T, I=case.I, H=case.H)
    benchmark(runner.call)
