"""fit never loses work: Ctrl-C/SIGTERM, non-finite losses, periodic checkpoints, exact resume,
early stopping, callbacks, the overfitting warning."""
from __future__ import annotations

import logging
import math
import signal

import numpy as np
import pytest

from fastrnn import optim
from fastrnn.data import Vocabulary
from fastrnn.io import CheckpointError, load_checkpoint
from fastrnn.models import LanguageModel, Model, SequenceClassifier
from fastrnn.models._training import overfitting, safe_exp

TEXT = "to be or not to be, that is the question. " * 12


def _lm(**kw):
    return LanguageModel(Vocabulary.from_text(TEXT), embed=8, hidden=12, dropout=0.2,
                         seed=3, **kw)


def _interrupt_at(model, step, signum=signal.SIGINT):
    """Send ``signum`` to this process during the model's ``step``-th training step."""
    original, calls = model._forward_backward, []

    def forward_backward(batch):
        calls.append(1)
        if len(calls) == step:
            signal.raise_signal(signum)
        return original(batch)
    object.__setattr__(model, "_forward_backward", forward_backward)


def _weights(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


LM_FIT = dict(epochs=3, seq_len=8, batch_size=4, lr=1e-2, verbose=False)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_saves_and_resume_is_bit_identical(tmp_path, signum):
    reference = _lm()
    full = reference.fit(TEXT, **LM_FIT)
    ckpt = tmp_path / "deep" / "folder" / "run.ckpt"       # folders are created
    model = _lm()
    _interrupt_at(model, 11, signum)
    history = model.fit(TEXT, checkpoint=ckpt, **LM_FIT)
    assert history["stop_reason"] == "interrupted"
    assert len(history["step_loss"]) == 11                 # stopped at the step boundary
    assert signal.Signals(signum).name in history["message"] and str(ckpt) in history["message"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # restored
    resumed = Model.load(ckpt)                             # a training checkpoint loads
    history = resumed.fit(TEXT, resume=ckpt, **LM_FIT)
    assert history["stop_reason"] == "epochs"
    _assert_same(_weights(resumed), _weights(reference))
    assert history["step_loss"] == full["step_loss"] and history["loss"] == full["loss"]


def test_resume_with_shuffling_dropout_and_a_scheduler_is_bit_identical(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 6, 3))
    y = (x[:, :, 0].sum(1) > 0).astype(int)

    def make():
        return SequenceClassifier(2, input_size=3, hidden=8, dropout=0.3, seed=1)

    fit = dict(epochs=4, batch_size=8, seed=5, verbose=False, optimizer="adam",
               validation_data=(x[:10], y[:10]))
    reference = make()
    reference.fit(x, y, scheduler=lambda o: optim.StepLR(o, 1, gamma=0.5), **fit)
    ckpt = tmp_path / "clf.ckpt"
    for stop_at in (7, 10):                                # mid-epoch, then at an epoch end
        model = make()
        _interrupt_at(model, stop_at)
        model.fit(x, y, scheduler=lambda o: optim.StepLR(o, 1, gamma=0.5),
                  checkpoint=ckpt, **fit)
        resumed = make()
        resumed.fit(x, y, scheduler=lambda o: optim.StepLR(o, 1, gamma=0.5), resume=ckpt,
                    **fit)
        _assert_same(_weights(resumed), _weights(reference))


def test_checkpoint_holds_optimizer_rng_and_position(tmp_path):
    ckpt = tmp_path / "m.ckpt"
    model = _lm()
    _interrupt_at(model, 5)
    model.fit(TEXT, checkpoint=ckpt, **LM_FIT)
    _, arrays, meta = load_checkpoint(ckpt)
    state = meta["training"]
    assert state["epoch"] == 0 and state["step_in_epoch"] == 5
    assert set(state["optimizer"]["steps"].values()) == {5}
    assert any(k.startswith("training:optimizer:") and k.endswith(":exp_avg") for k in arrays)
    assert any(k.startswith("training:carry:") for k in arrays)
    assert state["generators"] and all("state" in g for g in state["generators"].values())


def test_resume_refuses_other_data_or_a_plain_checkpoint(tmp_path):
    ckpt = tmp_path / "m.ckpt"
    model = _lm()
    model.fit(TEXT, checkpoint=ckpt, **dict(LM_FIT, epochs=1))
    with pytest.raises(CheckpointError, match="other data or another batch layout"):
        _lm().fit(TEXT, resume=ckpt, **dict(LM_FIT, batch_size=2))
    model.save(tmp_path / "plain.ckpt")
    with pytest.raises(CheckpointError, match="holds no training state"):
        _lm().fit(TEXT, resume=tmp_path / "plain.ckpt", **LM_FIT)
    other = LanguageModel(Vocabulary.from_text(TEXT), embed=8, hidden=10, seed=3)
    with pytest.raises(CheckpointError, match="different model"):
        other.fit(TEXT, resume=ckpt, **LM_FIT)


def test_a_non_finite_loss_stops_and_keeps_the_last_finite_weights(tmp_path, caplog):
    ckpt = tmp_path / "m.ckpt"
    model = _lm()
    seen = []
    original = model._forward_backward

    def forward_backward(batch):
        loss, units = original(batch)
        seen.append(_weights(model))
        return (math.nan if len(seen) == 4 else loss), units
    object.__setattr__(model, "_forward_backward", forward_backward)
    with caplog.at_level(logging.WARNING, logger="fastrnn"):
        history = model.fit(TEXT, checkpoint=ckpt, **LM_FIT)
    assert history["stop_reason"] == "diverged" and len(history["step_loss"]) == 3
    assert "loss became nan" in history["message"] and "last finite" in caplog.text
    _assert_same(_weights(model), seen[3])                 # step 4 was not applied
    _assert_same(_weights(Model.load(ckpt)), seen[3])


def test_a_huge_learning_rate_gives_inf_metrics_not_overflow_errors():
    assert safe_exp(1e4) == math.inf and safe_exp(0.0) == 1.0
    model = _lm()
    history = model.fit(TEXT, epochs=2, seq_len=8, batch_size=4, lr=1e4, clip=None,
                        verbose=False)
    assert history["stop_reason"] in ("diverged", "epochs")
    metrics = model.evaluate(TEXT[:60])
    assert metrics["perplexity"] == safe_exp(metrics["loss"])


def test_periodic_checkpoints_are_written_during_training(tmp_path):
    ckpt = tmp_path / "m.ckpt"

    class Seen:
        steps = []

        def on_epoch_end(self, history):
            self.steps.append(load_checkpoint(ckpt)[2]["training"]["step_in_epoch"])

    model = _lm()
    model.fit(TEXT, checkpoint=ckpt, checkpoint_every=1e-9, callbacks=[Seen()], **LM_FIT)
    assert Seen.steps and all(s > 0 for s in Seen.steps)   # written mid-epoch, before the end
    assert load_checkpoint(ckpt)[2]["training"]["epoch"] == 3


def test_the_checkpoint_path_is_checked_before_training(tmp_path):
    model = _lm()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        model.fit(TEXT, checkpoint=tmp_path, **LM_FIT)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError, match="cannot create its folder"):
        model.fit(TEXT, checkpoint=tmp_path / "file" / "m.ckpt", **LM_FIT)
    with pytest.raises(ValueError, match="checkpoint_every needs checkpoint"):
        model.fit(TEXT, checkpoint_every=5, **LM_FIT)
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['checkpoints'\\]"):
        model.fit(TEXT, checkpoints="x", **LM_FIT)


def test_patience_stops_early_and_callbacks_see_the_history():
    calls = []

    class Record:
        def on_epoch_end(self, history):
            calls.append(len(history["loss"]))

    model = _lm()
    # held-out text the model cannot learn: the loss stops improving quickly
    held = "zq" * 40
    vocab_text = TEXT + held
    model = LanguageModel(Vocabulary.from_text(vocab_text), embed=8, hidden=12, seed=3)
    history = model.fit(TEXT, epochs=40, seq_len=8, batch_size=4, lr=3e-2, verbose=False,
                        validation_data=held, patience=2, callbacks=[Record()])
    assert history["stop_reason"] == "early_stopping", history["val_loss"]
    assert len(history["loss"]) < 40 and calls == list(range(1, len(history["loss"]) + 1))
    best = int(np.argmin(history["val_loss"]))
    assert len(history["val_loss"]) == best + 3            # two epochs without improvement

    class Stop:
        def on_epoch_end(self, history):
            return len(history["loss"]) == 2
    history = _lm().fit(TEXT, callbacks=[Stop()], **dict(LM_FIT, epochs=5))
    assert history["stop_reason"] == "callback" and len(history["loss"]) == 2
    with pytest.raises(TypeError, match=r"callbacks\[0\] must have an on_epoch_end"):
        _lm().fit(TEXT, callbacks=[print], **LM_FIT)
    with pytest.raises(ValueError, match="need validation_data"):
        _lm().fit(TEXT, patience=2, **LM_FIT)


def test_overfitting_is_detected_and_warned_once(caplog):
    rising = [{"loss": v, "train_loss": t} for v, t in ((1.0, 2.0), (1.1, 1.5), (1.2, 1.0))]
    assert overfitting(rising)
    assert not overfitting(rising[:2])
    assert not overfitting([dict(r, loss=1.0) for r in rising])
    model = LanguageModel(Vocabulary.from_text(TEXT + "zq"), embed=8, hidden=32, seed=3)
    with caplog.at_level(logging.WARNING, logger="fastrnn"):
        history = model.fit(TEXT, epochs=30, seq_len=8, batch_size=4, lr=3e-2,
                            verbose=False, validation_data="zqzqzqzq zq zq" * 4,
                            validate_every=7)
    steps = [r["step"] for r in history["validation"]]
    assert steps == sorted(steps) and len(steps) > 30      # every 7 steps and every epoch
    v = history["validation"]
    expected = int(any(overfitting(v[:i]) for i in range(3, len(v) + 1)))
    assert caplog.text.count("overfitting") == expected


def test_one_rate_limited_progress_bar_for_the_whole_run(capsys):
    import time
    start = time.perf_counter()
    _lm().fit(TEXT, epochs=6, seq_len=8, batch_size=4, lr=1e-2, verbose=True,
              validation_data=TEXT[:50])
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err
    assert err.count("\n") == 1                          # one bar, closed once
    assert "epoch 6/6" in err and "val=" in err and "chars/s" in err
    assert err.count("\r") <= 3 + seconds / 0.5          # at most ~2 redraws a second


@pytest.mark.parametrize("options,error,message", [
    (dict(patience=0), ValueError, "patience must be None or a positive int, got 0"),
    (dict(validate_every=1.5), ValueError, "validate_every must be None or a positive int"),
    (dict(checkpoint="x.ckpt", checkpoint_every=-1), ValueError,
     "checkpoint_every must be None or a positive number, got -1"),
    (dict(scheduler="step"), TypeError, "scheduler must be a fastrnn.optim.LRScheduler"),
    (dict(checkpoint_meta=[1]), TypeError, "checkpoint_meta must be a dict, got list"),
    (dict(time_budget=0), ValueError, "time_budget must be None or a positive number"),
])
def test_bad_training_options_name_the_argument(tmp_path, monkeypatch, options, error,
                                                message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=message):
        _lm().fit(TEXT, **dict(LM_FIT, **options))
