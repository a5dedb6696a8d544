"""The pieces the models are made of: :class:`Encoder` and :class:`TokenDecoder`.

Both are time-major inside, as the kernels are: sequences ``(T, B, ...)``. The models
transpose their batch-first ``(B, T, ...)`` inputs once at the edge.

Recurrent state is what the recurrent layer takes: an array ``(L, B, H)`` for RNN and GRU,
a pair ``(h, c)`` of them for LSTM; None means zeros.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from ..nn.layers import Dropout, Embedding, Linear
from ..nn.module import Module
from ..nn.recurrent import GRU, LSTM, RNN
from ._base import choice, positive_int

CELLS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}


def state_parts(state) -> tuple:
    """A recurrent state as a tuple of arrays (one for RNN/GRU, two for LSTM)."""
    return tuple(state) if isinstance(state, (tuple, list)) else (state,)


def pack_state(parts: tuple, cell: str):
    """The inverse of :func:`state_parts` for ``cell``."""
    return tuple(parts) if cell == "lstm" else parts[0]


def select_state(state, rows):
    """The batch rows ``rows`` of a state (each part indexed on axis 1)."""
    if state is None:
        return None
    parts = tuple(np.ascontiguousarray(p[:, rows]) for p in state_parts(state))
    return parts if isinstance(state, (tuple, list)) else parts[0]


class Encoder(Module):
    """Optional token :class:`Embedding`, then a stacked recurrent layer.

    Input ``x``: token ids ``(T, B)`` when built with ``vocab_size``, else float features
    ``(T, B, input_size)``. :meth:`forward` returns ``y (T, B, D*H)`` and the final state
    (``(L*D, B, H)``, LSTM a pair); :meth:`backward` takes their gradients (either may be
    None) and returns the gradient of the initial state, in the same packing.
    """

    def __init__(self, *, input_size=None, vocab_size=None, embed=32, hidden=64, layers=1,
                 cell="lstm", dropout=0.0, bidirectional=False, dtype=np.float32,
                 seeds=(None, None)):
        super().__init__()
        if (input_size is None) == (vocab_size is None):
            raise ValueError("give exactly one of input_size (float features) and "
                             "vocab_size (token ids)")
        self.cell = choice("cell", cell, CELLS)
        self.embedding = None
        if vocab_size is not None:
            self.embedding = Embedding(positive_int("vocab_size", vocab_size),
                                       positive_int("embed", embed), dtype=dtype,
                                       seed=seeds[0])
            input_size = self.embedding.embedding_dim
        self.rnn = CELLS[cell](positive_int("input_size", input_size),
                               positive_int("hidden", hidden), positive_int("layers", layers),
                               dropout=dropout if layers > 1 else 0.0,
                               bidirectional=bidirectional, dtype=dtype, seed=seeds[1])

    @property
    def output_size(self) -> int:
        return self.rnn.hidden_size * self.rnn.num_directions

    def _embed(self, x):
        return x if self.embedding is None else self.embedding(x)

    def forward(self, x, state=None, lengths=None):
        """``x (T, B)`` ids or ``(T, B, I)`` -> ``y (T, B, D*H)``, final state."""
        return self.rnn(self._embed(x), state, lengths=lengths)

    def backward(self, dy=None, dstate=None):
        """Gradients of ``y`` and of the final state -> gradient of the initial state."""
        dparts = state_parts(dstate) if dstate is not None else (None,)
        dx = self.rnn.backward(dy, *dparts)
        if self.embedding is not None:
            self.embedding.backward(dx)
        return pack_state((self.rnn.grad_h0, getattr(self.rnn, "grad_c0", None)), self.cell)

    def step(self, x_t, state=None):
        """One step, inference only: ``x_t (B,)`` ids or ``(B, I)`` -> ``out (B, H)``, state."""
        return self.rnn.step(self._embed(x_t), state)


class TokenDecoder(Encoder):
    """Token ids -> next-token logits: Embedding, recurrent layer, Dropout, Linear.

    ``forward(ids (T, B), state=None, lengths=None) -> logits (T, B, V), final state``;
    ``backward(dlogits (T, B, V)) -> gradient of the initial state``; ``step(ids (B,),
    state) -> logits (B, V), state`` is the cheap one-step path used for generation.
    """

    def __init__(self, vocab_size, *, embed=32, hidden=64, layers=1, cell="lstm",
                 dropout=0.0, dtype=np.float32, seeds=(None, None, None, None)):
        super().__init__(vocab_size=vocab_size, embed=embed, hidden=hidden, layers=layers,
                         cell=cell, dropout=dropout, dtype=dtype, seeds=seeds[:2])
        self.dropout = Dropout(dropout, seed=seeds[2])
        self.head = Linear(self.rnn.hidden_size, vocab_size, dtype=dtype, seed=seeds[3])

    @property
    def vocab_size(self) -> int:
        return self.head.out_features

    def forward(self, ids, state=None, lengths=None):
        y, state = super().forward(ids, state, lengths)
        return self.head(self.dropout(y)), state

    def backward(self, dlogits, dstate=None):
        dy = self.dropout.backward(self.head.backward(dlogits))
        return super().backward(dy, dstate)

    def step(self, ids, state=None):
        out, state = super().step(ids, state)
        return self.head(out), state

    def greedy(self, state, start_id: int, stop_id: Optional[int], max_len: int
               ) -> Tuple[np.ndarray, np.ndarray]:
        """Greedy decoding from ``state`` (batch B), fed ``start_id`` first.

        Returns ``ids (B, n)`` and ``lengths (B,)``: each row up to (not including) its
        ``stop_id``, at most ``max_len`` tokens; the loop ends once every row has stopped.
        Call it in eval mode.
        """
        B = state_parts(state)[0].shape[1]
        token = np.full(B, start_id, dtype=np.int64)
        lengths = np.full(B, max_len, dtype=np.int64)
        done = np.zeros(B, dtype=bool)
        out = []
        for t in range(max_len):
            logits, state = self.step(token, state)
            token = logits.argmax(axis=-1)
            if stop_id is not None:
                stopped = ~done & (token == stop_id)
                lengths[stopped] = t
                done |= stopped
            out.append(token)
            if done.all():
                break
        ids = np.stack(out, axis=1) if out else np.zeros((B, 0), np.int64)
        return ids, lengths
