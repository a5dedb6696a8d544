"""Data helpers: token vocabularies, the embedded default corpus, padding and batching.

* :class:`Vocabulary` maps symbols (characters, or any strings) to integer ids and back,
  with optional special tokens (``<pad>``, ``<bos>``, ``<eos>``) placed first.
* :func:`default_corpus` is the text the ``fastrnn train`` command uses when no file is
  given: the help topics of Python's own documentation (``pydoc_data.topics``), about
  465 000 characters that every CPython installation has, offline.
* :func:`pad_sequences` turns a list of variable-length id sequences into a padded
  ``(B, T)`` array and its ``lengths (B,)``; :func:`batchify` folds a long token stream into
  ``B`` parallel streams for truncated BPTT; :func:`minibatches` yields shuffled index sets.
"""
from __future__ import annotations

import numbers
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["Vocabulary", "default_corpus", "pad_sequences", "batchify", "minibatches",
           "PAD", "BOS", "EOS"]

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SEQ2SEQ_SPECIALS = (PAD, BOS, EOS)


class Vocabulary:
    """An ordered list of distinct symbols; a symbol's id is its position.

    ``specials`` (e.g. ``("<pad>", "<bos>", "<eos>")``) take ids 0, 1, ... and are left out
    when decoding with ``skip_specials``. A vocabulary whose ordinary symbols are all single
    characters is *character-level*: :meth:`decode` returns a string; otherwise it returns a
    list of symbols. :meth:`encode` raises ``KeyError`` naming any symbol it does not know.
    """

    def __init__(self, symbols: Iterable[str], specials: Sequence[str] = ()):
        specials = [str(s) for s in specials]
        symbols = [s for s in symbols if s not in specials]
        for s in symbols:
            if not isinstance(s, str) or not s:
                raise TypeError(f"vocabulary symbols must be non-empty strings, got {s!r}")
        self.symbols: List[str] = specials + symbols
        if len(set(self.symbols)) != len(self.symbols):
            raise ValueError("vocabulary symbols must be distinct")
        if not self.symbols:
            raise ValueError("a vocabulary needs at least one symbol")
        self.specials: Tuple[str, ...] = tuple(specials)
        self.index = {s: i for i, s in enumerate(self.symbols)}
        self.char_level = all(len(s) == 1 for s in symbols)

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_text(cls, text: str, specials: Sequence[str] = ()) -> "Vocabulary":
        """Character-level vocabulary of ``text``'s distinct characters, sorted."""
        if not isinstance(text, str) or not text:
            raise ValueError("from_text needs a non-empty string")
        return cls(sorted(set(text)), specials)

    @classmethod
    def from_sequences(cls, sequences: Iterable, specials: Sequence[str] = SEQ2SEQ_SPECIALS
                       ) -> "Vocabulary":
        """Vocabulary of every symbol in ``sequences`` (strings or lists of strings), sorted."""
        seen = set()
        for seq in sequences:
            seen.update(seq)
        return cls(sorted(seen), specials)

    # -- ids ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.symbols)

    def __contains__(self, symbol) -> bool:
        return symbol in self.index

    def id(self, symbol: str) -> int:
        """The id of one symbol (``KeyError`` naming it if unknown)."""
        try:
            return self.index[symbol]
        except KeyError:
            raise KeyError(f"symbol {symbol!r} is not in the vocabulary "
                           f"({len(self)} symbols)") from None

    def encode(self, sequence) -> np.ndarray:
        """A string (character-level) or a list of symbols -> ``ids (T,)`` int64."""
        if isinstance(sequence, str) and not self.char_level:
            sequence = [sequence]
        index = self.index
        try:
            return np.fromiter((index[s] for s in sequence), np.int64, count=len(sequence))
        except KeyError as exc:
            raise KeyError(f"symbol {exc.args[0]!r} is not in the vocabulary "
                           f"({len(self)} symbols)") from None

    def decode(self, ids, skip_specials: bool = True):
        """``ids (T,)`` -> a string (character-level) or a list of symbols.

        With ``skip_specials`` special tokens are dropped (an ``<eos>`` ends the sequence).
        """
        out = []
        eos = self.index.get(EOS)
        for i in np.asarray(ids, dtype=np.int64).reshape(-1):
            if not 0 <= i < len(self.symbols):
                raise IndexError(f"id {i} is outside the vocabulary [0, {len(self)})")
            if skip_specials and i == eos:
                break
            if skip_specials and self.symbols[i] in self.specials:
                continue
            out.append(self.symbols[i])
        return "".join(out) if self.char_level else out

    # -- checkpoint round trip ---------------------------------------------------------
    def to_config(self) -> dict:
        """A JSON-able dict that :meth:`from_config` turns back into an equal vocabulary."""
        n = len(self.specials)
        return {"symbols": self.symbols[n:], "specials": list(self.specials)}

    @classmethod
    def from_config(cls, config: dict) -> "Vocabulary":
        return cls(config["symbols"], config.get("specials", ()))

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and self.symbols == other.symbols \
            and self.specials == other.specials

    def __repr__(self) -> str:
        kind = "characters" if self.char_level else "symbols"
        return f"Vocabulary({len(self)} {kind}, specials={list(self.specials)})"


def as_vocabulary(value, name: str = "vocab") -> Optional[Vocabulary]:
    """A :class:`Vocabulary`, or None for None; ``TypeError`` for anything else."""
    if value is None or isinstance(value, Vocabulary):
        return value
    raise TypeError(f"{name} must be a fastrnn.data.Vocabulary or None, "
                    f"got {type(value).__name__}")


def default_corpus() -> str:
    """The embedded default training text: every ``pydoc_data.topics`` entry, by name.

    These are the help pages of the Python language reference (``help('if')``); they ship
    with CPython, so the text is there offline on every machine. About 465k characters.
    """
    from pydoc_data.topics import topics
    return "\n\n".join(topics[name].strip("\n") for name in sorted(topics)) + "\n"


def pad_sequences(sequences: Sequence[np.ndarray], pad_id: int = 0,
                  length: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Id sequences of varying length -> ``(ids (B, T) int64, lengths (B,) int64)``.

    ``T`` is the longest sequence (or ``length``); shorter rows are filled with ``pad_id``.
    Every sequence must be non-empty (recurrent layers need at least one step).
    """
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    if lengths.size == 0:
        raise ValueError("pad_sequences needs at least one sequence")
    if lengths.min() < 1:
        raise ValueError(f"sequence {int(np.argmin(lengths))} is empty; every sequence "
                         "needs at least one element")
    T = int(lengths.max()) if length is None else int(length)
    if lengths.max() > T:
        raise ValueError(f"a sequence of length {lengths.max()} does not fit length={T}")
    ids = np.full((len(sequences), T), pad_id, dtype=np.int64)
    for row, seq in zip(ids, sequences):
        row[:len(seq)] = seq
    return ids, lengths


def batchify(stream: np.ndarray, batch_size: int) -> np.ndarray:
    """Fold a token stream ``(N,)`` into ``B`` parallel streams, time-major ``(N // B, B)``.

    Column ``b`` holds the contiguous slice ``stream[b * n:(b + 1) * n]``, so windows taken
    down the rows continue each column's text from one window to the next (what stateful
    truncated BPTT needs). The last ``N % B`` tokens are dropped.
    """
    stream = np.asarray(stream)
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    n = stream.shape[0] // batch_size
    if n < 2:
        raise ValueError(f"a stream of {stream.shape[0]} tokens is too short for "
                         f"batch_size={batch_size}: each of the {batch_size} streams "
                         "needs at least 2 tokens (an input and its next-token target)")
    return np.ascontiguousarray(stream[:n * batch_size].reshape(batch_size, n).T)


def minibatches(n: int, batch_size: int, rng: Optional[np.random.Generator] = None
                ) -> Iterator[np.ndarray]:
    """Index arrays covering ``range(n)`` in chunks of ``batch_size`` (shuffled with ``rng``)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]
