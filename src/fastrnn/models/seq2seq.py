"""Conditioned decoders: :class:`Seq2Seq` (encoder-decoder) and :class:`OneToManyGenerator`.

Both decode a target token sequence with a :class:`~fastrnn.models._parts.TokenDecoder`
whose initial state comes from a source: the final state of an encoder RNN (Seq2Seq) or a
Linear map of an input vector (OneToManyGenerator). Training uses teacher forcing: the
decoder reads ``<bos> y_1 ... y_n`` and is trained to emit ``y_1 ... y_n <eos>``; the
gradient of its initial state flows back into the source side. :meth:`predict` decodes
greedily until ``<eos>``.

The target vocabulary must hold the specials ``<bos>`` and ``<eos>``
(``Vocabulary.from_sequences`` adds ``<pad>``, ``<bos>``, ``<eos>`` by default).
"""
from __future__ import annotations

import math
from typing import List, Optional

import numpy as np

from .._common import normalize_dtype
from ..data import BOS, EOS, PAD, Vocabulary, as_vocabulary, minibatches, pad_sequences
from ..grad_mode import is_grad_enabled
from ..losses import cross_entropy
from ..nn.layers import Linear
from ._training import fingerprint
from ._base import History, Model, child_seeds, positive_int, resolve_distributed
from ._parts import Encoder, TokenDecoder, pack_state, state_parts

__all__ = ["Seq2Seq", "OneToManyGenerator"]

_IGNORE = -100


class _DecoderModel(Model):
    """Teacher-forced training, evaluation and greedy prediction over a conditioned decoder.

    A subclass builds the source side and implements :meth:`_sources` (all sources,
    checked), :meth:`_source_rows` (a batch of them), :meth:`_condition` (a batch -> the
    decoder's initial state) and :meth:`_condition_backward` (its gradient -> param grads).
    """

    units = "tokens"

    def _build_decoder(self, tgt_vocab, *, embed, hidden, layers, cell, dropout, dtype, seeds):
        vocab = as_vocabulary(tgt_vocab, "tgt_vocab")
        if vocab is None or BOS not in vocab.specials or EOS not in vocab.specials:
            raise ValueError(f"the target vocabulary must be a Vocabulary with specials "
                             f"{BOS!r} and {EOS!r} (Vocabulary.from_sequences adds them)")
        self.tgt_vocab = vocab
        self.decoder = TokenDecoder(len(vocab), embed=embed, hidden=hidden, layers=layers,
                                    cell=cell, dropout=dropout, dtype=dtype, seeds=seeds)

    # -- the subclass's part --------------------------------------------------------------
    def _sources(self, sources):
        raise NotImplementedError

    def _source_rows(self, sources, idx):
        raise NotImplementedError

    def _condition(self, source_batch):
        raise NotImplementedError

    def _condition_backward(self, dstate) -> None:
        raise NotImplementedError

    def _default_max_len(self, source_batch) -> int:
        return 100

    # -- targets and teacher forcing ------------------------------------------------------
    def _targets(self, targets, n: int) -> List[np.ndarray]:
        if isinstance(targets, str) or len(targets) != n:
            raise ValueError(f"targets must be a list of {n} sequences (one per source)")
        return [self.tgt_vocab.encode(t) for t in targets]

    def _teacher(self, targets: List[np.ndarray]):
        """Decoder ``inputs (T, B)``, ``outputs (T, B)`` (padding = ignore) and lengths."""
        v = self.tgt_vocab
        bos, eos = v.id(BOS), v.id(EOS)
        pad = v.index.get(PAD, eos)
        inputs, lengths = pad_sequences([np.r_[bos, t] for t in targets], pad)
        outputs, _ = pad_sequences([np.r_[t, eos] for t in targets], _IGNORE)
        return np.ascontiguousarray(inputs.T), np.ascontiguousarray(outputs.T), lengths

    def _batch(self, sources, targets, idx):
        return self._source_rows(sources, idx), self._teacher([targets[i] for i in idx])

    def _decode_logits(self, batch):
        source_batch, (inputs, _, lengths) = batch
        return self.decoder(inputs, self._condition(source_batch), lengths)[0]

    def _batch_rows(self, batch) -> int:
        return batch[1][0].shape[1]

    def _shard_batch(self, batch, rows: slice):
        """Rows of a batch (sources and teacher-forced targets), trimmed to their lengths."""
        source_batch, (inputs, outputs, lengths) = batch
        lb = lengths[rows]
        T = int(lb.max())
        teacher = (np.ascontiguousarray(inputs[:T, rows]),
                   np.ascontiguousarray(outputs[:T, rows]), lb)
        return self._source_shard(source_batch, rows), teacher

    def _source_shard(self, source_batch, rows: slice):
        raise NotImplementedError

    def _forward_backward(self, batch):
        logits = self._decode_logits(batch)
        outputs = batch[1][1]
        loss, dlogits = cross_entropy(logits, outputs, ignore_index=_IGNORE)
        self._condition_backward(self.decoder.backward(dlogits))
        return loss, int(np.count_nonzero(outputs != _IGNORE))

    # -- public API -----------------------------------------------------------------------
    def forward(self, sources, targets):
        """Teacher-forced decoding of ``targets`` given ``sources`` (N of each).

        Returns ``logits (N, T+1, V)`` and what they should predict, ``outputs (N, T+1)``:
        each target followed by ``<eos>``, then -100 (ignored) padding; T is the longest
        target. In training mode :meth:`backward` can follow.
        """
        sources = self._sources(sources)
        n = self._n(sources)
        batch = self._batch(sources, self._targets(targets, n), np.arange(n))
        logits, outputs = self._decode_logits(batch), batch[1][1]
        return np.swapaxes(logits, 0, 1), np.ascontiguousarray(outputs.T)

    def backward(self, dlogits) -> None:
        """``dlogits (N, T+1, V)`` -> parameter gradients (accumulated), through the decoder
        into the source side."""
        dlogits = np.ascontiguousarray(np.swapaxes(np.asarray(dlogits, self.dtype), 0, 1))
        self._condition_backward(self.decoder.backward(dlogits))

    def fit(self, sources, targets, epochs: Optional[int] = 10, batch_size: int = 32,
            lr: float = 1e-2, optimizer=None, clip: Optional[float] = 5.0,
            validation_data=None, shuffle: bool = True, seed: Optional[int] = None,
            time_budget: Optional[float] = None, verbose: bool = True,
            distributed=False, **options) -> History:
        """Teacher-forced minibatch training on ``(sources, targets)``; ``targets`` a list of
        strings or symbol lists. ``validation_data=(sources, targets)`` adds ``val_*``
        metrics per epoch. Other options as in :meth:`LanguageModel.fit` and
        :meth:`SequenceClassifier.fit` (``distributed``)."""
        sources = self._sources(sources)
        n = self._n(sources)
        targets = self._targets(targets, n)
        batch_size = positive_int("batch_size", batch_size)
        parallel = resolve_distributed(distributed)
        if parallel is not None and shuffle:
            seed = parallel.shared_seed(seed)
        rng = np.random.default_rng(seed) if shuffle else None

        def batches(epoch):
            chunks = minibatches(n, batch_size, rng)
            return (self._batch(sources, targets, idx) for idx in chunks), \
                math.ceil(n / batch_size)

        validate = None
        if validation_data is not None:
            validate = lambda: self.evaluate(*validation_data)  # noqa: E731
        return self._fit(batches, epochs=epochs, lr=lr, optimizer=optimizer, clip=clip,
                         time_budget=time_budget, verbose=verbose, validate=validate,
                         distributed=parallel, data_rng=rng,
                         data_key=fingerprint(n, batch_size, shuffle, *targets,
                                              *_arrays(sources)), **options)

    @staticmethod
    def _n(sources) -> int:
        return len(sources[0]) if isinstance(sources, tuple) else len(sources)

    def _greedy_ids(self, sources, max_len, batch_size) -> List[np.ndarray]:
        v = self.tgt_vocab
        out = []
        with self.inference():
            for idx in minibatches(self._n(sources), positive_int("batch_size", batch_size)):
                source_batch = self._source_rows(sources, idx)
                limit = self._default_max_len(source_batch) if max_len is None \
                    else positive_int("max_len", max_len)
                ids, lengths = self.decoder.greedy(self._condition(source_batch), v.id(BOS),
                                                   v.id(EOS), limit)
                out.extend(row[:n] for row, n in zip(ids, lengths))
        return out

    def predict(self, sources, max_len: Optional[int] = None, batch_size: int = 256) -> list:
        """Greedy decoding: one output per source (a string for a character vocabulary,
        else a list of symbols), stopping at ``<eos>`` or after ``max_len`` tokens."""
        ids = self._greedy_ids(self._sources(sources), max_len, batch_size)
        return [self.tgt_vocab.decode(row) for row in ids]

    def evaluate(self, sources, targets, batch_size: int = 256) -> dict:
        """``loss`` and ``token_accuracy`` (teacher-forced, per target token) and
        ``exact_match`` (greedy decoding equals the target) on ``(sources, targets)``."""
        sources = self._sources(sources)
        n = self._n(sources)
        targets = self._targets(targets, n)
        total, right, count = 0.0, 0, 0
        with self.inference():
            for idx in minibatches(n, positive_int("batch_size", batch_size)):
                batch = self._batch(sources, targets, idx)
                logits, outputs = self._decode_logits(batch), batch[1][1]
                loss, _ = cross_entropy(logits, outputs, ignore_index=_IGNORE, reduction="sum")
                valid = outputs != _IGNORE
                total += loss
                right += int(np.count_nonzero((logits.argmax(-1) == outputs) & valid))
                count += int(np.count_nonzero(valid))
        longest = max(len(t) for t in targets) + 1
        decoded = self._greedy_ids(sources, longest, batch_size)
        exact = np.mean([np.array_equal(d, t) for d, t in zip(decoded, targets)])
        return {"loss": total / count, "token_accuracy": right / count,
                "exact_match": float(exact)}


class Seq2Seq(_DecoderModel):
    """Encoder-decoder for token sequences (translation-style).

    The encoder (Embedding -> RNN over the source, lengths respected) hands its final
    state, every layer, to the decoder (Embedding -> RNN -> Linear over ``tgt_vocab``).
    ``sources`` and ``targets`` are lists of strings (character vocabularies) or of symbol
    lists; ``predict(sources)`` returns the greedy decodings.
    """

    def __init__(self, src_vocab: Vocabulary, tgt_vocab: Vocabulary, embed: int = 32,
                 hidden: int = 64, layers: int = 1, cell: str = "lstm", dropout: float = 0.0,
                 dtype=np.float32, seed: Optional[int] = None):
        super().__init__(src_vocab=src_vocab, tgt_vocab=tgt_vocab, embed=embed, hidden=hidden,
                         layers=layers, cell=cell, dropout=dropout, dtype=normalize_dtype(dtype),
                         seed=seed)
        self.src_vocab = as_vocabulary(src_vocab, "src_vocab")
        if self.src_vocab is None:
            raise TypeError("src_vocab must be a Vocabulary")
        seeds = child_seeds(seed, 6)
        self.encoder = Encoder(vocab_size=len(self.src_vocab), embed=embed, hidden=hidden,
                               layers=layers, cell=cell, dropout=dropout, dtype=dtype,
                               seeds=seeds[:2])
        self._build_decoder(tgt_vocab, embed=embed, hidden=hidden, layers=layers, cell=cell,
                            dropout=dropout, dtype=dtype, seeds=seeds[2:])

    def _sources(self, sources):
        """Sources -> ``(ids (N, S), lengths (N,))``."""
        if isinstance(sources, str):
            raise TypeError("sources must be a list of sequences, not one string")
        return pad_sequences([self.src_vocab.encode(s) for s in sources])

    def _source_rows(self, sources, idx):
        ids, lengths = sources[0][idx], sources[1][idx]
        return np.ascontiguousarray(ids[:, :lengths.max()].T), lengths

    def _source_shard(self, source_batch, rows: slice):
        ids, lengths = source_batch                              # (S, B), (B,)
        lb = lengths[rows]
        return np.ascontiguousarray(ids[:int(lb.max()), rows]), lb

    def _condition(self, source_batch):
        ids, lengths = source_batch
        return self.encoder(ids, None, lengths)[1]

    def _condition_backward(self, dstate):
        self.encoder.backward(None, dstate)

    def _default_max_len(self, source_batch) -> int:
        return 2 * source_batch[0].shape[0] + 10


class OneToManyGenerator(_DecoderModel):
    """A token sequence from one input vector (captioning-style, one-to-many).

    The vector ``v (input_size,)`` sets the decoder's initial hidden state,
    ``h0 = tanh(v W_initᵀ + b_init)`` reshaped to ``(layers, H)`` (LSTM: ``c0 = 0``); the
    decoder then generates tokens. ``sources``: float array ``(N, input_size)``.
    """

    def __init__(self, input_size: int, tgt_vocab: Vocabulary, embed: int = 32,
                 hidden: int = 64, layers: int = 1, cell: str = "lstm", dropout: float = 0.0,
                 dtype=np.float32, seed: Optional[int] = None):
        super().__init__(input_size=input_size, tgt_vocab=tgt_vocab, embed=embed,
                         hidden=hidden, layers=layers, cell=cell, dropout=dropout,
                         dtype=normalize_dtype(dtype), seed=seed)
        seeds = child_seeds(seed, 5)
        self._layers, self._hidden, self._cell = positive_int("layers", layers), \
            positive_int("hidden", hidden), cell
        self.init = Linear(positive_int("input_size", input_size), layers * hidden,
                           dtype=dtype, seed=seeds[0])
        self._build_decoder(tgt_vocab, embed=embed, hidden=hidden, layers=layers, cell=cell,
                            dropout=dropout, dtype=dtype, seeds=seeds[1:])
        self._h0 = None

    def _sources(self, sources):
        x = np.asarray(sources)
        if x.dtype.kind not in "biuf" or x.ndim != 2 or x.shape[1] != self.init.in_features:
            raise ValueError(f"sources must be a float array (N, {self.init.in_features}), "
                             f"got {x.dtype} {x.shape}")
        return x.astype(self.dtype, copy=False)

    def _source_rows(self, sources, idx):
        return sources[idx]

    def _source_shard(self, source_batch, rows: slice):
        return source_batch[rows]                                # (B, I)

    def _condition(self, v):
        """``v (B, I)`` -> initial state ``(L, B, H)`` (LSTM: with zero cell state)."""
        B = v.shape[0]
        h0 = np.tanh(self.init(v)).reshape(B, self._layers, self._hidden)
        h0 = np.ascontiguousarray(h0.transpose(1, 0, 2))
        self._h0 = h0 if is_grad_enabled() else None
        return pack_state((h0, np.zeros_like(h0)), self._cell)

    def _condition_backward(self, dstate):
        dh0 = state_parts(dstate)[0] * (1 - self._h0 * self._h0)        # (L, B, H)
        self.init.backward(np.ascontiguousarray(dh0.transpose(1, 0, 2)).reshape(
            dh0.shape[1], -1))
        self._h0 = None


def _arrays(sources) -> list:
    """The arrays in a source batch (an array, a tuple of arrays, or a list of them)."""
    items = sources if isinstance(sources, (tuple, list)) else (sources,)
    return [np.asarray(a) for a in items if isinstance(a, np.ndarray)]
