"""Text generation: seeded sampling, temperature, top-k, greedy, and the step path."""
from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from fastrnn.data import Vocabulary
from fastrnn.generate import generate, sample_next
from fastrnn.models import LanguageModel

TEXT = "the quick brown fox jumps over the lazy dog. " * 40


@pytest.fixture(scope="module")
def model():
    lm = LanguageModel(Vocabulary.from_text(TEXT), embed=8, hidden=32, layers=2, seed=0)
    lm.fit(TEXT, epochs=8, seq_len=16, batch_size=8, lr=2e-2, verbose=False)
    return lm


def test_same_seed_same_text(model):
    a = generate(model, "the ", 80, seed=3)
    assert a == generate(model, "the ", 80, seed=3)
    assert a != generate(model, "the ", 80, seed=4)
    assert a.startswith("the ") and len(a) == 84
    assert generate(model, "the ", 80, seed=3, include_prime=False) == a[4:]
    assert model.generate("the ", 80, seed=3) == a


def test_greedy_continues_the_learned_text(model):
    text = generate(model, "the quick ", 25, greedy=True)
    assert text.startswith("the quick brown fox jumps over")
    assert generate(model, "the quick ", 25, temperature=0) == text
    assert generate(model, "the quick ", 25, top_k=1, seed=1) == text


def test_greedy_steps_match_full_forward_passes(model):
    """The per-step path gives what re-running the whole sequence gives."""
    text = generate(model, "lazy", 12, greedy=True)
    ids = list(model.vocab.encode("lazy"))
    with model.inference():
        for _ in range(12):
            logits, _ = model(np.array([ids]))
            ids.append(int(logits[0, -1].argmax()))
    assert model.vocab.decode(ids) == text


def test_float64_model_and_default_prime():
    lm = LanguageModel(Vocabulary.from_text("ab\n"), embed=2, hidden=4, dtype=np.float64,
                       seed=0)
    text = generate(lm, length=5, seed=0)
    assert text.startswith("\n") and len(text) == 6


def test_sample_next_follows_temperature_and_top_k():
    rng = np.random.default_rng(0)
    logits = np.tile(np.log([0.5, 0.3, 0.15, 0.05]), (20000, 1))
    counts = np.bincount(sample_next(logits, rng), minlength=4) / 20000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.015)
    top2 = np.bincount(sample_next(logits, rng, top_k=2), minlength=4) / 20000
    np.testing.assert_allclose(top2, [0.625, 0.375, 0, 0], atol=0.015)
    hot = np.bincount(sample_next(logits, rng, temperature=100.0), minlength=4) / 20000
    np.testing.assert_allclose(hot, 0.25, atol=0.02)
    cold = sample_next(logits, rng, temperature=0.01)
    assert np.all(cold == 0)
    assert sample_next(logits[:3], rng, greedy=True).tolist() == [0, 0, 0]


def test_bad_generation_arguments(model):
    with pytest.raises(ValueError, match="prime must be a non-empty string"):
        generate(model, "", 10)
    with pytest.raises(KeyError, match="'Z' is not in the vocabulary"):
        generate(model, "Zebra", 10)
    with pytest.raises(ValueError, match="length must be an int >= 0"):
        generate(model, "the", -1)
    with pytest.raises(ValueError, match="temperature must be a number >= 0"):
        generate(model, "the", 5, temperature=-1)
    with pytest.raises(ValueError, match="top_k must be None or a positive int"):
        generate(model, "the", 5, top_k=0)
    with pytest.raises(TypeError, match="built with a Vocabulary"):
        generate(LanguageModel(5, embed=2, hidden=4), "ab", 5)
    assert generate(model, "the", 0) == "the"
