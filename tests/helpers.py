"""Helpers shared by the test modules (tests/ is on sys.path under pytest)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np


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
