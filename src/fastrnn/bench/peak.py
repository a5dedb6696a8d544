"""The physical limit: one core's peak float32 (or float64) multiply-add rate, and its
peak bf16 and int8 dot-product rates.

``csrc/peak.c`` runs independent FMA chains held in vector registers (no memory traffic)
under the kernels' current instruction-set level; ``csrc/peak_lowp.c`` does the same with
one reduced-precision instruction (``vdpbf16ps``, ``vpdpbusd`` zmm or ymm, AVX2's
``vpmaddubsw`` + ``vpmaddwd``) where the CPU has it. Both are timed on the thread's CPU
clock, so time spent descheduled by other load does not count. A case's "% of peak" in
the report is its GFLOP/s (GOP/s) over ``threads`` times the figure of the instruction
its path runs on (:func:`matching_peak`).
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


def _best_rate(run, seconds: float, repeats: int) -> float:
    """Best operations per second (in 1e9) of ``run(iterations)`` -> operations, calibrated
    to about ``seconds`` of thread CPU time per run."""
    iterations, best = 1 << 16, 0.0
    for _ in range(40):                            # calibrate to ~seconds per run
        cpu = time.thread_time()
        run(iterations)
        if time.thread_time() - cpu >= seconds / 4:
            break
        iterations *= 2
    for _ in range(repeats):
        cpu = time.thread_time()
        ops = run(iterations * 4)
        elapsed = time.thread_time() - cpu
        if elapsed > 0:
            best = max(best, ops / elapsed / 1e9)
    return best


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
        best = _best_rate(lambda n: _core.fma_peak_flops(n, double), seconds, repeats)
    return best, level


# --------------------------------------------------------------------------- bf16 / int8

LOWP_INSTRUCTIONS = {   # peak kind: what it times (csrc/peak_lowp.c)
    "bf16_avx512": "vdpbf16ps zmm",
    "int8_avx512_vnni": "vpdpbusd zmm",
    "int8_avx_vnni": "vpdpbusd ymm (AVX-VNNI)",
    "int8_avx2": "vpmaddubsw+vpmaddwd",
}


def lowp_peak_gops(kind: str, seconds: float = 0.1, repeats: int = 3) -> float | None:
    """One core's best GOP/s (GFLOP/s for bf16; 2 per multiplied pair) of the ``kind``
    instruction (a key of :data:`LOWP_INSTRUCTIONS`), or None when the CPU lacks it."""
    from .. import _core
    if kind not in LOWP_INSTRUCTIONS:
        raise ValueError(f"kind must be one of {list(LOWP_INSTRUCTIONS)}, got {kind!r}")
    if _core.lowp_peak_ops(kind, 0) is None:
        return None
    return _best_rate(lambda n: _core.lowp_peak_ops(kind, n), seconds, repeats)


def lowp_peaks(seconds: float = 0.1, repeats: int = 3) -> dict:
    """{kind: GOP/s} for every reduced-precision instruction this CPU has."""
    peaks = {kind: lowp_peak_gops(kind, seconds, repeats) for kind in LOWP_INSTRUCTIONS}
    return {kind: value for kind, value in peaks.items() if value}


# Which instruction a precision's products run on, per ISA level of the kernels
# (csrc/gemm/bf16.h fr_bf16_format, int8.h fr_i8_format): int8 at AVX2 on vpmaddwd +
# vpaddd over int16 pairs, whose ceiling is the int8_avx2 figure (both take two multiply
# pipe operations per 32 products); elsewhere below AVX512-BF16 the float32 microkernel
# (bf16 widened, int8 values as exact floats), so their ceiling is the float32 FMA peak of
# that level. Edit here when a kernel gains an instruction.
_MATCHING = {
    ("bf16", "avx512_bf16"): "bf16_avx512",
    ("int8", "avx512_bf16"): "int8_avx512_vnni",
    ("int8", "avx2"): "int8_avx2",
}


def matching_peak(precision: str, isa: str) -> str:
    """The peak a ``precision`` ('float32', 'bf16', 'int8') product at kernel level ``isa``
    is measured against: a :data:`LOWP_INSTRUCTIONS` key, or 'float32' (the FMA peak)."""
    if precision not in ("float32", "bf16", "int8"):
        raise ValueError(f"precision must be 'float32', 'bf16' or 'int8', got {precision!r}")
    return _MATCHING.get((precision, isa), "float32")
