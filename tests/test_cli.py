"""The ``fastrnn`` command: ``train`` and ``sample`` with tiny budgets, ``check``, errors."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fastrnn
from fastrnn.cli import main
from fastrnn.io import load_checkpoint
from fastrnn.models import LanguageModel

TINY = ["--hidden", "16", "--embed", "8", "--seq-len", "16", "--batch", "4", "--quiet"]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("to be or not to be, that is the question. " * 30, encoding="utf-8")
    return path


def test_train_on_a_file_then_sample(tmp_path, text_file, capsys):
    ckpt = tmp_path / "m.ckpt"
    assert main(["train", str(text_file), "--epochs", "2", "--time-budget", "30",
                 "--cell", "gru", "--output", str(ckpt), *TINY]) == 0
    out = capsys.readouterr().out
    assert "chars/s" in out and "bits per character" in out and "final training loss" in out
    assert ckpt.exists()
    model = LanguageModel.load(ckpt)
    assert model.config["cell"] == "gru" and model.config["hidden"] == 16

    args = ["sample", str(ckpt), "--prime", "to be", "--length", "40", "--seed", "7"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.startswith("to be") and len(first.rstrip("\n")) == 45
    assert main(args) == 0
    assert capsys.readouterr().out == first                  # same seed, same text
    assert main(["sample", str(ckpt), "--prime", "to", "--length", "10", "--greedy"]) == 0
    assert main(["sample", str(ckpt), "--length", "10", "--top-k", "3",
                 "--temperature", "0.5"]) == 0


def test_train_on_the_default_corpus_with_a_time_budget(tmp_path, capsys):
    ckpt = tmp_path / "default.ckpt"
    assert main(["train", "--time-budget", "0.5", "--output", str(ckpt), *TINY[:-1]]) == 0
    out = capsys.readouterr().out
    assert "embedded default corpus (pydoc_data.topics)" in out
    assert "held-out tail" in out and "bits per character" in out
    assert LanguageModel.load(ckpt).vocab_size > 60


def test_progress_bar_shows_loss_and_chars_per_second(tmp_path, text_file, capsys):
    ckpt = tmp_path / "m.ckpt"
    args = ["train", str(text_file), "--epochs", "1", "--output", str(ckpt), *TINY]
    assert main(args[:-1]) == 0                               # without --quiet
    err = capsys.readouterr().err
    assert "loss=" in err and "chars/s" in err


def test_installed_command_runs(tmp_path, text_file):
    ckpt = tmp_path / "m.ckpt"
    env = dict(os.environ, PYTHONIOENCODING="utf-8", FASTRNN_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "fastrnn", "train", str(text_file),
                          "--epochs", "1", "--output", str(ckpt), *TINY],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    run = subprocess.run([sys.executable, "-m", "fastrnn", "sample", str(ckpt),
                          "--prime", "be", "--length", "5"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0 and run.stdout.startswith("be"), run.stderr


def test_check_still_works(capsys):
    assert main(["check", "--steps", "5", "--batch", "2", "--hidden", "8",
                 "--input-size", "4"]) == 0
    assert "OK" in capsys.readouterr().out


def test_errors_are_one_line_with_an_exit_status(tmp_path, text_file, capsys):
    def fails(argv, message, code=2):
        with pytest.raises(SystemExit) as info:
            main(argv)
        err = capsys.readouterr().err
        assert info.value.code == code and message in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 1 + err.count("usage")

    fails(["train", str(tmp_path / "missing.txt")], "cannot read TEXT_FILE")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    fails(["train", str(tmp_path / "bin.txt")], "not UTF-8")
    fails(["train", str(tmp_path)], "Is a directory")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint at all" * 4)
    fails(["sample", str(tmp_path / "junk.ckpt")], "not a fastrnn checkpoint")
    fails(["sample", str(tmp_path / "nothing.ckpt")], "No such file")
    fails(["sample", str(tmp_path)], "is a directory")
    ckpt = tmp_path / "m.ckpt"
    main(["train", str(text_file), "--epochs", "1", "--output", str(ckpt), *TINY])
    capsys.readouterr()
    fails(["sample", str(ckpt), "--prime", "XYZ"], "--prime: 'X' is not in the vocabulary")
    fails(["train", str(text_file), "--output", str(tmp_path)], "--output")
    fails(["train", str(text_file), "--resume", str(tmp_path / "junk.ckpt")],
          "not a fastrnn checkpoint")
    fails(["train", "--resume", str(ckpt), "--distributed"], "--resume does not work with "
                                                             "--distributed")


@pytest.mark.parametrize("argv,message", [
    (["train", "--hidden", "0"], "argument --hidden: expected an integer >= 1, got '0'"),
    (["train", "--batch", "two"], "argument --batch: expected an integer, got 'two'"),
    (["train", "--holdout", "1"], "argument --holdout: expected a number in [0, 1)"),
    (["train", "--clip", "-1"], "argument --clip: expected a number > 0"),
    (["train", "--lr", "nan"], "argument --lr: expected a finite number"),
    (["train", "--time-budget", "0"], "argument --time-budget: expected a number > 0"),
    (["train", "--dropout", "1.5"], "argument --dropout"),
    (["sample", "x.ckpt", "--top-k", "0"], "argument --top-k: expected an integer >= 1"),
    (["sample", "x.ckpt", "--length", "-1"], "argument --length: expected an integer >= 0"),
    (["check", "--steps", "0"], "argument --steps"),
    (["train", "--quiet", "--verbose"], "not allowed with argument"),
])
def test_flags_are_validated_by_their_own_names(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_describes_every_command_with_defaults(capsys):
    for command in ("train", "sample", "check"):
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        out = capsys.readouterr().out
        assert info.value.code == 0 and "``" not in out and "(default:" in out
    from fastrnn.cli import _subparser, build_parser
    parser = build_parser()
    for command in ("train", "sample", "check"):
        for action in _subparser(parser, command)._actions:
            assert action.help, (command, action.dest)          # --cell, --dropout, --dtype
            if action.option_strings and action.default not in (False, "==SUPPRESS=="):
                assert "%(default)s" in action.help, (command, action.dest)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: lstm)" in out and "(default: 0.05)" in out and "(default: 5.0)" in out
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == \
        f"fastrnn {fastrnn.__version__}"


def test_holdout_zero_clip_none_and_epochs_without_a_time_budget(tmp_path, text_file, capsys):
    from fastrnn.cli import _train
    ckpt = tmp_path / "m.ckpt"
    assert main(["train", str(text_file), "--epochs", "3", "--holdout", "0", "--clip", "none",
                 "--output", str(ckpt), *TINY]) == 0
    out = capsys.readouterr().out
    assert "3 epoch(s)" in out and "held-out" not in out
    stored = load_checkpoint(ckpt)[2]["training"]["user"]["cli"]
    assert stored["clip"] is None and stored["holdout"] == 0 and stored["time_budget"] is None
    args = _train.argparse.Namespace(epochs=3, time_budget=None)
    assert _train._time_budget(args) is None                  # --epochs alone: no cap
    args.epochs = None
    assert _train._time_budget(args) == _train.DEFAULT_TIME_BUDGET


def test_output_folder_is_created_and_plot_is_written(tmp_path, text_file, capsys):
    pytest.importorskip("matplotlib")
    ckpt = tmp_path / "new" / "folder" / "m.ckpt"
    assert main(["train", str(text_file), "--epochs", "2", "--validate-every", "5", "--plot",
                 "--output", str(ckpt), *TINY]) == 0
    png = ckpt.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"saved {png}" in capsys.readouterr().out


def test_verbose_logs_and_quiet_hides_the_bar(tmp_path, text_file, capsys):
    ckpt = tmp_path / "m.ckpt"
    assert main(["train", str(text_file), "--epochs", "1", "--output", str(ckpt),
                 *TINY[:-1], "--verbose"]) == 0
    err = capsys.readouterr().err
    assert "fastrnn: debug: saved checkpoint" in err and "train:" in err
    assert main(["train", str(text_file), "--epochs", "1", "--output", str(ckpt), *TINY]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "training on" not in captured.out


# -- the real entry point, in a subprocess --------------------------------------------------

def _command():
    """The installed ``fastrnn`` script next to this Python, else ``python -m fastrnn``."""
    script = Path(sys.executable).with_name("fastrnn")
    return [str(script)] if script.exists() else [sys.executable, "-m", "fastrnn"]


ENV = dict(os.environ, PYTHONIOENCODING="utf-8", FASTRNN_NUM_THREADS="1")


def _start(args, **kw):
    return subprocess.Popen(_command() + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV, **kw)


@pytest.fixture
def long_text(tmp_path):
    path = tmp_path / "long.txt"
    words = np.random.default_rng(0).choice(["to", "be", "or", "not", "that", "is", "the",
                                             "question", ",", "."], 12000)
    path.write_text(" ".join(words), encoding="utf-8")
    return path


def test_ctrl_c_saves_a_checkpoint_and_resume_is_exact(tmp_path, long_text):
    """SIGINT during `fastrnn train`: one line, exit 130, a checkpoint; `--resume` then ends
    on the same weights as a run never interrupted."""
    flags = ["--epochs", "3", "--seed", "1", "--dropout", "0.1", *TINY]
    full = tmp_path / "full.ckpt"
    done = subprocess.run(_command() + ["train", str(long_text), "-o", str(full), *flags],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr
    ckpt = tmp_path / "run.ckpt"
    proc = _start(["train", str(long_text), "-o", str(ckpt), *flags[:-1]])
    assert proc.stdout.readline().startswith("training on")   # fit is about to start
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    if proc.returncode == 0:
        pytest.skip("training finished before the signal arrived (a very fast machine)")
    assert proc.returncode == 130, err
    lines = [l for l in err.splitlines() if l.strip() and not l.startswith("train:")
             and "step/s" not in l]
    assert len(lines) == 1 and "interrupted after" in lines[0], err
    assert f"fastrnn train --resume {ckpt}" in lines[0] and "Traceback" not in err
    state = load_checkpoint(ckpt)[2]["training"]
    assert 0 < state["epoch"] * 10**6 + state["step_in_epoch"]
    resumed = subprocess.run(_command() + ["train", "--resume", str(ckpt), "--quiet"],
                             capture_output=True, text=True, env=ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    a, b = LanguageModel.load(full).state_dict(), LanguageModel.load(ckpt).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_sample_streams_into_a_closed_pipe_without_a_traceback(tmp_path, text_file):
    ckpt = tmp_path / "m.ckpt"
    assert main(["train", str(text_file), "--epochs", "1", "--output", str(ckpt), *TINY]) == 0
    proc = _start(["sample", str(ckpt), "--length", "1000000000", "--seed", "1"])
    first = proc.stdout.read(20)                  # arrives long before the billion chars
    proc.stdout.close()                           # `| head -c 20`
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and len(first) == 20
    assert err == "", err
    proc = _start(["sample", str(ckpt), "--length", "1000000000"])
    proc.stdout.read(20)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    assert "Traceback" not in proc.stderr.read()


def test_bad_thread_count_in_the_environment_is_one_line(tmp_path):
    env = dict(ENV, FASTRNN_NUM_THREADS="abc")
    run = subprocess.run(_command() + ["check", "--steps", "2", "--batch", "1", "--hidden",
                                       "4", "--input-size", "3"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0 and "OK" in run.stdout
    assert run.stderr.strip().splitlines() == [
        "fastrnn: ignoring FASTRNN_NUM_THREADS='abc' (expected an integer >= 1); using "
        f"{fastrnn._threads._available_cores()} threads"]
