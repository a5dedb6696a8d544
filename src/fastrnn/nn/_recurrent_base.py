"""The shared module of the recurrent layers (:mod:`fastrnn.nn.recurrent`).

:class:`_RecurrentBase` checks the constructor's arguments, stacks the layers and
directions, handles lengths, dropout and the variants' kernel arguments, and runs the
forward and backward time loops over a subclass's single-layer kernel calls. Its
parameters, packs and int8 state come from :class:`~._recurrent_params._ParametersMixin`,
``step()`` from :class:`~._recurrent_step._StreamingMixin`.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .._common import (TRAINABLE_PRECISIONS, _check_lengths, check_device, check_positive_int,
                       split_precision)
from ..grad_mode import is_grad_enabled
from . import _packed
from ._recurrent_helpers import (_NO_GRAD_TAPE, _array, _check_shape, _dropout, _flag,
                                 _generator, _Layout, _recurrent_dropout, _Reverser,
                                 _shape_str, _Tape)
from ._recurrent_params import _ParametersMixin
from ._recurrent_step import _StreamingMixin

_INITS = ("pytorch", "keras")


# ---------------------------------------------------------------------------------------
# The shared module
# ---------------------------------------------------------------------------------------

class _RecurrentBase(_ParametersMixin, _StreamingMixin):
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

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        defaults = {"num_layers": 1, "bias": True, "batch_first": False, "dropout": 0.0,
                    "bidirectional": False, "recurrent_dropout": 0.0}
        for name, default in defaults.items():
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        s += f", dtype={self.dtype}"
        return s + (f", precision={self.precision!r}" if self.precision != "float32" else "")
