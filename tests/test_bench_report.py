"""The benchmark report's logic (fastrnn.bench) on a tiny grid; no timing assertions."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import import_backend

bench = pytest.importorskip("fastrnn.bench")


def test_grid_and_flops():
    cases = bench.make_cases(["lstm"], ["tiny", "step"], ["forward", "train"], [1, 2])
    labels = [c.label for c in cases]
    assert "lstm-step-train-1t" not in labels            # streaming is forward-only
    assert labels[0] == "lstm-tiny-forward-1t" and len(cases) == 6
    tiny = bench.Case.of("gru", "tiny", "forward", 1)
    assert tiny.flops == 2 * 1 * 100 * (64 + 64) * 3 * 64
    assert bench.Case.of("gru", "tiny", "train", 1).flops == 3 * tiny.flops


def _record(medians, flops=1e9, errors=None):
    case = bench.Case.of("lstm", "medium", "forward", 1)
    return {"case": vars(case), "label": case.label, "flops": flops, "median_s": medians,
            "samples_s": {k: [v] for k, v in medians.items()},
            "max_rel_error": errors or {}, "cpu_per_wall": {}}


def test_summary_takes_the_fastest_peer_only():
    s = bench.summarize(_record({"fastrnn": 0.02, "reference": 0.001, "torch": 0.04,
                                 "jax": 0.03, "sgemm": 0.01}))
    assert s["fastest_peer"] == "jax"                     # not the reference, not sgemm
    assert s["ratio"] == pytest.approx(1.5)
    assert s["gflops"] == pytest.approx(50.0)
    assert s["sgemm_share"] == pytest.approx(0.5)
    assert bench.summarize(_record({"fastrnn": 0.02}))["ratio"] is None
    assert s["peak_share"] is None                        # no peak given
    assert bench.summarize(_record({"fastrnn": 0.02}), core_peak=100.0)["peak_share"] \
        == pytest.approx(0.5)


def test_format_report_tables():
    result = {"records": [_record({"fastrnn": 0.02, "torch": 0.04, "sgemm": 0.01},
                                  errors={"torch": 0.5})],
              "entries": ["fastrnn", "reference", "torch", "sgemm"],
              "environment": {"cpu": "test cpu", "cpus": 2, "versions": {"numpy": "x"}},
              "sgemm_peak_gflops": {1: 100.0},
              "fma_peak_gflops": {"float32": 200.0, "isa": "avx2"},
              "memory": [{"cell": "lstm", "shape": "medium", "method": "VmHWM",
                          "bytes": {"fastrnn": 2**20, "torch": 2 * 2**20}}]}
    text = bench.format_report(result)
    assert "| LSTM medium | 20 | 40 ⚠ | 10 | 2.00 (torch) | 50.0 | 50% | 25% |" in text
    assert "200.0 GFLOP/s (avx2)" in text
    assert "reference" not in text.split("\n| case")[1].split("\n")[0]   # no empty column
    assert "| LSTM medium | 1.0 | 2.0 | 0.50 |" in text
    assert "⚠: output differs" in text


@pytest.mark.parametrize("peer", ["torch", "onnxruntime", "jax"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("mode", ["forward", "train", "step"])
def test_peers_compute_what_fastrnn_computes(peer, cell, mode):
    """Gate orders, biases and states of every peer's runner, on a small problem."""
    import_backend("ops")
    pytest.importorskip(peer)
    shape, dims = ("step", (1, 1, 5, 4)) if mode == "step" else ("small", (3, 4, 5, 6))
    case = bench.Case.of(cell, shape, "forward" if mode == "step" else mode, 1, dims)
    problem = bench.make_problem(case)
    runner = bench.PEER_FACTORIES[peer]().make(case, problem)
    if runner is None:
        pytest.skip(f"{peer} has no {mode}")
    expected = bench.FastrnnPeer("ops").make(case, problem).check()[0]
    got = runner.check()[0]
    assert set(got) == set(expected)
    assert bench.measure._max_rel_error(got, expected) < 1e-4
    runner.time(2)                                        # the timed call runs


def test_fma_peak_counts_its_flops_at_every_isa_level():
    core = import_backend("_core")
    assert core.fma_peak_flops(0) == 0
    with pytest.raises(ValueError, match="iterations"):
        core.fma_peak_flops(-1)
    for isa in core.available_isas():
        # lanes x accumulators x 2 FLOPs per multiply-add, per iteration
        lanes = {"portable": 4, "avx2": 8, "avx512": 16, "avx512_bf16": 16}[isa]
        accumulators = 24 if isa.startswith("avx512") else 12  # avx512_bf16: same build
        gflops, level = bench.fma_peak_gflops("float32", isa=isa, seconds=0.002, repeats=1)
        assert level == isa and gflops > 0
        saved = core.get_isa()
        core.set_isa(isa)
        try:
            assert core.fma_peak_flops(10) == 10 * lanes * accumulators * 2
            assert core.fma_peak_flops(10, True) == 10 * lanes // 2 * accumulators * 2
        finally:
            core.set_isa(saved)
    assert core.get_isa() == core.available_isas()[-1]    # restored
    with pytest.raises(ValueError, match="dtype"):
        bench.fma_peak_gflops("int8")


def test_main_on_a_tiny_grid(tmp_path):
    import_backend("ops")
    code = bench.main(["--cells", "rnn,gru", "--shapes", "tiny,step", "--threads", "1",
                       "--entries", "fastrnn,reference,sgemm", "--quick", "--rounds", "1",
                       "--no-memory", "--json", "--output", str(tmp_path)])
    assert code == 0
    text = (tmp_path / "bench.md").read_text()
    assert "| GRU step |" in text and "| RNN tiny |" in text
    assert "forward + backward (training), 1 thread" in text
    raw = json.loads((tmp_path / "bench.json").read_text())
    assert {r["label"] for r in raw["records"]} == {
        "rnn-tiny-forward-1t", "rnn-step-forward-1t", "gru-tiny-forward-1t",
        "gru-step-forward-1t", "rnn-tiny-train-1t", "gru-tiny-train-1t"}
    for r in raw["records"]:
        assert all(e is None or e < 1e-4 for e in r["max_rel_error"].values())
    assert not (tmp_path / "bench.png").exists()          # no peer: no ratio to chart


def test_chart(tmp_path):
    pytest.importorskip("matplotlib")
    result = {"records": [_record({"fastrnn": 0.02, "torch": 0.04})]}
    assert bench.write_chart(result, tmp_path / "c.png") == tmp_path / "c.png"
    assert (tmp_path / "c.png").stat().st_size > 0


def test_memory_probe_runs_in_a_fresh_process():
    import_backend("ops")
    cases = [bench.Case.of("lstm", "small", "train", 1, (4, 10, 16, 32))]
    (record,) = bench.run_memory(cases, ["fastrnn"], bench.Settings(), log=lambda *a: None)
    nbytes = record["bytes"]["fastrnn"]
    # at least the saved activations of the forward: 10*4*32 units x several floats each
    assert record["method"] in ("VmHWM", "ru_maxrss") and nbytes >= 0
    assert np.isfinite(nbytes)


def test_bad_options_are_rejected():
    import argparse
    parser = bench.add_arguments(argparse.ArgumentParser())
    for argv in (["--cells", "elman"], ["--threads", "0"], ["--modes", "backward"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
