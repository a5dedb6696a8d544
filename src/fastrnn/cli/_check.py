"""``fastrnn check``: an LSTM forward and backward, C kernels against the NumPy reference."""
from __future__ import annotations

import time

import numpy as np

from ._args import positive_int


def _timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def _lstm_forward_backward(module, x, weights, dy):
    y, h_n, c_n, cache = module.lstm_forward(x, None, None, *weights)
    grads = module.lstm_backward(dy, None, None, cache)
    return [y, h_n, c_n, *grads]


def add_parser(commands, parents) -> None:
    p = commands.add_parser(
        "check", parents=parents, help="compare the C kernels with the NumPy reference",
        description="Run an LSTM forward and backward (BPTT) through the C kernels and "
                    "the NumPy reference on random data and print how far apart they are "
                    "and how long each took. Exit status 1 when they disagree.")
    p.add_argument("--steps", type=positive_int, default=100,
                   help="sequence length T (default: %(default)s)")
    p.add_argument("--batch", type=positive_int, default=16,
                   help="batch size B (default: %(default)s)")
    p.add_argument("--input-size", type=positive_int, default=128,
                   help="input features I (default: %(default)s)")
    p.add_argument("--hidden", type=positive_int, default=128,
                   help="hidden units H (default: %(default)s)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="floating-point type (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random problem (default: %(default)s)")
    p.set_defaults(run=check)


def check(args) -> int:
    """LSTM forward + backward: C kernels against the NumPy reference."""
    from .. import ops, reference
    T, B, I, H = args.steps, args.batch, args.input_size, args.hidden
    dtype = np.dtype(args.dtype)
    rng = np.random.default_rng(args.seed)
    bound = 1 / np.sqrt(H)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    weights = [rng.uniform(-bound, bound, shape).astype(dtype)
               for shape in ((4 * H, I), (4 * H, H), (4 * H,), (4 * H,))]
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    fast, fast_s = _timed(_lstm_forward_backward, ops, x, weights, dy)
    slow, slow_s = _timed(_lstm_forward_backward, reference, x, weights, dy)
    names = ["y", "h_n", "c_n", "dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh"]
    print(f"LSTM forward+backward, {dtype}, T={T} B={B} I={I} H={H}")
    worst = 0.0
    for name, a, b in zip(names, fast, slow):
        error = float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
        worst = max(worst, error)
        print(f"  {name:6s} max relative error vs reference {error:.2e}")
    tolerance = 1e-4 if dtype == np.float32 else 1e-10
    print(f"  C kernels {fast_s * 1e3:.1f} ms, NumPy reference {slow_s * 1e3:.1f} ms "
          f"({slow_s / fast_s:.1f}x)")
    ok = worst <= tolerance
    print(f"{'OK' if ok else 'FAILED'}: worst relative error {worst:.2e} (tolerance {tolerance:g})")
    return 0 if ok else 1
