"""Benchmark report: fastrnn against its NumPy reference, PyTorch, ONNX Runtime and JAX.

``python -m fastrnn.bench`` (or ``fastrnn bench``) times a grid of cases -- cell x shape x
mode (``forward`` = inference, ``train`` = forward + backward) x thread count -- in ONE
process, prints a markdown table and writes a PNG chart (and, with ``--json``, the raw
samples) under ``--output``.

How it measures
---------------
* **Entries.** ``fastrnn`` (:mod:`fastrnn.ops`), ``reference`` (:mod:`fastrnn.reference`),
  the peers ``torch``, ``onnxruntime`` (forward only) and ``jax`` when importable, and
  ``sgemm``: one numpy float32 matmul ``(T*B, I+H) @ (I+H, G*H)`` with exactly the FLOPs of
  the case (three of them for ``train``), the ceiling fastrnn's GFLOP/s is compared with.
  Every peer is written the way a competent user of it would write it (PyTorch's fused
  ``nn.LSTM``, ONNX Runtime's LSTM/GRU/RNN operators, JAX ``lax.scan`` under ``jit`` with
  the input projection hoisted out of the loop).
* **Interleaving.** For each case, every entry is warmed up once (this call also collects
  its outputs, which are checked against fastrnn's), calibrated so that one sample lasts
  about ``--sample-ms``, and then sampled round-robin -- entry A, B, C, A, B, C, ... with the
  starting entry rotating -- so drift of the machine (turbo, other load) hits all entries
  alike. The table shows medians. An entry whose single call exceeds ``max_call_s`` gets
  one sample only (that is the NumPy reference on big shapes).
* **Ratio** = fastest peer's median / fastrnn's median (> 1: fastrnn is faster). Only torch,
  onnxruntime and jax count as peers (not the reference, not sgemm).
* **FLOPs** of one forward pass: ``2*B*T*(I+H)*G*H`` (G = 1 RNN, 4 LSTM, 3 GRU); train is
  counted as 3x that.
* **Threads.** Per thread count ``n``: ``fastrnn.set_num_threads(n)`` (when it exists),
  threadpoolctl limits every loaded BLAS/OpenMP pool (numpy's and SciPy's OpenBLAS, torch's
  OpenMP) to ``n``, ``torch.set_num_threads(n)``, and ONNX Runtime sessions get
  ``intra_op_num_threads=n, inter_op_num_threads=1``. JAX/XLA reads its thread setup once,
  at import, so JAX runs in a worker process per thread count: for n = 1 started with
  ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false``, for 1 < n < CPUs pinned to n CPUs
  (``sched_setaffinity``, from which XLA sizes its pool), for n = CPUs as is. The worker
  times its own calls; the main process waits meanwhile, so the interleaving is kept and
  the IPC is not timed. Every sample also records process CPU time / wall time; an entry
  that kept more CPUs busy than asked for is reported (``cpu_per_wall`` in the JSON).
* **Memory** (``train`` cases, fastrnn and torch, 1 thread): each measurement runs in a
  fresh process. It builds the inputs and weights, warms the library up on a tiny problem,
  resets the kernel's peak-RSS counter (``/proc/self/clear_refs`` <- 5, so ``VmHWM`` =
  current RSS), runs one forward+backward and reports ``VmHWM - VmRSS_before``: the peak
  extra resident memory of outputs, saved activations, gradients and workspace, C mallocs
  included (tracemalloc would not see them). Without ``clear_refs`` it falls back to the
  ``ru_maxrss`` delta, a lower bound. Pages that the allocator reuses from before the
  baseline are not counted, in either library.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import importlib
import importlib.util
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["Case", "Settings", "SHAPES", "CELLS", "PEERS", "make_cases", "run_grid",
           "format_report", "add_arguments", "run", "main"]

# --------------------------------------------------------------------------- the grid

SHAPES = {  # name: (B, T, I, H)
    "tiny": (1, 100, 64, 64),
    "small": (16, 100, 128, 128),
    "medium": (64, 100, 256, 256),
    "large": (64, 50, 512, 512),
    "step": (1, 1, 64, 64),     # streaming: one time step per call from Python, B = 1
}
MODES = ("forward", "train")


@dataclasses.dataclass(frozen=True)
class Cell:
    name: str
    gates: int           # G
    states: int          # 2 for LSTM (h, c), else 1
    torch: str           # torch.nn class name (+ "Cell" for the step case)
    onnx: str            # ONNX operator
    onnx_order: tuple    # PyTorch gate blocks in ONNX order (LSTM i,f,g,o -> i,o,f,c; GRU r,z,n -> z,r,n)


CELLS = {
    "rnn": Cell("rnn", 1, 1, "RNN", "RNN", (0,)),
    "lstm": Cell("lstm", 4, 2, "LSTM", "LSTM", (0, 3, 1, 2)),
    "gru": Cell("gru", 3, 1, "GRU", "GRU", (1, 0, 2)),
}

PEERS = ("torch", "onnxruntime", "jax")          # what the ratio is taken against
ENTRIES = ("fastrnn", "reference") + PEERS + ("sgemm",)


@dataclasses.dataclass(frozen=True)
class Case:
    cell: str
    shape: str
    mode: str            # "forward" (inference) or "train" (forward + backward)
    threads: int
    B: int
    T: int
    I: int
    H: int

    @classmethod
    def of(cls, cell, shape, mode, threads, dims=None):
        return cls(cell, shape, mode, threads, *(dims or SHAPES[shape]))

    @property
    def streaming(self) -> bool:
        return self.shape == "step"

    @property
    def flops(self) -> int:
        forward = 2 * self.B * self.T * (self.I + self.H) * CELLS[self.cell].gates * self.H
        return forward * (3 if self.mode == "train" else 1)

    @property
    def label(self) -> str:
        return f"{self.cell}-{self.shape}-{self.mode}-{self.threads}t"


def make_cases(cells, shapes, modes, threads):
    """The grid, thread count outermost. The streaming step is forward-only."""
    return [Case.of(c, s, m, n) for n in threads for m in modes for c in cells for s in shapes
            if not (s == "step" and m == "train")]


@dataclasses.dataclass
class Problem:
    x: np.ndarray        # (T, B, I) float32, time-major
    w_ih: np.ndarray     # (G*H, I)
    w_hh: np.ndarray     # (G*H, H)
    b_ih: np.ndarray     # (G*H,)
    b_hh: np.ndarray     # (G*H,)

    @property
    def weights(self):
        return self.w_ih, self.w_hh, self.b_ih, self.b_hh


def make_problem(case: Case, seed: int = 0) -> Problem:
    """Deterministic inputs and PyTorch-initialised weights (a worker rebuilds the same)."""
    rng = np.random.default_rng(seed)
    G, H, I = CELLS[case.cell].gates, case.H, case.I
    bound = 1 / np.sqrt(H)
    x = rng.standard_normal((case.T, case.B, I), dtype=np.float32)
    w = [rng.uniform(-bound, bound, shape).astype(np.float32)
         for shape in ((G * H, I), (G * H, H), (G * H,), (G * H,))]
    return Problem(x, *w)


# --------------------------------------------------------------------------- runners

class Runner:
    """One entry on one case: ``call()`` is what is timed; ``outputs()`` feeds the check.

    Output keys: forward ``y``; train ``y, dx, dw_ih, dw_hh, db_ih, db_hh`` (PyTorch
    layout); streaming step ``h`` (one step from zero state).
    """

    def __init__(self, call: Callable[[], object], outputs: Callable[[], dict]):
        self.call = call
        self.outputs = outputs

    def time(self, k: int) -> tuple[float, float]:
        """Wall and process CPU seconds for ``k`` back-to-back calls."""
        call = self.call
        cpu, start = time.process_time(), time.perf_counter()
        for _ in range(k):
            call()
        return time.perf_counter() - start, time.process_time() - cpu

    def check(self):
        """Warm-up call that also returns the outputs (numpy arrays) and its duration."""
        start = time.perf_counter()
        out = {k: np.asarray(v, dtype=np.float32) for k, v in self.outputs().items()}
        return out, time.perf_counter() - start


class Peer:
    """Runner factories of one library: ``forward``, ``train`` and ``step`` per case.

    A factory returns None when the library cannot do that mode. ``isolated`` peers run in
    a worker process per thread count (their thread setup is fixed at import).
    """
    isolated = False

    def set_threads(self, n: int) -> None:
        pass

    def make(self, case: Case, problem: Problem):
        kind = "step" if case.streaming else case.mode
        return getattr(self, kind)(case, problem)

    def forward(self, case, p):
        return None

    def train(self, case, p):
        return None

    def step(self, case, p):
        return None


def _grads_dict(y, dx, dw_ih, dw_hh, db_ih, db_hh):
    return dict(y=y, dx=dx, dw_ih=dw_ih, dw_hh=dw_hh, db_ih=db_ih, db_hh=db_hh)


class FastrnnPeer(Peer):
    """fastrnn.ops (C kernels) or fastrnn.reference (NumPy): the same functional API."""

    def __init__(self, backend="ops"):
        self.module = f"fastrnn.{backend}"
        self.api = importlib.import_module(self.module)
        import fastrnn
        self.fastrnn = fastrnn

    def set_threads(self, n):
        if hasattr(self.fastrnn, "set_num_threads"):
            self.fastrnn.set_num_threads(n)

    def _functions(self, case):
        return (getattr(self.api, f"{case.cell}_forward"),
                getattr(self.api, f"{case.cell}_backward"), CELLS[case.cell].states)

    def forward(self, case, p):
        fwd, _, n = self._functions(case)
        call = lambda: fwd(p.x, *[None] * n, *p.weights, training=False)[0]  # noqa: E731
        return Runner(call, lambda: {"y": call()})

    def train(self, case, p):
        fwd, bwd, n = self._functions(case)
        dy = np.ones((case.T, case.B, case.H), np.float32)    # d(sum of outputs)

        def call():
            y, *_, cache = fwd(p.x, *[None] * n, *p.weights, training=True)
            return y, bwd(dy, *[None] * n, cache)

        def outputs():
            y, g = call()
            return _grads_dict(y, g[0], *g[-4:])          # dx, then the weights
        return Runner(call, outputs)

    def step(self, case, p):
        """The layer's ``step`` (``fastrnn.nn.recurrent``) if there is one, else T = 1 calls."""
        module = self._layer(case, p)
        if module is not None:
            state = [None]

            def call():
                state[0] = module.step(p.x[0], state[0])[1]

            return Runner(call, lambda: {"h": module.step(p.x[0], None)[0]})
        fwd, _, n = self._functions(case)
        x_t = p.x[:1]
        zeros = [np.zeros((1, case.H), np.float32) for _ in range(n)]
        state = list(zeros)

        def call():
            state[:] = fwd(x_t, *state, *p.weights, training=False)[1:1 + n]

        return Runner(call, lambda: {"h": fwd(x_t, *zeros, *p.weights, training=False)[1]})

    def _layer(self, case, p):
        """An eval-mode ``fastrnn.nn.recurrent`` layer holding the weights (C backend only)."""
        if self.module != "fastrnn.ops":
            return None
        try:
            recurrent = importlib.import_module("fastrnn.nn.recurrent")
        except ImportError:
            return None
        layer_class = getattr(recurrent, CELLS[case.cell].torch, None)
        if layer_class is None or not hasattr(layer_class, "step"):
            return None
        layer = layer_class(case.I, case.H)
        layer.load_state_dict(dict(zip(("weight_ih_l0", "weight_hh_l0", "bias_ih_l0",
                                        "bias_hh_l0"), p.weights)))
        return layer.eval()


class TorchPeer(Peer):

    def __init__(self):
        import torch
        self.torch = torch

    def set_threads(self, n):
        self.torch.set_num_threads(n)

    def _module(self, case, p, cell=False):
        torch = self.torch
        m = getattr(torch.nn, CELLS[case.cell].torch + ("Cell" if cell else ""))(case.I, case.H)
        suffix = "" if cell else "_l0"
        with torch.no_grad():
            for name, w in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), p.weights):
                getattr(m, name + suffix).copy_(torch.from_numpy(w))
        return m

    def forward(self, case, p):
        torch, m, x = self.torch, self._module(case, p), self.torch.from_numpy(p.x)

        def call():
            with torch.inference_mode():
                return m(x)[0]
        return Runner(call, lambda: {"y": call().numpy()})

    def train(self, case, p):
        m = self._module(case, p)
        x = self.torch.from_numpy(p.x).clone().requires_grad_()

        def call():
            m.zero_grad(set_to_none=True)
            x.grad = None
            y = m(x)[0]
            y.sum().backward()
            return y

        def outputs():
            y = call().detach().numpy()
            return _grads_dict(y, x.grad, m.weight_ih_l0.grad, m.weight_hh_l0.grad,
                               m.bias_ih_l0.grad, m.bias_hh_l0.grad)
        return Runner(call, outputs)

    def step(self, case, p):
        torch, m = self.torch, self._module(case, p, cell=True)
        x_t = torch.from_numpy(p.x[0])
        lstm = CELLS[case.cell].states == 2
        zeros = tuple(torch.zeros(1, case.H) for _ in range(CELLS[case.cell].states))
        state = [zeros if lstm else zeros[0]]

        def one(s):
            with torch.inference_mode():
                return m(x_t, s)

        def call():
            state[0] = one(state[0])

        def outputs():
            out = one(zeros if lstm else zeros[0])
            return {"h": (out[0] if lstm else out).numpy()}
        return Runner(call, outputs)


class OnnxRuntimePeer(Peer):
    """ONNX Runtime's RNN/LSTM/GRU operators on a graph built with onnx.helper (forward only)."""

    def __init__(self):
        import onnx  # noqa: F401  (the graph builder)
        import onnxruntime
        self.ort = onnxruntime
        self.threads = 1

    def set_threads(self, n):
        self.threads = n          # ONNX Runtime takes it per session

    def _session(self, case, p, with_state):
        from onnx import TensorProto, helper, numpy_helper
        cell = CELLS[case.cell]
        H = case.H

        def onnx_order(a):        # PyTorch gate blocks -> ONNX gate blocks
            return np.concatenate([a[g * H:(g + 1) * H] for g in cell.onnx_order])[None]

        inits = [numpy_helper.from_array(onnx_order(p.w_ih), "W"),
                 numpy_helper.from_array(onnx_order(p.w_hh), "R"),
                 numpy_helper.from_array(np.concatenate([onnx_order(p.b_ih),
                                                         onnx_order(p.b_hh)], axis=1), "B")]
        dims = {"X": [case.T, case.B, case.I], "initial_h": [1, case.B, H],
                "initial_c": [1, case.B, H]}
        states = ["initial_h", "initial_c"][:cell.states] if with_state else []
        outputs = ["Y", "Y_h", "Y_c"][:1 + cell.states]
        attrs = {"hidden_size": H}
        if cell.name == "gru":
            attrs["linear_before_reset"] = 1          # PyTorch's GRU
        node = helper.make_node(cell.onnx, ["X", "W", "R", "B", "", *states], outputs, **attrs)
        graph = helper.make_graph(
            [node], f"{cell.name}_bench",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, dims[n]) for n in ["X", *states]],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
            initializer=inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        options = self.ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
        return self.ort.InferenceSession(model.SerializeToString(), options,
                                         providers=["CPUExecutionProvider"])

    def forward(self, case, p):
        session, feeds = self._session(case, p, with_state=False), {"X": p.x}
        call = lambda: session.run(["Y"], feeds)[0]  # noqa: E731
        return Runner(call, lambda: {"y": call()[:, 0]})

    def step(self, case, p):
        n = CELLS[case.cell].states
        session = self._session(case, p, with_state=True)
        names = ["initial_h", "initial_c"][:n]
        state_outputs = ["Y_h", "Y_c"][:n]
        zeros = [np.zeros((1, 1, case.H), np.float32)] * n
        feeds = {"X": p.x[:1], **dict(zip(names, zeros))}

        def call():
            feeds.update(zip(names, session.run(state_outputs, feeds)))

        def outputs():
            return {"h": session.run(["Y_h"], {"X": p.x[:1], **dict(zip(names, zeros))})[0][0]}
        return Runner(call, outputs)


class JaxPeer(Peer):
    """``lax.scan`` over a jax.numpy cell, under ``jit``; input projection hoisted."""
    isolated = True

    def __init__(self):
        import jax
        import jax.numpy as jnp
        self.jax, self.jnp = jax, jnp

    def _cell_step(self, cell):
        """(w_hh, b_hh, xg_t, state) -> state, for xg_t = x_t w_ih^T + b_ih."""
        jnp, sigmoid = self.jnp, self.jax.nn.sigmoid

        def rnn(w_hh, b_hh, xg, state):
            return (jnp.tanh(xg + state[0] @ w_hh.T + b_hh),)

        def lstm(w_hh, b_hh, xg, state):
            h, c = state
            i, f, g, o = jnp.split(xg + h @ w_hh.T + b_hh, 4, axis=-1)
            c = sigmoid(f) * c + sigmoid(i) * jnp.tanh(g)
            return sigmoid(o) * jnp.tanh(c), c

        def gru(w_hh, b_hh, xg, state):
            h = state[0]
            xr, xz, xn = jnp.split(xg, 3, axis=-1)
            hr, hz, hn = jnp.split(h @ w_hh.T + b_hh, 3, axis=-1)
            r, z = sigmoid(xr + hr), sigmoid(xz + hz)
            n = jnp.tanh(xn + r * hn)
            return ((1 - z) * n + z * h,)
        return {"rnn": rnn, "lstm": lstm, "gru": gru}[cell]

    def _sequence(self, case):
        step, jnp = self._cell_step(case.cell), self.jnp
        n = CELLS[case.cell].states

        def sequence(params, x):
            w_ih, w_hh, b_ih, b_hh = params
            xg = x @ w_ih.T + b_ih                            # hoisted: (T, B, G*H)
            init = tuple(jnp.zeros((x.shape[1], w_hh.shape[1]), x.dtype) for _ in range(n))

            def body(state, xg_t):
                state = step(w_hh, b_hh, xg_t, state)
                return state, state[0]
            return self.jax.lax.scan(body, init, xg)[1]
        return sequence

    def _inputs(self, p):
        jnp = self.jnp
        return tuple(jnp.asarray(w) for w in p.weights), jnp.asarray(p.x)

    def forward(self, case, p):
        f, (params, x) = self.jax.jit(self._sequence(case)), self._inputs(p)
        call = lambda: f(params, x).block_until_ready()  # noqa: E731
        return Runner(call, lambda: {"y": call()})

    def train(self, case, p):
        jax, sequence = self.jax, self._sequence(case)

        @jax.jit
        def forward_backward(params, x):
            y, pullback = jax.vjp(sequence, params, x)
            (dparams, dx) = pullback(self.jnp.ones_like(y))
            return y, dx, dparams

        params, x = self._inputs(p)
        call = lambda: jax.block_until_ready(forward_backward(params, x))  # noqa: E731

        def outputs():
            y, dx, dparams = call()
            return _grads_dict(y, dx, *dparams)
        return Runner(call, outputs)

    def step(self, case, p):
        jax, jnp, cell_step = self.jax, self.jnp, self._cell_step(case.cell)

        @jax.jit
        def one(params, x_t, state):
            w_ih, w_hh, b_ih, b_hh = params
            return cell_step(w_hh, b_hh, x_t @ w_ih.T + b_ih, state)

        params, x = self._inputs(p)
        x_t = x[0]
        zeros = tuple(jnp.zeros((1, case.H), jnp.float32) for _ in range(CELLS[case.cell].states))
        state = [zeros]

        def call():
            state[0] = jax.block_until_ready(one(params, x_t, state[0]))
        return Runner(call, lambda: {"h": one(params, x_t, zeros)[0]})


class SgemmPeer(Peer):
    """The ceiling: numpy float32 matmuls with the FLOPs of the case (no outputs to check)."""

    def forward(self, case, p, repeats=1):
        rng = np.random.default_rng(1)
        G = CELLS[case.cell].gates
        a = rng.standard_normal((case.T * case.B, case.I + case.H), dtype=np.float32)
        b = rng.standard_normal((case.I + case.H, G * case.H), dtype=np.float32)
        c = np.empty((a.shape[0], b.shape[1]), np.float32)

        def call():
            for _ in range(repeats):
                np.matmul(a, b, out=c)
        return Runner(call, dict)

    def train(self, case, p):
        return self.forward(case, p, repeats=3)

    step = forward


PEER_FACTORIES = {
    "fastrnn": lambda: FastrnnPeer("ops"),
    "reference": lambda: FastrnnPeer("reference"),
    "torch": TorchPeer,
    "onnxruntime": OnnxRuntimePeer,
    "jax": JaxPeer,
    "sgemm": SgemmPeer,
}
_PEER_MODULES = {"fastrnn": "fastrnn._core", "reference": "fastrnn.reference", "torch": "torch",
                 "onnxruntime": "onnxruntime", "jax": "jax", "sgemm": "numpy"}


def _isolated(entry: str) -> bool:
    return getattr(PEER_FACTORIES[entry], "isolated", False)


def available_entries(names):
    """The entries whose library is importable (checked without importing jax)."""
    found = []
    for name in names:
        try:
            if importlib.util.find_spec(_PEER_MODULES[name]) is not None:
                found.append(name)
        except (ImportError, ValueError):
            pass
    return found


# --------------------------------------------------------------------------- threads

def limit_threads(n: int) -> None:
    """Limit every loaded BLAS / OpenMP pool of this process to ``n`` threads."""
    with contextlib.suppress(ImportError):
        from threadpoolctl import ThreadpoolController
        ThreadpoolController().limit(limits=n)


def _setup_xla(n: int) -> None:
    """Before jax is imported: 1 thread via XLA's flag; 1 < n < CPUs by pinning to n CPUs
    (XLA sizes its pool from the affinity mask); n >= CPUs is XLA's default."""
    if n == 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_cpu_multi_thread_eigen=false").strip()
    elif hasattr(os, "sched_setaffinity") and n < len(os.sched_getaffinity(0)):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:n])


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


# --------------------------------------------------------------------------- measuring

@dataclasses.dataclass
class Settings:
    rounds: int = 5            # round-robin samples per entry
    sample_s: float = 0.04     # target duration of one sample (k back-to-back calls)
    max_call_s: float = 1.0    # an entry slower than this per call gets 1 sample
    settle_s: float = 0.002    # pause before each sample
    seed: int = 0
    memory: bool = True

    @classmethod
    def quick(cls, **kw):
        return cls(rounds=2, sample_s=0.01, max_call_s=0.2, **kw)


def _max_rel_error(a: dict, b: dict):
    errors = [float(np.abs(a[k] - b[k]).max() / max(float(np.abs(b[k]).max()), 1e-30))
              for k in b if k in a and a[k].shape == b[k].shape]
    shape_mismatch = [k for k in b if k in a and a[k].shape != b[k].shape]
    if shape_mismatch:
        return float("inf")
    return max(errors) if errors else None


def _flagged(record: dict, tolerance: float = 1e-3) -> set:
    """Entries whose outputs differ from fastrnn's by more than ``tolerance`` (relative)."""
    return {n for n, e in record["max_rel_error"].items() if e is not None and not e <= tolerance}


def measure_case(case: Case, runners: dict, settings: Settings, log=print) -> dict:
    """Interleaved samples of each runner on ``case``; returns a result record."""
    gc.collect()
    outputs, calls, rounds = {}, {}, {}
    for name, runner in runners.items():
        outputs[name], seconds = runner.check()      # warm-up (compiles), + outputs
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
    walls, cpus = dict.fromkeys(runners, 0.0), dict.fromkeys(runners, 0.0)
    names = list(runners)
    for r in range(settings.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if len(samples[name]) < rounds[name]:
                time.sleep(settings.settle_s)        # let the last entry's spinning threads park
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
                for name in entries:                 # keep the entry order stable
                    peer = remote.get(name) or local[name]
                    runner = peer.make(case, problem)
                    if runner is not None:
                        runners[name] = runner
                records.append(measure_case(case, runners, settings, log))
                del runners
        finally:
            for peer in remote.values():
                peer.close()
    return {"records": records, "sgemm_peak_gflops": peaks}


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


# --------------------------------------------------------------------------- report

def _ms(seconds):
    if seconds is None:
        return "–"
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def summarize(record: dict) -> dict:
    """Ratio to the fastest peer, fastrnn's GFLOP/s and its share of the same-run sgemm."""
    med = record["median_s"]
    fast = med.get("fastrnn")
    peers = {p: med[p] for p in PEERS if p in med}
    out = {"ratio": None, "fastest_peer": None, "gflops": None, "sgemm_share": None}
    if fast:
        out["gflops"] = record["flops"] / fast / 1e9
        if peers:
            out["fastest_peer"] = min(peers, key=peers.get)
            out["ratio"] = peers[out["fastest_peer"]] / fast
        if med.get("sgemm"):
            out["sgemm_share"] = med["sgemm"] / fast
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


def format_report(result: dict) -> str:
    """Markdown: one table per (mode, threads), then the memory table."""
    records, entries = result["records"], result["entries"]
    env = result["environment"]
    lines = [f"fastrnn benchmark — {env['cpu']}, {env['cpus']} CPUs; "
             + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + ".",
             "",
             "Median ms per call (streaming `step`: per time step). **ratio** = fastest peer "
             "(torch / onnxruntime / jax) ÷ fastrnn, > 1 means fastrnn is faster. "
             "GFLOP/s counts 2·B·T·(I+H)·G·H per forward, 3× for train; **% sgemm** = "
             "fastrnn's speed as a share of a numpy sgemm with the same FLOPs, same run. "
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
                  "| case | " + " | ".join(cols) + " | ratio | GFLOP/s | % sgemm |",
                  "|---|" + "---:|" * (len(cols) + 3)]
        for rec in recs:
            s, c = summarize(rec), rec["case"]
            flagged = _flagged(rec)
            any_flagged |= bool(flagged)
            cells = [_ms(rec["median_s"].get(e)) + (" ⚠" if e in flagged else "") for e in cols]
            ratio = f"{s['ratio']:.2f} ({s['fastest_peer']})" if s["ratio"] else "–"
            gflops = f"{s['gflops']:.1f}" if s["gflops"] else "–"
            share = f"{100 * s['sgemm_share']:.0f}%" if s["sgemm_share"] else "–"
            lines.append(f"| {c['cell'].upper()} {c['shape']} | " + " | ".join(cells)
                         + f" | {ratio} | {gflops} | {share} |")
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
    cases = make_cases(args.cells, args.shapes, args.modes, args.threads)
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastrnn.bench",
                                     description=__doc__.splitlines()[0])
    return run(add_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
