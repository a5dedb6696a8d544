"""Text generation from a :class:`~fastrnn.models.LanguageModel`.

The prime is read in one call of the whole-sequence kernels; every new token then costs
one :meth:`LanguageModel.step` (one C step per layer, an embedding row and one small
matrix product for the logits), with no caches kept. Sampling draws from
``softmax(logits / temperature)`` restricted to the ``top_k`` most likely tokens, or takes
the argmax (``greedy=True`` or ``temperature=0``). The same ``seed`` gives the same text.
"""
from __future__ import annotations

import numbers
from typing import Iterator, Optional

import numpy as np

__all__ = ["generate", "iter_generate", "sample_next"]


def _check_options(length, temperature, top_k):
    if isinstance(length, bool) or not isinstance(length, numbers.Integral) or length < 0:
        raise ValueError(f"length must be an int >= 0, got {length!r}")
    if not isinstance(temperature, numbers.Real) or not temperature >= 0:
        raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral)
                              or top_k < 1):
        raise ValueError(f"top_k must be None or a positive int, got {top_k!r}")


def sample_next(logits: np.ndarray, rng: np.random.Generator, temperature: float = 1.0,
                top_k: Optional[int] = None, greedy: bool = False) -> np.ndarray:
    """Draw one token per row from ``logits (B, V)`` -> ``ids (B,)`` int64.

    Greedy (or ``temperature == 0``) takes the argmax; otherwise the probabilities are
    ``softmax(logits / temperature)`` over the ``top_k`` largest logits (all when None),
    computed in float64 and sampled by inverse CDF with one uniform draw per row.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if greedy or temperature == 0:
        return logits.argmax(axis=-1)
    z = logits / temperature
    if top_k is not None and top_k < z.shape[-1]:
        kth = np.partition(z, -top_k, axis=-1)[:, -top_k][:, None]
        z = np.where(z >= kth, z, -np.inf)
    z -= z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    cdf = np.cumsum(p, axis=-1)
    u = rng.random(z.shape[0]) * cdf[:, -1]
    ids = (cdf <= u[:, None]).sum(axis=-1)
    return np.minimum(ids, z.shape[-1] - 1)


def _default_prime(vocab) -> str:
    return "\n" if "\n" in vocab else vocab.symbols[len(vocab.specials)]


def generate(model, prime: Optional[str] = None, length: int = 200, temperature: float = 1.0,
             top_k: Optional[int] = None, greedy: bool = False, seed: Optional[int] = None,
             include_prime: bool = True) -> str:
    """Continue ``prime`` by ``length`` tokens sampled from ``model``.

    ``model``: a :class:`~fastrnn.models.LanguageModel` with a Vocabulary. ``prime``: text
    to start from (every symbol must be in the vocabulary; None: a newline, or the first
    symbol). ``temperature`` > 1 flattens, < 1 sharpens, 0 is greedy; ``top_k`` keeps the
    k most likely tokens; ``seed`` makes the draw reproducible. Returns the prime followed
    by the generated text (just the continuation with ``include_prime=False``).
    :func:`iter_generate` yields the same text piece by piece.
    """
    return "".join(iter_generate(model, prime, length, temperature, top_k, greedy, seed,
                                 include_prime))


def iter_generate(model, prime: Optional[str] = None, length: int = 200,
                  temperature: float = 1.0, top_k: Optional[int] = None, greedy: bool = False,
                  seed: Optional[int] = None, include_prime: bool = True) -> Iterator[str]:
    """:func:`generate` as a stream: the prime (if ``include_prime``), then each token's
    text as soon as it is sampled (a character, or a word with its leading space), so
    ``"".join(iter_generate(...)) == generate(...)`` for the same arguments."""
    vocab = getattr(model, "vocab", None)
    if vocab is None:
        raise TypeError("generate needs a LanguageModel built with a Vocabulary")
    _check_options(length, temperature, top_k)
    if prime is None:
        prime = _default_prime(vocab)
    if not isinstance(prime, str) or not prime:
        raise ValueError(f"prime must be a non-empty string, got {prime!r}")
    ids = model._ids(prime, "prime")
    return _stream(model, vocab, ids, prime, length, np.random.default_rng(seed),
                   (temperature, top_k, greedy), include_prime)


def _stream(model, vocab, ids, prime, length, rng, options, include_prime):
    """The generator behind :func:`iter_generate` (arguments already checked)."""
    if include_prime:
        yield prime
    with model.inference():
        logits, state = model.forward(ids[None])
        logits = logits[:, -1]
        for i in range(length):
            token = sample_next(logits, rng, *options)
            text = vocab.decode(token[:1].astype(np.int64), skip_specials=False)
            if not vocab.char_level:
                text = text[0] if (i == 0 and not include_prime) else " " + text[0]
            yield text
            if i + 1 < length:
                logits, state = model.step(token, state)
