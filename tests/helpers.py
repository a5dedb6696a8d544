"""Helpers shared by the test modules (tests/ is on sys.path under pytest)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np


# The functional kernels' cell variants: name -> (kernel prefix, gates, forward options).
KERNEL_CELLS = {
    "rnn_tanh": ("rnn", 1, {"nonlinearity": "tanh"}),
    "rnn_relu": ("rnn", 1, {"nonlinearity": "relu"}),
    "lstm": ("lstm", 4, {}),
    "gru": ("gru", 3, {"reset_after": True}),
    "gru_reset_before": ("gru", 3, {"reset_after": False}),
}


def numeric_grad(f, array, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar ``f()`` with respect to ``array``, an ndarray or a
    Parameter, perturbed in place through ``array[idx] = ...`` (which a Parameter records)."""
    grad = np.zeros(array.shape)
    for idx in np.ndindex(array.shape):
        orig = array[idx]
        array[idx] = orig + eps
        up = f()
        array[idx] = orig - eps
        down = f()
        array[idx] = orig
        grad[idx] = (up - down) / (2 * eps)
    return grad


def load_script(path: Path, name: str):
    """Import a script that is not part of a package (e.g. tests/golden/make_golden.py)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_close(name, got, want, dtype, tolerance: dict) -> None:
    """``got`` equals ``want`` (None or an array of ``dtype`` and the same shape) within
    ``tolerance[dtype]``, relative to ``max(|want|, 1)``."""
    if want is None:
        assert got is None, f"{name}: expected None"
        return
    assert got.dtype == want.dtype == dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    scale = max(float(np.abs(want).max()), 1.0)
    error = float(np.abs(got.astype(np.float64) - want).max()) / scale
    assert error <= tolerance[dtype], f"{name}: relative error {error:.3g}"


def assert_runs_close(got, want, dtype, tolerance: dict) -> None:
    """Two ``(forward outputs, grads named tuple)`` runs agree output by output and field by
    field (assert_close), and their grads are of the same type."""
    (got_out, got_grads), (want_out, want_grads) = got, want
    for i, (a, b) in enumerate(zip(got_out, want_out)):
        assert_close(f"output {i}", a, b, dtype, tolerance)
    assert type(got_grads) is type(want_grads), (type(got_grads), type(want_grads))
    for name, a, b in zip(want_grads._fields, got_grads, want_grads):
        assert_close(name, a, b, dtype, tolerance)
