"""Scoring one partition on one process: length buckets through the encoder, the head in
input-order blocks. What every Dask task of :func:`fastrnn.distributed.predict` runs.

Why two orders: the recurrent kernels give a row the same bits whatever other rows share
its batch, as long as the batch has the same number of rows (they choose their path by
batch size: e.g. the input projection moves into the time loop from 16 rows). So the
encoder runs on batches of exactly the sizes ``model.predict`` uses -- full batches of
``batch_size`` rows, then the remainder -- but with the rows of the full batches sorted by
length (little padding). The head is one BLAS GEMM whose per-row bits depend on the
block's row count, so it runs on the same ``batch_size`` blocks in input order as
``model.predict`` does. Together the results are bit for bit those of
``model.predict(x, lengths, batch_size)`` when the partition starts at a multiple of
``batch_size``.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from ..losses import log_softmax

METHODS = ("predict", "predict_proba", "outputs")
_cache = threading.local()     # per worker thread: checksum -> Model (modules keep tapes)
_CACHE_SIZE = 4


def model_from_bytes(blob: bytes):
    """The model of checkpoint bytes, loaded once per worker thread and kept (keyed by the
    checkpoint's own sha256 trailer)."""
    from ..models import Model
    models = getattr(_cache, "models", None)
    if models is None:
        models = _cache.models = OrderedDict()
    key = bytes(blob[-32:])
    model = models.get(key)
    if model is None:
        model = Model.from_bytes(blob, "<the model shipped to this worker>")
        models[key] = model
        while len(models) > _CACHE_SIZE:
            models.popitem(last=False)
    models.move_to_end(key)
    return model


def check_model(model, method: str) -> None:
    """A model this module scores (many-to-one or per-step sequence models) and a method."""
    from ..models.sequence import _SequenceModel
    if not isinstance(model, _SequenceModel):
        raise TypeError(f"model must be a SequenceClassifier or SequenceRegressor, got "
                        f"{type(model).__name__}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if method == "predict_proba" and not hasattr(model, "predict_proba"):
        raise ValueError(f"method 'predict_proba' needs a classifier, got "
                         f"{type(model).__name__}")


def bucket_order(lengths, batch_size: int) -> np.ndarray:
    """Row order whose consecutive ``batch_size`` slices are the encoder batches: the rows
    of the full batches sorted by length, then the remainder rows (sorted among
    themselves), so every batch keeps the size ``model.predict`` gives it."""
    n = len(lengths)
    full = n - n % batch_size
    head = np.argsort(lengths[:full], kind="stable")
    tail = full + np.argsort(lengths[full:], kind="stable")
    return np.concatenate([head, tail])


def _features(model, x, lengths, batch_size: int, bucket: bool) -> np.ndarray:
    """Pooled encoder features ``(n, D)`` in input order; encoder batches of the sizes of
    ``model.predict``'s, of rows sorted by length when ``bucket`` (each trimmed to its
    longest)."""
    n = x.shape[0]
    order = np.arange(n) if lengths is None or not bucket else bucket_order(lengths,
                                                                            batch_size)
    feats = None
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        xb, lb = model._batch(x, lengths, idx)                 # (T_b, B[, F])
        y, state = model.encoder(xb, None, lb)
        pooled = model._pool(y, state, lb)                     # (B, D)
        if feats is None:
            feats = np.empty((n,) + pooled.shape[1:], pooled.dtype)
        feats[idx] = pooled
    return feats


def _per_step_outputs(model, x, lengths, batch_size: int) -> np.ndarray:
    """Many-to-many models: ``model._outputs`` itself (its head runs over every step of a
    padded batch, so reordering rows would change its GEMM shapes)."""
    return model._outputs(x, lengths, batch_size)[0]


def score(model, x, lengths=None, method: str = "predict", batch_size: int = 256,
          bucket: bool = True) -> np.ndarray:
    """``method`` of ``model`` on one partition: ``x`` a padded ``(n, T[, F])`` array (with
    ``lengths (n,)`` or None) or a list of ``(T_i[, F])`` sequences.

    Returns what ``model.predict`` / ``predict_proba`` return (``"outputs"``: the raw head
    outputs), bit for bit, rows in input order.
    """
    from ..models._base import positive_int
    check_model(model, method)
    batch_size = positive_int("batch_size", batch_size)
    x, lengths = model._inputs(x, lengths)
    with model.inference():
        if model.pooling == "none":
            outs = _per_step_outputs(model, x, lengths, batch_size)
        else:
            feats = _features(model, x, lengths, batch_size, bucket)
            outs = np.concatenate([model.head(model.dropout(feats[s:s + batch_size]))
                                   for s in range(0, x.shape[0], batch_size)])
    if method == "predict_proba":
        return np.exp(log_softmax(outs))
    if method == "predict" and hasattr(model, "predict_proba"):   # a classifier: labels
        return outs.argmax(axis=-1)
    return outs
