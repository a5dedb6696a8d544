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
from .._common import (_SUPPORTED_DTYPES, _check_lengths, check_device, check_memory,
                       check_nonlinearity, check_positive_int, split_precision)
from ..grad_mode import is_grad_enabled
from . import _packed
from ._packs import cached_packs, cached_stepper
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

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, dtype=np.float32, seed=None,
                 init="pytorch", device=None):
        super().__init__()
        check_device(device)
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
        self._create_parameters()
        self.reset_parameters()

    # -- parameters ----------------------------------------------------------------------
    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _names(self, layer: int, direction: int):
        """Torch's parameter names for one layer and direction (biases only with bias)."""
        return self._param_names[layer][direction]

    def _create_parameters(self) -> None:
        """Register parameters in torch's order, so state_dict() keys come out identical."""
        G, H = self._gates, self.hidden_size
        D, L = self.num_directions, self.num_layers
        # Checked before anything is made (num_layers=2**31 would otherwise grow until the
        # machine runs out): the parameters, and the float64 values that initialise them.
        count = D * G * H * ((self.input_size + H + 2) + (L - 1) * (D * H + H + 2))
        check_memory(f"{type(self).__name__}({self.input_size}, {H}, num_layers={L}) "
                     f"parameters", count * (self.dtype.itemsize + 8))
        kinds = _WEIGHT_KINDS if self.bias else _WEIGHT_KINDS[:2]
        self._param_names = [[[f"{kind}_l{layer}{'_reverse' if direction else ''}"
                               for kind in kinds] for direction in range(self.num_directions)]
                             for layer in range(self.num_layers)]
        for layer in range(self.num_layers):
            fan_in = self.input_size if layer == 0 else self.num_directions * H
            shapes = [(G * H, fan_in), (G * H, H), (G * H,), (G * H,)]
            for direction in range(self.num_directions):
                for name, shape in zip(self._names(layer, direction), shapes):
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

    def _keras_value(self, name: str, shape) -> np.ndarray:
        rows, H = shape[0], self.hidden_size
        if name.startswith("weight_ih"):
            return _glorot_uniform(self._rng, shape[1], rows).T
        if name.startswith("weight_hh"):
            return _orthogonal(self._rng, H, rows).T
        value = np.zeros(shape)
        if name.startswith("bias_ih") and self._forget_gate is not None:
            value[self._forget_gate * H:(self._forget_gate + 1) * H] = 1.0
        return value

    def _weights(self, layer: int, direction: int):
        """(w_ih, w_hh, b_ih, b_hh) arrays of one layer and direction; None without bias."""
        values = [getattr(self, name).value for name in self._names(layer, direction)]
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

    # -- the cell-specific part (overridden) -----------------------------------------------
    def _kernel_forward(self, x, states, weights, lengths, training, packs=None):
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
        """Each state as (L*D, B, H), or None for zeros."""
        LD, H = self.num_layers * self.num_directions, self.hidden_size
        expected = (LD, H) if layout.unbatched else (LD, B, H)
        checked = []
        for name, state in zip(self._state_names, states):
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
        # save what backward needs (grad mode, not train mode); bf16 runs inference only
        keep = is_grad_enabled() and self.precision == "float32"
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
        packs = self._packs(layer, direction, keep)
        y, final, cache = self._kernel_forward(x, initial, self._weights(layer, direction),
                                               lengths, keep, packs)
        return (reverser(y) if direction else y), final, cache

    # -- backward --------------------------------------------------------------------------
    def _upstream(self, dy, dfinals, tape: _Tape):
        """dy as (T, B, D*H) or None; each final-state gradient as (L*D, B, H) or None."""
        layout, D, H = tape.layout, self.num_directions, self.hidden_size
        if dy is not None and tape.packing is not None:
            dy = _packed.unpack_like("dy", dy, tape.packing, self.batch_first)
        if dy is not None:
            dy = _array("dy", dy, self.dtype)
            _check_shape("dy", dy, layout.seq_shape(tape.T, tape.B, D * H), "(the shape of y)")
            dy = layout.seq_in(dy)
        LD = self.num_layers * D
        expected = (LD, H) if layout.unbatched else (LD, tape.B, H)
        checked = []
        for name, grad in zip(self._state_names, dfinals):
            if grad is not None:
                grad = _array(f"d{name}_n", grad, self.dtype)
                _check_shape(f"d{name}_n", grad, expected, f"(the shape of {name}_n)")
                grad = layout.state_in(grad)
            checked.append(grad)
        return dy, checked

    def _backward(self, dy, dfinals):
        tape = self._tape
        if tape is _NO_GRAD_TAPE and self.precision != "float32":
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
        D, H = self.num_directions, self.hidden_size
        dinitial = [np.zeros((self.num_layers * D, tape.B, H), self.dtype)
                    for _ in self._state_names]
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
        if self.bidirectional:
            raise ValueError("step() needs a unidirectional module: the reverse direction of a "
                             "bidirectional one reads the whole sequence; call the module on it")
        if _empty_batch(x_t):
            return self._empty_step(x_t, state)
        return self._stepper().step(x_t, state)

    def _empty_step(self, x_t, state):
        """step() on a batch of 0 rows: checked like any other, empty results, no kernel."""
        x_t = _array("x_t", x_t, self.dtype)
        if x_t.ndim != 2 or x_t.shape[1] != self.input_size:
            raise ValueError(f"x_t must have shape (B, input_size={self.input_size}), "
                             f"got {_shape_str(x_t.shape)}")
        shape = (self.num_layers, 0, self.hidden_size)
        for name, s in zip(self._state_names, self._unpack_state(state, "state")):
            if s is not None:
                _check_shape("state " + name, _array("state " + name, s, self.dtype), shape,
                             "(num_layers, batch, hidden_size)")
        new = tuple(np.empty(shape, self.dtype) for _ in self._state_names)
        return np.empty((0, self.hidden_size), self.dtype), self._pack_state(new)

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
                    "bidirectional": False}
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

    def _kernel_forward(self, x, states, weights, lengths, training, packs=None):
        y, h_n, cache = ops.rnn_forward(x, states[0], *weights, nonlinearity=self.nonlinearity,
                                        lengths=lengths, training=training, packs=packs)
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
    """

    _gates = 4
    _state_names = ("h", "c")
    _forget_gate = 1

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

    def _kernel_forward(self, x, states, weights, lengths, training, packs=None):
        y, h_n, c_n, cache = ops.lstm_forward(x, *states, *weights, lengths=lengths,
                                              training=training, packs=packs)
        return y, (h_n, c_n), cache

    def _kernel_backward(self, dy, dfinals, cache):
        g = ops.lstm_backward(dy, *dfinals, cache)
        return g.dx, (g.dh0, g.dc0), (g.dw_ih, g.dw_hh, g.db_ih, g.db_hh)



class GRU(_RecurrentBase):
    """GRU, as ``torch.nn.GRU`` (gates r, z, n in blocks of H rows)::

        r, z = sigmoid(W_i* x_t + b_i* + W_h* h_{t-1} + b_h*)
        n = tanh(W_in x_t + b_in + r * (W_hn h_{t-1} + b_hn))      reset_after=True (torch)
        n = tanh(W_in x_t + b_in + W_hn (r * h_{t-1}) + b_hn)      reset_after=False
        h_t = (1 - z) * n + z * h_{t-1}

    ``reset_after=False`` is Keras' ``reset_after=False`` and ONNX's
    ``linear_before_reset=0``. Call ``y, h_n = gru(x, h0=None, lengths=None)``.
    """

    _gates = 3

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, reset_after=True, **kwargs):
        reset_after = _flag("reset_after", reset_after)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, **kwargs)
        self.reset_after = reset_after

    _cell = "gru"

    def _cell_options(self) -> dict:
        return {"reset_after": self.reset_after}

    def _step_kind(self) -> str:
        return "gru" if self.reset_after else "gru_reset_before"

    def _kernel_forward(self, x, states, weights, lengths, training, packs=None):
        y, h_n, cache = ops.gru_forward(x, states[0], *weights, reset_after=self.reset_after,
                                        lengths=lengths, training=training, packs=packs)
        return y, (h_n,), cache

    def _kernel_backward(self, dy, dfinals, cache):
        g = ops.gru_backward(dy, dfinals[0], cache)
        return g.dx, (g.dh0,), (g.dw_ih, g.dw_hh, g.db_ih, g.db_hh)


    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.reset_after else ", reset_after=False")
