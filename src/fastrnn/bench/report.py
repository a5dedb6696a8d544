"""The markdown tables and the ratio chart."""
from __future__ import annotations

import contextlib
import datetime
import os
import platform
from pathlib import Path

import numpy as np

from .grid import PEERS
from .measure import _flagged


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
    peers = {p: med[p] for p in PEERS if p in med}
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


def format_report(result: dict) -> str:
    """Markdown: one table per (mode, threads), then the memory table."""
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
    groups = {}
    for rec in records:
        c = rec["case"]
        groups.setdefault((c["mode"], c["threads"]), []).append(rec)
    cols = [e for e in entries if any(e in r["median_s"] for r in records)]
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
            groups.setdefault((rec["case"]["mode"], rec["case"]["threads"]), []).append((rec, s))
    if not groups:
        return None
    colors = {"rnn": "tab:blue", "lstm": "tab:orange", "gru": "tab:green"}
    fig, axes = plt.subplots(len(groups), 1, figsize=(10, 2.8 * len(groups)), squeeze=False)
    for ax, ((mode, threads), items) in zip(axes[:, 0], groups.items()):
        labels = [f"{r['case']['cell']}\n{r['case']['shape']}" for r, _ in items]
        ratios = [s["ratio"] for _, s in items]
        ax.bar(range(len(items)), ratios, color=[colors[r["case"]["cell"]] for r, _ in items])
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(range(len(items)), labels, fontsize=7)
        ax.set_ylabel("fastest peer / fastrnn")
        ax.set_title(f"{mode}, {threads} thread{'s' * (threads > 1)} (> 1: fastrnn faster)",
                     fontsize=9)
        for i, v in enumerate(ratios):
            ax.annotate(f"{v:.2f}", (i, v), ha="center", va="bottom", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


