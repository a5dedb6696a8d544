"""The physical limit: one core's peak float32 (or float64) multiply-add rate.

``csrc/peak.c`` runs independent FMA chains held in vector registers (no memory traffic)
under the kernels' current instruction-set level; this times it on the thread's CPU
clock, so time spent descheduled by other load does not count. A case's "% of peak" in
the report is its GFLOP/s over ``threads`` times this figure.
"""
from __future__ import annotations

import contextlib
import time


@contextlib.contextmanager
def _isa(name):
    from .. import _core
    saved = _core.get_isa()
    if name is not None:
        _core.set_isa(name)
    try:
        yield _core.get_isa()
    finally:
        _core.set_isa(saved)


def fma_peak_gflops(dtype: str = "float32", isa: str | None = None,
                    seconds: float = 0.1, repeats: int = 3) -> tuple[float, str]:
    """(best GFLOP/s of ``repeats`` runs of about ``seconds`` each, the ISA level measured).

    ``isa`` None measures the level the kernels run now (the best the CPU has, unless a
    test or benchmark lowered it with ``fastrnn._core.set_isa``).
    """
    from .. import _core
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    double = dtype == "float64"
    with _isa(isa) as level:
        iterations, best = 1 << 16, 0.0
        for _ in range(40):                        # calibrate to ~seconds per run
            cpu = time.thread_time()
            _core.fma_peak_flops(iterations, double)
            if time.thread_time() - cpu >= seconds / 4:
                break
            iterations *= 2
        for _ in range(repeats):
            cpu = time.thread_time()
            flops = _core.fma_peak_flops(iterations * 4, double)
            elapsed = time.thread_time() - cpu
            if elapsed > 0:
                best = max(best, flops / elapsed / 1e9)
    return best, level
