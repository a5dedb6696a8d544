"""The training-speed scripts in bench/ run end to end on the smallest settings and print
the tables their docstrings promise (timings are not checked: they belong to the scripts)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_bf16_train_reports_both_precisions_and_the_layer():
    out = _run("bf16_train.py", "--rounds", "1", "--steps", "2", "--threads", "1",
               "--layer-repeats", "1")
    rows = [line for line in out.splitlines() if line.startswith("| 1 |")]
    assert len(rows) == 3, out                 # the loop, then the layer's two timings
    assert "training forward" in out and "training forward+backward" in out


def test_train_speed_compares_with_torch():
    pytest.importorskip("torch")
    out = _run("train_speed.py", "--rounds", "1", "--steps", "2", "--threads", "1")
    row = [line for line in out.splitlines() if line.startswith("| 1 |")]
    assert len(row) == 1 and float(row[0].split("|")[4]) > 0, out
