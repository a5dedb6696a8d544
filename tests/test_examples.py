"""Smoke tests of the examples: each example's ``main`` runs end to end in ``--quick`` mode
(tiny data, one or two epochs) and returns its metrics. The real results are in
examples/README.md; these only show that the scripts still work with the library."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

import fastrnn
from helpers import load_script

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(autouse=True)
def _restore_threads():
    before = fastrnn.get_num_threads()
    yield
    fastrnn.set_num_threads(before)


def run_example(name: str, monkeypatch) -> dict:
    monkeypatch.syspath_prepend(str(EXAMPLES))            # for their `import _common`
    module = load_script(EXAMPLES / f"{name}.py", f"fastrnn_example_{name}")
    return module.main(["--quick", "--no-verbose", "--seed", "0"])


def test_digits(monkeypatch):
    pytest.importorskip("sklearn")
    result = run_example("digits", monkeypatch)
    assert 0.0 <= result["test_accuracy"] <= 1.0 and result["test_samples"] == 450


def test_forecast(monkeypatch):
    pytest.importorskip("statsmodels")
    result = run_example("forecast", monkeypatch)
    assert math.isfinite(result["model_rmse"]) and result["persistence_rmse"] > 0


def test_char_lm(monkeypatch):
    result = run_example("char_lm", monkeypatch)
    assert 0 < result["held_out_bpc"] < 8 and result["sample"].startswith("The ")


def test_dates(monkeypatch):
    result = run_example("dates", monkeypatch)
    assert 0.0 <= result["exact_match"] <= 1.0 and result["test_pairs"] == 50
