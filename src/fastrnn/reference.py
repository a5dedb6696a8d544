"""Pure-NumPy reference backend: the readable twin of :mod:`fastrnn.ops`.

Every function here has the same name, signature, validation, errors and results as its
C-backed counterpart in ``fastrnn.ops``; only speed differs. Written for reading, not for
speed: one forward loop and one reversed backward loop (min-char-rnn style, with a carried
``dh``) per cell, shapes in comments, the forward line each backward line undoes beside it.

What proves the kernels right is a chain of two checks:

1. ``tests/test_gradcheck.py`` checks every gradient of this module against central finite
   differences in float64 (and its lengths semantics against running each sequence alone);
   golden vectors from PyTorch check its forward semantics.
2. The ``ops`` tests check the C kernels against this module, forward and backward, for every
   cell, dtype and shape (float64 ~1e-10, float32 ~1e-5 relative).

Conventions (shared with ``fastrnn.ops``, see ``_common.py``):

* Time-major: ``x (T, B, I)``; states ``h0``/``c0`` ``(B, H)`` or None (zeros).
* PyTorch weight layout: ``w_ih (G*H, I)``, ``w_hh (G*H, H)``, ``b_ih``/``b_hh`` ``(G*H,)`` or
  None (no bias; their gradients are then None). G = 1 (RNN), 4 (LSTM: i, f, g, o),
  3 (GRU: r, z, n).
* ``lengths (B,)``, PyTorch packed-sequence semantics: at steps ``t >= lengths[b]`` row b's
  state is unchanged and its output is zero, so its final state is the state after its last
  valid step. Backward: past a length, ``dy`` is ignored, the gradient flows through the
  unchanged state, and nothing reaches the weights.
* Computation stays in the dtype of ``x`` (float32 or float64); outputs are fresh arrays.
* ``packs`` (packed weights for the C kernels, :func:`fastrnn.ops.pack_weights`) is accepted
  for the same signatures and ignored, but for its precision.
* ``precision="bfloat16"`` (inference, float32): every operand of a product -- ``x``,
  ``w_ih``, ``w_hh`` and the state entering each step's product -- is rounded by
  :func:`bf16_round` first; the products themselves, biases, states and activations stay
  float32, as in the kernels (which differ only in the order of float32 additions). With
  ``training=True`` (mixed-precision training) the cache keeps the float32 inputs, so the
  backward is the float32 one: float32 master weights (``dx = dG w_ih``, ``dh += dG w_hh``)
  and float32 ``x`` and saved states in the weight gradients (``dw_ih = dGᵀ x``) -- the
  rounding counts as the identity (straight through), as in the kernels.
* ``precision="int8"`` (inference, float32): weights quantised per row
  (:func:`quantize_rows`, or as ``packs.quantized`` holds them), each row of ``x_t`` and of
  the state quantised the same way as it enters a product; exact integer sums, scaled back
  to float32 -- the same bits as the kernels' products.
* ``training=True`` returns a cache for backward (post-activation gates and states);
  ``training=False`` returns ``None`` and keeps no per-step intermediates.
* Backward takes activation derivatives from saved outputs (``s*(1-s)``, ``1-y*y``) and never
  recomputes an exponential. Upstream gradients that are None count as zeros.
* ``recurrent_mask (B, H)`` or None: recurrent (variational) dropout. Where a recurrent
  product reads ``h_{t-1}`` it reads ``h_{t-1} * recurrent_mask``, the same mask at every
  step; the state itself (what GRU's update and the lengths carry) is not masked.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ._common import (LAYER_NORM_EPS, Cache, GRUGrads, LayerNormGRUGrads, LayerNormLSTMGrads,
                      LSTMGrads,
                      PeepholeLSTMGrads, ProjectedLSTMGrads, RNNGrads, check_backward,
                      check_layer_norm,
                      check_forward, check_nonlinearity, check_peepholes, check_precision,
                      check_recurrent_mask)

__all__ = ["rnn_forward", "rnn_backward", "lstm_forward", "lstm_backward",
           "gru_forward", "gru_backward", "bf16_round", "quantize_rows"]

BACKEND = "reference"


# ---------------------------------------------------------------------------------------------
# Shared helpers: activations, masks, projections, parameter gradients
# ---------------------------------------------------------------------------------------------

def _sigmoid(a):
    """sigmoid(a) = 1 / (1 + exp(-a)), without overflow for large negative ``a``."""
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1, e) / (1 + e)


def _relu(a):
    return np.maximum(a, 0)


def _dsigmoid(s):
    """d sigmoid / da, from the output s = sigmoid(a)."""
    return s * (1 - s)


def _dtanh(y):
    """d tanh / da, from the output y = tanh(a)."""
    return 1 - y * y


def _drelu(y):
    """d relu / da, from the output y = relu(a) (0 at the kink, as PyTorch)."""
    return (y > 0).astype(y.dtype)


_ACTIVATIONS = {"tanh": (np.tanh, _dtanh), "relu": (_relu, _drelu)}


def _chunks(a, n):
    """Split the last axis into ``n`` gate blocks of H (views)."""
    return np.split(a, n, axis=-1)


def _split_rows(w, at):
    """(w[:at], w[at:]), or (None, None) for an absent bias."""
    return (None, None) if w is None else (w[:at], w[at:])


def _initial_state(state, inputs, size=None):
    """The given state (B, size), or zeros when it is None; size defaults to H."""
    if state is None:
        return np.zeros((inputs.B, size or inputs.H), inputs.dtype)
    return state


def _valid_steps(inputs):
    """valid[t, b, 0]: True while step t lies inside sequence b. (T, B, 1) bool."""
    if inputs.lengths is None:
        return np.ones((inputs.T, inputs.B, 1), dtype=bool)
    return np.arange(inputs.T)[:, None, None] < inputs.lengths[None, :, None]


def bf16_round(a):
    """float32 ``a`` rounded to the nearest bfloat16 (ties to even), as float32.

    bfloat16 is the top half of a float32 (sign, 8 exponent bits, 7 mantissa bits): add
    0x7fff plus the lowest kept bit, then clear the low 16 bits. As the kernels
    (csrc/gemm/bf16.h) and vcvtne2ps2bf16: float32 subnormals become zero of their sign,
    a NaN stays a (quiet) NaN, values past the largest bf16 round to infinity.
    """
    u = np.ascontiguousarray(a, np.float32).view(np.uint32)
    rounded = (u.astype(np.uint64) + 0x7FFF + ((u >> 16) & 1)).astype(np.uint32)
    out = rounded & np.uint32(0xFFFF0000)
    mag = u & np.uint32(0x7FFFFFFF)
    out = np.where(mag < 0x00800000, u & np.uint32(0x80000000), out)       # subnormal, 0
    out = np.where(mag > 0x7F800000, (u | np.uint32(0x00400000)) & np.uint32(0xFFFF0000),
                   out)                                                  # NaN stays NaN
    return out.astype(np.uint32).view(np.float32)


def quantize_rows(a):
    """Symmetric int8 quantisation of each row (last axis) of float32 ``a (..., K)``.

    ``s = max|row| / 127`` (1 for a row of zeros) and ``q = rint(a * (1 / s))`` in
    [-127, 127] (ties to even), all in float32 as the kernels do (csrc/gemm/int8.h). Returns
    ``q (..., K) int8, s (...,) float32``; ``q * s`` approximates ``a``.
    """
    a = np.asarray(a, np.float32)
    peak = np.abs(a).max(axis=-1) if a.shape[-1] else np.zeros(a.shape[:-1], np.float32)
    s = np.where(peak > 0, peak / np.float32(127), np.float32(1)).astype(np.float32)
    inv = (np.float32(1) / s)[..., None]
    return np.rint(a * inv).astype(np.int8), s


class _Int8Weight:
    """A weight quantised per row, ``q (N, K) int8`` and ``s (N,)``, as the right operand of
    ``a @ w.T`` (see :func:`_int8_matmul`)."""

    __array_ufunc__ = None                # ``ndarray @ w`` defers to __rmatmul__

    def __init__(self, q, s):
        self.q, self.s = q, s
        self.T = self                     # the products below always mean a @ wᵀ

    def __getitem__(self, rows):          # a block of rows (GRU splits w_hh by gates)
        return _Int8Weight(self.q[rows], self.s[rows])

    def __rmatmul__(self, a):
        return _int8_matmul(a, self)


def _int8_matmul(a, w: _Int8Weight):
    """``a (..., K) @ wᵀ`` with each row of ``a`` quantised on the fly (:func:`quantize_rows`):
    the exact integer sums, then ``* (s_a * s_w)`` in float32 -- the kernels' bits."""
    q_a, s_a = quantize_rows(a)
    sums = q_a.astype(np.int64) @ w.q.T.astype(np.int64)               # exact
    return sums.astype(np.float32) * (s_a[..., None] * w.s)


def _identity(a):
    return a


def _operands(inputs, precision, packs=None):
    """The inputs with the product operands x, w_ih, w_hh in ``precision``, and the function
    that rounds a state before it enters a product (identity for float32). int8 weights
    come quantised from ``packs.quantized`` when given, else from ``quantize_rows``. Only
    the forward's products read them: a training cache keeps the given (float32) inputs."""
    if precision == "bfloat16":
        inputs = replace(inputs, x=bf16_round(inputs.x), w_ih=bf16_round(inputs.w_ih),
                         w_hh=bf16_round(inputs.w_hh))
        return inputs, bf16_round
    if precision == "int8":
        quantized = getattr(packs, "quantized", None) or (quantize_rows(inputs.w_ih),
                                                          quantize_rows(inputs.w_hh))
        (q_ih, s_ih), (q_hh, s_hh) = quantized
        return replace(inputs, w_ih=_Int8Weight(q_ih, s_ih),
                       w_hh=_Int8Weight(q_hh, s_hh)), _identity
    return inputs, _identity


def _input_projection(inputs):
    """x w_ihᵀ + b_ih for the whole sequence at once: (T, B, I) -> (T, B, G*H)."""
    a = inputs.x @ inputs.w_ih.T
    if inputs.b_ih is not None:
        a += inputs.b_ih
    return a


def _masked(h, mask):
    """What a recurrent product reads: h (any leading axes, H) times the dropout mask
    (B, H), or h itself without one."""
    return h if mask is None else h * mask


def _hidden_projection(h, w, b):
    """h wᵀ + b for one step: (B, H) -> (B, rows of w)."""
    a = h @ w.T
    if b is not None:
        a += b
    return a


def _state_history(h0, inputs):
    """Buffer (T+1, B, ·) of states like h0: [0] is h0, [t+1] the state after step t."""
    hs = np.empty((inputs.T + 1, *h0.shape), inputs.dtype)
    hs[0] = h0
    return hs


def _upstream(cache, cell, **grads):
    """Validated upstream gradients, None replaced by zeros: dy (T, B, H), dh_n/dc_n (B, H)."""
    checked = check_backward(cache, grads, backend=BACKEND, cell=cell)
    inputs = cache.inputs
    shapes = {"dy": (inputs.T, inputs.B, inputs.P), "dh_n": (inputs.B, inputs.P),
              "dc_n": (inputs.B, inputs.H)}
    for name, value in checked.items():
        if value is None:
            checked[name] = np.zeros(shapes[name], inputs.dtype)
    return checked


def _sum_outer(da, v):
    """sum over t and b of outer(da[t, b], v[t, b]): (T, B, K), (T, B, N) -> (K, N).

    One GEMM over all T*B rows: how every weight gradient is formed after the time loop.
    """
    return da.reshape(-1, da.shape[-1]).T @ v.reshape(-1, v.shape[-1])


def _bias_grad(da, bias):
    """sum over t and b of da (T, B, K) -> (K,), or None when the layer has no such bias."""
    return None if bias is None else da.sum(axis=(0, 1))


def _input_grads(inputs, dax):
    """Undo ax = x w_ihᵀ + b_ih, given dax (T, B, G*H): returns dx, dw_ih, db_ih."""
    dx = dax @ inputs.w_ih                      # (T, B, G*H) @ (G*H, I) -> (T, B, I)
    return dx, _sum_outer(dax, inputs.x), _bias_grad(dax, inputs.b_ih)


def _make_cache(inputs, y, saved, **options):
    return Cache(inputs=inputs, y=y, saved=saved, options=options, backend=BACKEND)


# ---------------------------------------------------------------------------------------------
# RNN (Elman):  h_t = act(x_t w_ihᵀ + b_ih + h_{t-1} w_hhᵀ + b_hh),  y_t = h_t
# ---------------------------------------------------------------------------------------------

def rnn_forward(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, nonlinearity="tanh",
                lengths=None, training=True, packs=None, recurrent_mask=None, precision=None):
    """Elman RNN over a whole sequence.

    Equations (act = tanh or relu)::

        a_t = x_t w_ihᵀ + b_ih + h_{t-1} w_hhᵀ + b_hh
        h_t = act(a_t),   y_t = h_t

    Shapes: x (T, B, I), h0 (B, H) or None, w_ih (H, I), w_hh (H, H), b_ih/b_hh (H,) or None,
    lengths (B,) or None. Returns ``y (T, B, H), h_n (B, H), cache`` (None unless training).
    """
    nonlinearity = check_nonlinearity(nonlinearity)
    act, _ = _ACTIVATIONS[nonlinearity]
    master = check_forward("rnn", x, (h0,), w_ih, w_hh, b_ih, b_hh, lengths)
    inputs, rnd = _operands(master, check_precision(precision, packs, master.dtype, training,
                                                    {"recurrent_mask": recurrent_mask}), packs)
    m = check_recurrent_mask(recurrent_mask, inputs)       # (B, H) or None
    valid = _valid_steps(inputs)                           # (T, B, 1)
    ax = _input_projection(inputs)                         # (T, B, H)
    h = _initial_state(inputs.states[0], inputs)           # (B, H)
    hs = _state_history(h, inputs) if training else None   # (T+1, B, H)
    y = np.empty((inputs.T, inputs.B, inputs.H), inputs.dtype)

    for t in range(inputs.T):
        h_new = act(ax[t] + _hidden_projection(rnd(_masked(h, m)), inputs.w_hh, inputs.b_hh))
        y[t] = np.where(valid[t], h_new, 0)                # zero past the end
        h = np.where(valid[t], h_new, h)                   # unchanged past the end
        if training:
            hs[t + 1] = h

    cache = (_make_cache(master, y, {"h": hs}, nonlinearity=nonlinearity, recurrent_mask=m)
             if training else None)
    return y, h, cache


def rnn_backward(dy, dh_n, cache):
    """Backpropagation through time for :func:`rnn_forward`.

    Shapes: dy (T, B, H) or None, dh_n (B, H) or None (None = zeros).
    Returns ``RNNGrads(dx (T, B, I), dh0 (B, H), dw_ih (H, I), dw_hh (H, H), db_ih, db_hh)``;
    the bias gradients are (H,), or None when the forward had no bias.
    """
    up = _upstream(cache, "rnn", dy=dy, dh_n=dh_n)
    inputs, hs = cache.inputs, cache.saved["h"]            # hs (T+1, B, H)
    m = cache.options["recurrent_mask"]
    _, dact = _ACTIVATIONS[cache.options["nonlinearity"]]
    valid = _valid_steps(inputs)                           # (T, B, 1)
    da = np.empty((inputs.T, inputs.B, inputs.H), inputs.dtype)  # dL/da_t, zero past the end

    dh = up["dh_n"]                                        # dL/dh_t, carried backwards (B, H)
    for t in reversed(range(inputs.T)):
        dh = dh + np.where(valid[t], up["dy"][t], 0)       # y_t = h_t
        da[t] = np.where(valid[t], dh, 0) * dact(hs[t + 1])  # h_t = act(a_t)
        dh = np.where(valid[t], _masked(da[t] @ inputs.w_hh, m), dh)  # ... + (h_{t-1} m) w_hhᵀ

    dx, dw_ih, db_ih = _input_grads(inputs, da)
    dw_hh = _sum_outer(da, _masked(hs[:-1], m))            # (H, H)
    return RNNGrads(dx, dh, dw_ih, dw_hh, db_ih, _bias_grad(da, inputs.b_hh))


# ---------------------------------------------------------------------------------------------
# LSTM (PyTorch):  gates i, f, g, o;  c_t = f*c_{t-1} + i*g;  h_t = o*tanh(c_t)
# ---------------------------------------------------------------------------------------------

def _layer_norm(a, blocks):
    """Layer norm of each of ``blocks`` blocks of the last axis: (â, rstd) with
    â = (a - mean) * rstd, rstd = 1 / sqrt(var + eps); a (..., n*H) -> (..., n*H),
    (..., n, 1)."""
    a = a.reshape(*a.shape[:-1], blocks, -1)
    centred = a - a.mean(axis=-1, keepdims=True)
    rstd = 1 / np.sqrt((centred * centred).mean(axis=-1, keepdims=True) + LAYER_NORM_EPS)
    return (centred * rstd).reshape(*a.shape[:-2], -1), rstd


def _layer_norm_backward(dhat, hat, rstd):
    """Undo â = LN(a) per block: da = rstd (dâ - mean(dâ) - â mean(dâ â))."""
    blocks = rstd.shape[-2]
    dhat = dhat.reshape(*dhat.shape[:-1], blocks, -1)
    hat = hat.reshape(*hat.shape[:-1], blocks, -1)
    da = rstd * (dhat - dhat.mean(axis=-1, keepdims=True)
                 - hat * (dhat * hat).mean(axis=-1, keepdims=True))
    return da.reshape(*da.shape[:-2], -1)


def _lstm_gates(a):
    """Gate activations of a (B, 4H): sigmoid for i, f, o and tanh for g."""
    H = a.shape[-1] // 4
    gates = _sigmoid(a)
    gates[:, 2 * H:3 * H] = np.tanh(a[:, 2 * H:3 * H])
    return gates


def lstm_forward(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, *, lengths=None,
                 training=True, packs=None, peepholes=None, recurrent_mask=None, w_hr=None,
                 layer_norm=None, precision=None):
    """LSTM over a whole sequence (PyTorch equations and gate order i, f, g, o).

    Equations::

        a_t = x_t w_ihᵀ + b_ih + h_{t-1} w_hhᵀ + b_hh        split in 4 blocks of H
        i, f, g, o = sigmoid(a_i), sigmoid(a_f), tanh(a_g), sigmoid(a_o)
        c_t = f * c_{t-1} + i * g
        h_t = o * tanh(c_t),   y_t = h_t

    With ``peepholes`` (3H,) = [p_i, p_o, p_f] (ONNX's P), the cell state enters the gates:
    ``a_i += p_i * c_{t-1}``, ``a_f += p_f * c_{t-1}``, ``a_o += p_o * c_t``.
    With ``w_hr`` (P, H) (PyTorch's ``proj_size``) the state is projected:
    ``h_t = (o * tanh(c_t)) w_hrᵀ`` of P units, so y, h0, h_n are (·, P), w_hh (4H, P).
    With ``layer_norm`` (10H,) = [g_ih, g_hh, g_c, b_c] (Ba et al. 2016), each gate block
    of each product is layer-normalised, and so is the cell state before its tanh:
    ``a_t = g_ih LN(x_t w_ihᵀ) + g_hh LN(h_{t-1} w_hhᵀ) + b_ih + b_hh``,
    ``h_t = o * tanh(g_c LN(c_t) + b_c)`` (see :func:`_lstm_ln_forward`).

    Shapes: x (T, B, I), h0/c0 (B, H) or None, w_ih (4H, I), w_hh (4H, H),
    b_ih/b_hh (4H,) or None, lengths (B,) or None, peepholes (3H,) or None.
    Returns ``y (T, B, H), h_n (B, H), c_n (B, H), cache`` (None unless training).
    """
    master = check_forward("lstm", x, (h0, c0), w_ih, w_hh, b_ih, b_hh, lengths, w_hr)
    variants = {"peepholes": peepholes, "recurrent_mask": recurrent_mask, "w_hr": w_hr,
                "layer_norm": layer_norm}
    inputs, rnd = _operands(master, check_precision(precision, packs, master.dtype, training,
                                                    variants), packs)
    w_p = check_peepholes(peepholes, inputs)
    m = check_recurrent_mask(recurrent_mask, inputs)       # (B, P) or None
    ln = check_layer_norm(layer_norm, inputs)
    if ln is not None:
        if w_p is not None:
            raise ValueError("layer_norm cannot be combined with peepholes yet")
        return _lstm_ln_forward(inputs, m, ln, training)
    p_i, p_o, p_f = _chunks(w_p, 3) if w_p is not None else (0, 0, 0)
    T, B, H, P = inputs.T, inputs.B, inputs.H, inputs.P    # P = H without a projection
    valid = _valid_steps(inputs)                           # (T, B, 1)
    ax = _input_projection(inputs)                         # (T, B, 4H)
    h = _initial_state(inputs.states[0], inputs, P)        # (B, P)
    c = _initial_state(inputs.states[1], inputs)           # (B, H)
    y = np.empty((T, B, P), inputs.dtype)
    saved = None
    if training:
        saved = {"h": _state_history(h, inputs),           # (T+1, B, H)
                 "c": _state_history(c, inputs),           # (T+1, B, H)
                 "gates": np.empty((T, B, 4 * H), inputs.dtype),  # i, f, g, o after activation
                 "tanh_c": np.empty((T, B, H), inputs.dtype)}

    for t in range(T):
        a = ax[t] + _hidden_projection(rnd(_masked(h, m)), inputs.w_hh, inputs.b_hh)
        a[:, :H] += p_i * c                                # peepholes (0 without)
        a[:, H:2 * H] += p_f * c
        gates = _lstm_gates(a)                             # (B, 4H)
        i, f, g, o = _chunks(gates, 4)                     # each (B, H), views of gates
        c_new = f * c + i * g
        o[...] = _sigmoid(a[:, 3 * H:] + p_o * c_new)      # a_o += p_o * c_t
        tanh_c = np.tanh(c_new)
        h_new = o * tanh_c                                 # m_t (B, H)
        if inputs.w_hr is not None:
            h_new = h_new @ inputs.w_hr.T                  # h_t = m_t w_hrᵀ (B, P)
        y[t] = np.where(valid[t], h_new, 0)
        h = np.where(valid[t], h_new, h)
        c = np.where(valid[t], c_new, c)
        if training:
            saved["gates"][t], saved["tanh_c"][t] = gates, tanh_c
            saved["h"][t + 1], saved["c"][t + 1] = h, c

    cache = (_make_cache(master, y, saved, peepholes=w_p, recurrent_mask=m) if training
             else None)
    return y, h, c, cache


def lstm_backward(dy, dh_n, dc_n, cache):
    """Backpropagation through time for :func:`lstm_forward`.

    Shapes: dy (T, B, H) or None, dh_n/dc_n (B, H) or None (None = zeros).
    Returns ``LSTMGrads(dx (T, B, I), dh0 (B, H), dc0 (B, H), dw_ih (4H, I), dw_hh (4H, H),
    db_ih, db_hh)``; the bias gradients are (4H,), or None when the forward had no bias.
    A peephole forward returns ``PeepholeLSTMGrads``: the same and ``dw_p (3H,)`` last; one
    with a projection ``ProjectedLSTMGrads`` (``dw_hr (P, H)``, then ``dw_p`` or None).
    """
    up = _upstream(cache, "lstm", dy=dy, dh_n=dh_n, dc_n=dc_n)
    if cache.options.get("layer_norm") is not None:
        return _lstm_ln_backward(up, cache)
    inputs, saved = cache.inputs, cache.saved
    w_p, m = cache.options["peepholes"], cache.options["recurrent_mask"]
    p_i, p_o, p_f = _chunks(w_p, 3) if w_p is not None else (0, 0, 0)
    hs, cs, tanh_cs = saved["h"], saved["c"], saved["tanh_c"]
    valid = _valid_steps(inputs)                           # (T, B, 1)
    da = np.empty((inputs.T, inputs.B, 4 * inputs.H), inputs.dtype)  # dL/da_t, zero past the end
    dhs = np.empty((inputs.T, inputs.B, inputs.P), inputs.dtype)  # dL/dh_t, zero past the end

    dh, dc = up["dh_n"], up["dc_n"]                        # carried backwards, (B, P), (B, H)
    for t in reversed(range(inputs.T)):
        i, f, g, o = _chunks(saved["gates"][t], 4)
        dh = dh + np.where(valid[t], up["dy"][t], 0)       # y_t = h_t
        dhs[t] = dh_t = np.where(valid[t], dh, 0)          # the parts that enter step t
        if inputs.w_hr is not None:
            dh_t = dh_t @ inputs.w_hr                      # h_t = m_t w_hrᵀ: dL/dm_t (B, H)
        dc_t = np.where(valid[t], dc, 0)
        da_o = dh_t * tanh_cs[t] * _dsigmoid(o)            # h_t = o * tanh(c_t)
        dc_t = dc_t + dh_t * o * _dtanh(tanh_cs[t]) + da_o * p_o  # a_o += p_o * c_t
        di, df, dg = dc_t * g, dc_t * cs[t], dc_t * i      # c_t = f * c_{t-1} + i * g
        da_i, da_f = di * _dsigmoid(i), df * _dsigmoid(f)
        da[t] = np.concatenate([da_i, da_f, dg * _dtanh(g), da_o], axis=-1)
        dh = np.where(valid[t], _masked(da[t] @ inputs.w_hh, m), dh)  # ... + (h_{t-1} m) w_hhᵀ
        dc_prev = dc_t * f + da_i * p_i + da_f * p_f       # a_i, a_f += p_i, p_f * c_{t-1}
        dc = np.where(valid[t], dc_prev, dc)

    dx, dw_ih, db_ih = _input_grads(inputs, da)
    dw_hh = _sum_outer(da, _masked(hs[:-1], m))            # (4H, H)
    grads = (dx, dh, dc, dw_ih, dw_hh, db_ih, _bias_grad(da, inputs.b_hh))
    dw_p = None
    if w_p is not None:
        da_i, da_f, _, da_o = _chunks(da, 4)               # (T, B, H) each
        dw_p = np.concatenate([(da_i * cs[:-1]).sum(axis=(0, 1)),  # a_i += p_i * c_{t-1}
                               (da_o * cs[1:]).sum(axis=(0, 1)),   # a_o += p_o * c_t
                               (da_f * cs[:-1]).sum(axis=(0, 1))])  # a_f += p_f * c_{t-1}
    if inputs.w_hr is not None:                            # h_t = m_t w_hrᵀ, m_t = o tanh(c_t)
        m_t = saved["gates"][..., 3 * inputs.H:] * tanh_cs    # (T, B, H)
        return ProjectedLSTMGrads(*grads, _sum_outer(dhs, m_t), dw_p)
    return LSTMGrads(*grads) if w_p is None else PeepholeLSTMGrads(*grads, dw_p)


def _lstm_ln_forward(inputs, m, ln, training):
    """Layer-normalised LSTM (Ba et al. 2016, per gate block as TF Addons'
    LayerNormLSTMCell, with each product normalised on its own)::

        a_t = g_ih * LN(x_t w_ihᵀ) + g_hh * LN(h_{t-1} w_hhᵀ) + b_ih + b_hh    LN per block of H
        i, f, g, o as LSTM;  c_t = f * c_{t-1} + i * g
        h_t = o * tanh(g_c * LN(c_t) + b_c)

    ln (10H,) = [g_ih (4H), g_hh (4H), g_c (H), b_c (H)]; LN(v) = (v - mean) / sqrt(var + eps).
    """
    T, B, H = inputs.T, inputs.B, inputs.H
    g_ih, g_hh, g_c, b_c = np.split(ln, [4 * H, 8 * H, 9 * H])
    valid = _valid_steps(inputs)                           # (T, B, 1)
    x_hat, x_rstd = _layer_norm(inputs.x @ inputs.w_ih.T, 4)  # (T, B, 4H), (T, B, 4, 1)
    pre = g_ih * x_hat
    for bias in (inputs.b_ih, inputs.b_hh):
        if bias is not None:
            pre = pre + bias
    h = _initial_state(inputs.states[0], inputs)           # (B, H)
    c = _initial_state(inputs.states[1], inputs)
    y = np.empty((T, B, H), inputs.dtype)
    saved = {"h": _state_history(h, inputs), "c": _state_history(c, inputs),
             "gates": np.empty((T, B, 4 * H), inputs.dtype), "x_hat": x_hat,
             "x_rstd": x_rstd, "h_hat": np.empty((T, B, 4 * H), inputs.dtype),
             "h_rstd": np.empty((T, B, 4, 1), inputs.dtype),
             "c_hat": np.empty((T, B, H), inputs.dtype),
             "c_rstd": np.empty((T, B, 1, 1), inputs.dtype),
             "tanh_n": np.empty((T, B, H), inputs.dtype)}
    for t in range(T):
        h_hat, h_rstd = _layer_norm(_masked(h, m) @ inputs.w_hh.T, 4)   # (B, 4H)
        gates = _lstm_gates(pre[t] + g_hh * h_hat)
        i, f, g, o = _chunks(gates, 4)
        c_new = f * c + i * g
        c_hat, c_rstd = _layer_norm(c_new, 1)
        tanh_n = np.tanh(g_c * c_hat + b_c)
        h_new = o * tanh_n
        y[t] = np.where(valid[t], h_new, 0)
        h = np.where(valid[t], h_new, h)
        c = np.where(valid[t], c_new, c)
        for name, value in (("gates", gates), ("h_hat", h_hat), ("h_rstd", h_rstd),
                            ("c_hat", c_hat), ("c_rstd", c_rstd), ("tanh_n", tanh_n)):
            saved[name][t] = value
        saved["h"][t + 1], saved["c"][t + 1] = h, c
    cache = (_make_cache(inputs, y, saved, peepholes=None, recurrent_mask=m, layer_norm=ln)
             if training else None)
    return y, h, c, cache


def _lstm_ln_backward(up, cache):
    """BPTT of :func:`_lstm_ln_forward`: LayerNormLSTMGrads (dlayer_norm last)."""
    inputs, s, m = cache.inputs, cache.saved, cache.options["recurrent_mask"]
    T, B, H = inputs.T, inputs.B, inputs.H
    g_ih, g_hh, g_c, _ = np.split(cache.options["layer_norm"], [4 * H, 8 * H, 9 * H])
    valid = _valid_steps(inputs)
    da = np.empty((T, B, 4 * H), inputs.dtype)           # dL/da_t, zero past the end
    dah = np.empty((T, B, 4 * H), inputs.dtype)          # dL/d(h_{t-1} w_hhᵀ)
    dn = np.empty((T, B, H), inputs.dtype)               # dL/d(g_c LN(c_t) + b_c)
    dh, dc = up["dh_n"], up["dc_n"]
    for t in reversed(range(T)):
        i, f, g, o = _chunks(s["gates"][t], 4)
        dh = dh + np.where(valid[t], up["dy"][t], 0)
        dh_t, dc_t = np.where(valid[t], dh, 0), np.where(valid[t], dc, 0)
        tanh_n = s["tanh_n"][t]
        da_o = dh_t * tanh_n * _dsigmoid(o)                # h_t = o * tanh(n_t)
        dn[t] = dh_t * o * _dtanh(tanh_n)                  # n_t = g_c LN(c_t) + b_c
        dc_t = dc_t + _layer_norm_backward(dn[t] * g_c, s["c_hat"][t], s["c_rstd"][t])
        c_prev = s["c"][t]
        da[t] = np.concatenate([dc_t * g * _dsigmoid(i), dc_t * c_prev * _dsigmoid(f),
                                dc_t * i * _dtanh(g), da_o], axis=-1)
        dah[t] = _layer_norm_backward(da[t] * g_hh, s["h_hat"][t], s["h_rstd"][t])
        dh = np.where(valid[t], _masked(dah[t] @ inputs.w_hh, m), dh)
        dc = np.where(valid[t], dc_t * f, dc)
    dax = _layer_norm_backward(da * g_ih, s["x_hat"], s["x_rstd"])   # dL/d(x w_ihᵀ)
    dx, dw_ih, _ = _input_grads(inputs, dax)
    dw_hh = _sum_outer(dah, _masked(s["h"][:-1], m))
    dln = np.concatenate([(da * s["x_hat"]).sum(axis=(0, 1)), (da * s["h_hat"]).sum(axis=(0, 1)),
                          (dn * s["c_hat"]).sum(axis=(0, 1)), dn.sum(axis=(0, 1))])
    return LayerNormLSTMGrads(dx, dh, dc, dw_ih, dw_hh, _bias_grad(da, inputs.b_ih),
                              _bias_grad(da, inputs.b_hh), dln)


# ---------------------------------------------------------------------------------------------
# GRU:  gates r, z, n;  h_t = (1 - z)*n + z*h_{t-1}
# ---------------------------------------------------------------------------------------------

def gru_forward(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, reset_after=True, lengths=None,
                training=True, packs=None, recurrent_mask=None, layer_norm=None,
                precision=None):
    """GRU over a whole sequence (gate order r, z, n).

    Equations (W_r*, W_z*, W_n* the blocks of H rows of w_ih and w_hh)::

        r = sigmoid(x W_irᵀ + b_ir + h W_hrᵀ + b_hr)
        z = sigmoid(x W_izᵀ + b_iz + h W_hzᵀ + b_hz)
        n = tanh(x W_inᵀ + b_in + r * (h W_hnᵀ + b_hn))     reset_after=True (PyTorch, cuDNN)
        n = tanh(x W_inᵀ + b_in + (r * h) W_hnᵀ + b_hn)     reset_after=False (Keras
                                                             reset_after=False, ONNX
                                                             linear_before_reset=0)
        h' = (1 - z) * n + z * h,   y_t = h'

    With ``layer_norm`` (6H,) = [g_ih, g_hh] (reset_after only; see :func:`_gru_ln_forward`)
    each product is layer-normalised per gate block before the biases.

    Shapes: x (T, B, I), h0 (B, H) or None, w_ih (3H, I), w_hh (3H, H), b_ih/b_hh (3H,) or
    None, lengths (B,) or None. Returns ``y (T, B, H), h_n (B, H), cache`` (None unless
    training).
    """
    master = check_forward("gru", x, (h0,), w_ih, w_hh, b_ih, b_hh, lengths)
    inputs, rnd = _operands(master, check_precision(
        precision, packs, master.dtype, training,
        {"recurrent_mask": recurrent_mask, "layer_norm": layer_norm}), packs)
    m = check_recurrent_mask(recurrent_mask, inputs)       # (B, H) or None
    ln = check_layer_norm(layer_norm, inputs)
    if ln is not None:
        if not reset_after:
            raise ValueError("layer_norm needs reset_after=True (the GRU of PyTorch)")
        return _gru_ln_forward(inputs, m, ln, training)
    T, B, H = inputs.T, inputs.B, inputs.H
    valid = _valid_steps(inputs)                           # (T, B, 1)
    ax = _input_projection(inputs)                         # (T, B, 3H)
    w_rz, w_n = _split_rows(inputs.w_hh, 2 * H)            # (2H, H), (H, H)
    b_rz, b_n = _split_rows(inputs.b_hh, 2 * H)            # (2H,), (H,) or None
    h = _initial_state(inputs.states[0], inputs)           # (B, H)
    y = np.empty((T, B, H), inputs.dtype)
    saved = None
    if training:
        saved = {"h": _state_history(h, inputs),           # (T+1, B, H)
                 "gates": np.empty((T, B, 3 * H), inputs.dtype)}  # r, z, n after activation
        if reset_after:
            saved["hn"] = np.empty((T, B, H), inputs.dtype)  # h W_hnᵀ + b_hn

    for t in range(T):
        ax_rz, ax_n = ax[t, :, :2 * H], ax[t, :, 2 * H:]   # (B, 2H), (B, H)
        hm = _masked(h, m)                                 # what the products read
        r, z = _chunks(_sigmoid(ax_rz + _hidden_projection(rnd(hm), w_rz, b_rz)), 2)
        if reset_after:
            hn = _hidden_projection(rnd(hm), w_n, b_n)     # (B, H)
            n = np.tanh(ax_n + r * hn)
        else:
            n = np.tanh(ax_n + _hidden_projection(rnd(r * hm), w_n, b_n))
        h_new = (1 - z) * n + z * h
        y[t] = np.where(valid[t], h_new, 0)
        h = np.where(valid[t], h_new, h)
        if training:
            saved["gates"][t] = np.concatenate([r, z, n], axis=-1)
            saved["h"][t + 1] = h
            if reset_after:
                saved["hn"][t] = hn

    cache = (_make_cache(master, y, saved, reset_after=reset_after, recurrent_mask=m)
             if training else None)
    return y, h, cache


def gru_backward(dy, dh_n, cache):
    """Backpropagation through time for :func:`gru_forward`.

    Shapes: dy (T, B, H) or None, dh_n (B, H) or None (None = zeros).
    Returns ``GRUGrads(dx (T, B, I), dh0 (B, H), dw_ih (3H, I), dw_hh (3H, H), db_ih, db_hh)``;
    the bias gradients are (3H,), or None when the forward had no bias.
    """
    up = _upstream(cache, "gru", dy=dy, dh_n=dh_n)
    if cache.options.get("layer_norm") is not None:
        return _gru_ln_backward(up, cache)
    inputs, saved = cache.inputs, cache.saved
    reset_after, m = cache.options["reset_after"], cache.options["recurrent_mask"]
    T, B, H = inputs.T, inputs.B, inputs.H
    hs = saved["h"]                                        # (T+1, B, H)
    w_rz, w_n = _split_rows(inputs.w_hh, 2 * H)
    valid = _valid_steps(inputs)                           # (T, B, 1)
    dax = np.empty((T, B, 3 * H), inputs.dtype)  # dL/d(x w_ihᵀ + b_ih), zero past the end
    dah = np.empty((T, B, 3 * H), inputs.dtype)  # dL/d(h w_hhᵀ + b_hh) (n block: of its input)

    dh = up["dh_n"]                                        # dL/dh_t, carried backwards (B, H)
    for t in reversed(range(T)):
        r, z, n = _chunks(saved["gates"][t], 3)
        h_prev = hs[t]
        dh = dh + np.where(valid[t], up["dy"][t], 0)       # y_t = h_t
        dh_t = np.where(valid[t], dh, 0)                   # the part that enters step t
        dn = dh_t * (1 - z)                                # h_t = (1 - z) * n + z * h_{t-1}
        dz = dh_t * (h_prev - n)
        da_n = dn * _dtanh(n)                              # n = tanh(a_n)
        if reset_after:                                    # a_n = ax_n + r * hn
            dr = da_n * saved["hn"][t]
            dah_n = da_n * r                               # hn = (h_{t-1} m) W_hnᵀ + b_hn
            dhm_via_n = dah_n @ w_n
        else:                                    # a_n = ax_n + (r * h_{t-1} m) W_hnᵀ + b_hn
            dah_n = da_n
            drh = da_n @ w_n                               # dL/d(r * h_{t-1} m)
            dr = drh * _masked(h_prev, m)
            dhm_via_n = drh * r
        da_rz = np.concatenate([dr * _dsigmoid(r), dz * _dsigmoid(z)], axis=-1)  # (B, 2H)
        dax[t] = np.concatenate([da_rz, da_n], axis=-1)
        dah[t] = np.concatenate([da_rz, dah_n], axis=-1)
        dh_prev = dh_t * z + _masked(da_rz @ w_rz + dhm_via_n, m)
        dh = np.where(valid[t], dh_prev, dh)               # unchanged past the end

    dx, dw_ih, db_ih = _input_grads(inputs, dax)
    # The n block of w_hh multiplies h_{t-1} m (reset_after) or r * h_{t-1} m (reset before).
    hm = _masked(hs[:-1], m)                               # (T, B, H)
    n_input = hm if reset_after else saved["gates"][..., :H] * hm
    dw_hh = np.concatenate([_sum_outer(dah[..., :2 * H], hm),
                            _sum_outer(dah[..., 2 * H:], n_input)])  # (3H, H)
    return GRUGrads(dx, dh, dw_ih, dw_hh, db_ih, _bias_grad(dah, inputs.b_hh))


def _gru_ln_forward(inputs, m, ln, training):
    """Layer-normalised GRU (reset after; each product normalised per gate block)::

        [xr xz xn] = g_ih * LN(x_t w_ihᵀ) + b_ih,   [hr hz hn] = g_hh * LN(h_{t-1} w_hhᵀ) + b_hh
        r = sigmoid(xr + hr), z = sigmoid(xz + hz), n = tanh(xn + r * hn)
        h_t = (1 - z) * n + z * h_{t-1}

    ln (6H,) = [g_ih (3H), g_hh (3H)]; LN as :func:`_layer_norm`.
    """
    T, B, H = inputs.T, inputs.B, inputs.H
    g_ih, g_hh = np.split(ln, [3 * H])
    valid = _valid_steps(inputs)
    x_hat, x_rstd = _layer_norm(inputs.x @ inputs.w_ih.T, 3)   # (T, B, 3H), (T, B, 3, 1)
    px = g_ih * x_hat if inputs.b_ih is None else g_ih * x_hat + inputs.b_ih
    h = _initial_state(inputs.states[0], inputs)
    y = np.empty((T, B, H), inputs.dtype)
    saved = {"h": _state_history(h, inputs), "gates": np.empty((T, B, 3 * H), inputs.dtype),
             "hn": np.empty((T, B, H), inputs.dtype), "x_hat": x_hat, "x_rstd": x_rstd,
             "h_hat": np.empty((T, B, 3 * H), inputs.dtype),
             "h_rstd": np.empty((T, B, 3, 1), inputs.dtype)}
    for t in range(T):
        h_hat, h_rstd = _layer_norm(_masked(h, m) @ inputs.w_hh.T, 3)   # (B, 3H)
        ph = g_hh * h_hat if inputs.b_hh is None else g_hh * h_hat + inputs.b_hh
        r, z = _chunks(_sigmoid(px[t, :, :2 * H] + ph[:, :2 * H]), 2)
        hn = ph[:, 2 * H:]
        n = np.tanh(px[t, :, 2 * H:] + r * hn)
        h_new = (1 - z) * n + z * h
        y[t] = np.where(valid[t], h_new, 0)
        h = np.where(valid[t], h_new, h)
        saved["gates"][t] = np.concatenate([r, z, n], axis=-1)
        saved["hn"][t], saved["h_hat"][t], saved["h_rstd"][t] = hn, h_hat, h_rstd
        saved["h"][t + 1] = h
    cache = (_make_cache(inputs, y, saved, reset_after=True, recurrent_mask=m, layer_norm=ln)
             if training else None)
    return y, h, cache


def _gru_ln_backward(up, cache):
    """BPTT of :func:`_gru_ln_forward`: LayerNormGRUGrads (dlayer_norm last)."""
    inputs, s, m = cache.inputs, cache.saved, cache.options["recurrent_mask"]
    T, B, H = inputs.T, inputs.B, inputs.H
    g_ih, g_hh = np.split(cache.options["layer_norm"], [3 * H])
    valid = _valid_steps(inputs)
    dpx = np.empty((T, B, 3 * H), inputs.dtype)          # dL/d[xr xz xn]
    dph = np.empty((T, B, 3 * H), inputs.dtype)          # dL/d[hr hz hn]
    dah = np.empty((T, B, 3 * H), inputs.dtype)          # dL/d(h_{t-1} w_hhᵀ)
    dh = up["dh_n"]
    for t in reversed(range(T)):
        r, z, n = _chunks(s["gates"][t], 3)
        dh = dh + np.where(valid[t], up["dy"][t], 0)
        dh_t = np.where(valid[t], dh, 0)
        da_n = dh_t * (1 - z) * _dtanh(n)                # h_t = (1 - z) n + z h_{t-1}
        da_r = da_n * s["hn"][t] * _dsigmoid(r)          # n = tanh(xn + r hn)
        da_z = dh_t * (s["h"][t] - n) * _dsigmoid(z)
        dpx[t] = np.concatenate([da_r, da_z, da_n], axis=-1)
        dph[t] = np.concatenate([da_r, da_z, da_n * r], axis=-1)
        dah[t] = _layer_norm_backward(dph[t] * g_hh, s["h_hat"][t], s["h_rstd"][t])
        dh = np.where(valid[t], dh_t * z + _masked(dah[t] @ inputs.w_hh, m), dh)
    dax = _layer_norm_backward(dpx * g_ih, s["x_hat"], s["x_rstd"])
    dx, dw_ih, _ = _input_grads(inputs, dax)
    dw_hh = _sum_outer(dah, _masked(s["h"][:-1], m))
    dln = np.concatenate([(dpx * s["x_hat"]).sum(axis=(0, 1)),
                          (dph * s["h_hat"]).sum(axis=(0, 1))])
    return LayerNormGRUGrads(dx, dh, dw_ih, dw_hh, _bias_grad(dpx, inputs.b_ih),
                             _bias_grad(dph, inputs.b_hh), dln)
