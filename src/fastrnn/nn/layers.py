"""Feed-forward building blocks: :class:`Linear`, :class:`Embedding`, :class:`Dropout`.

Each layer follows the :class:`~fastrnn.nn.module.Module` contract: ``forward`` runs the
layer and, with grad enabled (outside ``fastrnn.no_grad()``), caches what ``backward``
needs; ``backward(dy)`` returns
the gradient with respect to the input and *accumulates* parameter gradients into
``Parameter.grad`` (call ``zero_grad()`` between steps). Weights use PyTorch names, shapes
and initialisations, so ``load_state_dict(torch_module.state_dict())`` works both ways.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .._common import _SUPPORTED_DTYPES, check_device, check_positive_int, normalize_dtype
from ..grad_mode import is_grad_enabled
from ..ops import gemm
from .module import Module, Parameter


def _as_input(name: str, x, dtype: np.dtype, last_dim: int) -> np.ndarray:
    """``x`` as an array of ``dtype`` with at least one dim and last dim ``last_dim``."""
    if hasattr(x, "detach") and hasattr(x, "numpy"):  # a torch tensor
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype != dtype:
        hint = (f"; convert the layer with .to(np.{x.dtype})"
                if x.dtype in _SUPPORTED_DTYPES else "")
        raise ValueError(f"{name} must have dtype {dtype} (the layer's dtype), got {x.dtype}; "
                         f"convert it with .astype(np.{dtype}){hint}")
    if x.ndim < 1 or x.shape[-1] != last_dim:
        raise ValueError(f"{name} must have shape (..., {last_dim}), got {x.shape}")
    return x


def _need_cache(layer: Module, cache) -> None:
    if cache is None:
        raise RuntimeError(f"{type(layer).__name__}.backward needs a forward pass with grad "
                           "enabled first (a forward inside fastrnn.no_grad() caches nothing)")


class Linear(Module):
    """Affine map ``y = x Wᵀ + b`` over the last axis.

    Shapes: ``x (..., in_features) -> y (..., out_features)``; ``weight (out, in)``,
    ``bias (out,)``. Init as PyTorch: ``W, b ~ U(-k, k)`` with ``k = 1/sqrt(in_features)``.

    Backward, with ``dy (..., out)`` flattened to rows ``(N, out)`` and ``x`` to ``(N, in)``:
    ``dW += dyᵀ x``, ``db += Σ_rows dy``, and returns ``dx = dy W`` of shape ``(..., in)``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 dtype=np.float32, seed: Optional[int] = None, device=None):
        super().__init__()
        check_device(device)
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        dtype = normalize_dtype(dtype)
        rng = np.random.default_rng(seed)
        k = 1.0 / math.sqrt(self.in_features)
        self.weight = Parameter(rng.uniform(-k, k, (self.out_features, self.in_features))
                                .astype(dtype))
        self.bias = (Parameter(rng.uniform(-k, k, self.out_features).astype(dtype))
                     if bias else None)
        self._x = None

    def _drop_tape(self) -> None:
        self._x = None

    def forward(self, x) -> np.ndarray:
        x = _as_input("x", x, self.weight.dtype, self.in_features)
        self._x = x if is_grad_enabled() else None
        y = gemm(x.reshape(-1, self.in_features), self.weight.value, trans_b=True)  # (N, out)
        if self.bias is not None:
            y += self.bias.value
        return y.reshape(x.shape[:-1] + (self.out_features,))

    def backward(self, dy) -> np.ndarray:
        _need_cache(self, self._x)
        dy = _as_input("dy", dy, self.weight.dtype, self.out_features)
        if dy.shape[:-1] != self._x.shape[:-1]:
            raise ValueError(f"dy must have shape {self._x.shape[:-1] + (self.out_features,)}, "
                             f"got {dy.shape}")
        dy2 = dy.reshape(-1, self.out_features)                 # (N, out)
        gemm(dy2, self._x.reshape(-1, self.in_features), trans_a=True, out=self.weight.grad,
             accumulate=True)                                   # dW += dyᵀ x
        if self.bias is not None:
            self.bias.grad += dy2.sum(axis=0)
        return gemm(dy2, self.weight.value).reshape(self._x.shape)   # dx = dy W, (..., in)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, dtype={self.weight.dtype}")


def _scatter_rows(rows: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """``out (n, D)`` with ``out[r] = Σ values[i] over i where rows[i] == r``;
    ``rows (N,)`` ints in [0, n), ``values (N, D)``."""
    import scipy.sparse
    N = rows.shape[0]
    ones = np.ones(N, values.dtype)
    onehot = scipy.sparse.csr_matrix((ones, (rows, np.arange(N))), shape=(n, N))
    return np.asarray(onehot @ values)


class Embedding(Module):
    """Lookup table: ``y[...] = weight[indices[...]]``.

    Shapes: ``indices (...)`` integers in ``[0, num_embeddings)`` -> ``y (..., D)``;
    ``weight (num_embeddings, D)``, initialised ``N(0, 1)`` like PyTorch, with the
    ``padding_idx`` row zeroed. Backward adds ``dy`` into ``weight.grad`` row by index
    (repeated indices add up) as one sparse product ``S dy`` with ``S (num_embeddings, N)``
    the one-hot matrix of the N indices (scipy.sparse: ~15x ``np.add.at``); the
    ``padding_idx`` row gets no gradient.
    ``backward`` returns None: integer indices have no gradient.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int,
                 padding_idx: Optional[int] = None, *, dtype=np.float32,
                 seed: Optional[int] = None, device=None):
        super().__init__()
        check_device(device)
        self.num_embeddings = check_positive_int("num_embeddings", num_embeddings)
        self.embedding_dim = check_positive_int("embedding_dim", embedding_dim)
        self.padding_idx = self._check_padding_idx(padding_idx)
        rng = np.random.default_rng(seed)
        weight = rng.standard_normal((self.num_embeddings, self.embedding_dim))
        if self.padding_idx is not None:
            weight[self.padding_idx] = 0
        self.weight = Parameter(weight.astype(normalize_dtype(dtype)))
        self._indices = None

    def _drop_tape(self) -> None:
        self._indices = None

    def _check_padding_idx(self, padding_idx) -> Optional[int]:
        if padding_idx is None:
            return None
        n = self.num_embeddings
        if not isinstance(padding_idx, (int, np.integer)) or not -n <= padding_idx < n:
            raise ValueError(f"padding_idx must be an int in [-{n}, {n}), got {padding_idx!r}")
        return int(padding_idx) % n   # negative counts from the end, as in PyTorch

    def _check_indices(self, indices) -> np.ndarray:
        if hasattr(indices, "detach") and hasattr(indices, "numpy"):
            indices = indices.detach().cpu().numpy()
        indices = np.asarray(indices)
        if indices.dtype.kind not in "iu":
            raise TypeError(f"indices must be an integer array, got dtype {indices.dtype}")
        if indices.size and (indices.min() < 0 or indices.max() >= self.num_embeddings):
            bad = indices[(indices < 0) | (indices >= self.num_embeddings)].flat[0]
            raise IndexError(f"indices must lie in [0, {self.num_embeddings}) "
                             f"(num_embeddings), got {bad}")
        return indices

    def forward(self, indices) -> np.ndarray:
        indices = self._check_indices(indices)
        self._indices = indices if is_grad_enabled() else None
        return self.weight.value[indices]

    def backward(self, dy) -> None:
        _need_cache(self, self._indices)
        dy = _as_input("dy", dy, self.weight.dtype, self.embedding_dim)
        if dy.shape[:-1] != self._indices.shape:
            raise ValueError(f"dy must have shape {self._indices.shape + (self.embedding_dim,)}, "
                             f"got {dy.shape}")
        rows = self._indices.reshape(-1)
        dy2 = dy.reshape(-1, self.embedding_dim)
        if self.padding_idx is not None:
            keep = rows != self.padding_idx
            rows, dy2 = rows[keep], dy2[keep]
        self.weight.grad += _scatter_rows(rows, dy2, self.num_embeddings)
        return None

    def extra_repr(self) -> str:
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}, dtype={self.weight.dtype}"


class Dropout(Module):
    """Inverted dropout: in training mode ``y = x * m / (1 - p)`` with ``m ~ Bernoulli(1 - p)``.

    In eval mode (or with ``p = 0``) it is the identity. ``p = 1`` zeroes everything, as in
    PyTorch. Backward reuses the forward's mask: ``dx = dy * m / (1 - p)``. The mask comes
    from the layer's own generator, seeded by ``seed``, so runs are reproducible.
    """

    def __init__(self, p: float = 0.5, *, seed: Optional[int] = None):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)
        self._rng = np.random.default_rng(seed)
        self._scale = None   # (...) the mask times 1/(1-p), in x's dtype; None: identity

    def forward(self, x) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype.kind != "f":
            raise TypeError(f"x must be a floating-point array, got dtype {x.dtype}")
        if not self.training or self.p == 0.0:
            self._scale = None
            return x
        keep = self._rng.random(x.shape) >= self.p
        factor = 0.0 if self.p == 1.0 else 1.0 / (1.0 - self.p)
        self._scale = (keep * factor).astype(x.dtype)
        return x * self._scale

    def backward(self, dy) -> np.ndarray:
        dy = np.asarray(dy)
        if self._scale is None:
            return dy
        if dy.shape != self._scale.shape:
            raise ValueError(f"dy must have the forward input's shape {self._scale.shape}, "
                             f"got {dy.shape}")
        return dy * self._scale

    def extra_repr(self) -> str:
        return f"p={self.p}"
