"""1 vs 2 worker processes for both paths of ``fastrnn.distributed`` (README "Beyond one
machine").

    python bench/distributed_scaling.py predict [--n 12000]      # Dask LocalCluster
    python bench/distributed_scaling.py train   [--seconds 15]   # mpiexec -n 1, -n 2
    python bench/distributed_scaling.py allreduce                # under mpiexec -n 2

Every worker / rank runs one fastrnn thread (FASTRNN_NUM_THREADS=1), so the comparison is
processes, not threads. predict: a GRU SequenceClassifier (16 features, H=64) scores
``n`` sequences of 10..100 steps; the first run ships the model and warms the workers and
is not timed; the best of 5 timed runs counts. train: ``fastrnn train --distributed`` on
the embedded corpus (LSTM 1x128, global batch 32, seq_len 64) for a time budget; its
chars/s line counts every rank's characters. allreduce: the median time of one timed
``Allreduce`` over that model's flat float32 gradient buffer.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

os.environ["FASTRNN_NUM_THREADS"] = "1"
REPEATS = 5     # best of: the machine may be shared


def predict_scaling(n: int) -> None:
    import dask.bag as db
    from dask.distributed import Client, LocalCluster

    import fastrnn
    from fastrnn.distributed import predict
    model = fastrnn.SequenceClassifier(5, input_size=16, hidden=64, cell="gru", seed=0)
    fastrnn.set_num_threads(1)
    data = [_sequence(i) for i in range(n)]
    best = min(_seconds(lambda: model.predict(data)) for _ in range(REPEATS))
    print(f"one process, model.predict: {n / best:,.0f} seq/s")
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None,
                          env={"FASTRNN_NUM_THREADS": "1"}) as cluster, Client(cluster):
            bag = db.range(n, npartitions=-(-n // 1024)).map(_sequence).persist()
            x, lengths = _dask_array(n)
            for kind, result in (("bag", predict(model, bag, method="outputs")),
                                 ("array", predict(model, x, lengths, method="outputs"))):
                result.compute()                              # ship the model, warm up
                best = min(_seconds(result.compute) for _ in range(REPEATS))
                print(f"Dask {kind}, {workers} worker process(es) x 1 thread: "
                      f"{n / best:,.0f} seq/s")


def _dask_array(n: int, chunk: int = 1024):
    """The same sequences as a padded dask array ``(n, 100, 16)``, made on the workers."""
    import dask
    import dask.array as da
    lengths = np.array([len(_sequence(i)) for i in range(n)])
    blocks = [da.from_delayed(dask.delayed(_padded)(s, min(s + chunk, n)),
                              (min(s + chunk, n) - s, 100, 16), np.float32)
              for s in range(0, n, chunk)]
    return da.concatenate(blocks).persist(), lengths


def _padded(start: int, stop: int) -> np.ndarray:
    out = np.zeros((stop - start, 100, 16), np.float32)
    for row, i in zip(out, range(start, stop)):
        seq = _sequence(i)
        row[:len(seq)] = seq
    return out


def _sequence(i: int) -> np.ndarray:
    """Sequence ``i``: 10..100 steps of 16 features (made where it is scored)."""
    rng = np.random.default_rng(i)
    return rng.standard_normal((int(rng.integers(10, 101)), 16)).astype(np.float32)


def _seconds(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def train_scaling(seconds: float) -> None:
    for ranks in (1, 2):
        run = subprocess.run(["mpiexec", "-n", str(ranks), sys.executable, "-m", "fastrnn",
                              "train", "--distributed", "--time-budget", str(seconds),
                              "--quiet", "--hidden", "128", "--batch", "32", "-o",
                              os.path.join(tempfile.gettempdir(), "scaling.ckpt")],
                             capture_output=True, text=True, check=True)
        rate = re.search(r"([\d,]+) chars/s", run.stdout).group(1)
        print(f"MPI, {ranks} rank(s) x 1 thread: {rate} chars/s")


def allreduce_cost() -> None:
    import fastrnn
    from fastrnn.distributed import DataParallel
    from fastrnn.models import LanguageModel
    parallel = DataParallel()
    model = LanguageModel(fastrnn.data.Vocabulary.from_text(fastrnn.data.default_corpus()),
                          embed=64, hidden=128)
    buffer = np.ones(model.num_parameters() + 4, np.float32)
    times = []
    for _ in range(200):
        start = time.perf_counter()
        parallel.allreduce(buffer, "bench")
        times.append(time.perf_counter() - start)
    if parallel.is_root:
        print(f"Allreduce of {buffer.nbytes / 1e3:,.0f} kB over {parallel.size} ranks: "
              f"median {np.median(times) * 1e6:,.0f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["predict", "train", "allreduce"])
    parser.add_argument("--n", type=int, default=12000)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    if args.what == "predict":
        predict_scaling(args.n)
    elif args.what == "train":
        train_scaling(args.seconds)
    else:
        allreduce_cost()


if __name__ == "__main__":
    main()
