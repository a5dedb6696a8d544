"""The markdown tables and the ratio chart."""
from __future__ import annotations

import contextlib
import datetime
import os
import platform
from pathlib import Path

import numpy as np

from .grid import LOWP_PEERS, PEERS, PRECISIONS
from .measure import _flagged
from .peak import LOWP_INSTRUCTIONS, matching_peak


# --------------------------------------------------------------------------- report

def _ms(seconds):
    if seconds is None:
        return "–"
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def summarize(record: dict, core_peak: float | None = None) -> dict:
    """Ratio to the fastest peer, fastrnn's GFLOP/s, its share of the same-run sgemm and,
    given one core's FMA peak (GFLOP/s), its share of ``threads`` x that peak."""
    med = record["median_s"]
    fast = med.get("fastrnn")
    precision = record["case"].get("precision", "float32")
    peers = {p: med[p] for p in LOWP_PEERS.get(precision, PEERS) if p in med}
    out = {"ratio": None, "fastest_peer": None, "gflops": None, "sgemm_share": None,
           "peak_share": None}
    if fast:
        out["gflops"] = record["flops"] / fast / 1e9
        if peers:
            out["fastest_peer"] = min(peers, key=peers.get)
            out["ratio"] = peers[out["fastest_peer"]] / fast
        if med.get("sgemm"):
            out["sgemm_share"] = med["sgemm"] / fast
        if core_peak:
            out["peak_share"] = out["gflops"] / (core_peak * record["case"]["threads"])
    return out


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(entries) -> dict:
    import importlib.metadata
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("fastrnn", "torch", "onnxruntime", "jax"):
        if name in entries or name == "fastrnn":
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                versions[name] = importlib.metadata.version(name)
    return {"cpu": _cpu_name(), "cpus": os.cpu_count(), "versions": versions,
            "date": datetime.datetime.now().isoformat(timespec="seconds")}


def _core_peak(result: dict) -> float | None:
    return (result.get("fma_peak_gflops") or {}).get("float32")


def _peak_text(result: dict) -> str:
    peak = result.get("fma_peak_gflops") or {}
    if not peak.get("float32"):
        return "not measured"
    return f"{peak['float32']:.1f} GFLOP/s ({peak.get('isa', '?')})"


def _precision_of(record: dict) -> str:
    return record["case"].get("precision", "float32")


def _lowp_peak(result: dict, precision: str):
    """(GOP/s of one core, its description) that ``precision``'s products are held to."""
    fma = result.get("fma_peak_gflops") or {}
    kind = matching_peak(precision, fma.get("isa", "?"))
    value = (result.get("lowp_peak_gops") or {}).get(kind)
    if kind != "float32" and value:
        return value, f"{LOWP_INSTRUCTIONS[kind]}: {value:.1f} {_unit(precision)}"
    if fma.get("float32"):      # products on the float32 microkernel at this ISA level
        return fma["float32"], f"float32 FMA ({fma.get('isa', '?')}): {fma['float32']:.1f} GFLOP/s"
    return None, "not measured"


_LOWP_TITLES = {"bf16": "bf16 inference: fastrnn bf16 vs PyTorch bf16 autocast",
                "int8": "int8 inference: fastrnn int8 vs ONNX Runtime quantize_dynamic"}


def _unit(precision: str) -> str:
    return "GOP/s" if precision == "int8" else "GFLOP/s"


def _error(value):
    return "–" if value is None else f"{value:.1e}"


def _lowp_table(result: dict, precision: str, threads: int, recs: list) -> list:
    """The markdown lines of one reduced-precision table (see format_report)."""
    peak, peak_text = _lowp_peak(result, precision)
    (peer,) = LOWP_PEERS[precision]
    float32 = {(r["case"]["cell"], r["case"]["shape"], r["case"]["threads"]): r
               for r in result["records"] if _precision_of(r) == "float32"
               and r["case"]["mode"] == "forward"}
    lines = [f"**{_LOWP_TITLES[precision]}, {threads} thread{'s' * (threads > 1)}** "
             f"(% peak of one core's {peak_text})", "",
             f"| case | fastrnn {precision} | {peer} | ratio | fastrnn float32 | × float32 "
             f"| {_unit(precision)} | % peak | error fastrnn | error {peer} |",
             "|---|" + "---:|" * 9]
    marked = False
    for rec in recs:
        c, med = rec["case"], rec["median_s"]
        s = summarize(rec, peak)
        note = (rec.get("notes") or {}).get(peer)
        marked |= bool(note)
        full = float32.get((c["cell"], c["shape"], c["threads"]), {}).get("median_s", {})
        base = full.get("fastrnn")
        errors = rec.get("error_vs_float32") or {}
        cells = [_ms(med.get("fastrnn")), _ms(med.get(peer)) + (" †" if note else ""),
                 f"{s['ratio']:.2f}" if s["ratio"] else "–", _ms(base),
                 f"{base / med['fastrnn']:.2f}" if base and med.get("fastrnn") else "–",
                 f"{s['gflops']:.1f}" if s["gflops"] else "–",
                 f"{100 * s['peak_share']:.0f}%" if s["peak_share"] else "–",
                 _error(errors.get("fastrnn")), _error(errors.get(peer))]
        lines.append(f"| {c['cell'].upper()} {c['shape']} | " + " | ".join(cells) + " |")
    if marked:
        lines += ["", "†: ONNX Runtime has no int8 operator for this cell (quantize_dynamic "
                      "keeps it float32): its float32 operator ran."]
    return lines + [""]


def format_report(result: dict) -> str:
    """Markdown: one table per (mode, threads), then per reduced precision and threads
    (fastrnn against that precision's peer, fastrnn's float32 time of the same run beside
    it, % of the matching peak, errors against float32), then the memory table."""
    records, entries = result["records"], result["entries"]
    env, core_peak = result["environment"], _core_peak(result)
    lines = [f"fastrnn benchmark — {env['cpu']}, {env['cpus']} CPUs; "
             + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + ".",
             "",
             "Median ms per call (streaming `step`: per time step). **ratio** = fastest peer "
             "(torch / onnxruntime / jax) ÷ fastrnn, > 1 means fastrnn is faster. "
             "GFLOP/s counts 2·B·T·(I+H)·G·H per forward, 3× for train; **% sgemm** = "
             "fastrnn's speed as a share of a numpy sgemm with the same FLOPs, same run; "
             "**% peak** = fastrnn's GFLOP/s as a share of threads × one core's float32 "
             f"multiply-add peak, measured in the same run: {_peak_text(result)}. "
             "numpy sgemm peak (1024³): "
             + ", ".join(f"{t} thread{'s' * (t > 1)} {g:.1f} GFLOP/s"
                         for t, g in result["sgemm_peak_gflops"].items()) + ".",
             ""]
    groups, lowp = {}, {}
    for rec in records:
        c, precision = rec["case"], _precision_of(rec)
        if precision == "float32":
            groups.setdefault((c["mode"], c["threads"]), []).append(rec)
        else:
            lowp.setdefault((precision, c["threads"]), []).append(rec)
    cols = [e for e in entries if any(e in r["median_s"] for r in records
                                      if _precision_of(r) == "float32")]
    any_flagged = False
    for (mode, threads), recs in groups.items():
        title = "forward (inference)" if mode == "forward" else "forward + backward (training)"
        lines += [f"**{title}, {threads} thread{'s' * (threads > 1)}**", "",
                  "| case | " + " | ".join(cols) + " | ratio | GFLOP/s | % sgemm | % peak |",
                  "|---|" + "---:|" * (len(cols) + 4)]
        for rec in recs:
            s, c = summarize(rec, core_peak), rec["case"]
            flagged = _flagged(rec)
            any_flagged |= bool(flagged)
            cells = [_ms(rec["median_s"].get(e)) + (" ⚠" if e in flagged else "") for e in cols]
            ratio = f"{s['ratio']:.2f} ({s['fastest_peer']})" if s["ratio"] else "–"
            gflops = f"{s['gflops']:.1f}" if s["gflops"] else "–"
            share = f"{100 * s['sgemm_share']:.0f}%" if s["sgemm_share"] else "–"
            of_peak = f"{100 * s['peak_share']:.0f}%" if s["peak_share"] else "–"
            lines.append(f"| {c['cell'].upper()} {c['shape']} | " + " | ".join(cells)
                         + f" | {ratio} | {gflops} | {share} | {of_peak} |")
        lines.append("")
    if any_flagged:
        lines += ["⚠: output differs from fastrnn's by more than 1e-3 (relative).", ""]
    if lowp:
        lines += ["Reduced precision (inference, same weights and inputs): **ratio** = the "
                  "peer's median ÷ fastrnn's; **× float32** = fastrnn float32 ÷ fastrnn in "
                  "this precision, same run; GFLOP/s (GOP/s) count the float32 table's FLOPs; "
                  "**% peak** is held to the instruction fastrnn's products run on at this "
                  "ISA level; **error** = max |y − y_float32| ÷ max |y_float32| against "
                  "fastrnn's float32 output.", ""]
    for (precision, threads), recs in sorted(lowp.items(),
                                             key=lambda kv: (PRECISIONS.index(kv[0][0]), kv[0][1])):
        lines += _lowp_table(result, precision, threads, recs)
    memory = result.get("memory") or []
    if memory:
        lines += ["**Peak extra memory of one training forward+backward** (MB, 1 thread, "
                  "fresh process, VmHWM above the baseline after inputs and weights exist)", "",
                  "| case | fastrnn | torch | fastrnn ÷ torch |", "|---|---:|---:|---:|"]
        for m in memory:
            b = m["bytes"]
            ratio = (f"{b['fastrnn'] / b['torch']:.2f}" if b.get("torch") and "fastrnn" in b
                     else "–")
            lines.append(f"| {m['cell'].upper()} {m['shape']} | "
                         + " | ".join(f"{b[e] / 2**20:.1f}" if e in b else "–"
                                      for e in ("fastrnn", "torch")) + f" | {ratio} |")
        lines.append("")
    return "\n".join(lines)


def write_chart(result: dict, path: Path, log=print):
    """Bar chart of the ratio per case, one panel per (mode, threads); None without matplotlib."""
    try:
        import matplotlib
        import matplotlib.ticker
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no chart (pip install matplotlib)")
        return None
    groups = {}
    for rec in result["records"]:
        s = summarize(rec)
        if s["ratio"]:
            key = (rec["case"]["mode"], rec["case"]["threads"], _precision_of(rec))
            groups.setdefault(key, []).append((rec, s))
    if not groups:
        return None
    colors = {"rnn": "tab:blue", "lstm": "tab:orange", "gru": "tab:green"}
    fig, axes = plt.subplots(len(groups), 1, figsize=(10, 2.8 * len(groups)), squeeze=False)
    for ax, ((mode, threads, precision), items) in zip(axes[:, 0], groups.items()):
        labels = [f"{r['case']['cell']}{' †' if r.get('notes') else ''}\n{r['case']['shape']}"
                  for r, _ in items]
        ratios = [s["ratio"] for _, s in items]
        ax.bar(range(len(items)), ratios, color=[colors[r["case"]["cell"]] for r, _ in items])
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(range(len(items)), labels, fontsize=7)
        ax.set_ylabel("fastest peer / fastrnn")
        what = mode if precision == "float32" else f"{precision} {mode}"
        if any(r.get("notes") for r, _ in items):
            what += " (†: the peer ran float32)"
        ax.set_title(f"{what}, {threads} thread{'s' * (threads > 1)} (> 1: fastrnn faster)",
                     fontsize=9)
        for i, v in enumerate(ratios):
            ax.annotate(f"{v:.2f}", (i, v), ha="center", va="bottom", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


