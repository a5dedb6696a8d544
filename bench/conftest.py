"""pytest-benchmark suite: fastrnn against its NumPy reference, PyTorch, ONNX Runtime and JAX.

Run it with ``pytest bench/ --benchmark-only`` (the plain ``pytest`` run collects only
tests/ and skips benchmarks). Select with ``-k``, e.g. ``-k "lstm and medium and 1t"``.

JAX/XLA fixes its thread pool when jax is imported, so JAX entries appear only in the
groups whose thread count equals ``FASTRNN_BENCH_JAX_THREADS`` (default: all CPUs, XLA's
own default). ``FASTRNN_BENCH_JAX_THREADS=1`` starts XLA single-threaded
(``--xla_cpu_multi_thread_eigen=false``) for the 1-thread groups. ``python -m fastrnn.bench``
runs JAX in a worker process per thread count instead and covers both in one run.
"""
from __future__ import annotations

import os

import pytest

JAX_THREADS = int(os.environ.get("FASTRNN_BENCH_JAX_THREADS") or os.cpu_count() or 1)
if JAX_THREADS == 1:                                  # before anything imports jax
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_cpu_multi_thread_eigen=false").strip()

pytest.importorskip("fastrnn.ops", reason="build the C extension with `pip install -e .`")

from fastrnn import bench  # noqa: E402


@pytest.fixture(scope="session")
def jax_threads():
    """The thread count XLA was started with in this process."""
    return JAX_THREADS


@pytest.fixture(scope="session")
def peers():
    """``peers(entry)``: one runner factory object per entry for the whole session."""
    made = {}

    def get(entry):
        if entry not in made:
            made[entry] = bench.PEER_FACTORIES[entry]()
        return made[entry]
    return get


@pytest.fixture(scope="session")
def fastrnn_outputs(peers):
    """``fastrnn_outputs(case)``: fastrnn's outputs, what every entry is checked against."""
    made = {}

    def get(case):
        if case not in made:
            made[case] = peers("fastrnn").make(case, bench.make_problem(case)).check()[0]
        return made[case]
    return get
