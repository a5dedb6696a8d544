"""The benchmark grid: shapes, cells, cases and their deterministic problems."""
from __future__ import annotations

import dataclasses

import numpy as np


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

# Reduced precision (inference only): fastrnn in that precision against the peer's own
# mode of it -- PyTorch bf16 autocast; ONNX Runtime quantize_dynamic (DynamicQuantizeLSTM;
# ORT has no int8 GRU/RNN, there it runs its float32 operator, marked in the table).
PRECISIONS = ("float32", "bf16", "int8")
LOWP_PEERS = {"bf16": ("torch",), "int8": ("onnxruntime",)}


def case_entries(entries, precision: str):
    """The entries that run a case of ``precision``: all of them in float32; fastrnn and
    that precision's peer otherwise."""
    if precision == "float32":
        return list(entries)
    return [e for e in entries if e == "fastrnn" or e in LOWP_PEERS[precision]]


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
    precision: str = "float32"   # "bf16" / "int8": reduced-precision inference

    @classmethod
    def of(cls, cell, shape, mode, threads, dims=None, precision="float32"):
        return cls(cell, shape, mode, threads, *(dims or SHAPES[shape]), precision)

    @property
    def streaming(self) -> bool:
        return self.shape == "step"

    @property
    def flops(self) -> int:
        forward = 2 * self.B * self.T * (self.I + self.H) * CELLS[self.cell].gates * self.H
        return forward * (3 if self.mode == "train" else 1)

    @property
    def label(self) -> str:
        tail = "" if self.precision == "float32" else f"-{self.precision}"
        return f"{self.cell}-{self.shape}-{self.mode}-{self.threads}t{tail}"


def make_cases(cells, shapes, modes, threads, precisions=("float32",)):
    """The grid, thread count outermost, then precision. The streaming step is
    forward-only; so are the reduced precisions (inference)."""
    return [Case.of(c, s, m, n, precision=p) for n in threads for p in precisions
            for m in modes for c in cells for s in shapes
            if not ((s == "step" or p != "float32") and m == "train")]


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


