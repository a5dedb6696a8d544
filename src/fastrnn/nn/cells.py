"""Single-step cells ``RNNCell``, ``LSTMCell``, ``GRUCell``, compatible with ``torch.nn``.

A cell advances one time step; the caller writes the loop (a seq2seq decoder feeding back
its own output, a custom attention step, ...)::

    cell = LSTMCell(16, 32)
    state = None
    for x_t in xs:                       # x_t (B, 16)
        h, c = state = cell(x_t, state)  # h, c (B, 32)
    ...
    for dh_t in reversed(dhs):           # backward pops the forwards in reverse order
        dx_t, (dh, dc) = cell.backward(dh_t + dh, dc)

Parameters have PyTorch's names, layout and default init (every entry U(-k, k),
``k = 1/sqrt(hidden_size)``): ``weight_ih (G*H, I)``, ``weight_hh (G*H, H)``,
``bias_ih (G*H,)``, ``bias_hh (G*H,)`` with G = 1 (RNN), 4 (LSTM: i, f, g, o), 3 (GRU: r, z, n).

Equations (``x`` the input, ``h``, ``c`` the previous state)::

    RNNCell   h' = act(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh)            act = tanh | relu
    LSTMCell  i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of (x W_ihᵀ + b_ih + h W_hhᵀ + b_hh)
              c' = f c + i g,   h' = o tanh(c')
    GRUCell   r, z = sigmoid(x W_i{r,z}ᵀ + b_i{r,z} + h W_h{r,z}ᵀ + b_h{r,z})
              n = tanh(x W_inᵀ + b_in + r (h W_hnᵀ + b_hn))       reset_after=True (PyTorch)
              n = tanh(x W_inᵀ + b_in + (r h) W_hnᵀ + b_hn)       reset_after=False (Keras)
              h' = (1 - z) n + z h

Constructors: ``(input_size, hidden_size, bias=True, *, dtype=np.float32, seed=None)``,
plus ``nonlinearity='tanh'|'relu'`` (RNNCell, 4th positional as in torch) and
``reset_after=True`` (GRUCell); ``seed`` is None, an int or a ``numpy.random.Generator``.

Backward without autograd: every call with grad enabled (the default, in train and eval
mode alike) pushes what its backward needs onto a stack; ``backward`` pops the latest one,
so backward calls must come in the reverse order of the forward calls. Each returns the
gradients of that call's input and previous state, and accumulates the parameter gradients
into ``Parameter.grad``. Under ``fastrnn.no_grad()`` a call runs the unchecked C step and
keeps nothing. Arrays passed in are kept by reference until their backward: do not modify them in
place in between. ``clear_cache()`` drops forwards that will never be backpropagated.
"""
from __future__ import annotations

import math

import numpy as np

from .. import ops
from .._common import (as_array, c_array, check_device, check_memory, check_nonlinearity,
                       check_positive_int, normalize_dtype)
from ..grad_mode import is_grad_enabled
from ._packs import cached_packs, cached_stepper
from .module import Module, Parameter

__all__ = ["RNNCell", "LSTMCell", "GRUCell"]

_PARAMETER_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
_DEFAULT_OPTIONS = {"nonlinearity": "tanh", "reset_after": True}  # left out of repr


class _Cell(Module):
    """What the three cells share; a subclass sets ``_kind`` ('rnn', 'lstm', 'gru'),
    ``_gates`` (G) and ``_n_states`` (1: h, 2: h and c)."""

    _kind = ""
    _gates = 1
    _n_states = 1

    def __init__(self, input_size, hidden_size, bias=True, *, dtype=np.float32, seed=None,
                 device=None):
        super().__init__()
        check_device(device)
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.bias = bool(bias)
        self.dtype = normalize_dtype(dtype)
        self._caches = []
        self._last_no_grad = False   # the latest forward ran under no_grad (for the error)
        self._init_parameters(np.random.default_rng(seed))

    def _init_parameters(self, rng: np.random.Generator) -> None:
        """PyTorch's default: every entry U(-1/sqrt(H), 1/sqrt(H))."""
        G, H, I = self._gates, self.hidden_size, self.input_size
        check_memory(f"{type(self).__name__}({I}, {H}) parameters",   # float64 draws too
                     G * H * (I + H + 2) * (self.dtype.itemsize + 8))
        k = 1.0 / math.sqrt(H)
        shapes = {"weight_ih": (G * H, I), "weight_hh": (G * H, H)}
        if self.bias:
            shapes.update(bias_ih=(G * H,), bias_hh=(G * H,))
        for name, shape in shapes.items():
            setattr(self, name, Parameter(rng.uniform(-k, k, shape).astype(self.dtype)))

    def _options(self) -> dict:
        """Keyword options of this cell's ``ops`` forward (nonlinearity, reset_after)."""
        return {}

    def _parameter_list(self):
        """(weight_ih, weight_hh, bias_ih, bias_hh) Parameters; None for absent biases."""
        return tuple(getattr(self, name, None) for name in _PARAMETER_NAMES)

    # -- the step: the only two places that call the kernels ---------------------------
    def _step(self, x, states):
        """One time step through ``fastrnn.ops`` with T = 1.

        ``x (B, I)``, ``states`` a tuple of ``(B, H)`` arrays or None (zeros). Returns the
        new states (a tuple of ``(B, H)``) and the kernel's cache (None with grad disabled).
        """
        values = [None if p is None else p.value for p in self._parameter_list()]
        if not is_grad_enabled():  # inference: the unchecked C step (inputs checked above)
            return self._inference_step(c_array(x), states, values), None
        forward = getattr(ops, f"{self._kind}_forward")
        out = forward(x[None], *states, *values, training=True, **self._options())
        return tuple(out[1:-1]), out[-1]

    def _inference_step(self, x, states, values):
        """The C stepper (nn._packs.cached_stepper): no cache, no per-call validation beyond
        the stepper's own; states None become zeros. ``(B, H)`` states in and out."""
        B, H = x.shape[0], self.hidden_size
        if B == 0:   # an empty batch: empty states, no kernel call
            return tuple(np.empty((0, H), self.dtype) for _ in states)
        stepper = cached_stepper(self, self._step_kind(), lambda: [self._step_weights(values)],
                                 self.input_size, H, lambda name, value: as_array(
                                     name, value, self.dtype, owner="the cell's dtype"))
        lifted = tuple(None if s is None else s[None] for s in states)   # (1, B, H)
        _, new = stepper.step(x, lifted if self._n_states == 2 else lifted[0])
        return tuple(s[0] for s in new) if self._n_states == 2 else (new[0],)

    def _step_kind(self) -> str:
        """The stepper's kind: 'rnn', 'rnn_relu', 'lstm', 'gru' or 'gru_reset_before'."""
        options = self._options()
        if options.get("nonlinearity") == "relu":
            return "rnn_relu"
        return "gru_reset_before" if options.get("reset_after") is False else self._kind

    def _step_weights(self, values):
        """``(w_ih, w_hh, b_ih, b_hh, forward pack)``, flat, for the stepper."""
        pack = cached_packs(self, 0, self.weight_hh, self._kind, self._options(),
                            False).forward
        return (*(None if v is None else v.reshape(-1) for v in values), pack)

    def _step_backward(self, cache, dstates):
        """Backward of one :meth:`_step`: ``dstates`` tuple of ``(B, H)`` or None.

        Returns ``dx (B, I)``, the previous states' gradients (a tuple) and the parameter
        gradients (dw_ih, dw_hh, db_ih, db_hh; the biases' None without bias).
        """
        backward = getattr(ops, f"{self._kind}_backward")
        grads = backward(None, *dstates, cache)
        return grads[0][0], tuple(grads[1:1 + self._n_states]), grads[-4:]

    # -- checking the calls ------------------------------------------------------------
    def _check_input(self, x):
        """x as a (B, I) array of the cell's dtype, and whether it came batched."""
        x = as_array("x", x, self.dtype, owner="the cell's dtype")
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
            raise ValueError(f"x must have shape (B, {self.input_size}) or "
                             f"({self.input_size},), got {tuple(x.shape)}")
        return (x, True) if x.ndim == 2 else (x[None], False)

    def _check_state(self, name, value, batch, batched):
        """One state (h or c; or its gradient) as (B, H), None staying None."""
        if value is None:
            return None
        value = as_array(name, value, self.dtype, owner="the cell's dtype")
        expected = (batch, self.hidden_size) if batched else (self.hidden_size,)
        if value.shape != expected:
            kind = "batched" if batched else "unbatched"
            raise ValueError(f"{name} must have shape {expected} for {kind} x, "
                             f"got {tuple(value.shape)}")
        return value.reshape(batch, self.hidden_size)

    def _check_states(self, names, values, batch, batched):
        return tuple(self._check_state(n, v, batch, batched) for n, v in zip(names, values))

    # -- calling -------------------------------------------------------------------------
    def _forward(self, x, states):
        """Run one step on (x, tuple of states); returns the new states as given back."""
        x, batched = self._check_input(x)
        names = ("h", "c")[:self._n_states]
        states = self._check_states(names, states, x.shape[0], batched)
        new_states, cache = self._step(x, states)
        self._last_no_grad = cache is None
        if cache is not None:
            self._caches.append((cache, x.shape[0], batched))
        return tuple(s if batched else s[0] for s in new_states)

    def _backward(self, dstates):
        """Pop the latest cached forward; return dx and the previous states' gradients."""
        if not self._caches:
            why = (" (the latest forward ran inside fastrnn.no_grad() or inference_mode() "
                   "and kept nothing)" if self._last_no_grad else "")
            raise RuntimeError(
                f"{type(self).__name__}.backward: no forward left to backpropagate{why}; "
                "call the cell with grad enabled first, one forward per backward")
        cache, batch, batched = self._caches[-1]
        names = ("dh", "dc")[:self._n_states]
        dstates = self._check_states(names, dstates, batch, batched)
        dx, dstates_prev, param_grads = self._step_backward(cache, dstates)
        self._caches.pop()
        for parameter, grad in zip(self._parameter_list(), param_grads):
            if parameter is not None:
                parameter.grad += grad
        if not batched:
            dx, dstates_prev = dx[0], tuple(d[0] for d in dstates_prev)
        return dx, dstates_prev

    def clear_cache(self) -> None:
        """Forget every cached forward (e.g. after a forward that needs no backward)."""
        self._caches.clear()

    def _drop_tape(self) -> None:
        self.clear_cache()

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            text += ", bias=False"
        for key, value in self._options().items():
            if value != _DEFAULT_OPTIONS[key]:
                text += f", {key}={value!r}"
        if self.dtype != np.float32:
            text += f", dtype={self.dtype.name}"
        return text


class RNNCell(_Cell):
    """Elman cell ``h' = act(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh)``, act = tanh or relu.

    ``h1 = cell(x, h=None)``: x (B, I) or (I,), h (B, H) / (H,) or None (zeros), h1 like h.
    ``dx, dh_prev = cell.backward(dh)`` undoes the latest call made with grad enabled.
    """

    _kind, _gates, _n_states = "rnn", 1, 1

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", *,
                 dtype=np.float32, seed=None, device=None):
        super().__init__(input_size, hidden_size, bias, dtype=dtype, seed=seed, device=device)
        self.nonlinearity = check_nonlinearity(nonlinearity)

    def _options(self) -> dict:
        return {"nonlinearity": self.nonlinearity}

    def forward(self, x, h=None):
        return self._forward(x, (h,))[0]

    def backward(self, dh):
        """``dh`` (B, H) / (H,) or None -> ``(dx (B, I), dh_prev (B, H))``."""
        dx, (dh_prev,) = self._backward((dh,))
        return dx, dh_prev


class GRUCell(_Cell):
    """GRU cell (gates r, z, n); ``reset_after`` chooses PyTorch's (True) or Keras' (False) n.

    ``h1 = cell(x, h=None)``; ``dx, dh_prev = cell.backward(dh)`` (shapes as RNNCell).
    """

    _kind, _gates, _n_states = "gru", 3, 1

    def __init__(self, input_size, hidden_size, bias=True, *, dtype=np.float32, seed=None,
                 reset_after=True, device=None):
        super().__init__(input_size, hidden_size, bias, dtype=dtype, seed=seed, device=device)
        self.reset_after = bool(reset_after)

    def _options(self) -> dict:
        return {"reset_after": self.reset_after}

    def forward(self, x, h=None):
        return self._forward(x, (h,))[0]

    def backward(self, dh):
        """``dh`` (B, H) / (H,) or None -> ``(dx (B, I), dh_prev (B, H))``."""
        dx, (dh_prev,) = self._backward((dh,))
        return dx, dh_prev


class LSTMCell(_Cell):
    """LSTM cell (gates i, f, g, o): ``c' = f c + i g``, ``h' = o tanh(c')``.

    ``h1, c1 = cell(x, state=None)`` with state None (zeros) or ``(h, c)``, each (B, H) or
    (H,) for unbatched x (I,). ``dx, (dh_prev, dc_prev) = cell.backward(dh, dc=None)``.
    """

    _kind, _gates, _n_states = "lstm", 4, 2

    def forward(self, x, state=None):
        if state is None:
            state = (None, None)
        elif not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError("LSTMCell state must be None or a pair (h, c), "
                            f"got {type(state).__name__}")
        return self._forward(x, tuple(state))

    def backward(self, dh, dc=None):
        """``dh``, ``dc`` (B, H) / (H,) or None -> ``(dx, (dh_prev, dc_prev))``."""
        dx, (dh_prev, dc_prev) = self._backward((dh, dc))
        return dx, (dh_prev, dc_prev)
