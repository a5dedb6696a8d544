"""Interleaved, calibrated timing of every entry on every case."""
from __future__ import annotations

import dataclasses
import gc
import statistics
import time

import numpy as np

from .grid import Case, case_entries, make_problem
from .peak import fma_peak_gflops, lowp_peaks
from .peers import PEER_FACTORIES, Runner, _isolated, limit_threads
from .workers import RemotePeer


# --------------------------------------------------------------------------- measuring

@dataclasses.dataclass
class Settings:
    rounds: int = 5            # round-robin samples per entry
    sample_s: float = 0.04     # target duration of one sample (k back-to-back calls)
    max_call_s: float = 1.0    # an entry slower than this per call gets 1 sample
    # pause before each sample, so that each entry starts with the others' threads parked,
    # not spinning on a core it needs: after a threaded call numpy's OpenBLAS (the
    # reference's and sgemm's) spins ~110 ms of CPU, ONNX Runtime's pool ~50 ms, torch's
    # 0.1 ms (docs/perf-notes.md 22, 38). One thread runs beside them on the other core.
    settle_s: float = 0.06          # 1-thread cases
    settle_threads_s: float = 0.13  # cases on more threads
    seed: int = 0
    memory: bool = True

    @classmethod
    def quick(cls, **kw):
        return cls(rounds=2, sample_s=0.01, max_call_s=0.2, settle_s=0.01,
                   settle_threads_s=0.01, **kw)


def max_rel_error(a: dict, b: dict):
    """max |a - b| / max |b| over the outputs both hold (inf on a shape mismatch)."""
    errors = [float(np.abs(a[k] - b[k]).max() / max(float(np.abs(b[k]).max()), 1e-30))
              for k in b if k in a and a[k].shape == b[k].shape]
    shape_mismatch = [k for k in b if k in a and a[k].shape != b[k].shape]
    if shape_mismatch:
        return float("inf")
    return max(errors) if errors else None


_max_rel_error = max_rel_error


def _flagged(record: dict, tolerance: float = 1e-3) -> set:
    """Entries whose outputs differ from fastrnn's by more than ``tolerance`` (relative).
    Reduced-precision cases are not flagged: their error against float32 is reported."""
    if record["case"].get("precision", "float32") != "float32":
        return set()
    return {n for n, e in record["max_rel_error"].items() if e is not None and not e <= tolerance}


def _checked(runners: dict, case: Case, log) -> tuple[dict, dict]:
    """Each runner's first call (warm-up: compiles; its outputs and duration), for those
    whose call works, and a note for each peer whose call raised (say PyTorch's bf16 LSTM
    on a CPU without AVX512-BF16: oneDNN has no primitive). fastrnn's failing is a bug:
    it raises."""
    checks, failed = {}, {}
    for name, runner in runners.items():
        try:
            checks[name] = runner.check()
        except Exception as e:      # noqa: BLE001 - a peer's own failure, reported
            if name == "fastrnn":
                raise
            failed[name] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
            log(f"  NOTE {case.label}: {name} {failed[name]}")
    return checks, failed


def measure_case(case: Case, runners: dict, settings: Settings, log=print,
                 reference: dict | None = None) -> dict:
    """Interleaved samples of each runner on ``case``; returns a result record.

    ``reference``: the float32 outputs of the case (a reduced-precision case), against
    which every entry's error is recorded (``error_vs_float32``, max |y - y32| / max |y32|).
    """
    gc.collect()
    checks, failed = _checked(runners, case, log)
    runners = {name: runners[name] for name in checks}
    outputs, calls, rounds = {}, {}, {}
    for name, runner in runners.items():
        outputs[name], seconds = checks[name]
        k = 1
        while seconds <= settings.max_call_s:        # more warm-up, and calibration
            wall = runner.time(k)[0]
            seconds = wall / k
            if wall >= settings.sample_s:
                break
            k *= 2
        calls[name] = max(1, int(settings.sample_s / max(seconds, 1e-9)))
        rounds[name] = 1 if seconds > settings.max_call_s else settings.rounds
    samples = {name: [] for name in runners}
    settle = settings.settle_s if case.threads == 1 else settings.settle_threads_s
    walls, cpus = dict.fromkeys(runners, 0.0), dict.fromkeys(runners, 0.0)
    names = list(runners)
    for r in range(settings.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if len(samples[name]) < rounds[name]:
                time.sleep(settle)                   # let the last entry's spinning threads park
                wall, cpu = runners[name].time(calls[name])
                samples[name].append(wall / calls[name])
                walls[name] += wall
                cpus[name] += cpu
    busy = {name: cpus[name] / walls[name] for name in runners if walls[name] > 0}
    errors = {}
    if "fastrnn" in outputs:
        errors = {name: _max_rel_error(out, outputs["fastrnn"])
                  for name, out in outputs.items() if name != "fastrnn"}
    record = {"case": dataclasses.asdict(case), "label": case.label, "flops": case.flops,
              "median_s": {n: statistics.median(s) for n, s in samples.items()},
              "samples_s": samples, "calls_per_sample": calls, "max_rel_error": errors,
              "cpu_per_wall": busy}
    notes = {n: r.note for n, r in runners.items() if getattr(r, "note", None)}
    notes.update(failed)
    if notes:
        record["notes"] = notes
    if reference is not None:
        record["error_vs_float32"] = {n: _max_rel_error(out, reference)
                                      for n, out in outputs.items()}
    medians = ", ".join(f"{n} {m * 1e3:.3g}" for n, m in record["median_s"].items())
    log(f"  {case.label:28s} ms: {medians}")
    for name in sorted(_flagged(record)):
        log(f"  WARNING {case.label}: {name} differs from fastrnn by "
            f"{errors[name]:.2e} (relative)")
    for name, ratio in busy.items():
        if ratio > case.threads + 0.5 and walls[name] > 0.1:
            log(f"  WARNING {case.label}: {name} kept {ratio:.1f} CPUs busy "
                f"({case.threads} thread(s) asked for)")
    return record


def sgemm_peak(threads: int, size: int = 1024, repeats: int = 5) -> float:
    """numpy float32 GFLOP/s of a square ``size`` matmul (best of ``repeats``)."""
    a = np.ones((size, size), np.float32)
    c = np.empty_like(a)
    np.matmul(a, a, out=c)
    best = min(Runner(lambda: np.matmul(a, a, out=c), dict).time(1)[0] for _ in range(repeats))
    return 2 * size ** 3 / best / 1e9


def run_grid(cases, entries, settings: Settings, log=print) -> dict:
    """Time every case with every entry; thread count by thread count."""
    local = {name: PEER_FACTORIES[name]() for name in entries if not _isolated(name)}
    records, peaks = [], {}
    limit_threads(1)
    core_peak, isa = fma_peak_gflops("float32")
    log(f"one core's float32 multiply-add peak ({isa}): {core_peak:.1f} GFLOP/s")
    low_peaks = lowp_peaks() if any(c.precision != "float32" for c in cases) else {}
    for kind, value in low_peaks.items():
        log(f"one core's {kind} dot-product peak: {value:.1f} GOP/s")
    for threads in dict.fromkeys(c.threads for c in cases):
        limit_threads(threads)
        for peer in local.values():
            peer.set_threads(threads)
        remote = {name: RemotePeer(name, threads, settings.seed)
                  for name in entries if _isolated(name)}
        try:
            peaks[threads] = sgemm_peak(threads)
            log(f"{threads} thread(s): numpy sgemm peak {peaks[threads]:.1f} GFLOP/s")
            for case in (c for c in cases if c.threads == threads):
                problem = make_problem(case, settings.seed)
                runners = {}
                for name in case_entries(entries, case.precision):   # stable order
                    peer = remote.get(name) or local[name]
                    runner = peer.make(case, problem)
                    if runner is not None:
                        runners[name] = runner
                records.append(measure_case(case, runners, settings, log,
                                            _float32_outputs(case, problem, local)))
                del runners
        finally:
            for peer in remote.values():
                peer.close()
    return {"records": records, "sgemm_peak_gflops": peaks,
            "fma_peak_gflops": {"float32": core_peak, "isa": isa},
            "lowp_peak_gops": low_peaks}


def _float32_outputs(case: Case, problem, local: dict):
    """fastrnn's float32 outputs of a reduced-precision case (None for a float32 one)."""
    if case.precision == "float32" or "fastrnn" not in local:
        return None
    full = dataclasses.replace(case, precision="float32")
    return local["fastrnn"].make(full, problem).check()[0]


