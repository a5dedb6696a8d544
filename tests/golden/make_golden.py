"""Generate the PyTorch golden vectors that tests/test_pytorch_parity.py checks against.

Run once, by hand, where torch is installed (``pip install torch==2.13.0``)::

    python tests/golden/make_golden.py

Each case is a single-layer ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` in float64 with a fixed
seed. The loss is ``sum(y * wy) + sum(h_n * wh) (+ sum(c_n * wc))`` so every output gets a
distinct, random upstream gradient. One compressed ``<case>.npz`` per case holds the inputs,
weights, loss weights, outputs and every gradient, plus ``torch_version`` and the case's
options (``cell``, ``lengths`` where used).

Arrays use the fastrnn layout: time-major ``x (T, B, I)``, states ``(B, H)``, weights in
PyTorch layout. ``torch_run`` is also what the live tests call, so both compare against
exactly the same PyTorch computation.
"""
from __future__ import annotations

import pathlib

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent

# name -> (cell, T, B, I, H, lengths, bias)
# cell is one of "rnn_tanh", "rnn_relu", "lstm", "gru".
CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
CASES = {}
for _cell in CELLS:
    CASES[f"{_cell}_basic"] = (_cell, 5, 3, 4, 6, None, True)
    CASES[f"{_cell}_lengths"] = (_cell, 5, 3, 4, 6, [5, 2, 3], True)
    CASES[f"{_cell}_t1_b1"] = (_cell, 1, 1, 4, 6, None, True)
CASES["lstm_nobias"] = ("lstm", 4, 2, 3, 5, None, False)
CASES["gru_nobias"] = ("gru", 4, 2, 3, 5, None, False)

GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
TORCH_PARAMS = {"w_ih": "weight_ih_l0", "w_hh": "weight_hh_l0",
                "b_ih": "bias_ih_l0", "b_hh": "bias_hh_l0"}


def make_inputs(cell: str, T: int, B: int, I: int, H: int, lengths, bias: bool,
                rng: np.random.Generator) -> dict:
    """Random float64 inputs, weights, initial states and loss weights for one case."""
    G = GATES[cell]
    scale = 1.0 / np.sqrt(H)  # PyTorch's default init range
    arrays = {
        "x": rng.standard_normal((T, B, I)),
        "h0": 0.5 * rng.standard_normal((B, H)),
        "w_ih": rng.uniform(-scale, scale, (G * H, I)),
        "w_hh": rng.uniform(-scale, scale, (G * H, H)),
        "wy": rng.standard_normal((T, B, H)),
        "wh": rng.standard_normal((B, H)),
    }
    if bias:
        arrays["b_ih"] = rng.uniform(-scale, scale, G * H)
        arrays["b_hh"] = rng.uniform(-scale, scale, G * H)
    if cell == "lstm":
        arrays["c0"] = 0.5 * rng.standard_normal((B, H))
        arrays["wc"] = rng.standard_normal((B, H))
    if lengths is not None:
        arrays["lengths"] = np.asarray(lengths, dtype=np.int64)
    return arrays


def torch_run(cell: str, arrays: dict) -> dict:
    """Forward + backward in PyTorch, in the dtype of ``arrays["x"]``.

    Returns numpy arrays: ``y, h_n, (c_n)`` and the gradients ``dx, dh0, (dc0), dw_ih,
    dw_hh, (db_ih, db_hh)`` of ``sum(y*wy) + sum(h_n*wh) (+ sum(c_n*wc))``.
    """
    import torch
    from torch import nn

    x_np = arrays["x"]
    T, B, I = x_np.shape
    H = arrays["w_hh"].shape[1]
    dtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[x_np.dtype]
    bias = "b_ih" in arrays
    if cell.startswith("rnn"):
        module = nn.RNN(I, H, nonlinearity=cell[4:], bias=bias)
    else:
        module = {"lstm": nn.LSTM, "gru": nn.GRU}[cell](I, H, bias=bias)
    module = module.to(dtype)
    with torch.no_grad():
        for name, torch_name in TORCH_PARAMS.items():
            if name in arrays:
                getattr(module, torch_name).copy_(torch.from_numpy(arrays[name]))

    def leaf(name):
        return torch.tensor(arrays[name], dtype=dtype, requires_grad=True)

    x = leaf("x")
    h0 = leaf("h0")
    c0 = leaf("c0") if cell == "lstm" else None
    state = (h0[None], c0[None]) if cell == "lstm" else h0[None]
    lengths = arrays.get("lengths")
    if lengths is None:
        y, hidden = module(x, state)
    else:
        packed = nn.utils.rnn.pack_padded_sequence(
            x, torch.as_tensor(lengths, dtype=torch.int64), enforce_sorted=False)
        y_packed, hidden = module(packed, state)
        y, _ = nn.utils.rnn.pad_packed_sequence(y_packed, total_length=T)
    h_n, c_n = (hidden[0][0], hidden[1][0]) if cell == "lstm" else (hidden[0], None)

    def const(name):
        return torch.tensor(arrays[name], dtype=dtype)

    loss = (y * const("wy")).sum() + (h_n * const("wh")).sum()
    if c_n is not None:
        loss = loss + (c_n * const("wc")).sum()
    loss.backward()

    out = {"y": y, "h_n": h_n, "dx": x.grad, "dh0": h0.grad}
    if c_n is not None:
        out.update(c_n=c_n, dc0=c0.grad)
    for name, torch_name in TORCH_PARAMS.items():
        if name in arrays:
            out["d" + name] = getattr(module, torch_name).grad
    return {k: v.detach().cpu().numpy().copy() for k, v in out.items()}


def main() -> None:
    import torch

    for index, (name, (cell, T, B, I, H, lengths, bias)) in enumerate(sorted(CASES.items())):
        rng = np.random.default_rng(20240 + index)
        arrays = make_inputs(cell, T, B, I, H, lengths, bias, rng)
        results = torch_run(cell, arrays)
        path = HERE / f"{name}.npz"
        np.savez_compressed(path, cell=np.array(cell), torch_version=np.array(torch.__version__),
                            **arrays, **results)
        print(f"{path.name}: {cell} T={T} B={B} I={I} H={H} lengths={lengths} bias={bias}"
              f" ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
