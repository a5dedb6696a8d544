"""Many-to-one and many-to-many models: :class:`SequenceClassifier`, :class:`SequenceRegressor`.

Both are an :class:`~fastrnn.models._parts.Encoder` (token embedding or float features,
then RNN/LSTM/GRU), a pooling step, Dropout and a Linear head. They differ only in the
head's size, the loss and the metrics. Inputs are batch-first::

    x        (N, T, F) float features, or (N, T) token ids (models built with vocab_size);
             or a list of N arrays of varying length (padded here, lengths inferred)
    lengths  (N,) ints in [1, T], or None (every sequence has T steps)

Pooling: ``"last"`` the top layer's final state at each sequence's last valid step (both
directions concatenated when bidirectional), ``"mean"`` the mean of the outputs over the
valid steps, ``"none"`` every step's output (many-to-many).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .._common import normalize_dtype
from ..data import minibatches
from ..grad_mode import is_grad_enabled
from ..losses import cross_entropy, log_softmax, mse
from ..nn.layers import Dropout, Linear
from ._base import History, Model, child_seeds, choice, positive_int, resolve_distributed
from ._training import fingerprint
from ._parts import Encoder, pack_state, state_parts

__all__ = ["SequenceClassifier", "SequenceRegressor"]

POOLINGS = ("last", "mean", "none")


def _pad_list(sequences, dtype) -> tuple:
    """A list of ``(T_i, ...)`` arrays -> ``(padded (N, T, ...), lengths (N,))``."""
    arrays = [np.asarray(s, dtype=dtype) for s in sequences]
    if not arrays:
        raise ValueError("x holds no sequences")
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    if lengths.min() < 1:
        raise ValueError(f"sequence {int(np.argmin(lengths))} of x is empty")
    trailing = {a.shape[1:] for a in arrays}
    if len(trailing) != 1:
        raise ValueError(f"the sequences of x have different feature shapes {sorted(trailing)}")
    out = np.zeros((len(arrays), lengths.max()) + trailing.pop(), dtype=dtype)
    for row, a in zip(out, arrays):
        row[:len(a)] = a
    return out, lengths


def _valid_mask(lengths, T: int, B: int) -> Optional[np.ndarray]:
    """``(T, B)`` bool, True at valid steps (None when every row has T steps)."""
    if lengths is None:
        return None
    return np.arange(T)[:, None] < lengths[None, :]


class _SequenceModel(Model):
    """Encoder, pooling, Dropout, Linear; the batching, fit, evaluate and predict plumbing.

    A subclass gives the head size to :meth:`_build` and implements :meth:`_loss`,
    :meth:`_targets` and :meth:`_metrics`.
    """

    def _build(self, out_features, *, input_size, vocab_size, embed, hidden, layers, cell,
               dropout, bidirectional, pooling, dtype, seed):
        seeds = child_seeds(seed, 4)
        self.pooling = choice("pooling", pooling, POOLINGS)
        self.encoder = Encoder(input_size=input_size, vocab_size=vocab_size, embed=embed,
                               hidden=hidden, layers=layers, cell=cell, dropout=dropout,
                               bidirectional=bidirectional, dtype=dtype, seeds=seeds[:2])
        self.dropout = Dropout(dropout, seed=seeds[2])
        self.head = Linear(self.encoder.output_size, positive_int("output size", out_features),
                           dtype=dtype, seed=seeds[3])
        self._tape = None

    @property
    def tokens(self) -> bool:
        return self.encoder.embedding is not None

    # -- inputs -----------------------------------------------------------------------------
    def _inputs(self, x, lengths):
        """``x`` and ``lengths`` checked: ``(x (N, T[, F]), lengths (N,) or None)``."""
        if isinstance(x, (list, tuple)):
            if lengths is not None:
                raise ValueError("give lengths only with a padded array x, not with a list")
            x, lengths = _pad_list(x, np.int64 if self.tokens else self.dtype)
        x = np.asarray(x)
        if self.tokens:
            if x.dtype.kind not in "iu" or x.ndim != 2:
                raise TypeError(f"this model reads token ids: x must be an integer array "
                                f"(N, T), got {x.dtype} {x.shape}")
        else:
            features = self.encoder.rnn.input_size
            if x.dtype.kind not in "biuf" or x.ndim != 3 or x.shape[2] != features:
                raise ValueError(f"x must be a float array (N, T, {features}), got "
                                 f"{x.dtype} {x.shape}")
            x = x.astype(self.dtype, copy=False)
        if lengths is not None:
            lengths = np.asarray(lengths)
            if lengths.dtype.kind not in "iu" or lengths.shape != (x.shape[0],):
                raise ValueError(f"lengths must be ints of shape ({x.shape[0]},), got "
                                 f"{lengths.dtype} {lengths.shape}")
            if lengths.min() < 1 or lengths.max() > x.shape[1]:
                raise ValueError(f"lengths must lie in [1, T={x.shape[1]}], got values in "
                                 f"[{lengths.min()}, {lengths.max()}]")
            lengths = lengths.astype(np.int64)
        return x, lengths

    @staticmethod
    def _batch(x, lengths, idx):
        """Rows ``idx`` as time-major ``(T_b, B[, F])`` trimmed to their longest length."""
        lb = None if lengths is None else lengths[idx]
        T = x.shape[1] if lb is None else int(lb.max())
        xb = x[idx, :T]
        return np.ascontiguousarray(np.swapaxes(xb, 0, 1)), lb

    # -- the network (time-major inside) ------------------------------------------------------
    def _pool(self, y, state, lengths):
        if self.pooling == "none":
            return y                                               # (T, B, D*H)
        if self.pooling == "mean":
            n = np.full(y.shape[1], y.shape[0]) if lengths is None else lengths
            return y.sum(axis=0) / n[:, None].astype(y.dtype)      # (B, D*H)
        D = self.encoder.rnn.num_directions
        return np.concatenate(list(state_parts(state)[0][-D:]), axis=-1)   # (B, D*H)

    def _pool_backward(self, dfeat, T, lengths):
        """Gradient of the pooled features -> ``(dy, dstate)`` for the encoder."""
        if self.pooling == "none":
            return dfeat, None
        B = dfeat.shape[0]
        if self.pooling == "mean":
            n = np.full(B, T) if lengths is None else lengths
            dy = np.broadcast_to(dfeat / n[:, None].astype(dfeat.dtype), (T,) + dfeat.shape)
            mask = _valid_mask(lengths, T, B)
            return (dy if mask is None else dy * mask[:, :, None]), None
        rnn = self.encoder.rnn
        D, H = rnn.num_directions, rnn.hidden_size
        dh = np.zeros((rnn.num_layers * D, B, H), self.dtype)
        dh[-D:] = dfeat.reshape(B, D, H).transpose(1, 0, 2)
        return None, pack_state((dh, None), self.encoder.cell)

    def _forward_tm(self, x, lengths):
        """Time-major ``x`` -> head output ``(B, O)``, or ``(T, B, O)`` with pooling 'none'
        (zero past each length)."""
        y, state = self.encoder(x, None, lengths)
        out = self.head(self.dropout(self._pool(y, state, lengths)))
        return self._mask_steps(out, lengths)

    def _mask_steps(self, out, lengths):
        """Zero per-step outputs (or their gradients) past each length."""
        if self.pooling != "none" or lengths is None:
            return out
        return out * _valid_mask(lengths, *out.shape[:2])[:, :, None]

    def _backward_tm(self, dout, T, lengths):
        dout = self._mask_steps(dout, lengths)
        dfeat = self.dropout.backward(self.head.backward(dout))
        dy, dstate = self._pool_backward(dfeat, T, lengths)
        self.encoder.backward(dy, dstate)

    def forward(self, x, lengths=None):
        """``x (B, T[, F])`` -> outputs ``(B, O)`` (``(B, T, O)`` with pooling 'none')."""
        x, lengths = self._inputs(x, lengths)
        self._tape = (x.shape[1], lengths) if is_grad_enabled() else None
        out = self._forward_tm(np.ascontiguousarray(np.swapaxes(x, 0, 1)), lengths)
        return np.swapaxes(out, 0, 1) if out.ndim == 3 else out

    def backward(self, dout):
        """Gradient of the last training forward's outputs; parameter grads accumulate."""
        if self._tape is None:
            raise RuntimeError("backward needs a forward with grad enabled first (not inside "
                               "fastrnn.no_grad() or the model's inference())")
        dout = np.asarray(dout, dtype=self.dtype)
        dout = np.ascontiguousarray(np.swapaxes(dout, 0, 1)) if dout.ndim == 3 else dout
        self._backward_tm(dout, *self._tape)
        self._tape = None

    # -- the subclass's part --------------------------------------------------------------
    def _targets(self, y, x) -> np.ndarray:
        """``y`` checked against ``x (N, T, ...)``; per-step targets batch-first."""
        raise NotImplementedError

    def _loss(self, out, target, mask):
        """``(loss, dout)`` for head output ``out`` (time-major when per step)."""
        raise NotImplementedError

    def _metrics(self, outs, targets, mask) -> dict:
        raise NotImplementedError

    def _batch_targets(self, y, idx, T):
        yb = y[idx]
        return np.ascontiguousarray(np.swapaxes(yb[:, :T], 0, 1)) if self.pooling == "none" \
            else yb

    # -- training, evaluation, prediction ----------------------------------------------------
    def _forward_backward(self, batch):
        x, lengths, target = batch
        out = self._forward_tm(x, lengths)
        mask = _valid_mask(lengths, *x.shape[:2]) if self.pooling == "none" else None
        loss, dout = self._loss(out, target, mask)
        self._backward_tm(dout, x.shape[0], lengths)
        return loss, x.shape[1]

    def _batch_rows(self, batch) -> int:
        return batch[0].shape[1]

    def _shard_batch(self, batch, rows: slice):
        """Rows of a time-major batch, trimmed to their own longest length."""
        x, lengths, target = batch
        lb = None if lengths is None else lengths[rows]
        T = x.shape[0] if lb is None else int(lb.max())
        per_step = self.pooling == "none"
        return (np.ascontiguousarray(x[:T, rows]), lb,
                np.ascontiguousarray(target[:T, rows] if per_step else target[rows]))

    def _loss_weight(self, batch, units: int) -> int:
        """Rows (pooled), or valid steps (per step: the mask's weight)."""
        x, lengths, _ = batch
        if self.pooling != "none":
            return units
        return x.shape[0] * x.shape[1] if lengths is None else int(lengths.sum())

    def _batches(self, x, y, lengths, batch_size, rng):
        for idx in minibatches(x.shape[0], batch_size, rng):
            xb, lb = self._batch(x, lengths, idx)
            yield xb, lb, self._batch_targets(y, idx, xb.shape[0])

    def fit(self, x, y, lengths=None, epochs: Optional[int] = 10, batch_size: int = 32,
            lr: float = 1e-2, optimizer=None, clip: Optional[float] = 5.0,
            validation_data=None, shuffle: bool = True, seed: Optional[int] = None,
            time_budget: Optional[float] = None, verbose: bool = True,
            distributed=False, **options) -> History:
        """Minibatch training. ``validation_data``: ``(x, y)`` or ``(x, y, lengths)``, whose
        metrics are added per epoch as ``val_*``. Other options as in
        :meth:`LanguageModel.fit`; ``seed`` fixes the shuffling (with ``distributed``, every
        rank shuffles alike and trains on its share of each batch of ``batch_size``)."""
        x, lengths = self._inputs(x, lengths)
        y = self._targets(y, x)
        batch_size = positive_int("batch_size", batch_size)
        parallel = resolve_distributed(distributed)
        if parallel is not None and shuffle:
            seed = parallel.shared_seed(seed)
        rng = np.random.default_rng(seed) if shuffle else None
        count = math.ceil(x.shape[0] / batch_size)
        validate = None
        if validation_data is not None:
            validate = lambda: self.evaluate(*validation_data)  # noqa: E731
        return self._fit(lambda epoch: (self._batches(x, y, lengths, batch_size, rng), count),
                         epochs=epochs, lr=lr, optimizer=optimizer, clip=clip,
                         time_budget=time_budget, verbose=verbose, validate=validate,
                         distributed=parallel, data_rng=rng,
                         data_key=fingerprint(x, y, lengths, batch_size, shuffle), **options)

    def _outputs(self, x, lengths, batch_size):
        """Eval-mode head outputs for all rows, batch-first, and the (N, T) valid mask."""
        x, lengths = self._inputs(x, lengths)
        outs = []
        with self.inference():
            for idx in minibatches(x.shape[0], positive_int("batch_size", batch_size)):
                xb, lb = self._batch(x, lengths, idx)
                out = self._forward_tm(xb, lb)
                if out.ndim == 3:   # per step: pad back to the full T
                    out = np.pad(np.swapaxes(out, 0, 1),
                                 ((0, 0), (0, x.shape[1] - out.shape[0]), (0, 0)))
                outs.append(out)
        mask = None
        if self.pooling == "none":
            n = np.full(x.shape[0], x.shape[1]) if lengths is None else lengths
            mask = np.arange(x.shape[1])[None, :] < n[:, None]
        return np.concatenate(outs), x, mask

    def evaluate(self, x, y, lengths=None, batch_size: int = 256) -> dict:
        """Loss and metrics on ``(x, y)`` in eval mode (see the subclass for the keys)."""
        outs, x, mask = self._outputs(x, lengths, batch_size)
        return self._metrics(outs, self._targets(y, x), mask)


class SequenceClassifier(_SequenceModel):
    """Many-to-one classification: sequence -> one of ``num_classes`` labels.

    Give ``input_size`` for float features ``x (N, T, input_size)`` or ``vocab_size`` for
    token ids ``x (N, T)``. ``pooling``: 'last' (default) or 'mean'. Outputs are logits
    ``(N, num_classes)``; targets ``y (N,)`` ints. Loss: softmax cross-entropy.
    """

    def __init__(self, num_classes: int, input_size: Optional[int] = None,
                 vocab_size: Optional[int] = None, embed: int = 32, hidden: int = 64,
                 layers: int = 1, cell: str = "lstm", dropout: float = 0.0,
                 bidirectional: bool = False, pooling: str = "last", dtype=np.float32,
                 seed: Optional[int] = None):
        super().__init__(num_classes=num_classes, input_size=input_size,
                         vocab_size=vocab_size, embed=embed, hidden=hidden, layers=layers,
                         cell=cell, dropout=dropout, bidirectional=bidirectional,
                         pooling=pooling, dtype=normalize_dtype(dtype), seed=seed)
        choice("pooling", pooling, ("last", "mean"))
        self._build(num_classes, input_size=input_size, vocab_size=vocab_size, embed=embed,
                    hidden=hidden, layers=layers, cell=cell, dropout=dropout,
                    bidirectional=bidirectional, pooling=pooling, dtype=dtype, seed=seed)

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def _targets(self, y, x):
        y = np.asarray(y)
        if y.dtype.kind not in "iu" or y.shape != (x.shape[0],):
            raise ValueError(f"y must be integer class labels of shape ({x.shape[0]},), "
                             f"got {y.dtype} {y.shape}")
        if y.min() < 0 or y.max() >= self.num_classes:
            raise ValueError(f"y must lie in [0, {self.num_classes}), got values in "
                             f"[{y.min()}, {y.max()}]")
        return y.astype(np.int64)

    def _loss(self, out, target, mask):
        return cross_entropy(out, target)

    def _metrics(self, outs, targets, mask):
        loss, _ = cross_entropy(outs, targets)
        return {"loss": loss, "accuracy": float(np.mean(outs.argmax(-1) == targets))}

    def predict_proba(self, x, lengths=None, batch_size: int = 256) -> np.ndarray:
        """Class probabilities ``(N, num_classes)``."""
        return np.exp(log_softmax(self._outputs(x, lengths, batch_size)[0]))

    def predict(self, x, lengths=None, batch_size: int = 256) -> np.ndarray:
        """Predicted labels ``(N,)``."""
        return self._outputs(x, lengths, batch_size)[0].argmax(axis=-1)


class SequenceRegressor(_SequenceModel):
    """Regression and forecasting on float sequences ``x (N, T, input_size)``.

    Many-to-one (``many_to_many=False``): one vector per sequence, ``y (N, output_size)``
    (or ``(N,)`` when output_size is 1), pooled as ``pooling`` ('last' or 'mean').
    Many-to-many: a vector per step, ``y (N, T, output_size)`` (or ``(N, T)``), padded steps
    left out of the loss. Loss: mean-squared error.
    """

    def __init__(self, input_size: int, output_size: int = 1, many_to_many: bool = False,
                 hidden: int = 64, layers: int = 1, cell: str = "lstm", dropout: float = 0.0,
                 bidirectional: bool = False, pooling: str = "last", dtype=np.float32,
                 seed: Optional[int] = None):
        super().__init__(input_size=input_size, output_size=output_size,
                         many_to_many=bool(many_to_many), hidden=hidden, layers=layers,
                         cell=cell, dropout=dropout, bidirectional=bidirectional,
                         pooling=pooling, dtype=normalize_dtype(dtype), seed=seed)
        choice("pooling", pooling, ("last", "mean"))
        self._build(output_size, input_size=input_size, vocab_size=None, embed=None,
                    hidden=hidden, layers=layers, cell=cell, dropout=dropout,
                    bidirectional=bidirectional, pooling="none" if many_to_many else pooling,
                    dtype=dtype, seed=seed)

    @property
    def output_size(self) -> int:
        return self.head.out_features

    def _targets(self, y, x):
        y = np.asarray(y)
        if y.dtype.kind not in "biuf":
            raise TypeError(f"y must be numeric, got dtype {y.dtype}")
        lead = x.shape[:2] if self.pooling == "none" else x.shape[:1]
        O = self.output_size
        if O == 1 and y.shape == lead:
            y = y[..., None]
        if y.shape != lead + (O,):
            raise ValueError(f"y must have shape {lead + (O,)}"
                             f"{' or ' + str(lead) if O == 1 else ''}, got {y.shape}")
        return y.astype(self.dtype, copy=False)

    def _loss(self, out, target, mask):
        return mse(out, target, mask)

    def _metrics(self, outs, targets, mask):
        loss, _ = mse(outs, targets, mask)
        err = np.abs(outs - targets)
        mae = float(err.mean() if mask is None else err[mask].mean())
        return {"loss": loss, "rmse": math.sqrt(loss), "mae": mae}

    def predict(self, x, lengths=None, batch_size: int = 256) -> np.ndarray:
        """Predictions ``(N, output_size)``, or ``(N, T, output_size)`` per step (zero past
        each sequence's length)."""
        return self._outputs(x, lengths, batch_size)[0]
