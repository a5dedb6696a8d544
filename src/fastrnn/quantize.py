"""Dynamic int8 quantisation of recurrent layers and models (:func:`quantize_dynamic`).

The scheme (csrc/gemm/int8.h; NumPy twin :func:`fastrnn.reference.quantize_rows`):

* weights ``w_ih``, ``w_hh`` of every RNN/LSTM/GRU layer: int8 per output row, symmetric,
  ``s_w = max|row| / 127``, ``q = rint(w / s_w)``, made once here;
* activations: each row of ``x_t`` and of ``h_{t-1}`` (one sequence of a batch at one step)
  the same way, on the fly, as it enters its product -- a dynamic scale per row and step,
  which tracks a state whose range changes along the sequence better than one scale per
  tensor;
* exact int32 sums, scaled back to float32 (``sum * (s_a * s_w)``) before the cell's math;
  biases, cell state, activations and outputs stay float32.

On AVX512-VNNI CPUs the products run on ``vpdpbusd``, on AVX2 on ``vpmaddwd`` (int16
pairs); elsewhere the same integers run on float32 FMAs, in chunks of 1040 (within which
float32 sums of them are exact) added in int32 -- the same bits everywhere, at any size.
A quantized module runs inference only (``forward``, ``step``, generation, ``predict``);
its checkpoints (``Model.save`` / ``state_dict``) store the int8 weights and scales beside
the float32 values they stand for, and load back bit for bit.
"""
from __future__ import annotations

import copy

import numpy as np

from .nn.module import Module
from .nn.recurrent import _RecurrentBase

__all__ = ["quantize_dynamic"]

_CACHES = ("_pack_cache", "_stepper_entry")   # packs and C steppers: remade on demand


def quantize_dynamic(module: Module, *, inplace: bool = False) -> Module:
    """``module`` (a layer, or a model holding layers) with every RNN, LSTM and GRU layer
    switched to int8 inference: a deep copy, or ``module`` itself with ``inplace``.

    Other modules (Linear, Embedding, ...) stay float32. Raises ``TypeError`` for
    something that is not a fastrnn Module, ``ValueError`` when it holds no recurrent
    layer or one of float64 (quantize float32 modules).
    """
    if not isinstance(module, Module):
        raise TypeError(f"module must be a fastrnn Module (a layer or a model), got "
                        f"{type(module).__name__}")
    layers = [m for _, m in module.named_modules() if isinstance(m, _RecurrentBase)]
    if not layers:
        raise ValueError(f"quantize_dynamic: {type(module).__name__} holds no RNN, LSTM or "
                         "GRU layer")
    for layer in layers:
        if layer.dtype != np.float32:
            raise ValueError(f"quantize_dynamic needs float32 layers, got a {layer.dtype} "
                             f"{type(layer).__name__}; convert it with .to('float32') first")
    if not inplace:
        module = _copy(module)
    for _, m in module.named_modules():
        if isinstance(m, _RecurrentBase):
            m._drop_tape()
            m._quantize()
    return module


def _copy(module: Module) -> Module:
    """A deep copy without the packs and steppers (C objects, remade on first use)."""
    stashed = []
    for _, m in module.named_modules():
        kept = {name: m.__dict__.pop(name) for name in _CACHES if name in m.__dict__}
        stashed.append((m, kept))
    try:
        return copy.deepcopy(module)
    finally:
        for m, kept in stashed:
            m.__dict__.update(kept)
