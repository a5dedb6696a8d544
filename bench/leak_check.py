"""Leak check: resident memory over many forward+backward calls of each cell.

    python bench/leak_check.py                 # 10 000 calls per entry (the issue's figure)
    python bench/leak_check.py --calls 2000 --warmup 200

For each entry -- the functional ``ops.<cell>_forward/_backward`` pair, the layer
(``fastrnn.RNN/LSTM/GRU``, 2 layers, bidirectional, with lengths) and the cell module
(``fastrnn.RNNCell/LSTMCell/GRUCell``, with its backward) -- it runs ``--warmup`` calls
(allocator pools, caches and lazily loaded code settle), reads the resident set size (RSS,
``/proc/self/statm``), runs ``--calls`` forward+backward calls, and reads RSS again; then a
second window of ``--calls``. A leak of even a few bytes per call shows as growth
proportional to the calls, in both windows (10 000 calls x 100 bytes = 1 MB); a one-off step
in the first window only is the allocator settling (glibc's malloc raises its mmap
threshold once freed blocks of a size recur, so later ones come from the heap). The limit
is 1 MB in either window; the script exits 1 if an entry grows more.

It also runs a no_grad forward entry (the inference path) per cell. Linux only (statm).
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import numpy as np

import fastrnn
from fastrnn import ops

LIMIT_BYTES = 1 << 20
T, B, I, H = 8, 4, 16, 32
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
N_STATES = {"rnn": 1, "lstm": 2, "gru": 1}


def rss_bytes() -> int:
    """Resident set size of this process, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _ops_entry(cell):
    rng = np.random.default_rng(0)
    G = GATES[cell]
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    weights = [rng.standard_normal(s).astype(np.float32) * 0.3
               for s in ((G * H, I), (G * H, H), (G * H,), (G * H,))]
    dy = np.ones((T, B, H), np.float32)
    lengths = np.array([8, 3, 5, 1])
    forward, backward = getattr(ops, f"{cell}_forward"), getattr(ops, f"{cell}_backward")
    n = N_STATES[cell]

    def call():
        *_, cache = forward(x, *[None] * n, *weights, lengths=lengths)
        backward(dy, *[None] * n, cache)
    return call


def _layer_entry(cell, grad=True):
    layer = getattr(fastrnn, cell.upper())(I, H, num_layers=2, bidirectional=True, seed=0)
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    dy = np.ones((T, B, 2 * H), np.float32)
    lengths = np.array([8, 3, 5, 1])

    def call():
        layer(x, lengths=lengths)
        layer.backward(dy)

    def inference():
        with fastrnn.no_grad():
            layer(x, lengths=lengths)
    return call if grad else inference


def _cell_entry(cell):
    module = getattr(fastrnn, {"rnn": "RNNCell", "lstm": "LSTMCell", "gru": "GRUCell"}[cell])(
        I, H, seed=0)
    x = np.random.default_rng(0).standard_normal((B, I)).astype(np.float32)
    dh = np.ones((B, H), np.float32)

    def call():
        module(x)
        module.backward(dh)
    return call


def measure(call, calls: int, warmup: int) -> tuple:
    """(RSS growth in bytes over ``calls`` calls after ``warmup``, seconds taken)."""
    for _ in range(warmup):
        call()
    gc.collect()
    before = rss_bytes()
    start = time.perf_counter()
    for _ in range(calls):
        call()
    seconds = time.perf_counter() - start
    gc.collect()
    return rss_bytes() - before, seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--cells", default="rnn,lstm,gru", help="comma-separated cells")
    args = parser.parse_args(argv)
    entries = []
    for cell in args.cells.split(","):
        entries += [(f"ops.{cell}_forward+backward", _ops_entry(cell)),
                    (f"nn.{cell.upper()} 2x2 forward+backward", _layer_entry(cell)),
                    (f"nn.{cell.upper()}Cell forward+backward", _cell_entry(cell)),
                    (f"nn.{cell.upper()} 2x2 no_grad forward", _layer_entry(cell, False))]
    print(f"RSS growth over {args.calls} calls after {args.warmup} warm-up calls "
          f"(T={T}, B={B}, I={I}, H={H}, float32; limit {LIMIT_BYTES // 1024} KiB)")
    print(f"{'entry':40s} {'1st KiB':>9s} {'2nd KiB':>9s} {'B/call 2nd':>11s} "
          f"{'us/call':>9s}")
    worst = 0
    for name, call in entries:
        first, seconds = measure(call, args.calls, args.warmup)
        second, _ = measure(call, args.calls, 0)
        worst = max(worst, first, second)
        print(f"{name:40s} {first / 1024:9.1f} {second / 1024:9.1f} "
              f"{second / args.calls:11.1f} {seconds / args.calls * 1e6:9.1f}")
    print(f"start-to-end RSS {rss_bytes() / 2**20:.1f} MiB; worst growth "
          f"{worst / 1024:.1f} KiB")
    return 0 if worst < LIMIT_BYTES else 1


if __name__ == "__main__":
    sys.exit(main())
