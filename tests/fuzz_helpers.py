"""What the fuzz tests (tests/test_fuzz_*.py) share: array layouts, hostile values, a
NaN-aware comparison, the allowed exceptions, and the count of calls made.

Profiles (tests/conftest.py): ``fuzz-ci`` (default, a few seconds per test) and
``fuzz-long`` (``FASTRNN_FUZZ=long``; ``FASTRNN_FUZZ_EXAMPLES`` examples per test). The
number of fuzzed API calls is printed in pytest's summary.
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

# Every fuzzed call either matches the reference or raises one of these.
CLEAN_ERRORS = (TypeError, ValueError, MemoryError)

CALLS = {"n": 0}

FLOATS = (np.float32, np.float64)
TOLERANCE = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-10}

# -- layouts: the same values in arrays of every memory layout a user can hand over ----------


def _fortran(a):
    return np.asfortranarray(a)


def _reversed(a):
    """Negative strides on every axis, same values."""
    return np.flip(np.ascontiguousarray(np.flip(a)))


def _strided(a):
    """Every other element of a bigger array along the last axis."""
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1] + 1,), a.dtype)
    big[..., 1::2] = a
    return big[..., 1::2]


def _readonly(a):
    b = a.copy()
    b.setflags(write=False)
    return b


def _misaligned(a):
    """Data one byte past an aligned address (NumPy flags it unaligned)."""
    raw = np.zeros(a.nbytes + 1, np.uint8)
    b = raw[1:].view(a.dtype).reshape(a.shape)
    b[...] = a
    return b


def _column_major_view(a):
    """A transposed view of a C array: Fortran-ordered strides, same values."""
    return np.ascontiguousarray(a.T).T


LAYOUTS = {"c": lambda a: a, "fortran": _fortran, "reversed": _reversed,
           "strided": _strided, "readonly": _readonly, "misaligned": _misaligned,
           "transposed": _column_major_view}


def layouts():
    return st.sampled_from(sorted(LAYOUTS))


def lay_out(a, layout: str):
    """``a`` (an ndarray or None) in ``layout``; the values are unchanged."""
    if a is None or a.ndim == 0 or a.size == 0:
        return a
    out = LAYOUTS[layout](a)
    assert np.array_equal(out, a, equal_nan=True)
    return out


# -- values -------------------------------------------------------------------------------

SPECIALS = (np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30)


def sprinkle(rng, a, count: int):
    """``a`` with ``count`` entries replaced by NaN/inf/huge values (in place; returns a)."""
    if a is None or a.size == 0:
        return a
    flat = a.reshape(-1)
    for _ in range(count):
        flat[rng.integers(flat.size)] = SPECIALS[rng.integers(len(SPECIALS))]
    return a


# Wrong-dtype versions of an array: integers, half, complex, object, bool, unsigned.
BAD_DTYPES = (np.int32, np.int64, np.float16, np.complex64, np.complex128, object, bool,
              np.uint8, np.longdouble)


def as_dtype(a, dtype):
    if dtype is object:
        return a.astype(object)
    with np.errstate(all="ignore"):
        return a.astype(dtype)


# -- comparison ---------------------------------------------------------------------------

def assert_close(name, got, want, nan_exact=True):
    """Same dtype and shape; the same NaN/inf pattern; finite entries within the dtype's
    tolerance relative to the largest finite magnitude (at least 1).

    ``nan_exact=False`` (gradients of a call with NaN/inf inputs): where the reference has
    NaN (say 0 * NaN, a product the kernel skips because one side is known to be zero),
    the kernel may have any value, and where it has an infinity the kernel may have NaN
    (inf - inf in another summation order); every entry the reference computes as finite
    must still match. ``nan_exact="finite"`` (gradients with NaN/inf in the recurrence,
    where 0 * inf meets the carried gradient in an order-dependent way): only the entries
    finite in both are compared."""
    if want is None:
        assert got is None, f"{name}: expected None"
        return
    assert isinstance(got, np.ndarray), f"{name}: {type(got).__name__} is not an ndarray"
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    inf = np.isinf(want)
    if nan_exact is True:
        assert np.array_equal(np.isnan(got), np.isnan(want)), f"{name}: NaNs differ"
        assert np.array_equal(got[inf], want[inf]), f"{name}: infinities differ"
    elif nan_exact is False:
        assert np.all((got[inf] == want[inf]) | np.isnan(got[inf])), \
            f"{name}: infinities differ"
    finite = np.isfinite(want) & (np.isfinite(got) if nan_exact == "finite" else True)
    if finite.any():
        scale = max(float(np.abs(want[finite]).max()), 1.0)
        with np.errstate(invalid="ignore"):
            error = float(np.abs(got[finite].astype(np.float64) - want[finite]).max()) / scale
        assert error <= TOLERANCE[want.dtype], f"{name}: relative error {error:.3g}"


def same_outcome(call_a, call_b):
    """Run two calls that must agree: both return (results, compared by the caller) or
    both raise a clean error of the same type. Returns ``(result_a, result_b)`` or None."""
    outcomes = []
    for call in (call_a, call_b):
        CALLS["n"] += 1
        try:
            outcomes.append(("ok", call()))
        except CLEAN_ERRORS as exc:
            assert str(exc), f"{type(exc).__name__} without a message"
            outcomes.append(("error", type(exc)))
    (kind_a, a), (kind_b, b) = outcomes
    assert kind_a == kind_b, f"one backend raised, the other did not: {outcomes}"
    if kind_a == "error":
        assert a is b, f"different exceptions: {a.__name__} vs {b.__name__}"
        return None
    return a, b


def clean(call):
    """Run ``call``; a clean error is fine, anything else fails. Returns the result or None."""
    CALLS["n"] += 1
    try:
        return call()
    except CLEAN_ERRORS as exc:
        assert str(exc), f"{type(exc).__name__} without a message"
        return None
