"""Worker processes for peers whose thread setup is fixed at import (JAX)."""
from __future__ import annotations

import contextlib
import multiprocessing


from .grid import make_problem
from .peers import PEER_FACTORIES, _setup_xla, limit_threads


# --------------------------------------------------------------------------- workers

def _worker(conn, entry: str, threads: int, seed: int) -> None:
    """Serve one isolated entry at a fixed thread count: make / time / check / stop."""
    if entry == "jax":
        _setup_xla(threads)
    limit_threads(threads)
    peer = PEER_FACTORIES[entry]()
    peer.set_threads(threads)
    runners = {}
    while True:
        op, case, arg = conn.recv()
        try:
            if op == "stop":
                break
            if op == "make":
                runners.clear()
                runner = peer.make(case, make_problem(case, seed))
                if runner is not None:
                    runners[case] = runner
                reply = runner is not None
            elif op == "time":
                reply = runners[case].time(arg)
            else:  # "check"
                reply = runners[case].check()
            conn.send(("ok", reply))
        except Exception as exc:  # reported to the parent, which raises it
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
    conn.close()


class RemotePeer:
    """An isolated entry served by a worker process (one per thread count)."""

    def __init__(self, entry: str, threads: int, seed: int):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(child, entry, threads, seed),
                                   daemon=True)
        self.process.start()
        child.close()
        self.entry = entry

    def _ask(self, op, case=None, arg=None):
        self.conn.send((op, case, arg))
        status, reply = self.conn.recv()
        if status != "ok":
            raise RuntimeError(f"{self.entry} worker: {reply}")
        return reply

    def make(self, case, problem=None):
        return _RemoteRunner(self, case) if self._ask("make", case) else None

    def close(self):
        with contextlib.suppress(Exception):
            self.conn.send(("stop", None, None))
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.terminate()


class _RemoteRunner:
    def __init__(self, remote, case):
        self.remote, self.case = remote, case

    def time(self, k):
        return self.remote._ask("time", self.case, k)

    def check(self):
        return self.remote._ask("check", self.case)


