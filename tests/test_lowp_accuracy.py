"""Smoke test of bench/lowp_accuracy.py in --quick mode: tiny models, every engine that is
installed, the bench-shape errors on two shapes. The measured figures are in the README
("Precision"); this checks that the script runs, that the torch copy and the ONNX export
of the trained weights are exact (their float32 scores equal fastrnn's), and that the
reduced-precision scores and errors are finite and near float32."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

import fastrnn
from conftest import import_backend
from helpers import load_script

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "lowp_accuracy.py"


@pytest.fixture(scope="module")
def result():
    import_backend("ops")
    before = fastrnn.get_num_threads()
    module = load_script(SCRIPT, "fastrnn_bench_lowp_accuracy")
    try:
        yield module.main(["--quick", "--shapes", "tiny,step"])
    finally:
        fastrnn.set_num_threads(before)


def _installed(module):
    return importlib.util.find_spec(module) is not None


def _torch_bf16(cell):
    """Whether torch is installed and runs the cell under bf16 autocast on this CPU."""
    if not _installed("torch"):
        return False
    from fastrnn.bench.peers import torch_bf16_runs
    return torch_bf16_runs(cell)


def test_every_task_runs_or_says_why_not(result):
    done = {r["task"] for r in result["tasks"]}
    assert "char-LM" in done                               # the embedded corpus: always
    expected = {"sequential digits": "digits", "CO2 forecaster": "co2"}
    for task, key in expected.items():
        assert (task in done) != (key in result["skipped"])
    for r in result["tasks"]:
        engines = r["engines"]
        assert {"fastrnn float32", "fastrnn bf16", "fastrnn int8"} <= set(engines)
        assert ("torch bf16 autocast" in engines) == _torch_bf16("lstm")   # the tasks' cell
        assert any(n.startswith("ort int8") for n in engines) == _installed("onnxruntime")
        for row in engines.values():
            assert math.isfinite(row["score"])


def test_peers_run_the_same_trained_weights(result):
    for r in result["tasks"]:
        base = r["engines"]["fastrnn float32"]["score"]
        for name in ("torch float32", "ort float32"):
            if name in r["engines"]:
                assert r["engines"][name]["score"] == pytest.approx(base, rel=1e-5, abs=1e-6)
        for name in ("fastrnn bf16", "fastrnn int8"):     # tiny models: near float32
            assert r["engines"][name]["score"] == pytest.approx(base, rel=0.05, abs=0.03)


def test_bench_shape_errors(result):
    rows = {(e["cell"], e["shape"]): e for e in result["bench_shape_errors"]}
    assert set(rows) == {(c, s) for c in ("rnn", "lstm", "gru") for s in ("tiny", "step")}
    for (cell, _), e in rows.items():
        assert 0 < e["fastrnn bf16"] < 2e-2 and 0 < e["fastrnn int8"] < 5e-2
        if _torch_bf16(cell):
            assert 0 < e["torch bf16"] < 5e-2
        if _installed("onnxruntime"):                  # ORT has int8 LSTM only
            assert (e["onnxruntime int8"] is None) == (cell != "lstm")


def test_bad_options(capsys):
    module = load_script(SCRIPT, "fastrnn_bench_lowp_accuracy_options")
    for argv in (["--tasks", "mnist"], ["--shapes", "huge"]):
        with pytest.raises(SystemExit):
            module.main(argv)
    assert "unknown" in capsys.readouterr().err
