"""The ready-made models: each learns a small synthetic task, backpropagates exact
gradients (central differences in float64), survives save/load bitwise, and rejects bad
input with a clear error."""
from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from fastrnn.data import Vocabulary
from fastrnn.io import CheckpointError, load_checkpoint, save_checkpoint
from fastrnn.losses import cross_entropy, mse
from fastrnn.models import (LanguageModel, Model, OneToManyGenerator, Seq2Seq,
                            SequenceClassifier, SequenceRegressor)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _features(rng, n=400, T=10, F=2):
    """Float sequences ``(n, T, F)`` with lengths in [3, T] and their valid-step mask."""
    x = rng.standard_normal((n, T, F)).astype(np.float32)
    lengths = rng.integers(3, T + 1, n)
    mask = np.arange(T)[None, :] < lengths[:, None]
    return x, lengths, mask


def _reversal(rng, n):
    """Strings over 'abcdef' of length 2-5 and their reversals."""
    src = ["".join(rng.choice(list("abcdef"), rng.integers(2, 6))) for _ in range(n)]
    return src, [s[::-1] for s in src]


WORDS = ["cat", "dog", "bird", "fish", "cow"]


# -- each model learns a small task -------------------------------------------------------

def test_language_model_learns_a_periodic_stream():
    text = "abcde" * 400 + "fghij" * 400                # two repeating phrases
    model = LanguageModel(Vocabulary.from_text(text), embed=8, hidden=24, seed=0)
    history = model.fit(text, epochs=4, seq_len=20, batch_size=8, lr=2e-2, verbose=False)
    assert history["loss"][-1] < 0.1 < history["loss"][0]
    assert model.evaluate("abcdeabcdeabcde")["bpc"] < 0.5
    assert model.predict("abcd")[0].tolist() == model.vocab.encode("bcde").tolist()


def test_language_model_carries_state_across_windows():
    """Blocks ``a 2 2 a+3`` with a random bit ``a``: the last token is predictable only
    from the block's first, which lies in an earlier window when windows are short."""
    rng = np.random.default_rng(1)
    stream = np.concatenate([[a, 2, 2, a + 3] for a in rng.integers(0, 2, 700)])
    model = LanguageModel(5, embed=6, hidden=24, cell="gru", seed=0)
    model.fit(stream[:2400], epochs=6, seq_len=3, batch_size=4, lr=2e-2, verbose=False)
    floor = np.log(2) / 4             # only the random bit, once per 4 tokens, is unknown
    whole = model.evaluate(stream[2400:], seq_len=400)["loss"]
    windows = model.evaluate(stream[2400:], seq_len=2)["loss"]
    assert whole == pytest.approx(windows, rel=1e-4)
    assert windows < floor + 0.05


@pytest.mark.parametrize("pooling, cell", [("last", "lstm"), ("mean", "gru")])
def test_classifier_learns_sign_of_sum_with_lengths(rng, pooling, cell):
    x, lengths, mask = _features(rng)
    y = ((x[:, :, 0] * mask).sum(1) > 0).astype(np.int64)
    model = SequenceClassifier(2, input_size=2, hidden=16, cell=cell, pooling=pooling, seed=0)
    history = model.fit(x[:300], y[:300], lengths[:300], epochs=15, verbose=False, seed=0,
                        validation_data=(x[300:], y[300:], lengths[300:]))
    assert history["val_accuracy"][-1] >= 0.85 > history["val_accuracy"][0] - 0.2
    assert model.evaluate(x[300:], y[300:], lengths[300:])["accuracy"] >= 0.85
    proba = model.predict_proba(x[:5], lengths[:5])
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-5)
    assert model.predict(x[:5], lengths[:5]).tolist() == proba.argmax(1).tolist()


def test_classifier_on_token_ids(rng):
    ids = rng.integers(0, 20, (400, 8))
    y = (ids == 3).any(1).astype(np.int64)                     # about 1/3 positive
    model = SequenceClassifier(2, vocab_size=20, embed=8, hidden=16, cell="gru",
                               bidirectional=True, seed=0)
    model.fit(ids[:300], y[:300], epochs=12, verbose=False, seed=0)
    assert model.evaluate(ids[300:], y[300:])["accuracy"] >= 0.95


def test_classifier_accepts_a_list_of_variable_length_sequences(rng):
    seqs = [rng.standard_normal((n, 2)) for n in rng.integers(2, 9, 200)]
    y = np.array([int(s[:, 0].sum() > 0) for s in seqs])
    model = SequenceClassifier(2, input_size=2, hidden=16, pooling="mean", seed=0)
    model.fit(seqs, y, epochs=15, verbose=False, seed=0)
    assert model.evaluate(seqs, y)["accuracy"] >= 0.85


def test_regressor_many_to_one_learns_the_sum(rng):
    x, lengths, mask = _features(rng)
    y = (x[:, :, 0] * mask).sum(1)
    model = SequenceRegressor(2, hidden=16, seed=0)
    model.fit(x[:300], y[:300], lengths[:300], epochs=20, verbose=False, seed=0)
    result = model.evaluate(x[300:], y[300:], lengths[300:])
    assert result["loss"] < 0.05 * y.var()
    assert model.predict(x[:3], lengths[:3]).shape == (3, 1)


def test_regressor_many_to_many_forecasts_the_delayed_input(rng):
    x, lengths, mask = _features(rng)
    y = np.concatenate([np.zeros((len(x), 1, 1)), x[:, :-1, :1]], axis=1)   # y_t = x_{t-1}
    model = SequenceRegressor(2, many_to_many=True, hidden=16, seed=0)
    model.fit(x[:300], y[:300], lengths[:300], epochs=20, verbose=False, seed=0)
    assert model.evaluate(x[300:], y[300:], lengths[300:])["loss"] < 0.01
    pred = model.predict(x[:4], lengths[:4])
    assert pred.shape == (4, 10, 1)
    assert np.all(pred[~mask[:4]] == 0)                 # nothing past each length


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_seq2seq_learns_to_reverse_strings(rng, cell):
    src, tgt = _reversal(rng, 1100)
    model = Seq2Seq(Vocabulary.from_sequences(src), Vocabulary.from_sequences(tgt), embed=16,
                    hidden=64, cell=cell, seed=0)
    model.fit(src[:1000], tgt[:1000], epochs=25, verbose=False, seed=0)
    result = model.evaluate(src[1000:], tgt[1000:])
    assert result["exact_match"] >= 0.9 and result["token_accuracy"] >= 0.95
    predictions = model.predict(src[1000:1010])
    assert sum(p == t for p, t in zip(predictions, tgt[1000:1010])) >= 8


@pytest.mark.parametrize("cell, layers", [("lstm", 1), ("gru", 2), ("rnn", 1)])
def test_one_to_many_generates_a_word_per_vector(rng, cell, layers):
    vectors = np.eye(5, dtype=np.float32)
    picks = rng.integers(0, 5, 200)
    model = OneToManyGenerator(5, Vocabulary.from_sequences(WORDS), embed=8, hidden=32,
                               layers=layers, cell=cell, seed=0)
    model.fit(vectors[picks], [WORDS[i] for i in picks], epochs=25, verbose=False, seed=0)
    assert model.predict(vectors) == WORDS
    assert model.evaluate(vectors, WORDS)["exact_match"] == 1.0


def test_fit_time_budget_and_history():
    text = "hello world " * 300
    model = LanguageModel(Vocabulary.from_text(text), embed=4, hidden=8, seed=0)
    history = model.fit(text, epochs=None, time_budget=0.3, seq_len=8, batch_size=4,
                        verbose=False)
    assert 0.3 <= history["seconds"] < 10      # stops soon after the budget
    assert len(history["step_loss"]) >= 1 and history["units"] > 0
    assert all(rate > 0 for rate in history["units_per_second"])


def test_fit_shows_a_progress_bar_with_loss_and_throughput(capsys):
    text = "hello world " * 50
    model = LanguageModel(Vocabulary.from_text(text), embed=4, hidden=8, seed=0)
    model.fit(text, epochs=1, seq_len=8, batch_size=4)
    err = capsys.readouterr().err
    assert "epoch 1" in err and "loss=" in err and "chars/s" in err
    model.fit(text, epochs=1, seq_len=8, batch_size=4, verbose=False)
    assert capsys.readouterr().err == ""


# -- exact gradients through every model ---------------------------------------------------

def _check_gradients(model, make, rng, per_param=3, eps=1e-6):
    """Analytic parameter gradients against central differences of the loss.

    ``make()`` runs a training forward and returns ``(loss, backward)``.
    """
    model.train()
    model.zero_grad()
    make()[1]()
    analytic = {name: p.grad.copy() for name, p in model.named_parameters()}
    for name, p in model.named_parameters():
        for _ in range(per_param):
            idx = tuple(rng.integers(0, n) for n in p.shape)
            if name.endswith("embedding.weight"):          # pick a row that is used
                idx = (int(np.argmax(np.abs(analytic[name]).sum(1))), idx[1])
            old = p[idx]
            p[idx] = old + eps
            up = make()[0]
            p[idx] = old - eps
            down = make()[0]
            p[idx] = old
            numeric = (up - down) / (2 * eps)
            assert analytic[name][idx] == pytest.approx(numeric, rel=1e-5, abs=1e-8), name


def test_gradients_language_model(rng):
    model = LanguageModel(7, embed=5, hidden=6, layers=2, cell="lstm", dtype=np.float64,
                          seed=0)
    ids = rng.integers(0, 7, (3, 6))
    state = (rng.standard_normal((2, 3, 6)), rng.standard_normal((2, 3, 6)))

    def make():
        logits, _ = model(ids[:, :-1], state)
        loss, dlogits = cross_entropy(logits, ids[:, 1:])
        return loss, lambda: model.backward(dlogits)
    _check_gradients(model, make, rng)


@pytest.mark.parametrize("pooling, cell, bidirectional",
                         [("last", "lstm", True), ("mean", "gru", False),
                          ("last", "rnn", False)])
def test_gradients_classifier(rng, pooling, cell, bidirectional):
    model = SequenceClassifier(3, input_size=4, hidden=5, layers=2, cell=cell,
                               bidirectional=bidirectional, pooling=pooling,
                               dtype=np.float64, seed=0)
    x, y, lengths = rng.standard_normal((4, 6, 4)), np.array([0, 2, 1, 2]), np.array([6, 2, 4, 1])

    def make():
        loss, dlogits = cross_entropy(model(x, lengths), y)
        return loss, lambda: model.backward(dlogits)
    _check_gradients(model, make, rng)


def test_gradients_token_classifier(rng):
    model = SequenceClassifier(2, vocab_size=9, embed=4, hidden=5, dtype=np.float64, seed=0)
    ids, y = rng.integers(0, 9, (3, 5)), np.array([0, 1, 1])

    def make():
        loss, dlogits = cross_entropy(model(ids, [5, 3, 1]), y)
        return loss, lambda: model.backward(dlogits)
    _check_gradients(model, make, rng)


def test_gradients_regressor_many_to_many(rng):
    model = SequenceRegressor(3, 2, many_to_many=True, hidden=5, cell="gru", dtype=np.float64,
                              seed=0)
    x, y, lengths = rng.standard_normal((3, 5, 3)), rng.standard_normal((3, 5, 2)), [5, 2, 3]
    mask = np.arange(5)[None, :] < np.array(lengths)[:, None]

    def make():
        loss, dout = mse(model(x, lengths), y, mask)
        return loss, lambda: model.backward(dout)
    _check_gradients(model, make, rng)


def test_gradients_seq2seq(rng):
    src, tgt = _reversal(rng, 4)
    model = Seq2Seq(Vocabulary.from_sequences(src), Vocabulary.from_sequences(tgt), embed=4,
                    hidden=5, layers=2, dtype=np.float64, seed=0)

    def make():
        logits, outputs = model(src, tgt)
        loss, dlogits = cross_entropy(logits, outputs)
        return loss, lambda: model.backward(dlogits)
    _check_gradients(model, make, rng)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gradients_one_to_many(rng, cell):
    model = OneToManyGenerator(3, Vocabulary.from_sequences(WORDS), embed=4, hidden=5,
                               layers=2, cell=cell, dtype=np.float64, seed=0)
    v = rng.standard_normal((3, 3))

    def make():
        logits, outputs = model(v, WORDS[:3])
        loss, dlogits = cross_entropy(logits, outputs)
        return loss, lambda: model.backward(dlogits)
    _check_gradients(model, make, rng)


# -- checkpoints -----------------------------------------------------------------------------

def _trained_models(rng):
    """One briefly trained model of each kind, and an input to compare outputs on."""
    x, lengths, _ = _features(rng, n=40)
    text = "the cat sat on the mat. " * 20
    src, tgt = _reversal(rng, 40)
    models = [
        (LanguageModel(Vocabulary.from_text(text), embed=4, hidden=8, layers=2, dropout=0.2),
         text, lambda m: m.predict_proba("the cat")),
        (SequenceClassifier(3, input_size=2, hidden=8, cell="gru", bidirectional=True),
         (x, lengths % 3, lengths), lambda m: m.predict_proba(x, lengths)),
        (SequenceRegressor(2, 1, many_to_many=True, hidden=8, cell="rnn"),
         (x, x[..., :1], lengths), lambda m: m.predict(x, lengths)),
        (Seq2Seq(Vocabulary.from_sequences(src), Vocabulary.from_sequences(tgt), hidden=8),
         (src, tgt), lambda m: m(src, tgt)[0]),
        (OneToManyGenerator(5, Vocabulary.from_sequences(WORDS), hidden=8, cell="gru"),
         (np.eye(5), WORDS), lambda m: m.predict(np.eye(5))),
    ]
    for model, data, _ in models:
        args = (data,) if isinstance(data, str) else data
        model.fit(*args, epochs=1, verbose=False)
    return models


def test_save_load_reproduces_outputs_bitwise(rng, tmp_path):
    for model, _, output in _trained_models(rng):
        path = tmp_path / f"{type(model).__name__}.ckpt"
        model.save(path)
        loaded = Model.load(path)
        assert type(loaded) is type(model) and loaded.config == model.config
        for (name, a), (_, b) in zip(model.named_parameters(), loaded.named_parameters()):
            assert a.value.dtype == b.value.dtype and np.array_equal(a.value, b.value), name
        with model.inference():
            expected = output(model)
        with loaded.inference():
            got = output(loaded)
        if isinstance(expected, list):
            assert got == expected
        else:
            assert got.dtype == expected.dtype and np.array_equal(got, expected)
        assert type(model).load(path).config == model.config


def test_language_model_checkpoint_keeps_the_vocabulary(tmp_path):
    vocab = Vocabulary.from_text("hello, world")
    LanguageModel(vocab, embed=4, hidden=8, dtype=np.float64).save(tmp_path / "lm.ckpt")
    loaded = LanguageModel.load(tmp_path / "lm.ckpt")
    assert loaded.vocab == vocab and loaded.dtype == np.float64


def test_load_rejects_wrong_class_corrupt_and_mismatched_files(tmp_path):
    path = tmp_path / "lm.ckpt"
    LanguageModel(5, embed=4, hidden=8).save(path)
    with pytest.raises(CheckpointError, match="holds a LanguageModel, not a Seq2Seq"):
        Seq2Seq.load(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "corrupt.ckpt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        Model.load(tmp_path / "corrupt.ckpt")
    (tmp_path / "short.ckpt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        Model.load(tmp_path / "short.ckpt")
    config, arrays, meta = load_checkpoint(path)
    config["config"]["hidden"] = 9                 # the weights no longer fit the config
    save_checkpoint(tmp_path / "mismatch.ckpt", config, arrays, meta)
    with pytest.raises(CheckpointError, match="do not fit a LanguageModel"):
        Model.load(tmp_path / "mismatch.ckpt")
    save_checkpoint(tmp_path / "other.ckpt", {"something": "else"}, arrays)
    with pytest.raises(CheckpointError, match="does not hold a fastrnn model"):
        Model.load(tmp_path / "other.ckpt")


# -- clear errors ----------------------------------------------------------------------------

def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="exactly one of input_size"):
        SequenceClassifier(2)
    with pytest.raises(ValueError, match="exactly one of input_size"):
        SequenceClassifier(2, input_size=3, vocab_size=5)
    with pytest.raises(ValueError, match="cell must be one of"):
        LanguageModel(5, cell="transformer")
    with pytest.raises(ValueError, match="pooling must be one of"):
        SequenceClassifier(2, input_size=3, pooling="max")
    with pytest.raises(ValueError, match="hidden must be a positive int"):
        SequenceRegressor(3, hidden=0)
    with pytest.raises(TypeError, match="vocab must be a Vocabulary or an int"):
        LanguageModel("abc")
    with pytest.raises(ValueError, match="'<bos>' and '<eos>'"):
        Seq2Seq(Vocabulary.from_text("abc"), Vocabulary.from_text("abc"))


def test_bad_fit_and_predict_inputs(rng):
    model = SequenceClassifier(2, input_size=3, hidden=4)
    x = rng.standard_normal((5, 4, 3))
    with pytest.raises(ValueError, match=r"x must be a float array \(N, T, 3\)"):
        model.fit(x[..., :2], np.zeros(5, int), verbose=False)
    with pytest.raises(ValueError, match=r"y must be integer class labels of shape \(5,\)"):
        model.fit(x, np.zeros(4, int), verbose=False)
    with pytest.raises(ValueError, match=r"y must lie in \[0, 2\)"):
        model.fit(x, np.full(5, 2), verbose=False)
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, T=4\]"):
        model.predict(x, lengths=[1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="give epochs, time_budget, or both"):
        model.fit(x, np.zeros(5, int), epochs=None, verbose=False)
    with pytest.raises(ValueError, match="optimizer must be"):
        model.fit(x, np.zeros(5, int), optimizer="lbfgs", verbose=False)
    with pytest.raises(ValueError, match=r"y must have shape \(5, 1\)"):
        SequenceRegressor(3, hidden=4).fit(x, np.zeros((5, 2)), verbose=False)
    lm = LanguageModel(Vocabulary.from_text("abc"), embed=2, hidden=4)
    with pytest.raises(KeyError, match="'z' is not in the vocabulary"):
        lm.fit("abcz" * 20, verbose=False)
    with pytest.raises(ValueError, match="too short for batch_size=32"):
        lm.fit("abc", verbose=False)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 3\)"):
        lm.predict(np.array([[0, 5]]))
    with pytest.raises(TypeError, match="has no Vocabulary"):
        LanguageModel(3, embed=2, hidden=4).fit("abc" * 30, verbose=False)


def test_diverging_training_stops_with_a_message():
    text = "abcabd" * 100
    model = LanguageModel(Vocabulary.from_text(text), embed=4, hidden=8, cell="rnn", seed=0)
    model.net.head.weight[0, 0] = np.inf           # as after an exploding update
    with np.errstate(all="ignore"):
        history = model.fit(text, epochs=1, seq_len=8, batch_size=4, verbose=False)
    assert history["stop_reason"] == "diverged" and history["step_loss"] == []
    assert "lower the learning rate" in history["message"]
