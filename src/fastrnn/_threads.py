"""The one thread knob: ``fastrnn.set_num_threads(n)`` and ``FASTRNN_NUM_THREADS``.

For batches that run their per-step products on fastrnn's own kernel (up to 32 rows) the
kernels split the batch across threads, each running the whole time loop over its own
block of rows (no barrier per step; at least 4 rows a thread); larger batches leave the
threading of each per-step product to BLAS, which measured faster. The kernels' large products (the hoisted input projection, the weight gradients after
the time loop, and the per-step recurrent products of large batches) run on SciPy's
BLAS, so the knob sets that BLAS's thread count. The small-batch per-step path is our
own single-threaded code, so nothing ever nests threads on top of a threaded BLAS.

SciPy's wheels bundle OpenBLAS (``scipy.libs/libscipy_openblas*``); its thread count is
set through its C API. When SciPy was built against another BLAS (a distribution's
package, MKL), that library keeps its own setting (``OPENBLAS_NUM_THREADS``,
``MKL_NUM_THREADS``); ``blas_thread_control()`` then returns False.
"""
from __future__ import annotations

import ctypes
import glob
import logging
import os
from typing import Optional

# OpenMP workers wait briefly, then sleep, between parallel regions. Long spinning fights
# BLAS's own threads for the cores (measured: up to 10x slower on 2 cores when BLAS ran
# between our regions), so the policy is passive; but with no spin at all (libgomp's
# GOMP_SPINCOUNT 0 under PASSIVE) every region had to wake its workers, which the kernel
# often put on the busy core: LSTM small's 2-thread batch split ran at ~1 CPU (int8 1.8 ms
# instead of 0.93; docs/perf-notes.md 62-63). libgomp (the Linux builds) spins 10000 times
# (~0.1 ms) first: enough for a call's back-to-back regions and calls (3000 was not always),
# too short to slow a threaded BLAS call after ours (30000 sometimes did). Set before the
# OpenMP runtime loads with fastrnn._core (other OpenMP libraries loaded later in the
# process read them too); the user's own settings win.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if "GOMP_SPINCOUNT" not in os.environ and os.environ["OMP_WAIT_POLICY"].upper() == "PASSIVE":
    os.environ["GOMP_SPINCOUNT"] = "10000"

from . import _core  # noqa: E402

_SETTERS = ("scipy_openblas_set_num_threads", "scipy_openblas_set_num_threads64_",
            "openblas_set_num_threads", "openblas_set_num_threads64_")
_GETTERS = ("scipy_openblas_get_num_threads", "scipy_openblas_get_num_threads64_",
            "openblas_get_num_threads", "openblas_get_num_threads64_")


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _find_blas():
    """SciPy's bundled OpenBLAS as a ctypes library, or None."""
    import scipy
    root = os.path.dirname(os.path.dirname(scipy.__file__))
    for pattern in ("scipy.libs/libscipy_openblas*", "scipy/.dylibs/libscipy_openblas*",
                    "scipy.libs/libopenblas*"):
        for path in glob.glob(os.path.join(root, pattern)):
            try:
                return ctypes.CDLL(path)
            except OSError:
                continue
    return None


def _symbol(lib, names):
    for name in names:
        function = getattr(lib, name, None) if lib is not None else None
        if function is not None:
            return function
    return None


_blas = _find_blas()
_blas_set = _symbol(_blas, _SETTERS)
_blas_get = _symbol(_blas, _GETTERS)
_num_threads: Optional[int] = None


def blas_thread_control() -> bool:
    """Whether fastrnn can set the thread count of the BLAS that SciPy uses."""
    return _blas_set is not None


def set_num_threads(n: int) -> None:
    """Use ``n`` threads (>= 1) in fastrnn's kernels and the BLAS calls they make."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_threads must be an integer >= 1, got {n!r}")
    _num_threads = n
    if _blas_set is not None:
        _blas_set(ctypes.c_int(n))
    blas_setter = ctypes.cast(_blas_set, ctypes.c_void_p).value if _blas_set else 0
    _core.set_num_threads(n, blas_setter or 0)


def get_num_threads() -> int:
    """The thread count set by :func:`set_num_threads` (or the environment at import)."""
    if _num_threads is not None:
        return _num_threads
    if _blas_get is not None:
        return int(_blas_get())
    return 1


def _threads_from_environment() -> int:
    """``FASTRNN_NUM_THREADS``, or every available core. An invalid value is reported in
    one line on the ``fastrnn`` logger and ignored, as OpenMP does with
    ``OMP_NUM_THREADS``; importing fastrnn never fails because of it."""
    value = os.environ.get("FASTRNN_NUM_THREADS")
    if value is None:
        return _available_cores()
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        logging.getLogger("fastrnn").warning(
            "fastrnn: ignoring FASTRNN_NUM_THREADS=%r (expected an integer >= 1); using %d "
            "threads", value, _available_cores())
        return _available_cores()
    return n


set_num_threads(_threads_from_environment())
