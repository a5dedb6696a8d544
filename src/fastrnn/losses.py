"""Losses with their gradients: softmax cross-entropy and mean-squared error.

The functional forms return ``(loss, grad)`` in one call; the classes keep PyTorch's
habit, ``loss = crit(pred, target)`` then ``grad = crit.backward()``. Classes sit on the
last axis (``logits (..., C)``), unlike PyTorch's ``(N, C, d1, ...)``, because sequence
models produce ``(T, B, C)`` or ``(B, T, C)``.

Masks weigh elements for padded sequences: ``mask (...)`` of bools or non-negative floats,
``w_i = mask_i``, and ``reduction="mean"`` divides by ``Σ w_i`` (the number of real
tokens for a bool mask), ``"sum"`` by 1. Without a mask every ``w_i`` is 1.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

_REDUCTIONS = ("mean", "sum")


def _check_reduction(reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


def _as_array(x) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "numpy"):  # a torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _as_float(name: str, x) -> np.ndarray:
    x = _as_array(x)
    if x.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {x.dtype}")
    return x


def _mask_weights(mask, shape: tuple, dtype: np.dtype) -> Optional[np.ndarray]:
    """``mask`` as non-negative weights of ``dtype``, broadcast over trailing dims to ``shape``.

    ``mask.shape`` must be a prefix of ``shape`` (e.g. ``(T, B)`` for ``(T, B, F)``).
    """
    if mask is None:
        return None
    mask = _as_array(mask)
    if mask.dtype.kind not in "biuf":
        raise TypeError(f"mask must hold bools or numbers, got dtype {mask.dtype}")
    if mask.shape != shape[:mask.ndim]:
        raise ValueError(f"mask must have shape {shape} (or a leading part of it), "
                         f"got {mask.shape}")
    if mask.dtype.kind != "b" and np.any(mask < 0):
        raise ValueError("mask weights must be >= 0")
    weights = mask.astype(dtype).reshape(mask.shape + (1,) * (len(shape) - mask.ndim))
    return np.broadcast_to(weights, shape)


def _reduce(weighted_sum, total_weight, reduction: str):
    """``(loss, scale)``: the loss and the factor ``1/W`` (mean) or 1 (sum) for its gradient.

    A mean over no elements is NaN, as in PyTorch, and its gradient is zero.
    """
    if reduction == "sum":
        return float(weighted_sum), 1.0
    if total_weight == 0:
        return float("nan"), 0.0
    return float(weighted_sum / total_weight), 1.0 / float(total_weight)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Stable ``log softmax`` over the last axis: ``z - max z - log Σ exp(z - max z)``."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _check_targets(targets, batch_shape: tuple, num_classes: int, ignore_index: int):
    targets = _as_array(targets)
    if targets.dtype.kind not in "iu":
        raise TypeError(f"targets must be an integer array, got dtype {targets.dtype}")
    if targets.shape != batch_shape:
        raise ValueError(f"targets must have shape {batch_shape} (logits' shape without "
                         f"the class axis), got {targets.shape}")
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= num_classes))
    if bad.any():
        raise IndexError(f"targets must lie in [0, {num_classes}) or equal ignore_index "
                         f"({ignore_index}), got {targets[bad].flat[0]}")
    return targets


def cross_entropy(logits, targets, mask=None, *, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float = 0.0
                  ) -> Tuple[float, np.ndarray]:
    """Softmax cross-entropy over the last axis, and its gradient.

    Shapes: ``logits (..., C)`` float, ``targets (...)`` int in ``[0, C)`` or
    ``ignore_index``, ``mask (...)`` optional weights. With ``p = log_softmax(logits)``,
    ``ε = label_smoothing`` and ``w_i = mask_i · [t_i != ignore_index]``::

        l_i   = -(1 - ε) p_i[t_i] - (ε / C) Σ_c p_i[c]
        loss  = Σ_i w_i l_i / W                 W = Σ_i w_i (mean) or 1 (sum)
        dz_i  = (w_i / W) (softmax(z_i) - (1 - ε) onehot(t_i) - ε / C)

    This is ``torch.nn.functional.cross_entropy`` with the class axis last.
    Returns ``(loss: float, dlogits (..., C))``.
    """
    _check_reduction(reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1], got {label_smoothing!r}")
    logits = _as_float("logits", logits)
    if logits.ndim < 1:
        raise ValueError(f"logits must have shape (..., C), got {logits.shape}")
    C = logits.shape[-1]
    targets = _check_targets(targets, logits.shape[:-1], C, ignore_index)
    weights = (targets != ignore_index).astype(logits.dtype)
    masked = _mask_weights(mask, targets.shape, logits.dtype)
    if masked is not None:
        weights = weights * masked
    z = logits.reshape(-1, C)                                        # (N, C)
    t = np.where(weights.reshape(-1) > 0, targets.reshape(-1), 0)    # (N,) safe indices
    w = weights.reshape(-1)                                          # (N,)
    # One exponential per logit: softmax and log-softmax from the same shifted exp.
    shifted = z - z.max(axis=1, keepdims=True)                       # (N, C)
    grad = np.exp(shifted)                                           # (N, C), unnormalised
    total = grad.sum(axis=1)                                         # (N,)
    log_total = np.log(total)
    rows = np.arange(z.shape[0])
    nll = log_total - shifted[rows, t]                               # -log p[t]
    if label_smoothing:
        sum_logp = shifted.sum(axis=1) - C * log_total               # Σ_c log p[c]
        nll = (1 - label_smoothing) * nll - (label_smoothing / C) * sum_logp
    loss, scale = _reduce(np.dot(w, nll), w.sum(), reduction)
    grad /= total[:, None]                                           # softmax
    grad[rows, t] -= 1 - label_smoothing
    if label_smoothing:
        grad -= label_smoothing / C
    grad *= (w * scale)[:, None].astype(logits.dtype)
    return loss, grad.reshape(logits.shape)


def mse(pred, target, mask=None, *, reduction: str = "mean") -> Tuple[float, np.ndarray]:
    """Mean-squared error and its gradient.

    Shapes: ``pred (...)`` float, ``target`` the same shape (cast to ``pred``'s dtype),
    ``mask`` optional weights of ``pred``'s shape or a leading part of it (``(T, B)`` for
    ``(T, B, F)``), broadcast over the remaining axes. With ``w`` the broadcast mask::

        loss  = Σ w (pred - target)² / W        W = Σ w (mean) or 1 (sum)
        dpred = 2 w (pred - target) / W

    Without a mask this is ``torch.nn.functional.mse_loss``.
    Returns ``(loss: float, dpred)`` with ``dpred`` shaped like ``pred``.
    """
    _check_reduction(reduction)
    pred = _as_float("pred", pred)
    target = _as_array(target)
    if target.shape != pred.shape:
        raise ValueError(f"target must have pred's shape {pred.shape}, got {target.shape}")
    if target.dtype.kind not in "biuf":
        raise TypeError(f"target must be numeric, got dtype {target.dtype}")
    diff = pred - target.astype(pred.dtype, copy=False)
    weights = _mask_weights(mask, pred.shape, pred.dtype)
    if weights is None:
        loss, scale = _reduce(np.vdot(diff, diff), diff.size, reduction)
        return loss, (2 * scale) * diff
    wdiff = weights * diff
    loss, scale = _reduce(np.vdot(wdiff, diff), weights.sum(), reduction)
    return loss, ((2 * scale) * wdiff).astype(pred.dtype, copy=False)


class _Loss:
    """``loss = crit(prediction, target, mask=None)``; ``crit.backward()`` -> its gradient."""

    def __init__(self, reduction: str = "mean"):
        self.reduction = _check_reduction(reduction)
        self._grad = None

    def _compute(self, prediction, target, mask):
        raise NotImplementedError

    def __call__(self, prediction, target, mask=None) -> float:
        loss, self._grad = self._compute(prediction, target, mask)
        return loss

    forward = __call__

    def backward(self) -> np.ndarray:
        """The gradient of the last loss with respect to its prediction (same shape)."""
        if self._grad is None:
            raise RuntimeError(f"{type(self).__name__}.backward needs a loss computed first")
        return self._grad


class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy over ``logits (..., C)`` and ``targets (...)``; see
    :func:`cross_entropy` for the equations. ``backward()`` returns ``dlogits (..., C)``."""

    def __init__(self, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0):
        super().__init__(reduction)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1], got {label_smoothing!r}")
        self.ignore_index = int(ignore_index)
        self.label_smoothing = float(label_smoothing)

    def _compute(self, logits, targets, mask):
        return cross_entropy(logits, targets, mask, ignore_index=self.ignore_index,
                             reduction=self.reduction, label_smoothing=self.label_smoothing)


class MSELoss(_Loss):
    """Mean-squared error over ``pred`` and ``target`` of one shape; see :func:`mse`.
    ``backward()`` returns ``dpred``."""

    def _compute(self, pred, target, mask):
        return mse(pred, target, mask, reduction=self.reduction)
