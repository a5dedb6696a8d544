"""The ``fastrnn`` command: ``train`` and ``sample`` with tiny budgets, ``check``, errors."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import fastrnn
from fastrnn.cli import main
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
    assert main(["train", "--time-budget", "0.5", "--output", str(ckpt), *TINY]) == 0
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
    with pytest.raises(SystemExit) as info:
        main(["train", str(tmp_path / "missing.txt")])
    assert info.value.code == 2
    assert "cannot read" in capsys.readouterr().err
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(SystemExit) as info:
        main(["train", str(tmp_path / "bin.txt")])
    assert info.value.code == 2 and "not UTF-8" in capsys.readouterr().err
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint at all" * 4)
    with pytest.raises(SystemExit) as info:
        main(["sample", str(tmp_path / "junk.ckpt")])
    assert info.value.code == 1 and "not a fastrnn checkpoint" in capsys.readouterr().err
    ckpt = tmp_path / "m.ckpt"
    main(["train", str(text_file), "--epochs", "1", "--output", str(ckpt), *TINY])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["sample", str(ckpt), "--prime", "XYZ"])
    assert info.value.code == 1 and "'X' is not in the vocabulary" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["train", str(text_file), "--hidden", "0", *TINY[2:]])
    assert info.value.code == 1 and "hidden must be a positive int" in capsys.readouterr().err
