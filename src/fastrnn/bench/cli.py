"""The options of ``fastrnn bench`` and running the whole report."""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from .grid import CELLS, ENTRIES, MODES, PRECISIONS, SHAPES, make_cases
from .measure import Settings, run_grid
from .memory import run_memory
from .peers import available_entries
from .report import environment, format_report, write_chart


# --------------------------------------------------------------------------- command line

def _csv(choices):
    def parse(text):
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(choices)}")
        return items
    return parse


def _threads(text):
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("thread counts must be >= 1")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``fastrnn bench`` (also ``python -m fastrnn.bench``)."""
    parser.add_argument("--cells", type=_csv(tuple(CELLS)), default=list(CELLS),
                        help="comma-separated cells (default: rnn,lstm,gru)")
    parser.add_argument("--shapes", type=_csv(tuple(SHAPES)), default=list(SHAPES),
                        help="comma-separated shapes: " + ", ".join(
                            f"{k} (B,T,I,H)={v}" for k, v in SHAPES.items()))
    parser.add_argument("--modes", type=_csv(MODES), default=list(MODES),
                        help="forward (inference) and/or train (forward+backward)")
    parser.add_argument("--threads", type=_threads, default=[1, 2],
                        help="comma-separated thread counts (default: 1,2)")
    parser.add_argument("--precision", type=_csv(PRECISIONS), default=list(PRECISIONS),
                        help="comma-separated precisions (default: float32,bf16,int8): bf16 "
                             "and int8 add inference tables, fastrnn vs PyTorch bf16 "
                             "autocast and vs ONNX Runtime quantize_dynamic")
    parser.add_argument("--entries", type=_csv(ENTRIES), default=list(ENTRIES),
                        help="what to time (default: all importable of " + ",".join(ENTRIES) + ")")
    parser.add_argument("--quick", action="store_true",
                        help="3 rounds of ~10 ms samples (about 2 minutes for the grid)")
    parser.add_argument("--rounds", type=int, help="round-robin samples per entry")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the peak-memory measurement of training")
    parser.add_argument("--output", type=Path, default=Path("bench-results"),
                        help="folder for bench.md, bench.png (and bench.json)")
    parser.add_argument("--json", action="store_true", help="also write the raw samples")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def run(args) -> int:
    settings = Settings.quick() if args.quick else Settings()
    settings.seed, settings.memory = args.seed, not args.no_memory
    if args.rounds:
        settings.rounds = args.rounds
    entries = available_entries(args.entries)
    missing = [e for e in args.entries if e not in entries]
    if missing:
        print(f"not importable, skipped: {', '.join(missing)}")
    if "fastrnn" not in entries:
        print("fastrnn's C extension is not importable: build it with `pip install -e .`")
        return 1
    cases = make_cases(args.cells, args.shapes, args.modes, args.threads, args.precision)
    start = time.perf_counter()
    result = run_grid(cases, entries, settings)
    if settings.memory and "train" in args.modes:
        result["memory"] = run_memory(cases, entries, settings)
    result.update(entries=entries, environment=environment(entries),
                  settings=dataclasses.asdict(settings),
                  seconds=time.perf_counter() - start)
    report = format_report(result)
    print()
    print(report)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "bench.md").write_text(report + "\n")
    chart = write_chart(result, args.output / "bench.png")
    if args.json:
        (args.output / "bench.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {args.output / 'bench.md'}" + (f", {chart}" if chart else "")
          + (f", {args.output / 'bench.json'}" if args.json else "")
          + f" ({result['seconds']:.0f} s)")
    return 0


def _package_doc() -> str:
    from . import __doc__ as doc
    return doc


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastrnn.bench",
                                     description=_package_doc().splitlines()[0])
    return run(add_arguments(parser).parse_args(argv))

