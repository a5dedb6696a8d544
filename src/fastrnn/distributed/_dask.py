"""Batch inference on Dask: :func:`predict` over a dask array, bag or dataframe.

The model travels as its checkpoint bytes (:meth:`fastrnn.models.Model.to_bytes`, plain
data that never unpickles code) in one graph key that every task depends on, so each
worker receives it once; a worker thread loads it once and keeps it, keyed by the
checkpoint's sha256 (:func:`fastrnn.distributed._score.model_from_bytes`). Each partition
is scored by :func:`fastrnn.distributed._score.score` (length buckets through the
encoder). A worker that dies loses only tasks Dask recomputes: nothing is held outside
the graph.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from ._score import check_model, model_from_bytes, score

__all__ = ["predict"]


def _dask():
    try:
        import dask
        import dask.array
        import dask.bag
    except ImportError:
        raise ImportError("fastrnn.distributed.predict needs Dask: "
                          "pip install 'fastrnn[dask]'") from None
    return dask


def _model_bytes(model) -> bytes:
    """A Model, checkpoint bytes or a checkpoint path -> checkpoint bytes."""
    from ..models import Model
    if isinstance(model, Model):
        return model.to_bytes()
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    if isinstance(model, (str, os.PathLike)):
        with open(model, "rb") as f:
            return f.read()
    raise TypeError(f"model must be a fastrnn Model, checkpoint bytes or a checkpoint path, "
                    f"got {type(model).__name__}")


def _task_model(blob: bytes, num_threads: Optional[int]):
    """On the worker: the cached model, with ``num_threads`` threads, or the worker's own
    ``FASTRNN_NUM_THREADS`` (read here: a worker process may have imported fastrnn before
    its environment was set, e.g. LocalCluster's ``env=`` after a spawn)."""
    from .._threads import _threads_from_environment, get_num_threads, set_num_threads
    if num_threads is None and "FASTRNN_NUM_THREADS" in os.environ:
        num_threads = _threads_from_environment()
    if num_threads is not None and get_num_threads() != num_threads:
        set_num_threads(num_threads)
    return model_from_bytes(blob)


def _score_block(blob, x, lengths, num_threads, options) -> np.ndarray:
    """One chunk of a dask array: ``x (n, T[, F])``, ``lengths (n,)`` or None."""
    return score(_task_model(blob, num_threads), x, lengths, **options)


def _score_list(sequences, blob, num_threads, options) -> list:
    """One bag partition: a list of sequences -> a list of per-sequence results (per-step
    outputs trimmed to each sequence's length)."""
    sequences = list(sequences)
    if not sequences:
        return []
    if isinstance(sequences[0], str):
        raise TypeError("the sequences arrived as strings: dask.dataframe turns object "
                        "columns into strings unless dask.config.set("
                        "{'dataframe.convert-string': False}) was set before the dataframe "
                        "was made")
    out = score(_task_model(blob, num_threads), sequences, None, **options)
    if out.ndim == 3:   # per step (n, T, O)
        return [row[:len(seq)] for row, seq in zip(out, sequences)]
    return list(out)


def _score_frame(frame, blob, column, num_threads, options):
    """One dataframe partition: the sequences in ``frame[column]`` -> a Series (one value
    per row), a DataFrame (one column per output) or a Series of arrays (per step)."""
    import pandas as pd
    rows = _score_list(frame[column], blob, num_threads, options)
    return _frame_result(pd, rows, frame.index, options["method"])


def _frame_result(pd, rows, index, name):
    if rows and np.ndim(rows[0]) == 1:
        columns = [f"{name}_{k}" for k in range(len(rows[0]))]
        return pd.DataFrame(np.stack(rows), index=index, columns=columns)
    if rows and np.ndim(rows[0]) == 0:
        return pd.Series(np.stack(rows), index=index, name=name)
    return pd.Series(rows, index=index, name=name, dtype=object)


def _aligned(x, batch_size: int):
    """``x`` rechunked to whole rows (non-batch axes in one chunk) and, along the batch
    axis, chunks of a multiple of ``batch_size`` rows (the last may be shorter)."""
    chunks = x.chunks[0]
    rest = {axis: -1 for axis in range(1, x.ndim)}
    if all(c % batch_size == 0 for c in chunks[:-1]):
        return x.rechunk(rest)
    target = max(batch_size, int(round(np.median(chunks) / batch_size)) * batch_size)
    return x.rechunk({0: target, **rest})


def _predict_array(dask, shipped, x, lengths, local, num_threads, options):
    import dask.array as da
    if x.ndim not in (2, 3):
        raise ValueError(f"data must be a dask array (N, T) of token ids or (N, T, F) of "
                         f"features, got {x.ndim} dimensions")
    if any(np.isnan(c) for c in x.chunks[0]):
        raise ValueError("data has unknown chunk sizes along N; call "
                         "data.compute_chunk_sizes() first")
    x = _aligned(x, options["batch_size"])
    if lengths is not None:
        lengths = da.asarray(lengths)
        if lengths.shape != (x.shape[0],):
            raise ValueError(f"lengths must have shape ({x.shape[0]},), got {lengths.shape}")
        lengths = lengths.rechunk((x.chunks[0],))
    sample = score(local, np.zeros((1,) + x.shape[1:], x.dtype), None, **options)
    blocks = x.to_delayed().reshape(-1)               # one Delayed per chunk of rows
    lblocks = [None] * len(blocks) if lengths is None else lengths.to_delayed().reshape(-1)
    task = dask.delayed(_score_block, pure=True)
    parts = [da.from_delayed(task(shipped, b, lb, num_threads, options),
                             shape=(n,) + sample.shape[1:], dtype=sample.dtype)
             for b, lb, n in zip(blocks, lblocks, x.chunks[0])]
    return da.concatenate(parts, axis=0)


def _predict_frame(shipped, frame, column, local, num_threads, options):
    import pandas as pd
    if column is None:
        raise ValueError("give column=: the dataframe column that holds the sequences")
    if column not in frame.columns:
        raise ValueError(f"column {column!r} is not in the dataframe (columns "
                         f"{list(frame.columns)})")
    first = local._inputs([np.zeros((1,) + _feature_shape(local), _input_dtype(local))],
                          None)[0]
    rows = list(score(local, first, None, **options))
    meta = _frame_result(pd, rows, pd.RangeIndex(1), options["method"]).iloc[:0]
    return frame.map_partitions(_score_frame, shipped, column, num_threads, options,
                                meta=meta)


def _feature_shape(model) -> tuple:
    return () if model.tokens else (model.encoder.rnn.input_size,)


def _input_dtype(model):
    return np.int64 if model.tokens else model.dtype


def predict(model, data, lengths=None, *, method: str = "predict", batch_size: int = 256,
            bucket: bool = True, column: Optional[str] = None,
            num_threads: Optional[int] = None):
    """Score a Dask collection of sequences with a SequenceClassifier / SequenceRegressor.

    ``model``: a model, its checkpoint bytes or a checkpoint path; it reaches each worker
    once as checkpoint bytes. ``data``:

    * a dask array ``(N, T, F)`` of features or ``(N, T)`` of token ids, chunked along N
      (with ``lengths``: an array ``(N,)``, NumPy or Dask); chunks are realigned to a
      multiple of ``batch_size`` rows. Returns a dask array ``(N, ...)``.
    * a dask bag of sequences (``(T_i, F)`` arrays or id lists). Returns a bag of
      per-sequence results, in order.
    * a dask dataframe whose ``column`` holds sequences. Returns a dask Series (one value
      per row), DataFrame (``{method}_{k}`` columns) or Series of arrays (per step), on the
      same index.

    ``method``: ``"predict"``, ``"predict_proba"`` (classifiers) or ``"outputs"`` (raw head
    outputs). In each partition the encoder runs on ``batch_size`` rows at a time, sorted
    by length when ``bucket`` (less padding); the head runs on input-order blocks, so the
    results equal ``model.predict(x, lengths, batch_size)`` bit for bit whenever each
    partition starts at a multiple of ``batch_size`` rows (always for arrays).
    ``num_threads``: ``fastrnn.set_num_threads`` on each worker (default: the worker's
    ``FASTRNN_NUM_THREADS``). Nothing runs until the result is computed.
    """
    from ..models import Model
    from ..models._base import positive_int
    dask = _dask()
    blob = _model_bytes(model)
    local = Model.from_bytes(blob)
    check_model(local, method)
    if num_threads is not None:
        num_threads = positive_int("num_threads", num_threads)
    options = {"method": method, "batch_size": positive_int("batch_size", batch_size),
               "bucket": bool(bucket)}
    shipped = dask.delayed(blob, pure=True)        # one key: each worker fetches it once
    import dask.array as da
    import dask.bag as db
    if isinstance(data, da.Array):
        return _predict_array(dask, shipped, data, lengths, local, num_threads, options)
    if lengths is not None:
        raise ValueError("lengths goes with a dask array; bags and dataframes hold "
                         "sequences of their own lengths")
    if isinstance(data, db.Bag):
        return data.map_partitions(_score_list, shipped, num_threads, options)
    if type(data).__module__.startswith("dask.dataframe") or \
            type(data).__module__.startswith("dask_expr"):
        return _predict_frame(shipped, data, column, local, num_threads, options)
    raise TypeError(f"data must be a dask array, bag or dataframe, got "
                    f"{type(data).__module__}.{type(data).__name__}")
