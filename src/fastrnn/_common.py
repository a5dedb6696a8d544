"""What ``fastrnn.ops`` (C) and ``fastrnn.reference`` (NumPy) share.

Both backends validate their arguments here, so they accept the same inputs and raise
the same errors, and they return the same structures (the ``*Grads`` named tuples).

Input rules (documented in the README):

* ``x`` sets the dtype: float32 or float64 (another dtype of ``x`` raises ``TypeError``).
  Every other array must have the same dtype (a mismatch raises ``ValueError``, as
  PyTorch's layers do); nothing is silently up- or down-cast.
* An empty batch (B = 0) is valid: empty outputs and states, zero weight gradients.
* Arrays that are not C-contiguous are copied into contiguous ones; the kernels never
  see strides.
* Shapes are checked before any kernel runs; a wrong one raises ``ValueError`` naming
  the argument, the expected and the received shape.
"""
from __future__ import annotations

import functools
import numbers
import os
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import numpy as np

# Gates per cell: G in the PyTorch weight layout w_ih (G*H, I), w_hh (G*H, H).
GATES = {"rnn": 1, "lstm": 4, "gru": 3}

# BLAS takes 32-bit ints: every matrix dimension handed to it must fit.
_BLAS_INT_MAX = 2**31 - 1
_SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class RNNGrads(NamedTuple):
    dx: np.ndarray               # (T, B, I)
    dh0: np.ndarray              # (B, H)
    dw_ih: np.ndarray            # (H, I)
    dw_hh: np.ndarray            # (H, H)
    db_ih: Optional[np.ndarray]  # (H,) or None without bias
    db_hh: Optional[np.ndarray]  # (H,) or None without bias


class LSTMGrads(NamedTuple):
    dx: np.ndarray               # (T, B, I)
    dh0: np.ndarray              # (B, H)
    dc0: np.ndarray              # (B, H)
    dw_ih: np.ndarray            # (4H, I)
    dw_hh: np.ndarray            # (4H, H)
    db_ih: Optional[np.ndarray]  # (4H,)
    db_hh: Optional[np.ndarray]  # (4H,)


# LSTMGrads of the variants: the same fields, then the variant's own (shapes as commented).
PeepholeLSTMGrads = NamedTuple("PeepholeLSTMGrads", [
    *LSTMGrads.__annotations__.items(),
    ("dw_p", np.ndarray),              # (3H,) [p_i, p_o, p_f]
])
PeepholeLSTMGrads.__doc__ = "LSTMGrads of a peephole LSTM, with the peepholes' gradient last."
ProjectedLSTMGrads = NamedTuple("ProjectedLSTMGrads", [
    *LSTMGrads.__annotations__.items(),  # dh0 (B, P), dw_hh (4H, P) with a projection
    ("dw_hr", np.ndarray),             # (P, H)
    ("dw_p", Optional[np.ndarray]),    # (3H,) with peepholes, else None
])
ProjectedLSTMGrads.__doc__ = ("LSTMGrads of an LSTM with a projection (w_hr), then the "
                              "projection's and (with peepholes, else None) the peepholes' "
                              "gradients.")


# Layer norm: eps inside the square root, as torch.nn.LayerNorm's default.
LAYER_NORM_EPS = 1e-5


class GRUGrads(NamedTuple):
    dx: np.ndarray               # (T, B, I)
    dh0: np.ndarray              # (B, H)
    dw_ih: np.ndarray            # (3H, I)
    dw_hh: np.ndarray            # (3H, H)
    db_ih: Optional[np.ndarray]  # (3H,)
    db_hh: Optional[np.ndarray]  # (3H,)


LayerNormLSTMGrads = NamedTuple("LayerNormLSTMGrads", [
    *LSTMGrads.__annotations__.items(),
    ("dlayer_norm", np.ndarray),       # (10H,) [g_ih (4H), g_hh (4H), g_c (H), b_c (H)]
])
LayerNormLSTMGrads.__doc__ = ("LSTMGrads of a layer-normalised LSTM, with the gradient of "
                              "its layer-norm parameters (10H,) last.")
LayerNormGRUGrads = NamedTuple("LayerNormGRUGrads", [
    *GRUGrads.__annotations__.items(),
    ("dlayer_norm", np.ndarray),       # (6H,) [g_ih (3H), g_hh (3H)]
])
LayerNormGRUGrads.__doc__ = ("GRUGrads of a layer-normalised GRU, with the gradient of its "
                             "layer-norm gains (6H,) last.")

@dataclass
class Inputs:
    """Validated forward arguments: contiguous, one dtype, sizes known."""

    cell: str
    x: np.ndarray                   # (T, B, I)
    states: tuple                   # (h0,) or (h0, c0), each (B, H) or None
    w_ih: np.ndarray                # (G*H, I)
    w_hh: np.ndarray                # (G*H, H)
    b_ih: Optional[np.ndarray]      # (G*H,)
    b_hh: Optional[np.ndarray]      # (G*H,)
    lengths: Optional[np.ndarray]   # (B,) int64, 1 <= lengths[b] <= T
    T: int
    B: int
    I: int
    H: int
    G: int
    w_hr: Optional[np.ndarray] = None   # (P, H): LSTM projection (proj_size), or None

    @property
    def dtype(self) -> np.dtype:
        return self.x.dtype

    @property
    def P(self) -> int:
        """Size of h (and y): the projection's P, else H."""
        return self.H if self.w_hr is None else self.w_hr.shape[0]


@dataclass
class Cache:
    """What a training forward keeps for its backward (opaque to users).

    ``inputs`` are the validated forward arguments, ``y`` the outputs (T, B, H), and
    ``saved`` the backend's own intermediate arrays (post-activation gates, ...).
    """

    inputs: Inputs
    y: np.ndarray
    saved: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    backend: str = ""


def _shape_str(shape) -> str:
    return str(tuple(int(s) for s in shape))


def c_array(array, dtype=None) -> np.ndarray:
    """``array`` C-contiguous *and aligned* (copied if not): what the kernels' typed
    pointers assume. ``np.ascontiguousarray`` keeps a misaligned array as it is, and a
    misaligned ``double *`` is undefined behaviour in C (UBSan reports it)."""
    if (type(array) is np.ndarray and (dtype is None or array.dtype == dtype)
            and array.flags.c_contiguous and array.flags.aligned):
        return array   # the common case, without np.require's ~2 us per array
    return np.require(array, dtype, ("C", "A"))


def as_array(name: str, value, dtype: Optional[np.dtype] = None,
             owner: str = "the dtype of x") -> np.ndarray:
    """Return ``value`` as a C-contiguous ndarray, checking its dtype against ``dtype``.

    Without ``dtype``: float32 or float64, else ``TypeError``. With it: exactly ``dtype``,
    else ``ValueError`` (a mismatch of inputs, as PyTorch); ``owner`` says whose dtype it
    is in the message ("the dtype of x", "the cell's dtype").
    """
    return c_array(as_ndarray(name, value, dtype, owner))


def as_ndarray(name: str, value, dtype: Optional[np.dtype] = None,
               owner: str = "the dtype of x") -> np.ndarray:
    """:func:`as_array` without the contiguous copy (a view where NumPy can): check shapes
    on it before copying, so a huge broadcast view is refused without being copied."""
    if type(value) is np.ndarray:    # the common case, without the two lookups below
        array = value
    else:
        if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
            value = value.detach().cpu().numpy()
        array = np.asarray(value)
    if dtype is None:
        if array.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(
                f"{name} must be float32 or float64, got dtype {array.dtype}")
    elif array.dtype != dtype:
        raise ValueError(
            f"{name} must have {owner} ({dtype}), got dtype {array.dtype}; "
            f"convert it with {name}.astype(np.{dtype})")
    return array


def normalize_dtype(value, name: str = "dtype") -> np.dtype:
    """float32 or float64 as a ``np.dtype``, from any spelling a user may pass.

    Accepts NumPy dtypes and scalar types (``np.float64``), names (``"float64"``,
    ``"torch.float64"``) and torch dtypes (``torch.float64``). Anything else, including
    None, names NumPy cannot parse and unsupported dtypes (``"bfloat16"``, float16, int),
    raises ``TypeError`` naming the value.
    """
    spelled = value
    if type(value).__module__ == "torch" or (isinstance(value, str)
                                             and value.startswith("torch.")):
        spelled = str(value)[len("torch."):]            # torch.float64 -> "float64"
    dtype = None
    if spelled is not None and not (isinstance(spelled, str) and not spelled.strip()):
        try:
            dtype = np.dtype(spelled)
        except (TypeError, ValueError):
            dtype = None
    if dtype is None or dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"{name} must be float32 or float64 (a NumPy or torch dtype, or its "
                        f"name), got {value!r}")
    return dtype


PRECISIONS = ("float32", "bfloat16", "int8")


def _is_bfloat16(value) -> bool:
    """``"bfloat16"``, ``"torch.bfloat16"`` or ``torch.bfloat16``."""
    spelled = str(value) if type(value).__module__ == "torch" else value
    return isinstance(spelled, str) and spelled in ("bfloat16", "torch.bfloat16", "bf16")


def split_precision(value, name: str = "dtype"):
    """``(storage dtype, precision)`` of a module's ``dtype`` argument.

    ``"bfloat16"`` (or ``torch.bfloat16``) gives ``(float32, "bfloat16")``: float32
    parameters, bf16 products in the forward (inference and training; see
    :mod:`fastrnn.ops`). Anything
    :func:`normalize_dtype` accepts gives ``(that dtype, "float32")``.
    """
    if _is_bfloat16(value):
        return np.dtype(np.float32), "bfloat16"
    return normalize_dtype(value, name), "float32"


# Reduced precisions whose forward may save for a backward (mixed-precision training: the
# forward's products in that precision, the backward in float32 from float32 master weights).
TRAINABLE_PRECISIONS = ("float32", "bfloat16")


def check_precision(precision, packs, dtype: np.dtype, training: bool,
                    variants: Optional[dict] = None) -> str:
    """The precision of a forward: ``precision`` ('float32', 'bfloat16' or 'int8'), or that
    of the ``packs`` when it is None. The reduced ones need float32 arrays and none of
    ``variants`` (name: argument, None when not used); int8 also ``training=False``
    (bfloat16 trains: see :mod:`fastrnn.ops`)."""
    if precision is None:
        precision = getattr(packs, "precision", "float32") if packs is not None else "float32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} or None, got {precision!r}")
    if precision != "float32":
        if dtype != np.float32:
            raise TypeError(f"precision={precision!r} needs float32 arrays, got {dtype}")
        if training and precision not in TRAINABLE_PRECISIONS:
            raise ValueError(f"precision={precision!r} runs inference only: pass "
                             "training=False (precision='bfloat16' also trains)")
        for name, value in (variants or {}).items():
            if value is not None:
                raise ValueError(f"precision={precision!r} does not support {name} yet; "
                                 f"pass {name}=None or precision='float32'")
    return precision


def check_device(device) -> None:
    """Accept None, ``"cpu"`` (``"cpu:0"``) or ``torch.device("cpu")``; refuse the rest.

    fastrnn's kernels run on the CPU only: another device raises ``ValueError`` saying so,
    a value that is no device at all ``TypeError``.
    """
    if device is None:
        return
    if type(device).__name__ == "device" and type(device).__module__ == "torch":
        kind = device.type
    elif isinstance(device, str):
        kind = device.split(":", 1)[0].strip().lower()
    else:
        raise TypeError(f"device must be None, 'cpu' or torch.device('cpu'), got {device!r}")
    if kind != "cpu":
        raise ValueError(f"fastrnn runs on the CPU only: device must be 'cpu', got {device!r}")


def check_positive_int(name: str, value) -> int:
    """A positive int: ``TypeError`` for another type (bool, float, str), ``ValueError``
    for zero or less (PyTorch's types for the same mistakes)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_shape(name: str, array: np.ndarray, expected: tuple) -> None:
    if array.shape != tuple(expected):
        raise ValueError(
            f"{name} must have shape {_shape_str(expected)}, got {_shape_str(array.shape)}")


def _checked(name: str, value, dtype: np.dtype, expected: tuple) -> np.ndarray:
    """``value`` of ``dtype`` and shape ``expected``, checked before it is made contiguous."""
    array = as_ndarray(name, value, dtype)
    check_shape(name, array, expected)
    return c_array(array)


@functools.lru_cache(maxsize=None)
def physical_memory() -> Optional[int]:
    """Bytes of RAM on this machine, or None where the OS does not say (asked once)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(what: str, nbytes: int, *what_args) -> None:
    """``MemoryError`` before allocating ``nbytes`` that this machine's RAM cannot hold;
    ``what`` names the allocation (``what.format(*what_args)`` when there are arguments,
    formatted only for the message)."""
    total = physical_memory()
    if total is not None and nbytes > total:
        what = what.format(*what_args) if what_args else what
        raise MemoryError(f"{what} needs about {nbytes / 2**30:.3g} GiB, more than this "
                          f"machine's {total / 2**30:.3g} GiB of memory")


def _check_lengths(lengths, T: int, B: int) -> Optional[np.ndarray]:
    if lengths is None:
        return None
    if hasattr(lengths, "detach") and hasattr(lengths, "numpy"):
        lengths = lengths.detach().cpu().numpy()
    lengths = np.asarray(lengths)
    if lengths.dtype.kind not in "iu":
        raise TypeError(f"lengths must hold integers, got dtype {lengths.dtype}")
    if lengths.shape != (B,):
        raise ValueError(f"lengths must have shape {_shape_str((B,))}, got {_shape_str(lengths.shape)}")
    if B == 0:
        return np.zeros(0, np.int64)
    low, high = int(lengths.min()), int(lengths.max())
    if low < 1 or high > T:
        raise ValueError(
            f"lengths must lie in [1, T={T}], got values in [{low}, {high}]")
    return c_array(lengths, np.int64)


def _check_sizes(T: int, B: int, I: int, H: int, G: int, itemsize: int) -> None:
    if B < 0:
        raise ValueError(f"B (x.shape[1]) must be at least 0, got {B}")
    for name, size in (("T (x.shape[0])", T), ("I (x.shape[2])", I),
                       ("H (w_hh.shape[1])", H)):
        if size < 1:
            raise ValueError(f"{name} must be at least 1, got {size}")
    if T * B > _BLAS_INT_MAX or G * H > _BLAS_INT_MAX or I > _BLAS_INT_MAX:
        raise ValueError(
            f"sizes too large for 32-bit BLAS: T*B={T * B}, G*H={G * H}, I={I}")
    # x, y, the states and what training saves (at most G + 3 values per unit), weights
    elements = T * B * (I + (G + 3) * H) + G * H * (I + H + 2)
    check_memory("T={}, B={}, I={}, H={}", elements * itemsize, T, B, I, H)


def _check_projection(w_hr, w_hh, dtype):
    """LSTM with a projection: w_hr (P, H) and w_hh (4H, P); returns (w_hr, w_hh, H)."""
    w_hr = as_ndarray("w_hr", w_hr, dtype)
    if w_hr.ndim != 2 or min(w_hr.shape) < 1:
        raise ValueError(f"w_hr must have shape (P, H), got {_shape_str(w_hr.shape)}")
    P, H = w_hr.shape
    check_shape("w_hh", w_hh, (4 * H, P))
    return c_array(w_hr), w_hh, H


def check_forward(cell: str, x, states, w_ih, w_hh, b_ih, b_hh, lengths,
                  w_hr=None) -> Inputs:
    """Validate forward arguments for ``cell`` ('rnn', 'lstm' or 'gru').

    ``states`` is ``(h0,)`` or ``(h0, c0)``, each entry an array (B, H) or None (zeros).
    ``w_hr (P, H)`` (LSTM only) is a projection: then w_hh is (4H, P) and h0 (B, P).
    """
    G = GATES[cell]
    x = as_ndarray("x", x)
    if x.ndim != 3:
        raise ValueError(f"x must have 3 dimensions (T, B, I), got shape {_shape_str(x.shape)}")
    w_hh = as_ndarray("w_hh", w_hh, x.dtype)
    if w_hr is not None:
        w_hr, w_hh, H = _check_projection(w_hr, w_hh, x.dtype)
    elif w_hh.ndim != 2 or w_hh.shape[1] < 1 or w_hh.shape[0] != G * w_hh.shape[1]:
        raise ValueError(
            f"w_hh must have shape ({G}*H, H) for {cell.upper()}, got {_shape_str(w_hh.shape)}")
    else:
        H = w_hh.shape[1]
    T, B, I = x.shape
    P = H if w_hr is None else w_hr.shape[0]
    _check_sizes(T, B, I, H, G, x.dtype.itemsize)   # before any copy of a huge view
    x, w_hh = c_array(x), c_array(w_hh)
    w_ih = _checked("w_ih", w_ih, x.dtype, (G * H, I))
    b_ih = None if b_ih is None else _checked("b_ih", b_ih, x.dtype, (G * H,))
    b_hh = None if b_hh is None else _checked("b_hh", b_hh, x.dtype, (G * H,))
    checked_states = tuple(None if state is None else _checked(name, state, x.dtype, (B, size))
                           for name, state, size in zip(("h0", "c0"), states, (P, H)))
    return Inputs(cell, x, checked_states, w_ih, w_hh, b_ih, b_hh,
                  _check_lengths(lengths, T, B), T, B, I, H, G, w_hr)


def check_peepholes(w_p, inputs: Inputs) -> Optional[np.ndarray]:
    """LSTM peepholes ``w_p (3H,)`` = [p_i, p_o, p_f] (ONNX's order) of the forward's
    dtype, or None (no peepholes)."""
    if w_p is None:
        return None
    return _checked("peepholes", w_p, inputs.dtype, (3 * inputs.H,))


def check_layer_norm(ln, inputs: Inputs) -> Optional[np.ndarray]:
    """A layer-normalised cell's norm parameters of the forward's dtype, or None (no layer
    norm): LSTM ``(10H,)`` = [g_ih (4H), g_hh (4H), g_c (H), b_c (H)], GRU ``(6H,)`` =
    [g_ih (3H), g_hh (3H)]."""
    if ln is None:
        return None
    if inputs.w_hr is not None:
        raise ValueError("layer_norm cannot be combined with a projection (w_hr) yet")
    size = {"lstm": 10, "gru": 6}[inputs.cell] * inputs.H
    return _checked("layer_norm", ln, inputs.dtype, (size,))


def check_recurrent_mask(mask, inputs: Inputs) -> Optional[np.ndarray]:
    """A recurrent dropout mask ``(B, P)`` (P = H but with an LSTM projection) of the
    forward's dtype (each entry 0 or 1/(1-p) for inverted dropout; any values are
    accepted), or None (no dropout)."""
    if mask is None:
        return None
    return _checked("recurrent_mask", mask, inputs.dtype, (inputs.B, inputs.P))


def check_backward(cache, upstream: dict, backend: str, cell: str) -> dict:
    """Validate backward arguments: the cache, and upstream gradients (None = zero).

    ``upstream`` maps names ('dy', 'dh_n', 'dc_n') to arrays or None; returns the
    same mapping with contiguous arrays of the forward's dtype.
    """
    if cache is None:
        raise ValueError(
            "cache is None: run the forward with training=True to keep what backward needs")
    if not isinstance(cache, Cache) or cache.inputs.cell != cell:
        raise TypeError(f"cache must come from {cell}_forward, got {type(cache).__name__}")
    if cache.backend != backend:
        raise TypeError(
            f"cache comes from the {cache.backend!r} backend, but this is {backend!r}")
    inputs = cache.inputs
    expected = {"dy": (inputs.T, inputs.B, inputs.P),
                "dh_n": (inputs.B, inputs.P), "dc_n": (inputs.B, inputs.H)}
    checked = {}
    for name, value in upstream.items():
        checked[name] = (None if value is None
                         else _checked(name, value, inputs.dtype, expected[name]))
    return checked


def check_nonlinearity(nonlinearity: str) -> str:
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    return nonlinearity
