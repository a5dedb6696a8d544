"""What every example shares: the command line (``--seed``, ``--quick``, ``--threads``),
the thread setting, and printing the result."""
from __future__ import annotations

import argparse
import time

import fastrnn


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser described by the example's docstring, with the shared options."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0, help="seed for data split and weights")
    p.add_argument("--quick", action="store_true",
                   help="a tiny run that only checks the example works (seconds)")
    p.add_argument("--threads", type=int, default=1,
                   help="fastrnn/BLAS threads (1 is fastest for these small models)")
    p.add_argument("--verbose", action=argparse.BooleanOptionalAction, default=True,
                   help="show the training progress bar")
    return p


def start(args) -> float:
    """Apply the shared options; returns the start time for :func:`report`."""
    fastrnn.set_num_threads(args.threads)
    return time.perf_counter()


def report(title: str, metrics: dict, started: float) -> dict:
    """Print ``metrics`` under ``title`` (with the wall time), and return them."""
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    print(f"\n== {title} ==")
    width = max(map(len, metrics))
    for key, value in metrics.items():
        shown = f"{value:.4f}" if isinstance(value, float) and "seconds" not in key else value
        print(f"  {key:<{width}}  {shown}")
    return metrics
