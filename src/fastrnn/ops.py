"""The functional API over the C kernels: forward and backward (BPTT) per cell.

Same functions, signatures and results as :mod:`fastrnn.reference` (the NumPy twin
that proves the kernels right). Arrays are time-major: ``x (T, B, I)``, ``y (T, B, H)``,
states ``(B, H)``; weights in PyTorch layout ``w_ih (G*H, I)``, ``w_hh (G*H, H)``,
``b_ih, b_hh (G*H,)`` with G = 1 (RNN), 4 (LSTM: i, f, g, o), 3 (GRU: r, z, n).

``packs`` (from :func:`pack_weights`) lets a caller that runs the same ``w_hh`` many times
pack it once; the NumPy reference accepts and ignores it. ``recurrent_mask (B, H)``
(recurrent dropout, every forward) makes each recurrent product read ``h_{t-1} * mask``.

``precision="bfloat16"`` (float32 arrays; inference, and training as below) runs both products
of every step on bfloat16 operands: ``w_ih`` and ``w_hh`` rounded to bf16 (nearest even)
once, into a bf16 pack, and ``x_t`` and ``h_{t-1}`` rounded as they enter the product, with
float32 accumulation; biases, cell state, activations and outputs stay float32. The NumPy
twin rounds the same operands (:func:`fastrnn.reference.bf16_round`). ``precision=None``
takes the precision of ``packs`` (float32 without them).

``precision="bfloat16"`` with ``training=True`` is mixed-precision training: the forward
is the bf16 forward above (the same kernels on the same bf16 pack, so the same outputs) and
saves what backward needs in float32 (gates, cell states, outputs: the float32 results of
the float32 cell math). The backward is the float32 backward, on the float32 master weights
``w_ih``, ``w_hh`` (``dx = dG w_ih``, ``dh += dG w_hh``; the backward pack of a bf16
``Packs`` is a float32 one) and on float32 operands for the weight gradients: ``dw_ih =
dGᵀ x`` with ``x`` as given (not rounded), ``dw_hh = dGᵀ h_prev`` with the saved float32
states. That is, the gradient treats the bf16 rounding of the forward's operands as the
identity (a straight-through estimate); the gradients are float32, like the weights.

``precision="int8"`` (inference, float32 arrays) runs them on int8: the weights quantized
per row (symmetric, ``s = max|row| / 127``), each row of ``x_t`` and of ``h_{t-1}``
quantized the same way as it enters its product (dynamic, per row and step), exact int32
sums scaled back to float32; the rest stays float32 (csrc/gemm/int8.h).

Inputs are validated before any C code runs (see :mod:`fastrnn._common`): ``x`` sets the
dtype (float32 or float64), every other array must match it, non-contiguous arrays are
copied, and a wrong shape raises ``ValueError`` naming the argument. ``h0``/``c0`` and
the biases may be None (zeros / no bias); backward's upstream gradients may be None
(zero). With ``training=False`` the forward keeps nothing for backward and returns
``cache=None``. The GIL is released while a kernel runs.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from . import _core
from ._common import (Cache, GRUGrads, Inputs, LayerNormGRUGrads, LayerNormLSTMGrads, LSTMGrads,
                      PeepholeLSTMGrads, ProjectedLSTMGrads, RNNGrads, as_ndarray, c_array,
                      check_backward, check_forward, check_layer_norm, check_memory,
                      check_nonlinearity, check_peepholes, check_precision,
                      check_recurrent_mask)

__all__ = ["rnn_forward", "rnn_backward", "lstm_forward", "lstm_backward",
           "gru_forward", "gru_backward", "gemm", "Packs", "pack_weights"]

_BACKEND = "ops"


class Packs(NamedTuple):
    """``w_hh`` packed for the kernels' per-step products: one pack for the forward time
    loop and one for the backward loop (None: the kernel packs for itself). Made by
    :func:`pack_weights`; valid while ``w_hh`` is unchanged and only under the ISA level,
    dtype and sizes it was made for (the kernels ignore a pack made for anything else).
    A ``precision="bfloat16"`` pack holds ``w_ih`` and ``w_hh`` in bf16 for the forward
    and, when made for training, a float32 backward pack of ``w_hh`` (bf16 training runs
    its backward in float32); an ``"int8"`` pack both quantized per row (``quantized``: the
    int8 values and scales), forward only."""

    forward: Optional[np.ndarray]
    backward: Optional[np.ndarray]
    precision: str = "float32"
    quantized: Optional[tuple] = None   # int8: ((q_ih, s_ih), (q_hh, s_hh)) packed


_GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def pack_weights(cell, w_hh, *, reset_after=True, backward=True, precision="float32",
                 w_ih=None, quantized=None, **_ignored) -> Packs:
    """Pack ``w_hh (G*H, H)`` of ``cell`` ('rnn', 'lstm' or 'gru') once, to hand to many
    calls of the cell's forward (and backward) as ``packs=``: the layers do this and keep
    the packs until the weight changes. ``backward=False`` packs for inference only.
    ``precision="bfloat16"`` makes the bf16 forward pack of ``w_ih (G*H, I)`` (required)
    and ``w_hh``, both float32, rounded to bf16 once, and with ``backward`` the float32
    backward pack of ``w_hh`` beside it (for bf16 training); ``precision="int8"`` the int8 pack of
    both quantized per row (:func:`fastrnn.reference.quantize_rows`), or of ``quantized``
    ``((q_ih, s_ih), (q_hh, s_hh))`` as given. Extra keyword arguments of the cell
    (``nonlinearity``) are accepted and ignored."""
    if cell not in _GATES:
        raise ValueError(f"cell must be one of {tuple(_GATES)}, got {cell!r}")
    w_hh = as_ndarray("w_hh", w_hh)
    H = w_hh.shape[-1] if w_hh.ndim == 2 else -1
    if w_hh.ndim != 2 or w_hh.shape[0] != _GATES[cell] * H or H < 1:
        raise ValueError(f"w_hh must have shape ({_GATES[cell]}*H, H) for {cell}, got "
                         f"{w_hh.shape}")
    check_memory(f"packing w_hh of H={H}", 3 * w_hh.size * w_hh.itemsize)   # copy + 2 packs
    w_hh = c_array(w_hh)
    name = "gru_reset_before" if cell == "gru" and not reset_after else cell
    if precision in ("bfloat16", "int8"):
        w_ih = _check_w_ih(precision, w_ih, w_hh)
    if precision == "bfloat16":
        return Packs(_core.pack_bf16(w_ih.reshape(-1), w_hh.reshape(-1), name, w_ih.shape[1],
                                     H),
                     _core.pack(w_hh.reshape(-1), name, True, H) if backward else None,
                     "bfloat16")
    if precision == "int8":
        return _pack_int8(name, w_ih, w_hh, quantized)
    if precision != "float32":
        raise ValueError(f"precision must be 'float32', 'bfloat16' or 'int8', got "
                         f"{precision!r}")
    flat = w_hh.reshape(-1)
    return Packs(_core.pack(flat, name, False, H),
                 _core.pack(flat, name, True, H) if backward else None)


def _check_w_ih(precision, w_ih, w_hh):
    """w_ih (G*H, I) float32, contiguous, matching float32 w_hh (G*H, H)."""
    G, H = w_hh.shape[0] // w_hh.shape[1], w_hh.shape[1]
    w_ih = None if w_ih is None else np.ascontiguousarray(w_ih)
    if w_ih is None or w_ih.ndim != 2 or w_ih.shape[0] != G * H or w_ih.shape[1] < 1:
        raise ValueError(f"precision={precision!r} needs w_ih of shape ({G}*H, I) with H={H}, "
                         f"got {None if w_ih is None else w_ih.shape}")
    if w_ih.dtype != np.float32 or w_hh.dtype != np.float32:
        raise TypeError(f"precision={precision!r} packs float32 weights, got w_ih "
                        f"{w_ih.dtype}, w_hh {w_hh.dtype}")
    return w_ih


def _pack_int8(name, w_ih, w_hh, quantized):
    """The int8 pack of (q, s) per weight: ``quantized``, or quantize_rows of the floats."""
    from .reference import quantize_rows
    if quantized is None:
        quantized = (quantize_rows(w_ih), quantize_rows(w_hh))
    (q_ih, s_ih), (q_hh, s_hh) = [(np.ascontiguousarray(q, np.int8),
                                   np.ascontiguousarray(s, np.float32)) for q, s in quantized]
    if q_ih.shape != w_ih.shape or q_hh.shape != w_hh.shape or \
            s_ih.shape != (w_ih.shape[0],) or s_hh.shape != (w_hh.shape[0],):
        raise ValueError(f"quantized weights must match w_ih {w_ih.shape} and w_hh "
                         f"{w_hh.shape} with one scale per row, got {q_ih.shape}, "
                         f"{s_ih.shape}, {q_hh.shape}, {s_hh.shape}")
    pack = _core.pack_int8(q_ih.reshape(-1), s_ih, q_hh.reshape(-1), s_hh, name,
                           w_ih.shape[1], w_hh.shape[1])
    return Packs(pack, None, "int8", ((q_ih, s_ih), (q_hh, s_hh)))


def _precision_packs(cell, inputs: Inputs, packs, precision, training, reset_after=True,
                     variants=None):
    """The packs a forward runs on: ``packs``, or for a reduced precision without a pack
    of it a fresh forward-only one (checked: float32; inference, or bf16 training). A
    bf16 training forward's backward runs on the float32 backward pack of its ``Packs``,
    or, without one, on a float32 panel that the backward kernel packs itself."""
    precision = check_precision(precision, packs, inputs.dtype, training, variants)
    if getattr(packs, "precision", "float32") == precision:
        return packs
    if precision == "float32":
        return None              # a reduced pack asked to run float32: the kernel packs
    return pack_weights(cell, inputs.w_hh, reset_after=reset_after, precision=precision,
                        w_ih=inputs.w_ih, backward=False)


def _pack(packs: Optional[Packs], backward: bool):
    """The forward or backward pack (or None) of ``packs``."""
    if packs is None:
        return None
    return packs.backward if backward else packs.forward


def _flat(*arrays):
    """1-D views of contiguous arrays (None stays None), as the binding takes them."""
    return [None if a is None else a.reshape(-1) for a in arrays]


def _sizes(inputs: Inputs):
    return inputs.T, inputs.B, inputs.I, inputs.H


def _forward_outputs(inputs: Inputs, n_states: int, saved_per_unit: int, training: bool):
    """Fresh y (T, B, P), final states (B, P) and (LSTM) (B, H), and the saved block (or
    None); P = H but for an LSTM with a projection."""
    T, B, _, H = _sizes(inputs)
    y = np.empty((T, B, inputs.P), inputs.dtype)
    states = [np.empty((B, size), inputs.dtype) for size in (inputs.P, H)[:n_states]]
    saved = (np.empty(T * B * H * saved_per_unit, inputs.dtype)
             if training and saved_per_unit else None)
    return y, states, saved


def _weights(inputs: Inputs):
    return inputs.w_ih, inputs.w_hh, inputs.b_ih, inputs.b_hh


def _parameter_grads(inputs: Inputs):
    """Zeroed dw_ih, dw_hh and db_ih, db_hh (None where the forward had no bias)."""
    def zeros_like(a):
        return None if a is None else np.zeros_like(a)
    return tuple(zeros_like(a) for a in _weights(inputs))


def _state_grads(inputs: Inputs, n_states: int):
    """dx (T, B, I) and one gradient per initial state (like h0, c0); the kernel overwrites
    them."""
    T, B, I, H = _sizes(inputs)
    return np.empty((T, B, I), inputs.dtype), [np.empty((B, size), inputs.dtype)
                                              for size in (inputs.P, H)[:n_states]]


def rnn_forward(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, nonlinearity="tanh",
                lengths=None, training=True, packs=None, recurrent_mask=None, precision=None):
    """Vanilla RNN over a sequence: ``h_t = act(x_t w_ih^T + b_ih + h_{t-1} w_hh^T + b_hh)``.

    Returns ``(y (T, B, H), h_n (B, H), cache)``; ``act`` is tanh or relu.
    """
    relu = check_nonlinearity(nonlinearity) == "relu"
    inputs = check_forward("rnn", x, (h0,), w_ih, w_hh, b_ih, b_hh, lengths)
    packs = _precision_packs("rnn", inputs, packs, precision, training,
                             variants={"recurrent_mask": recurrent_mask})
    mask = check_recurrent_mask(recurrent_mask, inputs)
    y, (h_n,), _ = _forward_outputs(inputs, 1, _core.RNN_SAVED_PER_UNIT, training)
    if inputs.B:  # B = 0: nothing to compute (the C kernels overrun their buffers on it)
        _core.rnn_forward(*_flat(y, h_n, inputs.x, inputs.states[0], *_weights(inputs)),
                          inputs.lengths, relu, *_sizes(inputs), _pack(packs, False),
                          h_mask=_flat(mask)[0])
    options = {"relu": relu, "packs": packs, "recurrent_mask": mask}
    cache = Cache(inputs, y, {}, options, _BACKEND) if training else None
    return y, h_n, cache


def rnn_backward(dy, dh_n, cache) -> RNNGrads:
    """BPTT for :func:`rnn_forward`: gradients of x, h0 and the weights."""
    upstream = check_backward(cache, {"dy": dy, "dh_n": dh_n}, _BACKEND, "rnn")
    inputs = cache.inputs
    dx, (dh0,) = _state_grads(inputs, 1)
    params = _parameter_grads(inputs)
    if inputs.B:  # an empty batch (B = 0): nothing to compute
        _core.rnn_backward(*_flat(dx, dh0, *params, upstream["dy"], upstream["dh_n"], cache.y,
                                  inputs.x, inputs.states[0], inputs.w_ih, inputs.w_hh),
                           inputs.lengths, cache.options["relu"], *_sizes(inputs),
                           _pack(cache.options["packs"], True),
                           h_mask=_flat(cache.options["recurrent_mask"])[0])
    return RNNGrads(dx, dh0, *params)


def lstm_forward(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, *, lengths=None,
                 training=True, packs=None, peepholes=None, recurrent_mask=None, w_hr=None,
                 layer_norm=None, precision=None):
    """LSTM over a sequence (gates i, f, g, o; ``c_t = f c_{t-1} + i g``, ``h_t = o tanh(c_t)``).

    ``peepholes (3H,)`` = [p_i, p_o, p_f] (ONNX's P) or None: ``a_i += p_i c_{t-1}``,
    ``a_f += p_f c_{t-1}``, ``a_o += p_o c_t``. ``w_hr (P, H)`` or None: PyTorch's
    projection (``proj_size``), ``h_t = (o tanh(c_t)) w_hr^T``; then ``w_hh`` is (4H, P),
    ``h0``, ``h_n`` (B, P) and ``y`` (T, B, P). ``packs`` do not serve a projection.
    ``layer_norm (10H,)`` = [g_ih, g_hh, g_c, b_c] or None: the layer-normalised LSTM of
    :func:`fastrnn.reference.lstm_forward` (csrc/lstm_ln.c; not with peepholes or w_hr).
    Returns ``(y (T, B, H), h_n (B, H), c_n (B, H), cache)``.
    """
    inputs = check_forward("lstm", x, (h0, c0), w_ih, w_hh, b_ih, b_hh, lengths, w_hr)
    packs = _precision_packs("lstm", inputs, packs, precision, training,
                             variants={"peepholes": peepholes, "recurrent_mask": recurrent_mask,
                                       "w_hr": w_hr, "layer_norm": layer_norm})
    if inputs.w_hr is not None:
        packs = None   # packs hold w_hh (4H, H) panels; a projection's are made per call
    w_p = check_peepholes(peepholes, inputs)
    mask = check_recurrent_mask(recurrent_mask, inputs)
    ln = check_layer_norm(layer_norm, inputs)
    if ln is not None:
        if w_p is not None:
            raise ValueError("layer_norm cannot be combined with peepholes yet")
        return _lstm_ln_forward(inputs, mask, ln, training)
    y, (h_n, c_n), saved = _forward_outputs(inputs, 2, _core.LSTM_SAVED_PER_UNIT, training)
    if inputs.B:  # an empty batch (B = 0): nothing to compute
        _core.lstm_forward(*_flat(y, h_n, c_n, saved, inputs.x, *inputs.states,
                                  *_weights(inputs)),
                           inputs.lengths, *_sizes(inputs), _pack(packs, False), w_p,
                           _flat(mask)[0], *_flat(inputs.w_hr), inputs.P)
    options = {"packs": packs, "peepholes": w_p, "recurrent_mask": mask}
    cache = Cache(inputs, y, {"saved": saved}, options, _BACKEND) if training else None
    return y, h_n, c_n, cache


def lstm_backward(dy, dh_n, dc_n, cache) -> LSTMGrads:
    """BPTT for :func:`lstm_forward`: gradients of x, h0, c0 and the weights."""
    upstream = check_backward(cache, {"dy": dy, "dh_n": dh_n, "dc_n": dc_n}, _BACKEND, "lstm")
    if cache.options.get("layer_norm") is not None:
        return _lstm_ln_backward(upstream, cache)
    inputs = cache.inputs
    w_p = cache.options["peepholes"]
    dx, (dh0, dc0) = _state_grads(inputs, 2)
    params = _parameter_grads(inputs)
    dw_p = None if w_p is None else np.zeros_like(w_p)
    dw_hr = None if inputs.w_hr is None else np.zeros_like(inputs.w_hr)
    if inputs.B:  # an empty batch (B = 0): nothing to compute
        _core.lstm_backward(*_flat(dx, dh0, dc0, *params, upstream["dy"], upstream["dh_n"],
                                   upstream["dc_n"], cache.saved["saved"], cache.y, inputs.x,
                                   *inputs.states, inputs.w_ih, inputs.w_hh),
                            inputs.lengths, *_sizes(inputs),
                            _pack(cache.options["packs"], True), dw_p, w_p,
                            _flat(cache.options["recurrent_mask"])[0],
                            *_flat(dw_hr, inputs.w_hr), inputs.P)
    if dw_hr is not None:
        return ProjectedLSTMGrads(dx, dh0, dc0, *params, dw_hr, dw_p)
    if w_p is None:
        return LSTMGrads(dx, dh0, dc0, *params)
    return PeepholeLSTMGrads(dx, dh0, dc0, *params, dw_p)


def _lstm_ln_forward(inputs: Inputs, mask, ln, training):
    """The layer-normalised LSTM's kernel (csrc/lstm_ln.c) for :func:`lstm_forward`."""
    T, B, _, H = _sizes(inputs)
    y, (h_n, c_n), _ = _forward_outputs(inputs, 2, 0, False)
    saved = (np.empty(T * B * (_core.LSTM_LN_SAVED_PER_UNIT * H + _core.LSTM_LN_SAVED_PER_ROW),
                      inputs.dtype) if training else None)
    if B:  # an empty batch (B = 0): nothing to compute
        _core.lstm_ln_forward(*_flat(y, h_n, c_n, saved, inputs.x, *inputs.states,
                                     *_weights(inputs), ln),
                              inputs.lengths, _flat(mask)[0], *_sizes(inputs))
    options = {"packs": None, "peepholes": None, "recurrent_mask": mask, "layer_norm": ln}
    cache = Cache(inputs, y, {"saved": saved}, options, _BACKEND) if training else None
    return y, h_n, c_n, cache


def _lstm_ln_backward(upstream, cache) -> LayerNormLSTMGrads:
    inputs, ln = cache.inputs, cache.options["layer_norm"]
    dx, (dh0, dc0) = _state_grads(inputs, 2)
    params = _parameter_grads(inputs)
    dln = np.zeros_like(ln)
    if inputs.B:  # an empty batch (B = 0): nothing to compute
        _core.lstm_ln_backward(*_flat(dx, dh0, dc0, *params, dln, upstream["dy"],
                                      upstream["dh_n"], upstream["dc_n"], cache.saved["saved"],
                                      cache.y, inputs.x, *inputs.states, inputs.w_ih,
                                      inputs.w_hh, ln),
                               inputs.lengths, _flat(cache.options["recurrent_mask"])[0],
                               *_sizes(inputs))
    return LayerNormLSTMGrads(dx, dh0, dc0, *params, dln)


def gru_forward(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, reset_after=True, lengths=None,
                training=True, packs=None, recurrent_mask=None, layer_norm=None,
                precision=None):
    """GRU over a sequence (gates r, z, n; ``h_t = (1 - z) n + z h_{t-1}``).

    ``reset_after=True`` (PyTorch): ``n = tanh(x W_n^T + b_in + r (h U_n^T + b_hn))``;
    ``False`` (Keras ``reset_after=False``, ONNX ``linear_before_reset=0``):
    ``n = tanh(x W_n^T + b_in + (r h) U_n^T + b_hn)``.
    Returns ``(y (T, B, H), h_n (B, H), cache)``.
    """
    inputs = check_forward("gru", x, (h0,), w_ih, w_hh, b_ih, b_hh, lengths)
    packs = _precision_packs("gru", inputs, packs, precision, training, reset_after,
                             {"recurrent_mask": recurrent_mask, "layer_norm": layer_norm})
    mask = check_recurrent_mask(recurrent_mask, inputs)
    ln = check_layer_norm(layer_norm, inputs)
    if ln is not None:
        if not reset_after:
            raise ValueError("layer_norm needs reset_after=True (the GRU of PyTorch)")
        return _gru_ln_forward(inputs, mask, ln, training)
    y, (h_n,), saved = _forward_outputs(inputs, 1, _core.GRU_SAVED_PER_UNIT, training)
    if inputs.B:  # an empty batch (B = 0): nothing to compute
        _core.gru_forward(*_flat(y, h_n, saved, inputs.x, inputs.states[0], *_weights(inputs)),
                          inputs.lengths, bool(reset_after), *_sizes(inputs),
                          _pack(packs, False), h_mask=_flat(mask)[0])
    options = {"reset_after": bool(reset_after), "packs": packs, "recurrent_mask": mask}
    cache = Cache(inputs, y, {"saved": saved}, options, _BACKEND) if training else None
    return y, h_n, cache


def gru_backward(dy, dh_n, cache) -> GRUGrads:
    """BPTT for :func:`gru_forward`: gradients of x, h0 and the weights."""
    upstream = check_backward(cache, {"dy": dy, "dh_n": dh_n}, _BACKEND, "gru")
    if cache.options.get("layer_norm") is not None:
        return _gru_ln_backward(upstream, cache)
    inputs = cache.inputs
    dx, (dh0,) = _state_grads(inputs, 1)
    params = _parameter_grads(inputs)
    if inputs.B:  # an empty batch (B = 0): nothing to compute
        _core.gru_backward(*_flat(dx, dh0, *params, upstream["dy"], upstream["dh_n"],
                                  cache.saved["saved"], cache.y, inputs.x, inputs.states[0],
                                  inputs.w_ih, inputs.w_hh),
                           inputs.lengths, cache.options["reset_after"], *_sizes(inputs),
                           _pack(cache.options["packs"], True),
                           h_mask=_flat(cache.options["recurrent_mask"])[0])
    return GRUGrads(dx, dh0, *params)


def _gru_ln_forward(inputs: Inputs, mask, ln, training):
    """The layer-normalised GRU's kernel (csrc/gru_ln.c) for :func:`gru_forward`."""
    T, B, _, H = _sizes(inputs)
    y, (h_n,), _ = _forward_outputs(inputs, 1, 0, False)
    saved = (np.empty(T * B * (_core.GRU_LN_SAVED_PER_UNIT * H + _core.GRU_LN_SAVED_PER_ROW),
                      inputs.dtype) if training else None)
    if B:  # an empty batch (B = 0): nothing to compute
        _core.gru_ln_forward(*_flat(y, h_n, saved, inputs.x, inputs.states[0],
                                    *_weights(inputs), ln),
                             inputs.lengths, _flat(mask)[0], *_sizes(inputs))
    options = {"reset_after": True, "packs": None, "recurrent_mask": mask, "layer_norm": ln}
    cache = Cache(inputs, y, {"saved": saved}, options, _BACKEND) if training else None
    return y, h_n, cache


def _gru_ln_backward(upstream, cache) -> LayerNormGRUGrads:
    inputs, ln = cache.inputs, cache.options["layer_norm"]
    dx, (dh0,) = _state_grads(inputs, 1)
    params = _parameter_grads(inputs)
    dln = np.zeros_like(ln)
    if inputs.B:  # an empty batch (B = 0): nothing to compute
        _core.gru_ln_backward(*_flat(dx, dh0, *params, dln, upstream["dy"], upstream["dh_n"],
                                     cache.saved["saved"], cache.y, inputs.x,
                                     inputs.states[0], inputs.w_ih, inputs.w_hh, ln),
                              inputs.lengths, _flat(cache.options["recurrent_mask"])[0],
                              *_sizes(inputs))
    return LayerNormGRUGrads(dx, dh0, *params, dln)


# -- streaming: one inference step, for trusted callers -------------------------------------
# The layers' step() and the cells call these after validating shapes and dtypes once;
# they skip _common's checks, which cost more than the step itself at B=1. Every array
# must be C-contiguous and of one dtype; x_t (B, I), states (B, H), weights as above.

def _step_out(out, like, n):
    """The new states' arrays: ``out`` (n arrays like ``like``) or fresh ones."""
    return out if out is not None else tuple(np.empty_like(like) for _ in range(n))


def rnn_step(x_t, h, w_ih, w_hh, b_ih, b_hh, relu=False, out=None, pack=None):
    """Unchecked single RNN step: returns the new state (h,), written into ``out`` if given.
    ``pack``: the forward pack of :func:`pack_weights` for these weights, or None."""
    (h_n,) = _step_out(out, h, 1)
    if x_t.shape[0]:   # B = 0: nothing to compute (the C step must not see it)
        _core.rnn_step(np.empty_like(h), h_n, x_t, h, w_ih, w_hh, b_ih, b_hh, relu, pack)
    return (h_n,)


def lstm_step(x_t, h, c, w_ih, w_hh, b_ih, b_hh, out=None, pack=None):
    """Unchecked single LSTM step: returns the new states (h, c), written into ``out``."""
    h_n, c_n = _step_out(out, h, 2)
    if x_t.shape[0]:   # B = 0: nothing to compute (the C step must not see it)
        _core.lstm_step(np.empty_like(h), h_n, c_n, x_t, h, c, w_ih, w_hh, b_ih, b_hh, pack)
    return h_n, c_n


def gru_step(x_t, h, w_ih, w_hh, b_ih, b_hh, reset_after=True, out=None, pack=None):
    """Unchecked single GRU step: returns the new state (h,), written into ``out`` if given."""
    (h_n,) = _step_out(out, h, 1)
    if x_t.shape[0]:   # B = 0: nothing to compute (the C step must not see it)
        _core.gru_step(np.empty_like(h), h_n, x_t, h, w_ih, w_hh, b_ih, b_hh,
                       bool(reset_after), pack)
    return (h_n,)


# -- a plain matrix product on the kernels' BLAS ---------------------------------------------

def gemm(a, b, *, trans_a=False, trans_b=False, out=None, accumulate=False):
    """``op(a) @ op(b)`` for 2-D float arrays of one dtype, on the same BLAS (and so the
    same thread pool, sized by :func:`fastrnn.set_num_threads`) as the kernels.

    The layers use it instead of ``numpy.matmul``: NumPy's wheels bundle a second OpenBLAS
    with its own threads, and two spinning BLAS thread pools on the same cores slow each
    other down several times over. ``op(x)`` is ``x.T`` when ``trans_*``; with ``out``
    (C-contiguous, the result's shape) the product is written there, or added to it when
    ``accumulate``. Returns the result.
    """
    a, b = c_array(a), c_array(b)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"gemm needs 2-D arrays, got shapes {a.shape} and {b.shape}")
    if a.dtype != b.dtype or a.dtype not in (np.float32, np.float64):
        raise TypeError(f"gemm needs two float32 or two float64 arrays, got {a.dtype} and "
                        f"{b.dtype}")
    M, K = a.shape[::-1] if trans_a else a.shape
    K_b, N = b.shape[::-1] if trans_b else b.shape
    if K != K_b:
        raise ValueError(f"gemm: inner sizes differ: op(a) is {(M, K)}, op(b) is {(K_b, N)}")
    if out is None:
        out = np.empty((M, N), a.dtype)
        accumulate = False
    elif out.shape != (M, N) or out.dtype != a.dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {a.dtype} array of shape {(M, N)}, got "
                         f"{out.dtype} {out.shape}")
    if M and N:
        if K == 0:
            if not accumulate:
                out[...] = 0
        else:
            _core.gemm(out, a, b, bool(trans_a), bool(trans_b), 1.0 if accumulate else 0.0)
    return out
