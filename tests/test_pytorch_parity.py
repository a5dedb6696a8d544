"""PyTorch semantics: both backends against PyTorch, forward and backward.

* Golden tests need no torch: they replay the vectors in ``tests/golden/*.npz``
  (made by ``tests/golden/make_golden.py`` with torch, float64) in float64 and float32.
* Live tests run when torch is importable: random small configurations compared with
  torch directly, in the same dtype.

The loss is ``sum(y * wy) + sum(h_n * wh) (+ sum(c_n * wc))``, so the upstream gradients
are ``dy = wy``, ``dh_n = wh``, ``dc_n = wc``.
"""
from __future__ import annotations

import pathlib

import numpy as np
import pytest
from helpers import load_script

GOLDEN_DIR = pathlib.Path(__file__).resolve().parent / "golden"
GOLDEN_FILES = sorted(GOLDEN_DIR.glob("*.npz"))

# Tolerance on max |actual - expected|, relative to max |expected| of that array.
RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}
DTYPES = (np.float64, np.float32)
CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
# Everything a case produces, in the order reported.
RESULT_KEYS = ("y", "h_n", "c_n", "dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh")


# tests/golden/make_golden.py (not a package): its case list and torch_run.
make_golden = load_script(GOLDEN_DIR / "make_golden.py", "fastrnn_make_golden")


# --------------------------------------------------------------------------- helpers

def assert_close(actual, expected, rtol: float, what: str) -> None:
    """Fail unless max |actual - expected| <= rtol * max |expected| (1 for an all-zero array)."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, (
        f"{what}: shape {actual.shape}, expected {expected.shape}")
    assert np.all(np.isfinite(actual)), f"{what}: {np.sum(~np.isfinite(actual))} non-finite values"
    error = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    scale = float(np.abs(expected).max(initial=0.0)) or 1.0
    worst = np.unravel_index(np.argmax(error), error.shape) if error.size else ()
    max_error = float(error.max(initial=0.0))
    assert max_error <= rtol * scale, (
        f"{what}: max abs error {max_error:.3e} > {rtol:.0e} * {scale:.3e} "
        f"(relative {max_error / scale:.3e}) at index {tuple(int(i) for i in worst)}: "
        f"got {float(actual[worst]):.10g}, expected {float(expected[worst]):.10g}")


def assert_results_close(actual: dict, expected: dict, dtype, what: str) -> None:
    """Compare every output and gradient; both dicts must hold the same keys."""
    assert sorted(actual) == sorted(expected), (
        f"{what}: backend returned {sorted(actual)}, expected {sorted(expected)}")
    for key in RESULT_KEYS:
        if key in expected:
            assert actual[key].dtype == np.dtype(dtype), (
                f"{what} {key}: dtype {actual[key].dtype}, expected {np.dtype(dtype)}")
            assert_close(actual[key], expected[key], RTOL[np.dtype(dtype)], f"{what} {key}")


def cast(arrays: dict, dtype) -> dict:
    """Floating arrays to ``dtype``; integer ones (lengths) and strings untouched."""
    return {k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in arrays.items()}


def run_backend(backend, cell: str, arrays: dict) -> dict:
    """Forward + backward of ``cell`` through ``backend``; returns outputs and gradients.

    ``arrays`` holds x, h0, (c0), w_ih, w_hh, (b_ih, b_hh), wy, wh, (wc), (lengths).
    A gradient that comes back None (the biases of a bias-free cell) is left out.
    """
    a = arrays
    weights = (a["w_ih"], a["w_hh"], a.get("b_ih"), a.get("b_hh"))
    lengths = a.get("lengths")
    if cell == "lstm":
        y, h_n, c_n, cache = backend.lstm_forward(a["x"], a["h0"], a["c0"], *weights,
                                                  lengths=lengths)
        grads = backend.lstm_backward(a["wy"], a["wh"], a["wc"], cache)
        results = {"y": y, "h_n": h_n, "c_n": c_n}
    elif cell == "gru":
        y, h_n, cache = backend.gru_forward(a["x"], a["h0"], *weights, reset_after=True,
                                            lengths=lengths)
        grads = backend.gru_backward(a["wy"], a["wh"], cache)
        results = {"y": y, "h_n": h_n}
    else:
        y, h_n, cache = backend.rnn_forward(a["x"], a["h0"], *weights,
                                            nonlinearity=cell.split("_")[1], lengths=lengths)
        grads = backend.rnn_backward(a["wy"], a["wh"], cache)
        results = {"y": y, "h_n": h_n}
    results.update((k, np.asarray(v)) for k, v in grads._asdict().items() if v is not None)
    return results


def load_golden(path: pathlib.Path):
    """(cell, inputs, expected results) of one golden file."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    cell = str(arrays.pop("cell"))
    arrays.pop("torch_version")
    expected = {k: arrays.pop(k) for k in RESULT_KEYS if k in arrays}
    return cell, arrays, expected


# --------------------------------------------------------------------------- golden

def test_golden_files_match_case_list():
    assert sorted(p.stem for p in GOLDEN_FILES) == sorted(make_golden.CASES), (
        "tests/golden is out of date: rerun `python tests/golden/make_golden.py`")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_golden(backend, path, dtype):
    cell, inputs, expected = load_golden(path)
    actual = run_backend(backend, cell, cast(inputs, dtype))
    assert_results_close(actual, expected, dtype, f"{backend.__name__} {path.stem}")


# --------------------------------------------------------------------------- live torch

def live_config(cell: str, seed: int, with_lengths: bool, dtype) -> dict:
    """Random small sizes and arrays for one live case (seed 2 has no biases)."""
    rng = np.random.default_rng([seed, CELLS.index(cell), with_lengths])
    T, B, I, H = (int(n) for n in rng.integers(1, [8, 5, 6, 8]))
    lengths = rng.integers(1, T + 1, B) if with_lengths else None
    arrays = make_golden.make_inputs(cell, T, B, I, H, lengths, seed != 2, rng)
    return cast(arrays, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("seed", (0, 1, 2))
@pytest.mark.parametrize("with_lengths", (False, True), ids=("full", "lengths"))
@pytest.mark.parametrize("cell", CELLS)
def test_live_torch(backend, cell, with_lengths, seed, dtype):
    pytest.importorskip("torch")
    arrays = live_config(cell, seed, with_lengths, dtype)
    expected = make_golden.torch_run(cell, arrays)
    actual = run_backend(backend, cell, arrays)
    shape = "T={} B={} I={}".format(*arrays["x"].shape) + f" H={arrays['w_hh'].shape[1]}"
    assert_results_close(actual, expected, dtype,
                         f"{backend.__name__} {cell} {shape} lengths={arrays.get('lengths')}")


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_golden_reproduced_by_installed_torch(path):
    """The committed vectors still match the installed torch (flags a torch behaviour change)."""
    pytest.importorskip("torch")
    cell, inputs, expected = load_golden(path)
    assert_results_close(make_golden.torch_run(cell, inputs), expected, np.float64,
                         f"torch vs golden {path.stem}")
