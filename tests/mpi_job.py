"""Run under ``mpiexec -n N python tests/mpi_job.py MODE OUT_DIR`` by tests/test_distributed_mpi.py.

Modes:

* ``train``: a float64 SequenceClassifier (variable lengths, shuffled, Adam, clipping),
  a LanguageModel (carried state, SGD), a Seq2Seq and a OneToManyGenerator trained with
  ``distributed=DataParallel(...)``; each rank
  writes its final weights to ``OUT_DIR/<model>-rank<r>.npz``, and rank 0 saves a
  checkpoint through ``DataParallel.save``.
* ``kill``: rank 1 kills itself with SIGKILL at its third optimizer step.
* ``stall``: rank 1 stops itself with SIGSTOP at its third optimizer step (a hung rank);
  rank 0's collective times out after 3 s.
"""
from __future__ import annotations

import os
import signal
import sys

import numpy as np

import fastrnn
from fastrnn import optim
from fastrnn.distributed import DataParallel


def classifier_data(n: int = 96, seed: int = 0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 12, n)
    x = [rng.standard_normal((t, 3)) for t in lengths]
    y = rng.integers(0, 4, n)
    return x, y


def make_classifier():
    return fastrnn.SequenceClassifier(4, input_size=3, hidden=9, cell="lstm",
                                      pooling="mean", dtype=np.float64, seed=3)


def train_classifier(parallel):
    """Returns (model, history); 96 rows / batch 21 = 5 steps per epoch, shards of 11 and 10 rows."""
    model = make_classifier()
    x, y = classifier_data()
    history = model.fit(x, y, epochs=2, batch_size=21, lr=0.05, seed=11, clip=1.0,
                        verbose=False, distributed=parallel)
    return model, history


def lm_stream(n: int = 600, seed: int = 1):
    return np.random.default_rng(seed).integers(0, 7, n)


def make_lm():
    return fastrnn.LanguageModel(7, embed=5, hidden=8, cell="gru", dtype=np.float64, seed=4)


def train_lm(parallel):
    """Returns (model, history): 7 streams (4 and 3 a rank), windows of 10 steps, SGD."""
    model = make_lm()
    history = model.fit(lm_stream(), epochs=1, seq_len=10, batch_size=7,
                        optimizer=optim.SGD(model, lr=0.5), verbose=False,
                        distributed=parallel)
    return model, history


def make_seq2seq():
    vocab = fastrnn.data.Vocabulary.from_sequences(["abcdef"])
    return fastrnn.Seq2Seq(vocab, vocab, embed=4, hidden=6, cell="gru", dtype=np.float64,
                           seed=5)


def train_seq2seq(parallel):
    """Returns (model, history): reversal of 40 random strings, batch 9 (shards of 5 and 4
    rows, each trimmed to its own longest source and target)."""
    rng = np.random.default_rng(2)
    sources = ["".join(rng.choice(list("abcdef"), rng.integers(1, 8))) for _ in range(40)]
    model = make_seq2seq()
    history = model.fit(sources, [s[::-1] for s in sources], epochs=1, batch_size=9,
                        lr=0.02, seed=3, verbose=False, distributed=parallel)
    return model, history


def make_one_to_many():
    vocab = fastrnn.data.Vocabulary.from_sequences(["xyz"])
    return fastrnn.OneToManyGenerator(3, vocab, embed=3, hidden=5, dtype=np.float64, seed=6)


def train_one_to_many(parallel):
    """Returns (model, history): 30 vectors -> strings, batch 7, SGD without shuffling."""
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((30, 3))
    targets = ["".join(rng.choice(list("xyz"), rng.integers(1, 6))) for _ in range(30)]
    model = make_one_to_many()
    history = model.fit(vectors, targets, epochs=1, batch_size=7, shuffle=False,
                        optimizer=optim.SGD(model, lr=0.3), verbose=False,
                        distributed=parallel)
    return model, history


TRAINED = {"classifier": (make_classifier, train_classifier), "lm": (make_lm, train_lm),
           "seq2seq": (make_seq2seq, train_seq2seq),
           "one_to_many": (make_one_to_many, train_one_to_many)}


def _save_weights(model, out_dir, name, rank):
    np.savez(os.path.join(out_dir, f"{name}-rank{rank}.npz"), **model.state_dict())


def _fault(rank_to_hit: int, sig: int, at_step: int = 3):
    """An optimizer whose step number ``at_step`` sends ``sig`` to this process on rank
    ``rank_to_hit``."""
    from mpi4py import MPI
    rank = MPI.COMM_WORLD.Get_rank()

    class Faulty(optim.SGD):
        count = 0

        def step(self):
            Faulty.count += 1
            if rank == rank_to_hit and Faulty.count == at_step:
                os.kill(os.getpid(), sig)
            super().step()

    return Faulty


def main(mode: str, out_dir: str) -> int:
    if mode == "train":
        parallel = DataParallel(timeout=60)
        model, history = train_classifier(parallel)
        _save_weights(model, out_dir, "classifier", parallel.rank)
        np.save(os.path.join(out_dir, f"classifier-loss-rank{parallel.rank}.npy"),
                np.array(history["step_loss"]))
        parallel.save(model, os.path.join(out_dir, "classifier.ckpt"))
        for name in ("lm", "seq2seq", "one_to_many"):
            model, _ = TRAINED[name][1](DataParallel(timeout=60))
            _save_weights(model, out_dir, name, parallel.rank)
        return 0
    sig = {"kill": signal.SIGKILL, "stall": signal.SIGSTOP}[mode]
    model = make_classifier()
    x, y = classifier_data()
    model.fit(x, y, epochs=50, batch_size=8, optimizer=_fault(1, sig)(model, lr=0.01),
              verbose=False, distributed=DataParallel(timeout=3))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
