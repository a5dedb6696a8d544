"""Generate the PyTorch golden vectors that tests/test_layers.py checks the layers against.

Run once, by hand, where torch is installed (``pip install torch==2.13.0``)::

    python tests/golden/make_layer_golden.py

Each case is a stacked ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` in float64 with a fixed seed.
The loss is ``sum(y * wy) + sum(h_n * wh) (+ sum(c_n * wc))``. One compressed
``layers/<case>.npz`` per case holds the configuration, the parameters (``param.<torch
name>``), the inputs and loss weights, the outputs and every gradient (``grad.<torch name>``
for parameters), plus ``torch_version``. The files live in a sub-folder so that
``tests/test_pytorch_parity.py`` (which globs ``tests/golden/*.npz``) does not see them.

Arrays are in the caller's layout: ``x (B, T, I)`` and ``y`` with ``batch_first``, else
``(T, B, .)``; states ``(num_layers*num_directions, B, H)``. ``make_arrays`` and
``torch_run_layers`` are also what the live tests in ``tests/test_layers.py`` call.
"""
from __future__ import annotations

import pathlib

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
OUT_DIR = HERE / "layers"

GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
CONFIG_KEYS = ("input_size", "hidden_size", "num_layers", "bias", "batch_first",
               "bidirectional")

# name -> (cell, config, T, B, lengths, with initial states)
CASES = {
    "lstm_2layer_bidir_lengths": (
        "lstm", dict(input_size=3, hidden_size=4, num_layers=2, bias=True, batch_first=False,
                     bidirectional=True), 4, 3, [4, 1, 3], True),
    "gru_2layer_batch_first": (
        "gru", dict(input_size=3, hidden_size=4, num_layers=2, bias=True, batch_first=True,
                    bidirectional=False), 5, 2, None, True),
    "rnn_relu_bidir_batch_first_lengths": (
        "rnn_relu", dict(input_size=2, hidden_size=3, num_layers=1, bias=False,
                         batch_first=True, bidirectional=True), 4, 3, [2, 4, 3], False),
}


def _layout(config: dict, T: int, B: int, F: int) -> tuple:
    return (B, T, F) if config["batch_first"] else (T, B, F)


def make_arrays(cell: str, config: dict, T: int, B: int, lengths, with_states: bool,
                rng: np.random.Generator) -> dict:
    """Random float64 x, initial states (optional), lengths (optional) and loss weights."""
    D = 2 if config["bidirectional"] else 1
    H = config["hidden_size"]
    state_shape = (config["num_layers"] * D, B, H)
    arrays = {"x": rng.standard_normal(_layout(config, T, B, config["input_size"])),
              "wy": rng.standard_normal(_layout(config, T, B, D * H)),
              "wh": rng.standard_normal(state_shape)}
    if with_states:
        arrays["h0"] = 0.5 * rng.standard_normal(state_shape)
    if cell == "lstm":
        arrays["wc"] = rng.standard_normal(state_shape)
        if with_states:
            arrays["c0"] = 0.5 * rng.standard_normal(state_shape)
    if lengths is not None:
        arrays["lengths"] = np.asarray(lengths, dtype=np.int64)
    return arrays


def make_params(cell: str, config: dict, rng: np.random.Generator) -> dict:
    """Parameters by torch name, U(-1/sqrt(H), 1/sqrt(H)) in float64, in torch's order."""
    module = torch_module(cell, config, np.float64)
    bound = 1.0 / np.sqrt(config["hidden_size"])
    return {name: rng.uniform(-bound, bound, tuple(value.shape))
            for name, value in module.state_dict().items()}


def torch_module(cell: str, config: dict, dtype):
    import torch
    from torch import nn

    kwargs = {key: config[key] for key in CONFIG_KEYS}
    if cell.startswith("rnn"):
        module = nn.RNN(nonlinearity=cell[4:], **kwargs)
    else:
        module = {"lstm": nn.LSTM, "gru": nn.GRU}[cell](**kwargs)
    return module.to({np.dtype(np.float32): torch.float32,
                      np.dtype(np.float64): torch.float64}[np.dtype(dtype)])


def torch_run_layers(cell: str, config: dict, params: dict, arrays: dict) -> dict:
    """Forward + backward in PyTorch, in the dtype of ``arrays["x"]``.

    Returns numpy arrays ``y, h_n, (c_n)``, ``dx``, ``dh0``/``dc0`` (when given) and
    ``grad.<name>`` for every parameter.
    """
    import torch
    from torch import nn

    module = torch_module(cell, config, arrays["x"].dtype)
    module.load_state_dict({name: torch.from_numpy(np.asarray(value, arrays["x"].dtype))
                            for name, value in params.items()})
    leaves = {name: torch.tensor(arrays[name], requires_grad=True)
              for name in ("x", "h0", "c0") if name in arrays}
    state = leaves.get("h0")
    if cell == "lstm":
        state = (leaves["h0"], leaves["c0"]) if "h0" in leaves else None
    x = leaves["x"]
    T = x.shape[1] if config["batch_first"] else x.shape[0]
    if "lengths" in arrays:
        packed = nn.utils.rnn.pack_padded_sequence(
            x, torch.as_tensor(arrays["lengths"]), batch_first=config["batch_first"],
            enforce_sorted=False)
        y_packed, hidden = module(packed, state)
        y, _ = nn.utils.rnn.pad_packed_sequence(y_packed, batch_first=config["batch_first"],
                                                total_length=T)
    else:
        y, hidden = module(x, state)
    h_n, c_n = hidden if cell == "lstm" else (hidden, None)
    loss = (y * torch.tensor(arrays["wy"])).sum() + (h_n * torch.tensor(arrays["wh"])).sum()
    out = {"y": y, "h_n": h_n}
    if c_n is not None:
        loss = loss + (c_n * torch.tensor(arrays["wc"])).sum()
        out["c_n"] = c_n
    loss.backward()
    out["dx"] = x.grad
    for name in ("h0", "c0"):
        if name in leaves:
            out["d" + name] = leaves[name].grad
    for name, parameter in module.named_parameters():
        out["grad." + name] = parameter.grad
    return {key: value.detach().cpu().numpy().copy() for key, value in out.items()}


def main() -> None:
    import torch

    OUT_DIR.mkdir(exist_ok=True)
    for index, (name, (cell, config, T, B, lengths, with_states)) in enumerate(
            sorted(CASES.items())):
        rng = np.random.default_rng(31400 + index)
        params = make_params(cell, config, rng)
        arrays = make_arrays(cell, config, T, B, lengths, with_states, rng)
        results = torch_run_layers(cell, config, params, arrays)
        path = OUT_DIR / f"{name}.npz"
        np.savez_compressed(
            path, cell=np.array(cell), torch_version=np.array(torch.__version__),
            **{f"config.{key}": np.array(config[key]) for key in CONFIG_KEYS},
            **{f"param.{key}": value for key, value in params.items()},
            **arrays, **results)
        print(f"{path.name}: {cell} {config} T={T} B={B} lengths={lengths} "
              f"({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
