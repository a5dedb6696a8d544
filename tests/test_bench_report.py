"""The benchmark report's logic (fastrnn.bench) on a tiny grid; no timing assertions."""
from __future__ import annotations

import importlib.util
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
                       "--precision", "float32", "--no-memory", "--json",
                       "--output", str(tmp_path)])
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


# --------------------------------------------------------------------------- reduced precision

def test_reduced_precision_cases_are_inference_only():
    cases = bench.make_cases(["gru"], ["tiny", "step"], ["forward", "train"], [1],
                             ["float32", "bf16", "int8"])
    labels = [c.label for c in cases]
    assert labels == ["gru-tiny-forward-1t", "gru-step-forward-1t", "gru-tiny-train-1t",
                      "gru-tiny-forward-1t-bf16", "gru-step-forward-1t-bf16",
                      "gru-tiny-forward-1t-int8", "gru-step-forward-1t-int8"]
    assert bench.case_entries(bench.ENTRIES, "bf16") == ["fastrnn", "torch"]
    assert bench.case_entries(bench.ENTRIES, "int8") == ["fastrnn", "onnxruntime"]
    assert bench.case_entries(["fastrnn", "jax"], "int8") == ["fastrnn"]


def _lowp_record(precision, medians, errors=None, notes=None, cell="lstm"):
    case = bench.Case.of(cell, "medium", "forward", 1, precision=precision)
    record = {"case": vars(case), "label": case.label, "flops": 1e9, "median_s": medians,
              "samples_s": {k: [v] for k, v in medians.items()}, "max_rel_error": {},
              "cpu_per_wall": {}, "error_vs_float32": errors or {}}
    if notes:
        record["notes"] = notes
    return record


def test_summary_of_a_reduced_precision_case_takes_its_own_peer():
    # torch is faster, but the int8 ratio is taken against ONNX Runtime alone
    s = bench.summarize(_lowp_record("int8", {"fastrnn": 0.01, "torch": 0.001,
                                              "onnxruntime": 0.03}), core_peak=400.0)
    assert s["fastest_peer"] == "onnxruntime" and s["ratio"] == pytest.approx(3.0)
    assert s["peak_share"] == pytest.approx(100.0 / 400.0)


def test_matching_peak():
    assert bench.matching_peak("bf16", "avx512_bf16") == "bf16_avx512"
    assert bench.matching_peak("int8", "avx512_bf16") == "int8_avx512_vnni"
    assert bench.matching_peak("int8", "avx2") == "int8_avx2"           # vpmaddwd pairs
    for isa in ("portable", "avx2", "avx512"):      # products on the float32 microkernel
        assert bench.matching_peak("bf16", isa) == "float32"
    for isa in ("portable", "avx512"):
        assert bench.matching_peak("int8", isa) == "float32"
    assert bench.matching_peak("float32", "avx512_bf16") == "float32"
    with pytest.raises(ValueError, match="precision"):
        bench.matching_peak("fp16", "avx2")


def test_format_report_reduced_precision_tables():
    full = _record({"fastrnn": 0.04, "torch": 0.08})
    result = {"records": [full,
                          _lowp_record("bf16", {"fastrnn": 0.02, "torch": 0.03},
                                       errors={"fastrnn": 1e-3, "torch": 2e-3}),
                          _lowp_record("int8", {"fastrnn": 0.01, "onnxruntime": 0.02},
                                       errors={"fastrnn": 3e-3, "onnxruntime": 4e-3}),
                          _lowp_record("int8", {"fastrnn": 0.01, "onnxruntime": 0.05},
                                       notes={"onnxruntime": "float32: no int8 GRU"},
                                       cell="gru")],
              "entries": ["fastrnn", "torch", "onnxruntime"],
              "environment": {"cpu": "test cpu", "cpus": 2, "versions": {"numpy": "x"}},
              "sgemm_peak_gflops": {1: 100.0},
              "fma_peak_gflops": {"float32": 100.0, "isa": "avx512_bf16"},
              "lowp_peak_gops": {"bf16_avx512": 200.0, "int8_avx512_vnni": 400.0}}
    text = bench.format_report(result)
    assert "**bf16 inference: fastrnn bf16 vs PyTorch bf16 autocast, 1 thread**" in text
    assert "vdpbf16ps zmm: 200.0 GFLOP/s" in text and "vpdpbusd zmm: 400.0 GOP/s" in text
    # ratio, fastrnn float32 of the same run, x float32, GOP/s, % of 200, errors
    assert "| LSTM medium | 20 | 30 | 1.50 | 40 | 2.00 | 50.0 | 25% | 1.0e-03 | 2.0e-03 |" in text
    assert "| LSTM medium | 10 | 20 | 2.00 | 40 | 4.00 | 100.0 | 25% | 3.0e-03 | 4.0e-03 |" in text
    assert "| GRU medium | 10 | 50 † | 5.00 | – | – | 100.0 | 25% | – | – |" in text
    assert "†: ONNX Runtime has no int8 operator" in text
    # the float32 table has no onnxruntime column (no float32 record ran it) and no ⚠
    assert "| case | fastrnn | torch | ratio |" in text and "⚠" not in text
    # without the instruction, the float32 FMA peak stands in
    result["fma_peak_gflops"]["isa"] = "avx2"
    assert "float32 FMA (avx2): 100.0 GFLOP/s" in bench.format_report(result)


@pytest.mark.parametrize("precision,peer", [("bf16", "torch"), ("int8", "onnxruntime")])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("mode", ["forward", "step"])
def test_reduced_precision_runners_approximate_float32(precision, peer, cell, mode):
    """fastrnn's and the peer's bf16 / int8 runners compute the float32 result, roughly."""
    import_backend("ops")
    shape, dims = ("step", (1, 1, 5, 4)) if mode == "step" else ("small", (3, 4, 5, 6))
    full = bench.Case.of(cell, shape, "forward", 1, dims)
    problem = bench.make_problem(full)
    expected = bench.FastrnnPeer("ops").make(full, problem).check()[0]
    case = bench.Case.of(cell, shape, "forward", 1, dims, precision=precision)
    runners = {"fastrnn": bench.FastrnnPeer("ops").make(case, problem)}
    if importlib.util.find_spec(peer) is not None:
        runners[peer] = bench.PEER_FACTORIES[peer]().make(case, problem)
        if runners[peer] is None:        # PyTorch's bf16 LSTM needs AVX512-BF16 (oneDNN)
            assert (precision, cell) == ("bf16", "lstm"), "only that peer may be missing"
            del runners[peer]
    for name, runner in runners.items():
        got = runner.check()[0]
        assert set(got) == set(expected)
        error = bench.measure._max_rel_error(got, expected)
        assert 0 < error < 3e-2 or (runner.note and error < 1e-5), (name, error)
        runner.time(2)
    if peer in runners and precision == "int8":            # ORT quantizes LSTM only
        assert (runners[peer].note is None) == (cell == "lstm")


_PEAK_OPS = {"bf16_avx512": 16 * 32 * 2, "int8_avx512_vnni": 16 * 64 * 2,
             "int8_avx_vnni": 10 * 32 * 2, "int8_avx2": 10 * 32 * 2}   # chains x pairs x 2


def test_lowp_peaks_count_their_operations():
    core = import_backend("_core")
    assert set(core.LOWP_PEAK_KINDS) == set(_PEAK_OPS) == set(bench.LOWP_INSTRUCTIONS)
    flags = set()
    with open("/proc/cpuinfo") as f:
        flags = next((set(line.split(":")[1].split()) for line in f
                      if line.startswith("flags")), set())
    for kind, per_iteration in _PEAK_OPS.items():
        ops = core.lowp_peak_ops(kind, 10)
        if ops is None:
            assert bench.lowp_peak_gops(kind) is None
            continue
        assert ops == 10 * per_iteration and core.lowp_peak_ops(kind, 0) == 0
        assert bench.lowp_peak_gops(kind, seconds=0.002, repeats=1) > 0
    if flags:                                   # what /proc/cpuinfo says this CPU has
        assert (core.lowp_peak_ops("int8_avx2", 1) is not None) == ("avx2" in flags)
        assert (core.lowp_peak_ops("bf16_avx512", 1) is not None) == ("avx512_bf16" in flags)
        assert ((core.lowp_peak_ops("int8_avx512_vnni", 1) is not None)
                == ("avx512_vnni" in flags))
    with pytest.raises(ValueError, match="kind"):
        core.lowp_peak_ops("fp8", 1)
    with pytest.raises(ValueError, match="iterations"):
        core.lowp_peak_ops("int8_avx2", -1)
    with pytest.raises(ValueError, match="kind"):
        bench.lowp_peak_gops("fp8")


def test_main_writes_reduced_precision_tables(tmp_path):
    import_backend("ops")
    code = bench.main(["--cells", "lstm", "--shapes", "step", "--threads", "1",
                       "--modes", "forward", "--precision", "float32,int8",
                       "--entries", "fastrnn", "--quick", "--rounds", "1",
                       "--no-memory", "--json", "--output", str(tmp_path)])
    assert code == 0
    text = (tmp_path / "bench.md").read_text()
    assert "int8 inference: fastrnn int8 vs ONNX Runtime" in text and "bf16 inference" not in text
    raw = json.loads((tmp_path / "bench.json").read_text())
    assert [r["label"] for r in raw["records"]] == ["lstm-step-forward-1t",
                                                    "lstm-step-forward-1t-int8"]
    int8 = raw["records"][1]
    assert int8["case"]["precision"] == "int8" and set(int8["median_s"]) == {"fastrnn"}
    assert 0 < int8["error_vs_float32"]["fastrnn"] < 3e-2
    assert isinstance(raw["lowp_peak_gops"], dict)
    with pytest.raises(SystemExit):
        bench.main(["--precision", "fp16"])


def test_a_failing_peer_is_noted_and_the_case_still_measured():
    from fastrnn.bench.measure import Settings, measure_case
    from fastrnn.bench.peers import Runner

    def broken():
        raise RuntimeError("could not create a primitive descriptor\nmore detail")

    y = np.ones(3, np.float32)
    runners = {"fastrnn": Runner(lambda: y, lambda: {"y": y}),
               "torch": Runner(broken, lambda: {"y": broken()})}
    lines = []
    rec = measure_case(bench.Case.of("lstm", "tiny", "forward", 1), runners,
                       Settings(rounds=2, sample_s=0.001, settle_s=0.0), log=lines.append)
    assert set(rec["median_s"]) == {"fastrnn"}
    assert rec["notes"]["torch"] == ("failed: RuntimeError: could not create a primitive "
                                     "descriptor")
    assert any("NOTE lstm-tiny-forward-1t: torch failed" in line for line in lines)
    runners["fastrnn"] = Runner(broken, lambda: {"y": broken()})
    with pytest.raises(RuntimeError, match="primitive"):     # our own failure is a bug
        measure_case(bench.Case.of("lstm", "tiny", "forward", 1), runners, Settings())
