"""The small pieces of the recurrent layers (:mod:`fastrnn.nn.recurrent`).

Argument checks, the Keras initialisers, and the types that carry a sequence through the
layers' time loop: :class:`_Layout` (the caller's layout against the kernels' time-major
``(T, B, .)``), :class:`_Reverser` (time reversal within each sequence's length) and
:class:`_Tape` (what a training-mode forward keeps for backward).
"""
from __future__ import annotations

import numbers
import warnings
from typing import NamedTuple, Optional

import numpy as np

from .._common import _SUPPORTED_DTYPES
from . import _packed


# ---------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------

def _shape_str(shape) -> str:
    return str(tuple(int(s) for s in shape))


def _flag(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _dropout(value, num_layers: int) -> float:
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not 0 <= value <= 1):
        raise ValueError(f"dropout must be a number in [0, 1], got {value!r}")
    if value > 0 and num_layers == 1:
        warnings.warn(f"dropout={value} has no effect with num_layers=1: dropout is applied "
                      "between layers, not after the last one", UserWarning, stacklevel=4)
    return float(value)


def _recurrent_dropout(value) -> float:
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not 0 <= value < 1):
        raise ValueError(f"recurrent_dropout must be a number in [0, 1), got {value!r}")
    return float(value)


def _generator(seed) -> np.random.Generator:
    if seed is None or isinstance(seed, np.random.Generator) or (
            isinstance(seed, numbers.Integral) and not isinstance(seed, bool)):
        return np.random.default_rng(seed)
    raise TypeError(f"seed must be None, an int or a numpy.random.Generator, got {seed!r}")


def _array(name: str, value, dtype: np.dtype) -> np.ndarray:
    """``value`` (ndarray or torch tensor) as an ndarray of exactly ``dtype``.

    Another dtype raises ``ValueError``, as PyTorch's RNN layers do for an input that does
    not match their weights."""
    if type(value) is np.ndarray and value.dtype == dtype:  # the common case, first
        return value
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype != dtype:
        hint = f"convert it with .astype(np.{dtype})"
        if array.dtype in _SUPPORTED_DTYPES:   # only suggest dtypes a module can have
            hint += f", or convert the module with .to(np.{array.dtype})"
        raise ValueError(f"{name} must have the module's dtype {dtype}, got {array.dtype}; "
                         f"{hint}")
    return array


def _check_shape(name: str, array: np.ndarray, expected, meaning: str) -> None:
    if array.shape != tuple(expected):
        raise ValueError(f"{name} must have shape {_shape_str(expected)} {meaning}, "
                         f"got {_shape_str(array.shape)}")


# ---------------------------------------------------------------------------------------
# Initialisers
# ---------------------------------------------------------------------------------------

def _glorot_uniform(rng, fan_in: int, fan_out: int) -> np.ndarray:
    """Keras GlorotUniform for a kernel (fan_in, fan_out): U(-a, a), a = sqrt(6/(in+out))."""
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, (fan_in, fan_out))


def _orthogonal(rng, rows: int, cols: int) -> np.ndarray:
    """Keras Orthogonal for a (rows, cols) kernel: orthonormal rows (rows <= cols) or columns."""
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    return q.T if rows < cols else q


# ---------------------------------------------------------------------------------------
# Layout at the edge, and reversal within each sequence's length
# ---------------------------------------------------------------------------------------

class _Layout(NamedTuple):
    """How the caller's arrays map to the kernels' time-major batched ``(T, B, .)``."""

    batch_first: bool
    unbatched: bool

    def seq_in(self, a: np.ndarray) -> np.ndarray:
        """x or dy from the caller's layout to (T, B, F)."""
        if self.unbatched:
            return a[:, None, :]
        return a.transpose(1, 0, 2) if self.batch_first else a

    def seq_shape(self, T: int, B: int, F: int) -> tuple:
        """The caller's shape of a (T, B, F) sequence."""
        if self.unbatched:
            return (T, F)
        return (B, T, F) if self.batch_first else (T, B, F)

    def seq_out(self, a: np.ndarray) -> np.ndarray:
        """y or dx from (T, B, F) to the caller's layout."""
        if self.unbatched:
            return a[:, 0, :]
        return a.transpose(1, 0, 2) if self.batch_first else a

    def state_in(self, a: np.ndarray) -> np.ndarray:
        return a[:, None, :] if self.unbatched else a

    def state_out(self, a: np.ndarray) -> np.ndarray:
        return a[:, 0, :] if self.unbatched else a


class _Reverser:
    """Reverses the time axis of (T, B, F) arrays, each row within its own length.

    Row b's step t goes to step ``lengths[b] - 1 - t`` while ``t < lengths[b]``; padding
    stays where it is. The map is its own inverse, so the same gather also undoes it.
    """

    def __init__(self, lengths: Optional[np.ndarray], T: int, B: int):
        self.index = None
        if lengths is not None and np.any(lengths != T):
            t = np.arange(T)[:, None]
            self.index = (np.where(t < lengths, lengths - 1 - t, t), np.arange(B)[None, :])

    def __call__(self, a: Optional[np.ndarray]) -> Optional[np.ndarray]:
        if a is None:
            return None
        return a[::-1] if self.index is None else a[self.index]


class _Tape(NamedTuple):
    """What a training-mode forward keeps for :meth:`_RecurrentBase.backward`."""

    caches: list             # [layer][direction] kernel caches
    masks: list              # [layer] dropout mask on that layer's input, or None
    reverser: _Reverser
    layout: _Layout
    T: int
    B: int
    packing: Optional[_packed.Packing] = None   # how x was packed, if it was


# What a forward under no_grad leaves instead of a tape: backward then says why it cannot run.
_NO_GRAD_TAPE = "no_grad"
