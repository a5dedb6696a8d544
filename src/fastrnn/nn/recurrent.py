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

The three cells are defined here; what they share lives in private modules:
:mod:`._recurrent_base` (``_RecurrentBase``: arguments, stacking, the forward and backward
time loops), :mod:`._recurrent_params` (parameters, initialisation, packs, int8 state),
:mod:`._recurrent_step` (``step()``) and :mod:`._recurrent_helpers` (argument checks,
initialisers, the layout, reverser and tape types).
"""
from __future__ import annotations

import numbers

from .. import ops
from .._common import check_nonlinearity
from ._recurrent_base import _RecurrentBase
from ._recurrent_helpers import _flag
from ._recurrent_helpers import _Reverser  # noqa: F401  (fastrnn.onnx._load imports it here)

__all__ = ["RNN", "LSTM", "GRU"]


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
