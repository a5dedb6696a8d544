"""Python threads and fastrnn: shared models under no_grad, separate models training,
and ``set_num_threads`` changing while kernels run.

The kernels release the GIL and keep no global mutable state, so these must hold exactly
(bitwise) wherever the thread count is the same as in the serial run.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

import fastrnn
from fastrnn import optim
from fastrnn.nn import GRU, LSTM, RNN, GRUCell, Linear, LSTMCell, RNNCell

N_THREADS = 8
LAYERS = [RNN, LSTM, GRU]
CELLS = [RNNCell, LSTMCell, GRUCell]


def _run_threads(target, n=N_THREADS):
    """Start ``n`` threads on ``target(i)`` together; re-raise the first failure."""
    errors, barrier = [], threading.Barrier(n)

    def run(i):
        try:
            barrier.wait()
            target(i)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    if errors:
        raise errors[0]


def _inputs(i, shape, dtype=np.float32):
    return np.random.default_rng(100 + i).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("layer_class", LAYERS)
@pytest.mark.parametrize("B", [1, 3, 48])   # own small-batch kernel and the BLAS path
def test_threads_sharing_a_layer_under_no_grad_match_serial(layer_class, B):
    layer = layer_class(7, 33, num_layers=2, bidirectional=True, seed=0).eval()
    inputs = [_inputs(i, (9, B, 7)) for i in range(N_THREADS)]
    lengths = [np.random.default_rng(i).integers(1, 10, B) for i in range(N_THREADS)]
    with fastrnn.no_grad():
        serial = [layer(x, lengths=n) for x, n in zip(inputs, lengths)]
    results = [None] * N_THREADS

    def work(i):
        with fastrnn.no_grad():
            for _ in range(5):
                results[i] = layer(inputs[i], lengths=lengths[i])

    _run_threads(work)
    for (y, h), (y_serial, h_serial) in zip(results, serial):
        np.testing.assert_array_equal(y, y_serial)
        for a, b in zip(h if isinstance(h, tuple) else (h,),
                        h_serial if isinstance(h_serial, tuple) else (h_serial,)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cell_class", CELLS)
def test_threads_sharing_a_cell_and_step_under_no_grad_match_serial(cell_class):
    cell = cell_class(5, 17, seed=0)
    layer = LSTM(5, 17, num_layers=2, seed=0)
    inputs = [_inputs(i, (6, 2, 5)) for i in range(N_THREADS)]

    def unroll(x):
        state, outs = None, []
        for x_t in x:
            state = cell(x_t, state)
            outs.append(state[0] if isinstance(state, tuple) else state)
        stream, step_outs = None, []
        for x_t in x:
            out, stream = layer.step(x_t, stream)
            step_outs.append(out)
        return np.stack(outs), np.stack(step_outs)

    with fastrnn.no_grad():
        serial = [unroll(x) for x in inputs]
    results = [None] * N_THREADS

    def work(i):
        with fastrnn.no_grad():
            for _ in range(5):
                results[i] = unroll(inputs[i])

    _run_threads(work)
    for got, want in zip(results, serial):
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


def test_threads_sharing_a_model_predict_match_serial():
    model = fastrnn.SequenceClassifier(input_size=4, num_classes=3, hidden=16, layers=2,
                                       seed=0)
    inputs = [_inputs(i, (5, 7, 4)) for i in range(N_THREADS)]
    serial = [model.predict_proba(x) for x in inputs]
    results = [None] * N_THREADS

    def work(i):
        with fastrnn.no_grad():
            for _ in range(3):
                results[i] = model.predict_proba(inputs[i])

    _run_threads(work)
    for got, want in zip(results, serial):
        np.testing.assert_array_equal(got, want)


def _train(layer_class, seed, steps=15):
    """A few SGD steps of a layer + linear head on fixed data; returns the final weights."""
    rng = np.random.default_rng(seed)
    layer = layer_class(6, 12, num_layers=2, dropout=0.25, seed=seed)
    head = Linear(12, 1, seed=seed)
    params = list(layer.parameters()) + list(head.parameters())
    optimizer = optim.SGD(params, lr=0.05)
    x = rng.standard_normal((8, 4, 6)).astype(np.float32)
    target = rng.standard_normal((4, 1)).astype(np.float32)
    for _ in range(steps):
        optimizer.zero_grad()
        y, _ = layer(x)
        out = head(y[-1])
        dy = np.zeros_like(y)
        dy[-1] = head.backward(2 * (out - target) / out.size)
        layer.backward(dy)
        optimizer.step()
    return [p.value.copy() for p in params]


@pytest.mark.parametrize("layer_class", LAYERS)
def test_threads_training_separate_models_do_not_interfere(layer_class):
    serial = [_train(layer_class, seed) for seed in range(N_THREADS)]
    results = [None] * N_THREADS

    def work(i):
        results[i] = _train(layer_class, i)

    _run_threads(work)
    for got, want in zip(results, serial):
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


def test_training_thread_beside_no_grad_threads_on_other_models():
    trained_serial = _train(LSTM, 0)
    shared = GRU(6, 12, seed=1)
    x = _inputs(0, (8, 4, 6))
    with fastrnn.no_grad():
        want = shared(x)[0]
    results = {}

    def work(i):
        if i == 0:
            results["trained"] = _train(LSTM, 0)
        else:
            with fastrnn.no_grad():
                for _ in range(10):
                    results[i] = shared(x)[0]

    _run_threads(work, 4)
    for a, b in zip(results["trained"], trained_serial):
        np.testing.assert_array_equal(a, b)
    for i in (1, 2, 3):
        np.testing.assert_array_equal(results[i], want)


def test_set_num_threads_while_kernels_run_is_safe():
    """One thread flips the thread count while others run forward+backward: every result
    stays within float64 rounding of the serial one, nothing crashes or hangs."""
    before = fastrnn.get_num_threads()
    layers = [LSTM(16, 40, seed=i, dtype=np.float64) for i in range(3)]
    inputs = [_inputs(i, (12, 40, 16), np.float64) for i in range(3)]

    def forward_backward(i):
        y, _ = layers[i](inputs[i])
        return y, layers[i].backward(np.ones_like(y))

    want = [forward_backward(i) for i in range(3)]
    stop, finished, lock = threading.Event(), [], threading.Lock()
    results, switches = {}, []

    def work(i):
        if i == 3:
            counts = [1, 2, 1, 3]
            while not stop.is_set():
                fastrnn.set_num_threads(counts[len(switches) % len(counts)])
                switches.append(1)
            return
        try:
            for _ in range(15):
                results[i] = forward_backward(i)
        finally:
            with lock:
                finished.append(i)
                if len(finished) == 3:
                    stop.set()

    try:
        _run_threads(work, 4)
    finally:
        stop.set()
        fastrnn.set_num_threads(before)
    assert len(switches) > 10      # the count really changed while the kernels ran
    for i in range(3):
        for got, expected in zip(results[i], want[i]):
            np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("env, expected", [
    ({}, ("PASSIVE", "10000")),
    ({"GOMP_SPINCOUNT": "5"}, ("PASSIVE", "5")),
    ({"OMP_WAIT_POLICY": "active"}, ("active", None)),
])
def test_the_openmp_wait_settings_at_import(env, expected):
    """Importing fastrnn sets a passive OpenMP wait with a short libgomp spin (workers
    that slept after every region were woken onto the busy core), and keeps what the user
    set: checked in a fresh interpreter, before any OpenMP runtime is loaded."""
    import os
    import subprocess
    import sys
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = ("import os, fastrnn; "
            "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))")
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, check=True,
                         capture_output=True, text=True).stdout.split()
    assert tuple(None if v == "None" else v for v in out) == expected
