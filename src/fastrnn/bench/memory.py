"""Peak extra memory of one training forward+backward, in fresh processes."""
from __future__ import annotations

import dataclasses
import gc
import multiprocessing
import os


from .grid import CELLS, Case, make_problem
from .measure import Settings
from .peers import PEER_FACTORIES, limit_threads


# --------------------------------------------------------------------------- memory

def _read_status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _peak_extra_bytes(call) -> tuple[int, str]:
    """Peak resident memory above the current level while ``call()`` runs."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                                 # VmHWM := VmRSS
        before = _read_status("VmRSS")
        call()
        return _read_status("VmHWM") - before, "VmHWM"
    except OSError:
        import resource
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        call()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024, "ru_maxrss"


def _memory_worker(conn, entry: str, cases, seed: int) -> None:
    """Peak extra bytes of one training call per case, smallest first, in this process."""
    try:
        limit_threads(1)
        peer = PEER_FACTORIES[entry]()
        peer.set_threads(1)
        warmed, reply = set(), []
        for case in cases:
            if case.cell not in warmed:              # lazy library set-up is not the case's
                warm = Case.of(case.cell, "warm-up", "train", 1, (1, 2, case.I, case.H))
                peer.make(warm, make_problem(warm, seed)).call()
                warmed.add(case.cell)
            runner = peer.make(case, make_problem(case, seed))
            reply.append(_peak_extra_bytes(runner.call))
            del runner
        conn.send(("ok", reply))
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    conn.close()


def measure_memory(cases, entry: str, seed: int = 0):
    """[(peak extra bytes, method)] of one training forward+backward per case.

    One fresh process per entry. glibc's malloc is told (MALLOC_MMAP_THRESHOLD_) to map
    every block >= 4 KiB separately and give it back on free, so one case's freed buffers
    cannot hide the next case's allocations.
    """
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_memory_worker, args=(child, entry, list(cases), seed))
    saved = {k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
    os.environ.update(MALLOC_MMAP_THRESHOLD_="4096", MALLOC_TRIM_THRESHOLD_="4096")
    try:
        process.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    child.close()
    status, reply = parent.recv()
    process.join()
    if status != "ok":
        raise RuntimeError(f"{entry} memory probe: {reply}")
    return reply


def _footprint(case: Case) -> int:
    return case.B * case.T * case.H * CELLS[case.cell].gates


def run_memory(cases, entries, settings: Settings, log=print) -> list:
    """Peak extra memory of training (1 thread) for fastrnn and torch, per cell and shape."""
    grid = list({(c.cell, c.shape): dataclasses.replace(c, threads=1)
                 for c in cases if c.mode == "train"}.values())
    records = [{"cell": c.cell, "shape": c.shape, "bytes": {}, "method": None} for c in grid]
    order = sorted(range(len(grid)), key=lambda i: _footprint(grid[i]))   # smallest first
    for entry in (e for e in ("fastrnn", "torch") if e in entries):
        measured = measure_memory([grid[i] for i in order], entry, settings.seed)
        for i, (nbytes, method) in zip(order, measured):
            records[i]["bytes"][entry], records[i]["method"] = nbytes, method
    for r in records:
        mb = ", ".join(f"{e} {b / 2**20:.1f} MB" for e, b in r["bytes"].items())
        log(f"  memory {r['cell']}-{r['shape']}-train: {mb}")
    return records


