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


