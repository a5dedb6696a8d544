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
  float32, as in the kernels (which differ only in the order of float32 additions).
* ``precision="int8"`` (inference, float32): weights quantised per row
  (:func:`quantize_rows`, or as ``packs.quantized`` holds them), each row of ``x_t`` and of
  the state quantised the same way as it enters a product; exact integer sums, scaled back
  to float32 -- the same bits as the kernels' products.
* ``training=True`` returns a cache for backward (post-activation gates and states);
  ``training=False`` returns ``None`` and keeps no per-step intermediates.
* Backward takes activation derivatives from saved outputs (``s*(1-s)``, ``1-y*y``) and never
  recomputes an exponential. Upstream gradients that are None count as zeros.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ._common import (Cache, GRUGrads, LSTMGrads, RNNGrads, check_backward, check_forward,
                      check_nonlinearity, check_precision)

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


def _initial_state(state, inputs):
    """The given state (B, H), or zeros when it is None."""
    if state is None:
        return np.zeros((inputs.B, inputs.H), inputs.dtype)
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
    come quantised from ``packs.quantized`` when given, else from ``quantize_rows``."""
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


def _hidden_projection(h, w, b):
    """h wᵀ + b for one step: (B, H) -> (B, rows of w)."""
    a = h @ w.T
    if b is not None:
        a += b
    return a


def _state_history(h0, inputs):
    """Buffer (T+1, B, H) of states: [0] is the initial state, [t+1] the state after step t."""
    hs = np.empty((inputs.T + 1, inputs.B, inputs.H), inputs.dtype)
    hs[0] = h0
    return hs


def _upstream(cache, cell, **grads):
    """Validated upstream gradients, None replaced by zeros: dy (T, B, H), dh_n/dc_n (B, H)."""
    checked = check_backward(cache, grads, backend=BACKEND, cell=cell)
    inputs = cache.inputs
    for name, value in checked.items():
        if value is None:
            shape = (inputs.T, inputs.B, inputs.H) if name == "dy" else (inputs.B, inputs.H)
            checked[name] = np.zeros(shape, inputs.dtype)
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
                lengths=None, training=True, packs=None, precision=None):
    """Elman RNN over a whole sequence.

    Equations (act = tanh or relu)::

        a_t = x_t w_ihᵀ + b_ih + h_{t-1} w_hhᵀ + b_hh
        h_t = act(a_t),   y_t = h_t

    Shapes: x (T, B, I), h0 (B, H) or None, w_ih (H, I), w_hh (H, H), b_ih/b_hh (H,) or None,
    lengths (B,) or None. Returns ``y (T, B, H), h_n (B, H), cache`` (None unless training).
    """
    nonlinearity = check_nonlinearity(nonlinearity)
    act, _ = _ACTIVATIONS[nonlinearity]
    inputs = check_forward("rnn", x, (h0,), w_ih, w_hh, b_ih, b_hh, lengths)
    inputs, rnd = _operands(inputs, check_precision(precision, packs, inputs.dtype, training), packs)
    valid = _valid_steps(inputs)                           # (T, B, 1)
    ax = _input_projection(inputs)                         # (T, B, H)
    h = _initial_state(inputs.states[0], inputs)           # (B, H)
    hs = _state_history(h, inputs) if training else None   # (T+1, B, H)
    y = np.empty((inputs.T, inputs.B, inputs.H), inputs.dtype)

    for t in range(inputs.T):
        h_new = act(ax[t] + _hidden_projection(rnd(h), inputs.w_hh, inputs.b_hh))  # (B, H)
        y[t] = np.where(valid[t], h_new, 0)                # zero past the end
        h = np.where(valid[t], h_new, h)                   # unchanged past the end
        if training:
            hs[t + 1] = h

    cache = _make_cache(inputs, y, {"h": hs}, nonlinearity=nonlinearity) if training else None
    return y, h, cache


def rnn_backward(dy, dh_n, cache):
    """Backpropagation through time for :func:`rnn_forward`.

    Shapes: dy (T, B, H) or None, dh_n (B, H) or None (None = zeros).
    Returns ``RNNGrads(dx (T, B, I), dh0 (B, H), dw_ih (H, I), dw_hh (H, H), db_ih, db_hh)``;
    the bias gradients are (H,), or None when the forward had no bias.
    """
    up = _upstream(cache, "rnn", dy=dy, dh_n=dh_n)
    inputs, hs = cache.inputs, cache.saved["h"]            # hs (T+1, B, H)
    _, dact = _ACTIVATIONS[cache.options["nonlinearity"]]
    valid = _valid_steps(inputs)                           # (T, B, 1)
    da = np.empty((inputs.T, inputs.B, inputs.H), inputs.dtype)  # dL/da_t, zero past the end

    dh = up["dh_n"]                                        # dL/dh_t, carried backwards (B, H)
    for t in reversed(range(inputs.T)):
        dh = dh + np.where(valid[t], up["dy"][t], 0)       # y_t = h_t
        da[t] = np.where(valid[t], dh, 0) * dact(hs[t + 1])  # h_t = act(a_t)
        dh = np.where(valid[t], da[t] @ inputs.w_hh, dh)   # a_t = ... + h_{t-1} w_hhᵀ

    dx, dw_ih, db_ih = _input_grads(inputs, da)
    dw_hh = _sum_outer(da, hs[:-1])                        # (H, H)
    return RNNGrads(dx, dh, dw_ih, dw_hh, db_ih, _bias_grad(da, inputs.b_hh))


# ---------------------------------------------------------------------------------------------
# LSTM (PyTorch):  gates i, f, g, o;  c_t = f*c_{t-1} + i*g;  h_t = o*tanh(c_t)
# ---------------------------------------------------------------------------------------------

def _lstm_gates(a):
    """Gate activations of a (B, 4H): sigmoid for i, f, o and tanh for g."""
    H = a.shape[-1] // 4
    gates = _sigmoid(a)
    gates[:, 2 * H:3 * H] = np.tanh(a[:, 2 * H:3 * H])
    return gates


def lstm_forward(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, *, lengths=None,
                 training=True, packs=None, precision=None):
    """LSTM over a whole sequence (PyTorch equations and gate order i, f, g, o).

    Equations::

        a_t = x_t w_ihᵀ + b_ih + h_{t-1} w_hhᵀ + b_hh        split in 4 blocks of H
        i, f, g, o = sigmoid(a_i), sigmoid(a_f), tanh(a_g), sigmoid(a_o)
        c_t = f * c_{t-1} + i * g
        h_t = o * tanh(c_t),   y_t = h_t

    Shapes: x (T, B, I), h0/c0 (B, H) or None, w_ih (4H, I), w_hh (4H, H),
    b_ih/b_hh (4H,) or None, lengths (B,) or None.
    Returns ``y (T, B, H), h_n (B, H), c_n (B, H), cache`` (None unless training).
    """
    inputs = check_forward("lstm", x, (h0, c0), w_ih, w_hh, b_ih, b_hh, lengths)
    inputs, rnd = _operands(inputs, check_precision(precision, packs, inputs.dtype, training), packs)
    T, B, H = inputs.T, inputs.B, inputs.H
    valid = _valid_steps(inputs)                           # (T, B, 1)
    ax = _input_projection(inputs)                         # (T, B, 4H)
    h = _initial_state(inputs.states[0], inputs)           # (B, H)
    c = _initial_state(inputs.states[1], inputs)           # (B, H)
    y = np.empty((T, B, H), inputs.dtype)
    saved = None
    if training:
        saved = {"h": _state_history(h, inputs),           # (T+1, B, H)
                 "c": _state_history(c, inputs),           # (T+1, B, H)
                 "gates": np.empty((T, B, 4 * H), inputs.dtype),  # i, f, g, o after activation
                 "tanh_c": np.empty((T, B, H), inputs.dtype)}

    for t in range(T):
        gates = _lstm_gates(ax[t] + _hidden_projection(rnd(h), inputs.w_hh, inputs.b_hh))
        i, f, g, o = _chunks(gates, 4)                     # each (B, H)
        c_new = f * c + i * g
        tanh_c = np.tanh(c_new)
        h_new = o * tanh_c
        y[t] = np.where(valid[t], h_new, 0)
        h = np.where(valid[t], h_new, h)
        c = np.where(valid[t], c_new, c)
        if training:
            saved["gates"][t], saved["tanh_c"][t] = gates, tanh_c
            saved["h"][t + 1], saved["c"][t + 1] = h, c

    cache = _make_cache(inputs, y, saved) if training else None
    return y, h, c, cache


def lstm_backward(dy, dh_n, dc_n, cache):
    """Backpropagation through time for :func:`lstm_forward`.

    Shapes: dy (T, B, H) or None, dh_n/dc_n (B, H) or None (None = zeros).
    Returns ``LSTMGrads(dx (T, B, I), dh0 (B, H), dc0 (B, H), dw_ih (4H, I), dw_hh (4H, H),
    db_ih, db_hh)``; the bias gradients are (4H,), or None when the forward had no bias.
    """
    up = _upstream(cache, "lstm", dy=dy, dh_n=dh_n, dc_n=dc_n)
    inputs, saved = cache.inputs, cache.saved
    hs, cs, tanh_cs = saved["h"], saved["c"], saved["tanh_c"]
    valid = _valid_steps(inputs)                           # (T, B, 1)
    da = np.empty((inputs.T, inputs.B, 4 * inputs.H), inputs.dtype)  # dL/da_t, zero past the end

    dh, dc = up["dh_n"], up["dc_n"]                        # carried backwards, (B, H) each
    for t in reversed(range(inputs.T)):
        i, f, g, o = _chunks(saved["gates"][t], 4)
        dh = dh + np.where(valid[t], up["dy"][t], 0)       # y_t = h_t
        dh_t = np.where(valid[t], dh, 0)                   # the parts that enter step t
        dc_t = np.where(valid[t], dc, 0)
        do = dh_t * tanh_cs[t]                             # h_t = o * tanh(c_t)
        dc_t = dc_t + dh_t * o * _dtanh(tanh_cs[t])
        di, df, dg = dc_t * g, dc_t * cs[t], dc_t * i      # c_t = f * c_{t-1} + i * g
        da[t] = np.concatenate([di * _dsigmoid(i), df * _dsigmoid(f),
                                dg * _dtanh(g), do * _dsigmoid(o)], axis=-1)
        dh = np.where(valid[t], da[t] @ inputs.w_hh, dh)   # a_t = ... + h_{t-1} w_hhᵀ
        dc = np.where(valid[t], dc_t * f, dc)

    dx, dw_ih, db_ih = _input_grads(inputs, da)
    dw_hh = _sum_outer(da, hs[:-1])                        # (4H, H)
    return LSTMGrads(dx, dh, dc, dw_ih, dw_hh, db_ih, _bias_grad(da, inputs.b_hh))


# ---------------------------------------------------------------------------------------------
# GRU:  gates r, z, n;  h_t = (1 - z)*n + z*h_{t-1}
# ---------------------------------------------------------------------------------------------

def gru_forward(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, reset_after=True, lengths=None,
                training=True, packs=None, precision=None):
    """GRU over a whole sequence (gate order r, z, n).

    Equations (W_r*, W_z*, W_n* the blocks of H rows of w_ih and w_hh)::

        r = sigmoid(x W_irᵀ + b_ir + h W_hrᵀ + b_hr)
        z = sigmoid(x W_izᵀ + b_iz + h W_hzᵀ + b_hz)
        n = tanh(x W_inᵀ + b_in + r * (h W_hnᵀ + b_hn))     reset_after=True (PyTorch, cuDNN)
        n = tanh(x W_inᵀ + b_in + (r * h) W_hnᵀ + b_hn)     reset_after=False (Keras
                                                             reset_after=False, ONNX
                                                             linear_before_reset=0)
        h' = (1 - z) * n + z * h,   y_t = h'

    Shapes: x (T, B, I), h0 (B, H) or None, w_ih (3H, I), w_hh (3H, H), b_ih/b_hh (3H,) or
    None, lengths (B,) or None. Returns ``y (T, B, H), h_n (B, H), cache`` (None unless
    training).
    """
    inputs = check_forward("gru", x, (h0,), w_ih, w_hh, b_ih, b_hh, lengths)
    inputs, rnd = _operands(inputs, check_precision(precision, packs, inputs.dtype, training), packs)
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
        r, z = _chunks(_sigmoid(ax_rz + _hidden_projection(rnd(h), w_rz, b_rz)), 2)
        if reset_after:
            hn = _hidden_projection(rnd(h), w_n, b_n)      # (B, H)
            n = np.tanh(ax_n + r * hn)
        else:
            n = np.tanh(ax_n + _hidden_projection(rnd(r * h), w_n, b_n))
        h_new = (1 - z) * n + z * h
        y[t] = np.where(valid[t], h_new, 0)
        h = np.where(valid[t], h_new, h)
        if training:
            saved["gates"][t] = np.concatenate([r, z, n], axis=-1)
            saved["h"][t + 1] = h
            if reset_after:
                saved["hn"][t] = hn

    cache = _make_cache(inputs, y, saved, reset_after=reset_after) if training else None
    return y, h, cache


def gru_backward(dy, dh_n, cache):
    """Backpropagation through time for :func:`gru_forward`.

    Shapes: dy (T, B, H) or None, dh_n (B, H) or None (None = zeros).
    Returns ``GRUGrads(dx (T, B, I), dh0 (B, H), dw_ih (3H, I), dw_hh (3H, H), db_ih, db_hh)``;
    the bias gradients are (3H,), or None when the forward had no bias.
    """
    up = _upstream(cache, "gru", dy=dy, dh_n=dh_n)
    inputs, saved = cache.inputs, cache.saved
    reset_after = cache.options["reset_after"]
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
            dah_n = da_n * r                               # hn = h_{t-1} W_hnᵀ + b_hn
            dh_via_n = dah_n @ w_n
        else:                                              # a_n = ax_n + (r*h_{t-1}) W_hnᵀ + b_hn
            dah_n = da_n
            drh = da_n @ w_n                               # dL/d(r * h_{t-1})
            dr = drh * h_prev
            dh_via_n = drh * r
        da_rz = np.concatenate([dr * _dsigmoid(r), dz * _dsigmoid(z)], axis=-1)  # (B, 2H)
        dax[t] = np.concatenate([da_rz, da_n], axis=-1)
        dah[t] = np.concatenate([da_rz, dah_n], axis=-1)
        dh_prev = dh_t * z + da_rz @ w_rz + dh_via_n
        dh = np.where(valid[t], dh_prev, dh)               # unchanged past the end

    dx, dw_ih, db_ih = _input_grads(inputs, dax)
    # The n block of w_hh multiplies h_{t-1} (reset_after) or r * h_{t-1} (reset before).
    n_input = hs[:-1] if reset_after else saved["gates"][..., :H] * hs[:-1]  # (T, B, H)
    dw_hh = np.concatenate([_sum_outer(dah[..., :2 * H], hs[:-1]),
                            _sum_outer(dah[..., 2 * H:], n_input)])  # (3H, H)
    return GRUGrads(dx, dh, dw_ih, dw_hh, db_ih, _bias_grad(dah, inputs.b_hh))
