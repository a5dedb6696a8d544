"""Recurrent layers with ``torch.nn``'s interface: :class:`RNN`, :class:`LSTM`, :class:`GRU`.

Each module stacks ``num_layers`` layers, each one or two directions, over the C kernels of
:mod:`fastrnn.ops`. Arguments, shapes, parameter names and the layer/direction order of the
final states are PyTorch's, so ``state_dict`` moves between the two unchanged.

Per layer ``k`` and direction (``_reverse`` suffix for the backward-in-time one), with
``G`` gate blocks (RNN 1; LSTM 4: i, f, g, o; GRU 3: r, z, n)::

    weight_ih_l{k}  (G*H, I_k)   I_0 = input_size, I_k = D*H for k > 0 (D directions)
    weight_hh_l{k}  (G*H, H)
    bias_ih_l{k}    (G*H,)       only with bias=True
    bias_hh_l{k}    (G*H,)

Shapes (``batch_first`` swaps the first two axes of ``x``, ``y`` and their gradients, never
of the states; unbatched ``x (T, I)`` drops the batch axis everywhere)::

    x    (T, B, I)            y    (T, B, D*H)   forward half [..., :H], reverse half [..., H:]
    h0   (L*D, B, H)          h_n  (L*D, B, H)   row k*D + d: layer k, direction d
    c0   (L*D, B, H)  LSTM    c_n  (L*D, B, H)

``lengths (B,)`` gives PyTorch's packed-sequence results: outputs past a length are zero,
final states come from each sequence's last valid step, and the reverse direction reads each
sequence backwards from its own last valid step (each row is reversed within its length by
an index gather, run through the forward kernel and gathered back).

There is no autograd: a forward with grad enabled (the default; see
:mod:`fastrnn.grad_mode`) keeps what :meth:`backward` needs, in train and eval mode alike
(``eval()`` only switches dropout off, as in PyTorch); under ``fastrnn.no_grad()`` the
forward takes the kernels' inference path and keeps nothing. Backward accumulates into each
``Parameter.grad`` and stores the initial-state gradients as ``grad_h0`` (and ``grad_c0``).

``recurrent_dropout=p`` (every cell; Keras' option, Gal & Ghahramani 2016) draws one
inverted-dropout mask ``(B, H)`` (entries 0 or 1/(1-p)) per forward, layer and direction in
train mode and multiplies ``h_{t-1}`` by it where the recurrent product reads it, the same
mask at every step; the state itself is not masked, and eval mode and ``step()`` use none.

``x`` may also be a ``torch.nn.utils.rnn.PackedSequence``: it is unpacked to padded
arrays and lengths, and ``y`` comes back as a PackedSequence with the same packing (the
final states, in the original batch order, are arrays as usual); see :mod:`._packed`.
"""
from __future__ import annotations

import numbers
import warnings
from typing import NamedTuple, Optional

import numpy as np

from .. import _core, ops, reference
from .._common import (_SUPPORTED_DTYPES, TRAINABLE_PRECISIONS, _check_lengths, check_device,
                       check_memory, check_nonlinearity, check_positive_int,
                       split_precision)
from ..grad_mode import is_grad_enabled, no_grad
from . import _packed
from ._packs import cached_packs, cached_stepper, current_stepper
from .module import Module, Parameter

__all__ = ["RNN", "LSTM", "GRU"]

_INITS = ("pytorch", "keras")
_WEIGHT_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


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


def _empty_batch(x_t) -> bool:
    """x_t is (0, I): step() answers it in Python (the C stepper must not see B = 0)."""
    shape = getattr(x_t, "shape", None)
    return shape is not None and len(shape) == 2 and shape[0] == 0


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


# ---------------------------------------------------------------------------------------
# The shared module
# ---------------------------------------------------------------------------------------

class _RecurrentBase(Module):
    """Stacking, directions, lengths, dropout, backward and streaming for RNN/LSTM/GRU.

    A subclass sets ``_gates`` (G) and ``_state_names`` and implements the single-layer
    kernel calls :meth:`_kernel_forward` and :meth:`_kernel_backward`. The public calling
    convention here is the one-state one (RNN, GRU); LSTM overrides how states are packed.
    """

    _gates = 1
    _state_names = ("h",)
    _forget_gate = None          # gate block whose bias Keras initialises to 1 (LSTM)
    layer_norm = False           # LSTM/GRU(layer_norm=True): its parameters, per layer and
    _LAYER_NORM = ()             # direction: (kind, size in units of H), in kernel order

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, dtype=np.float32, seed=None,
                 init="pytorch", device=None, recurrent_dropout=0.0, **variants):
        super().__init__()
        check_device(device)
        self.recurrent_dropout = _recurrent_dropout(recurrent_dropout)
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.num_layers = check_positive_int("num_layers", num_layers)
        self.bias = _flag("bias", bias)
        self.batch_first = _flag("batch_first", batch_first)
        self.dropout = _dropout(dropout, self.num_layers)
        self.bidirectional = _flag("bidirectional", bidirectional)
        self.dtype, self.precision = split_precision(dtype)
        self._int8 = {}     # (layer, direction) -> ((q_ih, s_ih), (q_hh, s_hh)) when int8
        if init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, got {init!r}")
        self.init = init
        self._rng = _generator(seed)
        self._tape = None
        for name in self._state_names:
            setattr(self, f"grad_{name}0", None)
        self._set_variants(**variants)
        self._create_parameters()
        self.reset_parameters()

    def _set_variants(self) -> None:
        """The cell's variant options (keyword arguments; LSTM has ``peepholes``), set
        before the parameters are made. The plain cells take none."""

    # -- parameters ----------------------------------------------------------------------
    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def _out_size(self) -> int:
        """Size of h and of each direction's output: hidden_size (LSTM: proj_size if set)."""
        return self.hidden_size

    @property
    def _state_sizes(self) -> tuple:
        """Size of each state in _state_names (LSTM with proj_size: h P, c H)."""
        return tuple(self.hidden_size for _ in self._state_names)

    def _param(self, kind: str, layer: int, direction: int) -> Parameter:
        """The Parameter ``{kind}_l{layer}[_reverse]``."""
        return getattr(self, f"{kind}_l{layer}{'_reverse' if direction else ''}")

    def _names(self, layer: int, direction: int):
        """Torch's parameter names for one layer and direction (biases only with bias)."""
        return self._param_names[layer][direction]

    def _kinds(self, fan_in: int) -> list:
        """``(kind, shape)`` of one layer and direction's parameters, in torch's order (a
        variant appends its own)."""
        G, H = self._gates, self.hidden_size
        shapes = [(G * H, fan_in), (G * H, self._out_size), (G * H,), (G * H,)]
        kinds = list(zip(_WEIGHT_KINDS, shapes))[:4 if self.bias else 2]
        if self.layer_norm:
            kinds += [(kind, (units * H,)) for kind, units in self._LAYER_NORM]
        return kinds

    def _create_parameters(self) -> None:
        """Register parameters in torch's order, so state_dict() keys come out identical."""
        G, H = self._gates, self.hidden_size
        D, L = self.num_directions, self.num_layers
        # Checked before anything is made (num_layers=2**31 would otherwise grow until the
        # machine runs out): the parameters, and the float64 values that initialise them.
        count = D * G * H * ((self.input_size + H + 2) + (L - 1) * (D * H + H + 2))
        check_memory(f"{type(self).__name__}({self.input_size}, {H}, num_layers={L}) "
                     f"parameters", count * (self.dtype.itemsize + 8))
        self._param_names = []
        for layer in range(self.num_layers):
            fan_in = self.input_size if layer == 0 else self.num_directions * self._out_size
            kinds = self._kinds(fan_in)
            self._param_names.append([])
            for direction in range(self.num_directions):
                suffix = f"_l{layer}{'_reverse' if direction else ''}"
                self._param_names[layer].append([kind + suffix for kind, _ in kinds])
                for name, (_, shape) in zip(self._names(layer, direction), kinds):
                    setattr(self, name, Parameter(np.zeros(shape, self.dtype)))

    def reset_parameters(self) -> None:
        """Fill the parameters from the module's RNG following ``self.init``.

        'pytorch': every parameter U(-1/sqrt(H), 1/sqrt(H)). 'keras': input weights
        Glorot-uniform over the Keras kernel (I, G*H), recurrent weights orthogonal over the
        Keras recurrent kernel (H, G*H), zero biases, and the LSTM forget-gate bias 1 (in
        ``bias_ih``). Both Keras kernels are stored transposed (PyTorch layout).
        """
        bound = 1.0 / np.sqrt(self.hidden_size)
        for name, p in self.named_parameters():
            if self.init == "pytorch":
                value = self._rng.uniform(-bound, bound, p.shape)
            else:
                value = self._keras_value(name, p.shape)
            p[...] = value
        for name, p in self.named_parameters():   # layer norm: gains 1, shifts 0
            if name.startswith("ln_"):
                p[...] = 0.0 if name.startswith("ln_bias") else 1.0

    def _keras_value(self, name: str, shape) -> np.ndarray:
        rows, H = shape[0], self.hidden_size
        if name.startswith("weight_ih"):
            return _glorot_uniform(self._rng, shape[1], rows).T
        if name.startswith("weight_hh"):
            return _orthogonal(self._rng, shape[1], rows).T
        if name.startswith("weight_hr"):     # the projection, a dense kernel (H, P)
            return _glorot_uniform(self._rng, shape[1], rows).T
        value = np.zeros(shape)
        if name.startswith("bias_ih") and self._forget_gate is not None:
            value[self._forget_gate * H:(self._forget_gate + 1) * H] = 1.0
        return value

    def _weights(self, layer: int, direction: int):
        """(w_ih, w_hh, b_ih, b_hh) arrays of one layer and direction; None without bias."""
        names = self._names(layer, direction)[:4 if self.bias else 2]
        values = [getattr(self, name).value for name in names]
        return tuple(values) if self.bias else (*values, None, None)

    def _params(self, layer: int, direction: int):
        return [getattr(self, name) for name in self._names(layer, direction)]

    def _packs(self, layer: int, direction: int, training: bool) -> ops.Packs:
        """w_hh of one layer and direction packed for the kernels, made once and kept until
        the weight changes (its Parameter, its version, the ISA level or dtype differ) or a
        training forward needs the backward pack too."""
        w_ih, w_hh = self._params(layer, direction)[:2]
        quantized = (self._int8[layer, direction] if self.precision == "int8" else None)
        return cached_packs(self, (layer, direction), w_hh, self._cell, self._cell_options(),
                            training, w_ih, self.precision, quantized)

    # -- int8 (fastrnn.quantize_dynamic) ---------------------------------------------------
    _INT8_SUFFIXES = (".int8", ".scale")

    def _quantize(self) -> None:
        """Switch to int8 inference: each weight_ih/hh quantized per row (reference.
        quantize_rows) and kept as int8 values with float32 row scales; the Parameters
        then hold the values those stand for (q * s), so every path sees one weight."""
        self._int8 = {}
        for layer in range(self.num_layers):
            for direction in range(self.num_directions):
                pair = []
                for p in self._params(layer, direction)[:2]:
                    q, scale = reference.quantize_rows(p.value)
                    p[...] = q * scale[:, None]
                    pair.append((q, scale))
                self._int8[layer, direction] = tuple(pair)
        object.__setattr__(self, "precision", "int8")

    def _int8_names(self):
        """((layer, direction), weight name, 0 or 1) for each quantized weight."""
        for layer in range(self.num_layers):
            for direction in range(self.num_directions):
                for i, name in enumerate(self._names(layer, direction)[:2]):
                    yield (layer, direction), name, i

    def _extra_state(self) -> dict:
        if self.precision != "int8":
            return {}
        state = {}
        for key, name, i in self._int8_names():
            q, scale = self._int8[key][i]
            state[name + ".int8"], state[name + ".scale"] = q, scale
        return state

    def _is_extra_key(self, name: str) -> bool:
        return name.endswith(self._INT8_SUFFIXES) and "." not in name[:name.rindex(".")]

    def _check_extra_state(self, arrays: dict) -> None:
        for key, name, i in self._int8_names():
            shape = getattr(self, name).shape
            for suffix, want, dtype in ((".int8", shape, np.int8),
                                        (".scale", shape[:1], np.float32)):
                value = arrays.get(name + suffix)
                if value is None or value.shape != want or value.dtype != dtype:
                    raise ValueError(f"load_state_dict: int8 state {name + suffix} must be "
                                     f"{np.dtype(dtype)} of shape {want}, got "
                                     f"{None if value is None else (value.dtype, value.shape)}")

    def _load_extra_state(self, arrays: dict) -> None:
        self._int8 = {}
        for key, name, i in self._int8_names():
            self._int8.setdefault(key, [None, None])[i] = (arrays[name + ".int8"].copy(),
                                                           arrays[name + ".scale"].copy())
        self._int8 = {key: tuple(pair) for key, pair in self._int8.items()}
        object.__setattr__(self, "precision", "int8")

    def _cell_options(self) -> dict:
        return {}

    def _variant_args(self, layer: int, direction: int, B: int) -> dict:
        """The variants' extra keyword arguments of one kernel forward over B rows: the
        recurrent dropout mask (training only), the layer-norm parameters and, for LSTM,
        the peepholes and projection."""
        mask = self._recurrent_mask(B)
        args = {} if mask is None else {"recurrent_mask": mask}
        if self.layer_norm:
            args["layer_norm"] = np.concatenate(
                [self._param(kind, layer, direction).value for kind, _ in self._LAYER_NORM])
        return args

    def _variant_grads(self, g) -> tuple:
        """The variant parameters' gradients in a kernel's grads tuple ``g``, in parameter
        order (the layer norm's (n*H,) vector split per parameter)."""
        if not self.layer_norm:
            return ()
        cuts = np.cumsum([units * self.hidden_size for _, units in self._LAYER_NORM])[:-1]
        return tuple(np.split(g.dlayer_norm, cuts))

    def _packs_or_none(self, layer: int, direction: int, training: bool):
        """No packs for the layer-normalised kernels (they make their own, in float32: a
        reduced precision is refused rather than silently run in float32)."""
        if not self.layer_norm:
            return self._packs(layer, direction, training)
        if self.precision != "float32":
            raise ValueError(f"precision={self.precision!r} does not support layer_norm yet; "
                             "convert the layer with .to('float32')")
        return None

    def _recurrent_mask(self, B: int) -> Optional[np.ndarray]:
        """Keras' recurrent dropout mask (B, H) for one layer and direction of one forward
        (keep / (1 - p), the same at every step), or None when inactive (eval, p = 0)."""
        if not (self.training and self.recurrent_dropout > 0):
            return None
        keep = self._rng.random((B, self._out_size)) >= self.recurrent_dropout
        return (keep / (1.0 - self.recurrent_dropout)).astype(self.dtype)

    # -- the cell-specific part (overridden) -----------------------------------------------
    def _kernel_forward(self, x, states, weights, lengths, training, packs=None, **variant):
        """One layer, one direction: ``(y (T, B, H), final states tuple, cache)``."""
        raise NotImplementedError

    def _kernel_backward(self, dy, dfinals, cache):
        """Undo :meth:`_kernel_forward`: ``(dx, initial-state grads tuple, weight grads)``."""
        raise NotImplementedError

    # -- the public calling convention (one state; LSTM overrides) --------------------------
    def forward(self, x, hx=None, lengths=None):
        """Run the whole sequence: ``y, h_n = module(x, h0=None, lengths=None)``.

        ``x (T, B, I)`` (``(B, T, I)`` with batch_first, ``(T, I)`` unbatched, or a
        PackedSequence); ``hx`` the initial hidden state ``(L*D, B, H)`` or None (zeros);
        ``lengths (B,)`` integers in [1, T] or None. Returns ``y (T, B, D*H)`` in the layout
        of ``x`` and ``h_n (L*D, B, H)``. With grad enabled (outside ``fastrnn.no_grad()``)
        the forward keeps what :meth:`backward` needs; ``eval()`` only turns dropout off.
        """
        y, finals = self._forward(x, self._unpack_state(hx, "hx"), lengths)
        return y, self._pack_state(finals)

    def backward(self, dy, dh_n=None):
        """BPTT for the last forward (run with grad enabled): returns ``dx`` like ``x``.

        ``dy`` like ``y`` (a PackedSequence if ``x`` was one) and ``dh_n`` like ``h_n``
        (None = zero). Parameter gradients are added to each ``Parameter.grad``; the
        gradient of ``h0`` is stored as ``grad_h0``.
        """
        return self._backward(dy, (dh_n,))

    def _unpack_state(self, state, name: str) -> tuple:
        return (state,)

    def _pack_state(self, states: tuple):
        return states[0]

    # -- forward ---------------------------------------------------------------------------
    def _input(self, x):
        x = _array("x", x, self.dtype)
        if x.ndim not in (2, 3):
            raise ValueError(f"x must have 3 dimensions ({'B, T' if self.batch_first else 'T, B'}"
                             f", I) or 2 (T, I) unbatched, got shape {_shape_str(x.shape)}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"x must have input_size={self.input_size} features in its last "
                             f"axis, got shape {_shape_str(x.shape)}")
        layout = _Layout(self.batch_first, x.ndim == 2)
        return layout.seq_in(x), layout

    def _initial_states(self, states, layout: _Layout, B: int) -> list:
        """Each state as (L*D, B, H) (LSTM h with proj_size: P), or None for zeros."""
        LD = self.num_layers * self.num_directions
        checked = []
        for name, state, H in zip(self._state_names, states, self._state_sizes):
            expected = (LD, H) if layout.unbatched else (LD, B, H)
            if state is not None:
                state = _array(f"{name}0", state, self.dtype)
                _check_shape(f"{name}0", state, expected,
                             "(num_layers*num_directions, batch, hidden_size)")
                state = np.ascontiguousarray(layout.state_in(state))
            checked.append(state)
        return checked

    def _dropout_mask(self, shape) -> Optional[np.ndarray]:
        """Inverted-dropout mask (keep / (1-p)) for a layer's input, or None when inactive."""
        if not (self.training and self.dropout > 0):
            return None
        keep = self._rng.random(shape) >= self.dropout
        scale = 0.0 if self.dropout == 1 else 1.0 / (1.0 - self.dropout)
        return (keep * scale).astype(self.dtype)

    def _forward(self, x, states, lengths):
        packing = None
        if _packed.is_packed(x):
            x, lengths, packing = _packed.unpack("x", x, lengths, self.batch_first)
        x, layout = self._input(x)
        T, B = x.shape[:2]
        # save what backward needs (grad mode, not train mode); int8 runs inference only,
        # bf16 trains (its backward in float32, into the float32 Parameters' gradients)
        keep = is_grad_enabled() and self.precision in TRAINABLE_PRECISIONS
        if lengths is not None and layout.unbatched:
            raise ValueError("lengths needs batched input x (T, B, I); got unbatched x (T, I)")
        lengths = _check_lengths(lengths, T, B)
        states = self._initial_states(states, layout, B)
        reverser = _Reverser(lengths, T, B)
        finals = [[] for _ in self._state_names]
        caches, masks = [], []
        layer_input = x
        for layer in range(self.num_layers):
            mask = self._dropout_mask(layer_input.shape) if layer else None
            if mask is not None:
                layer_input = layer_input * mask
            outputs, layer_caches = [], []
            for direction in range(self.num_directions):
                k = layer * self.num_directions + direction
                initial = tuple(None if s is None else s[k] for s in states)
                y, final, cache = self._run_direction(layer, direction, layer_input, initial,
                                                      lengths, reverser, keep)
                outputs.append(y)
                layer_caches.append(cache)
                for i, state in enumerate(final):
                    finals[i].append(state)
            masks.append(mask)
            caches.append(layer_caches)
            layer_input = outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=-1)
        self._tape = (_Tape(caches, masks, reverser, layout, T, B, packing) if keep
                      else _NO_GRAD_TAPE)
        y = layout.seq_out(layer_input)
        if packing is not None:
            y = _packed.pack(y, packing, self.batch_first)
        return y, tuple(layout.state_out(np.stack(f)) for f in finals)

    def _run_direction(self, layer, direction, x, initial, lengths, reverser, keep):
        """One layer and direction over the sequence (reverse: within each length);
        ``keep``: save what backward needs (else the kernels' inference path)."""
        if direction:
            x = reverser(x)
        packs = self._packs_or_none(layer, direction, keep)
        y, final, cache = self._kernel_forward(x, initial, self._weights(layer, direction),
                                               lengths, keep, packs,
                                               **self._variant_args(layer, direction,
                                                                    x.shape[1]))
        return (reverser(y) if direction else y), final, cache

    # -- backward --------------------------------------------------------------------------
    def _upstream(self, dy, dfinals, tape: _Tape):
        """dy as (T, B, D*H) or None; each final-state gradient as (L*D, B, H) or None."""
        layout, D, H = tape.layout, self.num_directions, self._out_size
        if dy is not None and tape.packing is not None:
            dy = _packed.unpack_like("dy", dy, tape.packing, self.batch_first)
        if dy is not None:
            dy = _array("dy", dy, self.dtype)
            _check_shape("dy", dy, layout.seq_shape(tape.T, tape.B, D * H), "(the shape of y)")
            dy = layout.seq_in(dy)
        LD = self.num_layers * D
        checked = []
        for name, grad, size in zip(self._state_names, dfinals, self._state_sizes):
            expected = (LD, size) if layout.unbatched else (LD, tape.B, size)
            if grad is not None:
                grad = _array(f"d{name}_n", grad, self.dtype)
                _check_shape(f"d{name}_n", grad, expected, f"(the shape of {name}_n)")
                grad = layout.state_in(grad)
            checked.append(grad)
        return dy, checked

    def _backward(self, dy, dfinals):
        tape = self._tape
        if tape is _NO_GRAD_TAPE and self.precision not in TRAINABLE_PRECISIONS:
            raise RuntimeError(
                f"{type(self).__name__}.backward: a {self.precision} module runs inference "
                "only; convert it back with .to('float32') to train")
        if tape is _NO_GRAD_TAPE:
            raise RuntimeError(
                f"{type(self).__name__}.backward: the last forward ran with grad disabled "
                "(inside fastrnn.no_grad() or inference_mode()), so it kept nothing for "
                "backward; run the forward outside no_grad to backpropagate")
        if tape is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward needs a preceding forward with grad enabled "
                "(each forward allows one backward)")
        dy, dfinals = self._upstream(dy, dfinals, tape)
        D, H = self.num_directions, self._out_size
        dinitial = [np.zeros((self.num_layers * D, tape.B, size), self.dtype)
                    for size in self._state_sizes]
        for layer in reversed(range(self.num_layers)):
            dx = None
            for direction in range(D):
                k = layer * D + direction
                dy_d = None if dy is None else dy[..., direction * H:(direction + 1) * H]
                dfinal = tuple(None if g is None else g[k] for g in dfinals)
                dx_d, dstates = self._backward_direction(layer, direction, dy_d, dfinal, tape)
                for i, grad in enumerate(dstates):
                    dinitial[i][k] = grad
                dx = dx_d if dx is None else dx + dx_d
            if tape.masks[layer] is not None:
                dx *= tape.masks[layer]
            dy = dx
        self._tape = None
        for name, grad in zip(self._state_names, dinitial):
            setattr(self, f"grad_{name}0", tape.layout.state_out(grad))
        dx = tape.layout.seq_out(dy)
        return dx if tape.packing is None else _packed.pack(dx, tape.packing, self.batch_first)

    def _drop_tape(self) -> None:
        self._tape = None

    def _backward_direction(self, layer, direction, dy, dfinal, tape: _Tape):
        """Kernel backward of one layer and direction; adds its weight gradients."""
        reverser = tape.reverser if direction else (lambda a: a)
        dx, dstates, dweights = self._kernel_backward(reverser(dy), dfinal,
                                                      tape.caches[layer][direction])
        for p, grad in zip(self._params(layer, direction), dweights):
            p.grad += grad
        return reverser(dx), dstates

    # -- streaming -------------------------------------------------------------------------
    def step(self, x_t, state=None):
        """Advance every layer by one time step: ``out, state = module.step(x_t, state)``.

        ``x_t (B, I)``; ``state`` as forward's initial state (``(L, B, H)``, LSTM a pair) or
        None (zeros). Returns the top layer's output ``(B, H)`` and the new state, fresh
        arrays. Always inference: no dropout, nothing kept for backward. Unidirectional only.
        """
        stepper = current_stepper(self)      # the streaming loop's fast path
        if stepper is not None and not _empty_batch(x_t):
            return stepper.step(x_t, state)
        if self.bidirectional:
            raise ValueError("step() needs a unidirectional module: the reverse direction of a "
                             "bidirectional one reads the whole sequence; call the module on it")
        if _empty_batch(x_t):
            return self._empty_step(x_t, state)
        if self._steps_by_forward():
            return self._step_by_forward(x_t, state)
        return self._stepper().step(x_t, state)

    def _steps_by_forward(self) -> bool:
        """Whether step() runs the sequence kernels over T = 1 (variants the C stepper does
        not know: layer norm, LSTM's projection)."""
        return self.layer_norm

    def _step_by_forward(self, x_t, state):
        """One step as a forward over T = 1: inference, no dropout, and the tape of a
        pending backward kept."""
        x_t = _array("x_t", x_t, self.dtype)
        if x_t.ndim != 2:
            raise ValueError(f"x_t must have shape (B, input_size={self.input_size}), "
                             f"got {_shape_str(x_t.shape)}")
        tape, training = self._tape, self.training
        try:
            self.training = False
            with no_grad():
                y, new = self.forward(x_t[:, None] if self.batch_first else x_t[None], state)
        finally:
            self._tape, self.training = tape, training
        return y[:, 0] if self.batch_first else y[0], new

    def _empty_step(self, x_t, state):
        """step() on a batch of 0 rows: checked like any other, empty results, no kernel."""
        x_t = _array("x_t", x_t, self.dtype)
        if x_t.ndim != 2 or x_t.shape[1] != self.input_size:
            raise ValueError(f"x_t must have shape (B, input_size={self.input_size}), "
                             f"got {_shape_str(x_t.shape)}")
        shapes = [(self.num_layers, 0, size) for size in self._state_sizes]
        for name, s, shape in zip(self._state_names, self._unpack_state(state, "state"),
                                  shapes):
            if s is not None:
                _check_shape("state " + name, _array("state " + name, s, self.dtype), shape,
                             "(num_layers, batch, state size)")
        new = tuple(np.empty(shape, self.dtype) for shape in shapes)
        return np.empty((0, self._out_size), self.dtype), self._pack_state(new)

    def _stepper(self) -> _core.Stepper:
        """The C-level stepper over this module's weights and packs (nn._packs)."""
        return cached_stepper(self, self._step_kind(), self._step_layers, self.input_size,
                              self.hidden_size, lambda name, value: _array(name, value,
                                                                           self.dtype))

    def _step_layers(self):
        """Per layer ``(w_ih, w_hh, b_ih, b_hh, forward pack)``, flat, for the stepper."""
        layers = []
        for layer in range(self.num_layers):
            flat = [None if w is None else w.reshape(-1) for w in self._weights(layer, 0)]
            layers.append((*flat, self._packs(layer, 0, False).forward))
        return layers

    def _step_kind(self) -> str:
        return self._cell

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        defaults = {"num_layers": 1, "bias": True, "batch_first": False, "dropout": 0.0,
                    "bidirectional": False, "recurrent_dropout": 0.0}
        for name, default in defaults.items():
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        s += f", dtype={self.dtype}"
        return s + (f", precision={self.precision!r}" if self.precision != "float32" else "")


# ---------------------------------------------------------------------------------------
# The three cells
# ---------------------------------------------------------------------------------------

class RNN(_RecurrentBase):
    """Elman RNN, as ``torch.nn.RNN``: ``h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``.

    ``act`` is tanh or relu (``nonlinearity``). Parameters per layer and direction:
    ``weight_ih_l{k} (H, I_k)``, ``weight_hh_l{k} (H, H)``, ``bias_ih_l{k}``,
    ``bias_hh_l{k} (H,)``. Call ``y, h_n = rnn(x, h0=None, lengths=None)``; see the module
    docstring for shapes, lengths and backward.
    """

    _gates = 1

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, **kwargs):
        nonlinearity = check_nonlinearity(nonlinearity)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, **kwargs)
        self.nonlinearity = nonlinearity

    _cell = "rnn"

    def _step_kind(self) -> str:
        return "rnn_relu" if self.nonlinearity == "relu" else "rnn"

    def _kernel_forward(self, x, states, weights, lengths, training, packs=None, **variant):
        y, h_n, cache = ops.rnn_forward(x, states[0], *weights, nonlinearity=self.nonlinearity,
                                        lengths=lengths, training=training, packs=packs,
                                        **variant)
        return y, (h_n,), cache

    def _kernel_backward(self, dy, dfinals, cache):
        g = ops.rnn_backward(dy, dfinals[0], cache)
        return g.dx, (g.dh0,), (g.dw_ih, g.dw_hh, g.db_ih, g.db_hh)


    def extra_repr(self) -> str:
        return super().extra_repr() + (", nonlinearity='relu'"
                                       if self.nonlinearity == "relu" else "")


class LSTM(_RecurrentBase):
    """LSTM, as ``torch.nn.LSTM`` (gates i, f, g, o in blocks of H rows)::

        i, f, o = sigmoid(W_i* x_t + b_i* + W_h* h_{t-1} + b_h*),  g = tanh(...)
        c_t = f * c_{t-1} + i * g,   h_t = o * tanh(c_t)

    Call ``y, (h_n, c_n) = lstm(x, None or (h0, c0), lengths=None)``; backward is
    ``dx = lstm.backward(dy, dh_n=None, dc_n=None)`` and stores ``grad_h0``, ``grad_c0``.

    ``peepholes=True`` (ONNX's LSTM with input ``P``; Gers & Schmidhuber 2000) lets the
    cell state into the gates, with one more parameter per layer and direction,
    ``weight_p_l{k} (3H,)`` = [p_i, p_o, p_f] in ONNX's order::

        i = sigmoid(... + p_i * c_{t-1}),  f = sigmoid(... + p_f * c_{t-1})
        o = sigmoid(... + p_o * c_t)

    initialised like the other weights ('pytorch') or to zeros ('keras').

    ``proj_size=P`` (0 < P < hidden_size; PyTorch's option, Sak et al. 2014) projects the
    output: ``h_t = W_hr (o * tanh(c_t))`` with ``weight_hr_l{k} (P, H)``, so ``y`` is
    ``(T, B, D*P)``, ``h0``/``h_n`` ``(L*D, B, P)``, ``c0``/``c_n`` stay ``(L*D, B, H)``,
    ``weight_hh_l{k}`` is ``(4H, P)`` and layer k > 0 reads D*P features, as in torch (whose
    state_dict loads unchanged).

    ``layer_norm=True`` (Ba et al. 2016; per gate block as TF Addons' LayerNormLSTMCell)
    normalises each product and the cell state, with gains ``ln_weight_ih_l{k}``,
    ``ln_weight_hh_l{k}`` (4H,), ``ln_weight_c_l{k}`` (H,) and ``ln_bias_c_l{k}`` (H,)
    (initialised to 1 and 0; the products' shifts are the biases)::

        a_t = g_ih * LN(W_ih x_t) + g_hh * LN(W_hh h_{t-1}) + b_ih + b_hh
        h_t = o * tanh(g_c * LN(c_t) + b_c)

    Not combined with peepholes or proj_size.
    """

    _gates = 4
    _state_names = ("h", "c")
    _forget_gate = 1

    _LAYER_NORM = (("ln_weight_ih", 4), ("ln_weight_hh", 4), ("ln_weight_c", 1),
                   ("ln_bias_c", 1))

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, *, peepholes=False,
                 layer_norm=False, **kwargs):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, peepholes=peepholes, proj_size=proj_size,
                         layer_norm=layer_norm, **kwargs)

    def _set_variants(self, peepholes=False, proj_size=0, layer_norm=False) -> None:
        self.peepholes = _flag("peepholes", peepholes)
        self.layer_norm = _flag("layer_norm", layer_norm)
        if self.layer_norm and (self.peepholes or proj_size):
            raise ValueError("layer_norm=True cannot be combined with peepholes or proj_size "
                             f"yet (got peepholes={self.peepholes}, proj_size={proj_size!r})")
        if isinstance(proj_size, bool) or not isinstance(proj_size, numbers.Integral):
            raise TypeError(f"proj_size must be an int, got {proj_size!r}")
        if not 0 <= proj_size < self.hidden_size:
            raise ValueError(f"proj_size must be 0 (no projection) or in [1, hidden_size="
                             f"{self.hidden_size}), got {proj_size}")
        self.proj_size = int(proj_size)

    @property
    def _out_size(self) -> int:
        return self.proj_size or self.hidden_size

    @property
    def _state_sizes(self) -> tuple:
        return (self._out_size, self.hidden_size)

    def _kinds(self, fan_in: int) -> list:
        kinds = super()._kinds(fan_in)
        if self.proj_size:
            kinds.append(("weight_hr", (self.proj_size, self.hidden_size)))
        if self.peepholes:
            kinds.append(("weight_p", (3 * self.hidden_size,)))
        return kinds

    def _peephole_weights(self, layer: int, direction: int):
        """``weight_p`` (3H,) of one layer and direction, or None without peepholes."""
        return self._param("weight_p", layer, direction).value if self.peepholes else None

    def _packs(self, layer: int, direction: int, training: bool):
        """No packs with a projection (the kernel packs w_hh (4H, P) per call)."""
        return None if self.proj_size else super()._packs(layer, direction, training)

    def _steps_by_forward(self) -> bool:
        return bool(self.proj_size) or self.layer_norm

    def forward(self, x, hx=None, lengths=None):
        """``y, (h_n, c_n) = lstm(x, hx=None or (h0, c0), lengths=None)``; see the base class."""
        return super().forward(x, hx, lengths)

    def backward(self, dy, dh_n=None, dc_n=None):
        """BPTT: returns ``dx``; adds parameter gradients; stores ``grad_h0``, ``grad_c0``."""
        return self._backward(dy, (dh_n, dc_n))

    def _unpack_state(self, state, name: str) -> tuple:
        if state is None:
            return (None, None)
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError(f"{name} must be None or a pair (h0, c0) for LSTM, "
                            f"got {type(state).__name__}")
        return tuple(state)

    def _pack_state(self, states: tuple):
        return tuple(states)

    _cell = "lstm"

    def _variant_args(self, layer: int, direction: int, B: int) -> dict:
        args = super()._variant_args(layer, direction, B)
        if self.peepholes:
            args["peepholes"] = self._peephole_weights(layer, direction)
        if self.proj_size:
            args["w_hr"] = self._param("weight_hr", layer, direction).value
        return args

    def _kernel_forward(self, x, states, weights, lengths, training, packs=None, **variant):
        y, h_n, c_n, cache = ops.lstm_forward(x, *states, *weights, lengths=lengths,
                                              training=training, packs=packs, **variant)
        return y, (h_n, c_n), cache

    def _kernel_backward(self, dy, dfinals, cache):
        g = ops.lstm_backward(dy, *dfinals, cache)
        grads = (g.dw_ih, g.dw_hh, g.db_ih, g.db_hh, *self._variant_grads(g),
                 getattr(g, "dw_hr", None), getattr(g, "dw_p", None))
        return g.dx, (g.dh0, g.dc0), tuple(d for d in grads if d is not None)  # as _params

    def _step_layers(self):
        layers = super()._step_layers()
        if not self.peepholes:
            return layers
        return [(*layer, self._peephole_weights(k, 0)) for k, layer in enumerate(layers)]

    def extra_repr(self) -> str:
        return (super().extra_repr() + (f", proj_size={self.proj_size}" if self.proj_size else "")
                + (", peepholes=True" if self.peepholes else "")
                + (", layer_norm=True" if self.layer_norm else ""))



class GRU(_RecurrentBase):
    """GRU, as ``torch.nn.GRU`` (gates r, z, n in blocks of H rows)::

        r, z = sigmoid(W_i* x_t + b_i* + W_h* h_{t-1} + b_h*)
        n = tanh(W_in x_t + b_in + r * (W_hn h_{t-1} + b_hn))      reset_after=True (torch)
        n = tanh(W_in x_t + b_in + W_hn (r * h_{t-1}) + b_hn)      reset_after=False
        h_t = (1 - z) * n + z * h_{t-1}

    ``reset_after=False`` is Keras' ``reset_after=False`` and ONNX's
    ``linear_before_reset=0``. Call ``y, h_n = gru(x, h0=None, lengths=None)``.

    ``layer_norm=True`` (reset_after only) normalises each product per gate block, with gains
    ``ln_weight_ih_l{k}``, ``ln_weight_hh_l{k}`` (3H,) (initialised to 1; the shifts are
    the biases)::

        [xr xz xn] = g_ih * LN(W_ih x_t) + b_ih,  [hr hz hn] = g_hh * LN(W_hh h_{t-1}) + b_hh
    """

    _gates = 3
    _LAYER_NORM = (("ln_weight_ih", 3), ("ln_weight_hh", 3))

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, reset_after=True, layer_norm=False,
                 **kwargs):
        reset_after = _flag("reset_after", reset_after)
        if _flag("layer_norm", layer_norm) and not reset_after:
            raise ValueError("layer_norm=True needs reset_after=True (the GRU of PyTorch)")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, layer_norm=layer_norm, **kwargs)
        self.reset_after = reset_after

    def _set_variants(self, layer_norm=False) -> None:
        self.layer_norm = _flag("layer_norm", layer_norm)

    _cell = "gru"

    def _cell_options(self) -> dict:
        return {"reset_after": self.reset_after}

    def _step_kind(self) -> str:
        return "gru" if self.reset_after else "gru_reset_before"

    def _kernel_forward(self, x, states, weights, lengths, training, packs=None, **variant):
        y, h_n, cache = ops.gru_forward(x, states[0], *weights, reset_after=self.reset_after,
                                        lengths=lengths, training=training, packs=packs,
                                        **variant)
        return y, (h_n,), cache

    def _kernel_backward(self, dy, dfinals, cache):
        g = ops.gru_backward(dy, dfinals[0], cache)
        grads = (g.dw_ih, g.dw_hh, g.db_ih, g.db_hh, *self._variant_grads(g))
        return g.dx, (g.dh0,), tuple(d for d in grads if d is not None)  # as _params


    def extra_repr(self) -> str:
        return (super().extra_repr() + ("" if self.reset_after else ", reset_after=False")
                + (", layer_norm=True" if self.layer_norm else ""))
