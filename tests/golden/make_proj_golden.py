"""Generate the PyTorch golden vectors of ``LSTM(proj_size=P)`` (tests/test_proj_size.py).

Run once, by hand, where torch is installed (``pip install torch==2.13.0``)::

    python tests/golden/make_proj_golden.py

Each case is a one-layer ``torch.nn.LSTM(I, H, proj_size=P)`` in float64 with a fixed seed,
run on ``x (T, B, I)`` from ``(h0 (B, P), c0 (B, H))`` (with lengths: as a packed sequence).
The loss is ``sum(y * wy) + sum(h_n * wh) + sum(c_n * wc)``. One ``proj/lstm_proj_<case>.npz``
holds the inputs, weights (``w_ih, w_hh, b_ih, b_hh, w_hr``, PyTorch layout), loss
weights, outputs and every gradient (``d`` + the name), and ``torch_version``, in
tests/golden/proj/.
"""
from __future__ import annotations

import pathlib

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
CASES = {"basic": (5, 3, 4, 6, 3, None), "lengths": (5, 3, 4, 6, 3, [5, 2, 4])}
NAMES = {"w_ih": "weight_ih_l0", "w_hh": "weight_hh_l0", "b_ih": "bias_ih_l0",
         "b_hh": "bias_hh_l0", "w_hr": "weight_hr_l0"}


def make_case(T, B, I, H, P, lengths, seed=0) -> dict:
    import torch

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(I, H, proj_size=P).double()
    a = {k: lstm.state_dict()[v].numpy().copy() for k, v in NAMES.items()}
    a.update(x=rng.standard_normal((T, B, I)), h0=0.5 * rng.standard_normal((B, P)),
             c0=0.5 * rng.standard_normal((B, H)), wy=rng.standard_normal((T, B, P)),
             wh=rng.standard_normal((B, P)), wc=rng.standard_normal((B, H)))
    x, h0, c0 = (torch.tensor(a[k], requires_grad=True) for k in ("x", "h0", "c0"))
    inp = x
    if lengths is not None:
        a["lengths"] = np.array(lengths)
        inp = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths),
                                                      enforce_sorted=False)
    y, (h_n, c_n) = lstm(inp, (h0[None], c0[None]))
    if lengths is not None:
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, total_length=T)
    loss = ((y * torch.tensor(a["wy"])).sum() + (h_n[0] * torch.tensor(a["wh"])).sum()
            + (c_n[0] * torch.tensor(a["wc"])).sum())
    loss.backward()
    a.update(y=y.detach().numpy(), h_n=h_n[0].detach().numpy(), c_n=c_n[0].detach().numpy(),
             dx=x.grad.numpy(), dh0=h0.grad.numpy(), dc0=c0.grad.numpy())
    params = dict(lstm.named_parameters())
    for k, v in NAMES.items():
        a["d" + k] = params[v].grad.numpy()
    a["torch_version"] = np.array(torch.__version__)
    return a


if __name__ == "__main__":
    for name, case in CASES.items():
        np.savez_compressed(HERE / "proj" / f"lstm_proj_{name}.npz", **make_case(*case))
        print("wrote", HERE / "proj" / f"lstm_proj_{name}.npz")
