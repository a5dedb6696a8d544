"""Batch inference on Dask: ``fastrnn.distributed.predict`` on a LocalCluster of 2 worker
processes, bit for bit equal to single-process ``model.predict``, also when a worker is
killed mid-run."""
from __future__ import annotations

import os
import pickle
import signal

import numpy as np
import pytest

distributed = pytest.importorskip("distributed", reason="fastrnn.distributed.predict needs "
                                  "dask[distributed] (pip install 'fastrnn[dask]')")
import dask  # noqa: E402
import dask.array as da  # noqa: E402
import dask.bag as db  # noqa: E402

import fastrnn  # noqa: E402
from fastrnn.distributed import predict  # noqa: E402

N = 3000


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None,
                                       env={"FASTRNN_NUM_THREADS": "1"})
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 30, N)
    return [rng.standard_normal((t, 4)).astype(np.float32) for t in lengths]


@pytest.fixture(scope="module")
def classifier():
    return fastrnn.SequenceClassifier(3, input_size=4, hidden=16, cell="gru", seed=0)


def test_array_bit_equal_and_model_shipped_once(client, data, classifier):
    x, lengths = classifier._inputs(data, None)                  # (N, T, 4), (N,)
    xs = da.from_array(x, chunks=(700, -1, -1))                  # realigned to 256-multiples
    labels = predict(classifier, xs, lengths)
    proba = predict(classifier, xs, da.from_array(lengths, chunks=500),
                    method="predict_proba")
    assert labels.shape == (N,) and proba.shape == (N, 3)
    graph = dict(proba.__dask_graph__())
    blob = classifier.to_bytes()
    assert sum(isinstance(k, str) and k.startswith("bytes-") for k in graph) == 1
    assert len(pickle.dumps(graph)) < x.nbytes + 2 * len(blob) + 200_000   # not per task
    got_labels, got_proba = dask.compute(labels, proba)
    assert np.array_equal(got_labels, classifier.predict(data))
    assert np.array_equal(got_proba, classifier.predict_proba(data))
    assert set(client.run(fastrnn.get_num_threads).values()) == {1}   # FASTRNN_NUM_THREADS


def test_bag_per_step_and_dataframe(client, data, classifier):
    regressor = fastrnn.SequenceRegressor(4, 2, many_to_many=True, hidden=8, cell="lstm",
                                          seed=1)
    rows = predict(regressor, db.from_sequence(data, partition_size=512)).compute()
    expected = regressor.predict(data)
    assert len(rows) == N
    assert all(np.array_equal(r, e[:len(s)]) for r, e, s in zip(rows, expected, data))
    dd = pytest.importorskip("dask.dataframe", reason="the dataframe case needs "
                             "dask[dataframe] (pandas, pyarrow)")
    import pandas as pd
    with dask.config.set({"dataframe.convert-string": False}):
        frame = dd.from_pandas(pd.DataFrame({"seq": data}), chunksize=512)
    proba = predict(classifier, frame, column="seq", method="predict_proba").compute()
    assert list(proba.columns) == ["predict_proba_0", "predict_proba_1", "predict_proba_2"]
    assert np.array_equal(proba.index.to_numpy(), np.arange(N))
    assert np.array_equal(proba.to_numpy(), classifier.predict_proba(data))


def _kill_worker_once(item, marker):
    """The identity, except that the first call for row 1800 kills its worker process."""
    index, sequence = item
    if index == 1800:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return sequence
        os.kill(os.getpid(), signal.SIGKILL)
    return sequence


def test_worker_killed_mid_run(client, data, classifier, tmp_path):
    marker = str(tmp_path / "killed")
    before = set(client.run(os.getpid).values())
    bag = db.from_sequence(list(enumerate(data)), partition_size=256)
    bag = bag.map(_kill_worker_once, marker)
    rows = predict(classifier, bag, method="predict_proba").compute()
    assert os.path.exists(marker)                       # a worker did die ...
    client.wait_for_workers(2, timeout=60)
    assert set(client.run(os.getpid).values()) != before   # ... and its nanny replaced it
    assert np.array_equal(np.stack(rows), classifier.predict_proba(data))


def test_bad_arguments(classifier, data):
    lm = fastrnn.LanguageModel(5, embed=3, hidden=4)
    bag = db.from_sequence(data[:10])
    with pytest.raises(TypeError, match="SequenceClassifier or SequenceRegressor"):
        predict(lm, bag)
    with pytest.raises(ValueError, match="method must be one of"):
        predict(classifier, bag, method="transform")
    with pytest.raises(TypeError, match="data must be a dask array, bag or dataframe"):
        predict(classifier, np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match="lengths goes with a dask array"):
        predict(classifier, bag, np.ones(10, int))
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        predict(classifier, bag, batch_size=0)
    with pytest.raises(TypeError, match="model must be a fastrnn Model"):
        predict(object(), bag)
    unknown = da.zeros((6, 5, 4), chunks=2)
    unknown = unknown[unknown[:, 0, 0] == 0]
    with pytest.raises(ValueError, match="unknown chunk sizes"):
        predict(classifier, unknown)
    with pytest.raises(ValueError, match=r"lengths must have shape \(3,\)"):
        predict(classifier, da.zeros((3, 5, 4), chunks=2), np.ones(4, int))
