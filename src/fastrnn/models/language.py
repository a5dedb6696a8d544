"""Language model: many-to-many next-token prediction, trained by truncated BPTT."""
from __future__ import annotations

import math
import numbers
from typing import Optional, Union

import numpy as np

from .._common import normalize_dtype
from ..data import Vocabulary, batchify
from ..losses import cross_entropy, log_softmax
from ._base import History, Model, child_seeds, positive_int, resolve_distributed
from ._parts import TokenDecoder, pack_state, state_parts
from ._training import fingerprint, safe_exp

__all__ = ["LanguageModel"]


class LanguageModel(Model):
    """Embedding -> RNN/LSTM/GRU -> Dropout -> Linear over the vocabulary.

    ``vocab``: a :class:`~fastrnn.data.Vocabulary` (then text can be passed as strings and
    :meth:`generate` works) or an int vocabulary size (token ids only). Shapes, batch-first::

        ids (B, T) int  ->  logits (B, T, V),  state (L, B, H)  (LSTM: a pair (h, c))

    :meth:`fit` runs stateful truncated BPTT over one long token stream: the stream is
    folded into ``batch_size`` parallel streams, cut into windows of ``seq_len`` steps, and
    the final state of each window starts the next one (gradients stop at window edges).
    """

    units = "tokens"

    def __init__(self, vocab: Union[Vocabulary, int], embed: int = 64, hidden: int = 128,
                 layers: int = 1, cell: str = "lstm", dropout: float = 0.0,
                 dtype=np.float32, seed: Optional[int] = None):
        if isinstance(vocab, Vocabulary):
            vocab_size, self_vocab = len(vocab), vocab
        elif isinstance(vocab, numbers.Integral) and not isinstance(vocab, bool):
            vocab_size, self_vocab = positive_int("vocab", vocab), None
        else:
            raise TypeError(f"vocab must be a Vocabulary or an int vocabulary size, "
                            f"got {type(vocab).__name__}")
        super().__init__(vocab=vocab, embed=embed, hidden=hidden, layers=layers, cell=cell,
                         dropout=dropout, dtype=normalize_dtype(dtype), seed=seed)
        self.vocab = self_vocab
        if self_vocab is not None and self_vocab.char_level:
            self.units = "chars"
        self.net = TokenDecoder(vocab_size, embed=embed, hidden=hidden, layers=layers,
                                cell=cell, dropout=dropout, dtype=dtype,
                                seeds=child_seeds(seed, 4))
        self._carry = None     # the state carried from one training window to the next

    @property
    def vocab_size(self) -> int:
        return self.net.vocab_size

    # -- the network ----------------------------------------------------------------------
    def forward(self, ids, state=None):
        """``ids (B, T)`` -> ``logits (B, T, V)``, final state ``(L, B, H)`` (LSTM a pair)."""
        ids = self._ids(ids, "ids")
        if ids.ndim != 2:
            raise ValueError(f"ids must have shape (B, T), got {ids.shape}")
        logits, state = self.net(np.ascontiguousarray(ids.T), state)
        return logits.transpose(1, 0, 2), state

    def backward(self, dlogits, dstate=None):
        """``dlogits (B, T, V)`` -> gradient of the initial state; parameter grads accumulate."""
        return self.net.backward(np.ascontiguousarray(np.swapaxes(dlogits, 0, 1)), dstate)

    def step(self, ids, state=None):
        """One step, inference only: ``ids (B,)`` -> ``logits (B, V)``, new state."""
        return self.net.step(self._ids(ids, "ids"), state)

    def _ids(self, data, name: str) -> np.ndarray:
        """Text (with a vocabulary) or integer ids -> int64 ids, range-checked."""
        if isinstance(data, str):
            if self.vocab is None:
                raise TypeError(f"{name} is text, but this model has no Vocabulary (it was "
                                "built with an int vocab size); pass token ids")
            return self.vocab.encode(data)
        ids = np.asarray(data)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"{name} must be a string or integer token ids, got dtype "
                            f"{ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"{name} must lie in [0, {self.vocab_size}) (the vocabulary), "
                             f"got values in [{ids.min()}, {ids.max()}]")
        return ids.astype(np.int64, copy=False)

    def _stream(self, data, name: str) -> np.ndarray:
        ids = self._ids(data, name)
        if ids.ndim != 1:
            raise ValueError(f"{name} must be one token stream (a string or ids (N,)), "
                             f"got shape {ids.shape}")
        return ids

    # -- training -------------------------------------------------------------------------
    def _start_epoch(self) -> None:
        self._carry = None

    def _carried_state(self) -> tuple:
        return () if self._carry is None else state_parts(self._carry)

    def _set_carried_state(self, parts: tuple) -> None:
        self._carry = pack_state(parts, self.config["cell"]) if parts else None

    def _forward_backward(self, batch):
        """``batch = (inputs (T, B), targets (T, B))``, time-major; state carried over."""
        inputs, targets = batch
        logits, self._carry = self.net(inputs, self._carry)
        loss, dlogits = cross_entropy(logits, targets)
        self.net.backward(dlogits)
        return loss, targets.size

    def _batch_rows(self, batch) -> int:
        return batch[0].shape[1]

    def _shard_batch(self, batch, rows: slice):
        """Streams ``rows`` of a window (each rank carries the state of its own streams)."""
        return tuple(np.ascontiguousarray(a[:, rows]) for a in batch)

    @staticmethod
    def _windows(streams: np.ndarray, seq_len: int):
        """(inputs, targets) windows down a time-major ``(N, B)`` stream matrix."""
        for start in range(0, streams.shape[0] - 1, seq_len):
            stop = min(start + seq_len, streams.shape[0] - 1)
            yield streams[start:stop], streams[start + 1:stop + 1]

    def fit(self, data, epochs: Optional[int] = 1, seq_len: int = 64, batch_size: int = 32,
            lr: float = 2e-3, optimizer=None, clip: Optional[float] = 5.0,
            time_budget: Optional[float] = None, validation_data=None,
            verbose: bool = True, distributed=False, **options) -> History:
        """Stateful truncated-BPTT training on one token stream.

        ``data``: text (with a vocabulary) or ids ``(N,)``. Each epoch folds it into
        ``batch_size`` streams and walks windows of ``seq_len`` steps, carrying the state.
        ``optimizer``: None (Adam), a name ('sgd', 'adam', 'adamw', 'adagrad', 'rmsprop') or
        a :class:`fastrnn.optim.Optimizer`; ``clip``: max global gradient norm or None.
        ``epochs=None`` trains until ``time_budget`` seconds have passed.
        ``validation_data`` (a stream) adds ``val_loss``/``val_bpc`` per epoch.
        ``distributed``: True or a :class:`fastrnn.distributed.DataParallel` (under
        ``mpiexec -n N``): each rank trains on ``batch_size / N`` of the streams.
        ``options``: ``checkpoint``, ``checkpoint_every``, ``resume``, ``patience``,
        ``callbacks``, ``scheduler``, ``validate_every``, ``checkpoint_meta``, ``precision``
        (``"bf16"``: mixed-precision training, no loss scaling needed) (see
        :data:`fastrnn.models._training.OPTIONS_DOC`).
        """
        streams = batchify(self._stream(data, "data"), batch_size)
        parallel = resolve_distributed(distributed)
        if parallel is not None and streams.shape[1] < parallel.size:
            raise ValueError(f"batch_size must be at least the number of ranks "
                             f"({parallel.size}) for distributed training, got {batch_size}")
        seq_len = positive_int("seq_len", seq_len)
        count = math.ceil((streams.shape[0] - 1) / seq_len)
        validate = None
        if validation_data is not None:
            validation = self._stream(validation_data, "validation_data")
            validate = lambda: self.evaluate(validation, seq_len=seq_len)  # noqa: E731
        return self._fit(lambda epoch: (self._windows(streams, seq_len), count),
                         epochs=epochs, lr=lr, optimizer=optimizer, clip=clip,
                         time_budget=time_budget, verbose=verbose, validate=validate,
                         distributed=parallel, data_key=fingerprint(streams, seq_len),
                         **options)

    # -- evaluation and prediction --------------------------------------------------------
    def evaluate(self, data, seq_len: int = 256, batch_size: int = 1) -> dict:
        """Mean next-token loss over a stream, read statefully in eval mode.

        Returns ``{"loss": nats per token, "bpc": bits per token (per character for a
        character vocabulary), "perplexity": exp(loss)}``.
        """
        streams = batchify(self._stream(data, "data"), batch_size)
        total, count, state = 0.0, 0, None
        with self.inference():
            for inputs, targets in self._windows(streams, positive_int("seq_len", seq_len)):
                logits, state = self.net(inputs, state)
                loss, _ = cross_entropy(logits, targets, reduction="sum")
                total, count = total + loss, count + targets.size
        loss = total / count
        return {"loss": loss, "bpc": loss / math.log(2), "perplexity": safe_exp(loss)}

    def predict_proba(self, ids) -> np.ndarray:
        """``ids (B, T)`` (or a string, as one row) -> next-token probabilities ``(B, T, V)``."""
        ids = self._ids(ids, "ids")
        with self.inference():
            logits, _ = self.forward(ids[None] if ids.ndim == 1 else ids)
        return np.exp(log_softmax(logits))

    def predict(self, ids) -> np.ndarray:
        """``ids (B, T)`` (or a string) -> the most likely next token at each step ``(B, T)``."""
        return self.predict_proba(ids).argmax(axis=-1)

    def generate(self, prime: Optional[str] = None, length: int = 200, **options) -> str:
        """Sample text after ``prime``; see :func:`fastrnn.generate.generate` for options."""
        from ..generate import generate
        return generate(self, prime, length, **options)
