"""``torch.nn.utils.rnn.PackedSequence`` in and out of the recurrent layers.

A PackedSequence holds the valid steps of B sequences sorted by decreasing length, step by
step: ``data (N, F)`` is step 0 of every sequence, then step 1 of those at least 2 long, and
so on; ``batch_sizes (T,)`` counts the sequences still running at each step;
``sorted_indices[i]`` is the original batch index of the i-th longest sequence (None when
the batch was already sorted) and ``unsorted_indices`` its inverse.

The layers compute on padded arrays in the original batch order with ``lengths``, which
gives PyTorch's packed results exactly; these helpers convert at the edge::

    valid (T, B) = arange(B)[None, :] < batch_sizes[:, None]   in sorted order
    padded_sorted[valid] = data       (C order of ``valid`` is the packed order)
    padded = padded_sorted[:, unsorted_indices]

and back with ``sorted_indices``. Only torch makes PackedSequences, so torch is imported
only when one arrives.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np


class Packing(NamedTuple):
    """How a PackedSequence was laid out, to pack outputs (and gradients) the same way."""

    valid: np.ndarray                      # (T, B) bool, sorted batch order
    sorted_indices: Optional[np.ndarray]   # (B,) int64 or None (already sorted)
    torch_fields: tuple                    # (batch_sizes, sorted_indices, unsorted_indices)
    sequence_type: type                    # PackedSequence


def is_packed(x) -> bool:
    """True for a ``torch.nn.utils.rnn.PackedSequence`` (checked without importing torch)."""
    return (type(x).__name__ == "PackedSequence" and hasattr(x, "batch_sizes")
            and hasattr(x, "data"))


def _numpy(tensor) -> Optional[np.ndarray]:
    return None if tensor is None else tensor.detach().cpu().numpy()


def unpack(name: str, packed, lengths, batch_first: bool):
    """``packed`` -> ``(padded x, lengths (B,) int64, Packing)``; padded in the layout
    the layer reads (``(B, T, F)`` with ``batch_first``, else ``(T, B, F)``)."""
    if lengths is not None:
        raise ValueError(f"lengths must be None when {name} is a PackedSequence: the "
                         "packing already gives each sequence's length")
    batch_sizes = np.asarray(_numpy(packed.batch_sizes), dtype=np.int64)   # (T,)
    data = _numpy(packed.data)                                             # (N, F)
    if data.ndim != 2 or batch_sizes.ndim != 1 or batch_sizes.size == 0:
        raise ValueError(f"{name} is a malformed PackedSequence: data {data.shape}, "
                         f"batch_sizes {batch_sizes.shape}")
    T, B = batch_sizes.size, int(batch_sizes[0])
    valid = np.arange(B)[None, :] < batch_sizes[:, None]                   # (T, B)
    if int(valid.sum()) != data.shape[0]:
        raise ValueError(f"{name} is a malformed PackedSequence: batch_sizes sum to "
                         f"{int(valid.sum())}, data has {data.shape[0]} rows")
    sorted_indices = _numpy(packed.sorted_indices)
    unsorted_indices = _numpy(packed.unsorted_indices)
    padded = np.zeros((T, B, data.shape[1]), data.dtype)
    padded[valid] = data
    lengths = valid.sum(axis=0).astype(np.int64)                           # (B,) sorted
    if unsorted_indices is not None:
        padded, lengths = padded[:, unsorted_indices], lengths[unsorted_indices]
    packing = Packing(valid, sorted_indices,
                      (packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices),
                      type(packed))
    if batch_first:
        padded = padded.transpose(1, 0, 2)
    return np.ascontiguousarray(padded), lengths, packing


def pack(padded: np.ndarray, packing: Packing, batch_first: bool):
    """A padded output (in the layer's layout, original batch order) as a PackedSequence
    laid out like the input."""
    import torch
    time_major = padded.transpose(1, 0, 2) if batch_first else padded      # (T, B, F)
    if packing.sorted_indices is not None:
        time_major = time_major[:, packing.sorted_indices]
    data = np.ascontiguousarray(time_major[packing.valid])                 # (N, F)
    return packing.sequence_type(torch.from_numpy(data), *packing.torch_fields)


def unpack_like(name: str, value, packing: Packing, batch_first: bool):
    """A gradient given as a PackedSequence (the layout of the output) -> padded array;
    anything else is returned unchanged (a padded array in the layer's layout)."""
    if not is_packed(value):
        return value
    padded, _, other = unpack(name, value, None, batch_first)
    if other.valid.shape != packing.valid.shape or not np.array_equal(
            _numpy(other.torch_fields[0]), _numpy(packing.torch_fields[0])):
        raise ValueError(f"{name} must be packed like the forward's output (same "
                         "batch_sizes)")
    return padded
