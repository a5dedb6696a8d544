"""Runners and peers: how each library runs a case (fastrnn, reference, torch, onnxruntime, jax, sgemm), and thread limits."""
from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
import time
from typing import Callable

import numpy as np

from .grid import CELLS, Case, Problem


# --------------------------------------------------------------------------- runners

class Runner:
    """One entry on one case: ``call()`` is what is timed; ``outputs()`` feeds the check.

    Output keys: forward ``y``; train ``y, dx, dw_ih, dw_hh, db_ih, db_hh`` (PyTorch
    layout); streaming step ``h`` (one step from zero state).
    """

    def __init__(self, call: Callable[[], object], outputs: Callable[[], dict],
                 note: str | None = None):
        self.call = call
        self.outputs = outputs
        self.note = note          # shown beside the entry's time (what it really ran)

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
    """Runner factories of one library: ``forward``, ``train`` and ``step`` per case, and
    for a reduced precision ``forward_bf16``, ``step_int8``, ...

    A factory returns None (or is absent) when the library cannot do that mode or
    precision. ``isolated`` peers run in a worker process per thread count (their thread
    setup is fixed at import).
    """
    isolated = False

    def set_threads(self, n: int) -> None:
        pass

    def make(self, case: Case, problem: Problem):
        kind = "step" if case.streaming else case.mode
        if case.precision != "float32":
            kind += "_" + case.precision
        factory = getattr(self, kind, None)
        return factory(case, problem) if factory else None

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

    # -- reduced precision: the ops on a bf16 / int8 pack made once; step on the layer ---
    _PRECISION = {"bf16": "bfloat16", "int8": "int8"}

    def _lowp_forward(self, case, p):
        if self.module != "fastrnn.ops":
            return None
        fwd, _, n = self._functions(case)
        precision = self._PRECISION[case.precision]
        packs = self.api.pack_weights(case.cell, p.w_hh, w_ih=p.w_ih, backward=False,
                                      precision=precision)
        call = lambda: fwd(p.x, *[None] * n, *p.weights, training=False,  # noqa: E731
                           packs=packs, precision=precision)[0]
        return Runner(call, lambda: {"y": call()})

    def _lowp_step(self, case, p):
        layer = self._layer(case, p)
        if layer is None:
            return None
        if case.precision == "bf16":
            layer.to("bfloat16")
        else:
            layer = self.fastrnn.quantize_dynamic(layer)
        state = [None]

        def call():
            state[0] = layer.step(p.x[0], state[0])[1]
        return Runner(call, lambda: {"h": layer.step(p.x[0], None)[0]})

    forward_bf16 = forward_int8 = _lowp_forward
    step_bf16 = step_int8 = _lowp_step

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
        return Runner(call, lambda: {"y": call().float().numpy()})

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
            return {"h": (out[0] if lstm else out).float().numpy()}
        return Runner(call, outputs)

    # -- bf16: the float32 modules under CPU autocast (what a PyTorch user does) ------
    def _autocast(self, runner):
        torch, call, outputs = self.torch, runner.call, runner.outputs

        def wrapped(f):
            def run():
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return f()
            return run
        return Runner(wrapped(call), wrapped(outputs))

    def forward_bf16(self, case, p):
        return self._autocast(self.forward(case, p)) if torch_bf16_runs(case.cell) else None

    def step_bf16(self, case, p):
        return self._autocast(self.step(case, p)) if torch_bf16_runs(case.cell) else None


class OnnxRuntimePeer(Peer):
    """ONNX Runtime's RNN/LSTM/GRU operators on a graph built with onnx.helper (forward only)."""

    def __init__(self):
        import onnx  # noqa: F401  (the graph builder)
        import onnxruntime
        self.ort = onnxruntime
        self.threads = 1

    def set_threads(self, n):
        self.threads = n          # ONNX Runtime takes it per session

    def _session(self, case, p, with_state, int8=False):
        """(an inference session of the cell's operator -- with ``int8``, after ONNX
        Runtime's ``quantize_dynamic`` --, a note when ORT kept the operator float32)."""
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
        note = None
        if int8:
            model, quantized = ort_quantize_dynamic(model)
            note = None if quantized else f"float32: ORT has no int8 {cell.name.upper()}"
        return ort_session(model, self.threads), note

    def forward(self, case, p, int8=False):
        session, note = self._session(case, p, with_state=False, int8=int8)
        feeds = {"X": p.x}
        call = lambda: session.run(["Y"], feeds)[0]  # noqa: E731
        return Runner(call, lambda: {"y": call()[:, 0]}, note)

    def step(self, case, p, int8=False):
        n = CELLS[case.cell].states
        session, note = self._session(case, p, with_state=True, int8=int8)
        names = ["initial_h", "initial_c"][:n]
        state_outputs = ["Y_h", "Y_c"][:n]
        zeros = [np.zeros((1, 1, case.H), np.float32)] * n
        feeds = {"X": p.x[:1], **dict(zip(names, zeros))}

        def call():
            feeds.update(zip(names, session.run(state_outputs, feeds)))

        def outputs():
            return {"h": session.run(["Y_h"], {"X": p.x[:1], **dict(zip(names, zeros))})[0][0]}
        return Runner(call, outputs, note)

    def forward_int8(self, case, p):
        return self.forward(case, p, int8=True)

    def step_int8(self, case, p):
        return self.step(case, p, int8=True)


def ort_session(model, threads: int = 1):
    """An ONNX Runtime CPU session of ``model`` (a ModelProto or a path): ``threads``
    intra-op threads, one inter-op, sequential execution."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    source = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])


@functools.lru_cache(maxsize=None)
def torch_bf16_runs(cell: str) -> bool:
    """Whether PyTorch runs the cell's module ('rnn', 'lstm', 'gru') under bf16 autocast on
    this CPU: oneDNN has no bf16 LSTM primitive without AVX512-BF16 ('could not create a
    primitive descriptor'), and then PyTorch has no bf16 entry here. Probed once on a tiny
    module."""
    import torch
    m = getattr(torch.nn, CELLS[cell].torch)(2, 2)
    try:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            m(torch.zeros(1, 1, 2))
    except RuntimeError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def _cpu_has_vnni() -> bool:
    """Whether this CPU has an int8 dot product (AVX512-VNNI, AVX-VNNI; not x86: True).
    Without one, ONNX Runtime's u8 x s8 products (vpmaddubsw) saturate on full-range int8
    weights -- LSTM small's error against float32 was 0.38 on Zen 3 -- and its docs
    advise ``reduce_range`` (7-bit weights) there, as an ORT user would: 0.022."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), None)
    except OSError:
        return True
    if flags is None:
        return True
    return any(f in flags.split() for f in ("avx512_vnni", "avx_vnni"))


def ort_quantize_dynamic(model):
    """ONNX Runtime's ``quantize_dynamic`` of ``model`` (a ModelProto; QInt8 weights), as an
    ONNX Runtime user runs it (7-bit weights on a CPU without VNNI, as ORT advises: see
    _cpu_has_vnni): returns the quantized ModelProto and whether a recurrent
    operator became int8 (LSTM -> DynamicQuantizeLSTM; ORT has no int8 GRU or RNN and
    keeps those float32; MatMul / Gemm heads are quantized either way)."""
    import logging
    import os
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    with tempfile.TemporaryDirectory() as folder:
        src, dst = os.path.join(folder, "f32.onnx"), os.path.join(folder, "int8.onnx")
        onnx.save(model, src)
        logging.disable(logging.WARNING)       # "consider pre-processing": not needed
        try:
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8,
                             reduce_range=not _cpu_has_vnni())
        finally:
            logging.disable(logging.NOTSET)
        model = onnx.load(dst)
    return model, any(n.op_type == "DynamicQuantizeLSTM" for n in model.graph.node)


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
    """Before jax is imported: n < CPUs by pinning to n CPUs (XLA sizes its pool from the
    affinity mask), for n = 1 also XLA's single-thread flag -- which jax 0.10 no longer
    honours alone (its runtime kept 1.5-1.9 CPUs busy on a 1-thread case); n >= CPUs is
    XLA's default."""
    if n == 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_cpu_multi_thread_eigen=false").strip()
    if hasattr(os, "sched_setaffinity") and n < len(os.sched_getaffinity(0)):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:n])


