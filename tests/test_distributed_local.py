"""fastrnn.distributed without a cluster: the partition scorer (length buckets) against
``model.predict`` bit for bit, checkpoint bytes, and clear errors without the extras."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import fastrnn
from fastrnn.distributed import DataParallel, predict
from fastrnn.distributed._score import bucket_order, model_from_bytes, score
from fastrnn.io import (CheckpointError, checkpoint_bytes, load_checkpoint_bytes,
                        save_checkpoint)


def _sequences(n, features, dtype, seed=0, tokens=None):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 25, n)
    if tokens:
        return [rng.integers(0, tokens, t) for t in lengths]
    return [rng.standard_normal((t, features)).astype(dtype) for t in lengths]


MODELS = [
    lambda dt: fastrnn.SequenceClassifier(4, input_size=5, hidden=33, cell="gru", dtype=dt,
                                          seed=1),
    lambda dt: fastrnn.SequenceClassifier(3, input_size=5, hidden=7, cell="lstm", layers=2,
                                          bidirectional=True, pooling="mean", dtype=dt,
                                          seed=2),
    lambda dt: fastrnn.SequenceRegressor(5, 3, hidden=20, cell="rnn", dtype=dt, seed=3),
    lambda dt: fastrnn.SequenceRegressor(5, 2, many_to_many=True, hidden=9, dtype=dt,
                                         seed=4),
]


# (rows, batch_size, partition): batches >= 16 rows; batches of 20 and a last one of 10 that
# shares its partition with two full batches
# (the kernels take another path below 16 rows: the remainder must stay a batch of 10)
LAYOUTS = [(600, 64, 128), (610, 20, 140)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("make", MODELS)
@pytest.mark.parametrize("n, batch_size, part", LAYOUTS)
def test_score_in_partitions_equals_predict(make, dtype, n, batch_size, part):
    model = make(dtype)
    data = _sequences(n, 5, dtype)
    methods = ["predict", "predict_proba"] if hasattr(model, "predict_proba") else ["predict"]
    for method in methods:
        expected = getattr(model, method)(data, batch_size=batch_size)
        x, lengths = model._inputs(data, None)         # padded once: per-step T is global
        got = np.concatenate([score(model, x[s:s + part], lengths[s:s + part], method,
                                    batch_size=batch_size) for s in range(0, n, part)])
        assert got.dtype == expected.dtype and np.array_equal(got, expected), method


def test_bucket_order_keeps_batch_sizes():
    lengths = np.random.default_rng(0).integers(1, 50, 70)
    order = bucket_order(lengths, 16)                   # batches of 16, 16, 16, 16, 6
    assert sorted(order) == list(range(70))
    assert set(order[:64]) == set(range(64)) and set(order[64:]) == set(range(64, 70))
    assert all(np.all(np.diff(lengths[order[s:s + 16]]) >= 0) for s in range(0, 64, 16))


def test_score_token_model_and_unbucketed():
    model = fastrnn.SequenceClassifier(2, vocab_size=11, embed=4, hidden=6, seed=5)
    data = _sequences(300, None, None, tokens=11)
    expected = model.predict_proba(data, batch_size=32)
    for bucket in (True, False):
        got = score(model, data, method="predict_proba", batch_size=32, bucket=bucket)
        assert np.array_equal(got, expected)


def test_checkpoint_bytes_round_trip(tmp_path):
    model = MODELS[0](np.float32)
    blob = model.to_bytes()
    model.save(tmp_path / "m.ckpt")
    assert blob == (tmp_path / "m.ckpt").read_bytes()
    again = fastrnn.models.Model.from_bytes(blob)
    data = _sequences(20, 5, np.float32)
    assert np.array_equal(again.predict_proba(data), model.predict_proba(data))
    assert model_from_bytes(blob) is model_from_bytes(blob)      # cached by checksum
    arrays = {"a": np.arange(5.0)}
    save_checkpoint(tmp_path / "c.ckpt", {"k": 1}, arrays)
    assert checkpoint_bytes({"k": 1}, arrays) == (tmp_path / "c.ckpt").read_bytes()
    with pytest.raises(CheckpointError, match="<mine>: corrupted"):
        load_checkpoint_bytes(blob[:100] + bytes([blob[100] ^ 1]) + blob[101:], "<mine>")
    with pytest.raises(TypeError, match="data must be bytes, got str"):
        load_checkpoint_bytes("not bytes")


def test_without_the_extras(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask", None)
    with pytest.raises(ImportError, match=r"pip install 'fastrnn\[dask\]'"):
        predict(MODELS[0](np.float32), [])
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(ImportError, match=r"pip install 'fastrnn\[mpi\]'"):
        DataParallel()


def test_import_fastrnn_loads_neither_dask_nor_mpi():
    code = ("import sys, fastrnn, fastrnn.distributed; "
            "print('dask' in sys.modules, 'mpi4py' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, FASTRNN_NUM_THREADS="1"), check=True)
    assert out.stdout.split() == ["False", "False"]
