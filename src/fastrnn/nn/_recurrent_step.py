"""Streaming inference for the recurrent layers (:mod:`fastrnn.nn.recurrent`), as a mixin.

:class:`_StreamingMixin` gives :class:`~fastrnn.nn._recurrent_base._RecurrentBase` its
``step()``: one time step of every layer, on the C stepper kept by :mod:`._packs`, as a
forward over T = 1 for the variants the stepper does not know, or in Python for an empty
batch.
"""
from __future__ import annotations

import numpy as np

from .. import _core
from ..grad_mode import no_grad
from ._packs import cached_stepper, current_stepper
from ._recurrent_helpers import _array, _check_shape, _shape_str
from .module import Module


def _empty_batch(x_t) -> bool:
    """x_t is (0, I): step() answers it in Python (the C stepper must not see B = 0)."""
    shape = getattr(x_t, "shape", None)
    return shape is not None and len(shape) == 2 and shape[0] == 0


class _StreamingMixin(Module):
    """``step()`` of :class:`_RecurrentBase` and what it runs on.

    The attributes declared here (for the type checker) are set by
    ``_RecurrentBase.__init__`` or are its and the cells' class attributes; the other
    attributes and methods it reads are ``_RecurrentBase``'s and its parameters' mixin's.
    """

    _cell: str
    layer_norm: bool
    input_size: int
    hidden_size: int
    dtype: np.dtype

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
