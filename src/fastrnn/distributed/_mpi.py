"""Synchronous data-parallel training over MPI (the Horovod / PyTorch DDP scheme).

Every rank holds a replica of the model. At the start rank 0's weights are broadcast, so
all replicas begin identical. Each step every rank takes its shard of the global batch
(rows ``np.array_split``-style), runs forward and backward, and one ``Allreduce`` (sum)
over one flat buffer combines::

    buffer = [ w_r * grad_r (all parameters, flattened) | w_r * loss_r | w_r | units_r | stop_r ]

where ``w_r`` is the number of items rank r's mean loss averages over (rows, tokens,
valid steps). Dividing by ``W = sum w_r`` gives every rank the gradient of the global
batch's mean loss -- the same quantity one process computes on the whole batch -- and
the same bits on every rank, so the optimizer steps keep the replicas identical.
``stop_r`` carries rank r's "time budget spent" so all ranks stop after the same step.

Every collective is non-blocking and polled against a deadline (``timeout`` seconds):
a rank that died or hangs makes the others raise :class:`DistributedError` with a clear
message instead of waiting forever; the process then calls ``MPI_Abort`` at exit (the
broken communicator cannot finalize), which ends the whole job.

Checkpoints: :meth:`DataParallel.save` writes on rank 0 only (atomically, through
:func:`fastrnn.io.save_checkpoint`), and the other ranks wait for it.
"""
from __future__ import annotations

import atexit
import math
import numbers
import os
import sys
import time
from typing import Optional

import numpy as np

__all__ = ["DataParallel", "DistributedError"]

DEFAULT_TIMEOUT = 120.0     # seconds; FASTRNN_DISTRIBUTED_TIMEOUT overrides
_TAIL = 4                   # loss * w, w, units, stop
_failed_comms: list = []    # communicators to abort at exit after a failure


class DistributedError(RuntimeError):
    """A collective did not complete in time (a rank died or hangs), or ranks disagree."""


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError("distributed training needs mpi4py and an MPI: "
                          "pip install 'fastrnn[mpi]' (mpi4py + the mpich wheel), then run "
                          "under mpiexec -n N") from None
    return MPI


def _abort_failed() -> None:
    """At exit after a failed collective: MPI_Abort, since MPI_Finalize would hang. The
    pause first lets mpiexec forward the error message: an abort tears the job's I/O down
    at once, and a CI run once lost the message (the stall test saw empty output)."""
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(0.5)
    for comm in _failed_comms:
        comm.Abort(1)


def _default_timeout() -> float:
    value = os.environ.get("FASTRNN_DISTRIBUTED_TIMEOUT")
    if value is None:
        return DEFAULT_TIMEOUT
    try:
        timeout = float(value)
    except ValueError:
        timeout = -1.0
    if not timeout > 0:
        raise ValueError(f"FASTRNN_DISTRIBUTED_TIMEOUT must be a positive number of "
                         f"seconds, got {value!r}")
    return timeout


class DataParallel:
    """Data-parallel training of one model across the ranks of an MPI communicator.

    ``comm``: an mpi4py communicator (default ``MPI.COMM_WORLD``); ``timeout``: seconds any
    collective may wait (default ``FASTRNN_DISTRIBUTED_TIMEOUT`` or 120). Pass an instance
    (or True) as ``fit(..., distributed=...)``; ``fit`` calls :meth:`attach` and then
    :meth:`train_step` for every global batch.
    """

    def __init__(self, comm=None, timeout: Optional[float] = None):
        MPI = _mpi()
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        if timeout is None:
            timeout = _default_timeout()
        if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or \
                not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.timeout = float(timeout)
        self.steps = 0
        self._params = None

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    # -- collectives with a deadline ------------------------------------------------------
    def _wait(self, request, what: str) -> None:
        """Poll ``request`` until done; past the deadline raise :class:`DistributedError`."""
        deadline = time.monotonic() + self.timeout
        polls = 0
        while not request.Test():
            polls += 1
            if polls > 200:      # spin briefly, then yield the core to the other ranks
                time.sleep(min(1e-5 * (polls - 200), 2e-3))
            if time.monotonic() > deadline:
                self._fail(what)

    def _fail(self, what: str) -> None:
        message = (f"fastrnn.distributed: rank {self.rank} of {self.size}: {what} did not "
                   f"complete within {self.timeout:g} s; another rank has died or hangs "
                   f"(FASTRNN_DISTRIBUTED_TIMEOUT sets the limit). The job is aborted.")
        print(message, file=sys.stderr, flush=True)
        if not _failed_comms:
            atexit.register(_abort_failed)
        _failed_comms.append(self.comm)
        raise DistributedError(message)

    def allreduce(self, buffer: np.ndarray, what: str) -> np.ndarray:
        """In-place sum of ``buffer`` over the ranks, with the timeout."""
        self._wait(self.comm.Iallreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM), what)
        return buffer

    def broadcast(self, buffer: np.ndarray, what: str) -> np.ndarray:
        """Rank 0's ``buffer`` into every rank's, in place, with the timeout."""
        self._wait(self.comm.Ibcast(buffer, root=0), what)
        return buffer

    def barrier(self, what: str) -> None:
        self._wait(self.comm.Ibarrier(), what)

    def shared_seed(self, seed: Optional[int]) -> int:
        """``seed`` itself, or (for None) one drawn on rank 0 and broadcast, so that every
        rank shuffles alike."""
        if seed is not None:
            return seed
        value = np.array([np.random.SeedSequence(seed).generate_state(1)[0]], np.uint32)
        return int(self.broadcast(value, "the seed broadcast")[0])

    # -- the model ------------------------------------------------------------------------
    def attach(self, model) -> "DataParallel":
        """Bind ``model``: one flat buffer for its parameters, and rank 0's weights
        broadcast to every rank (checked against each rank's architecture)."""
        params = list(model.parameters())
        dtypes = {p.dtype for p in params}
        if len(dtypes) != 1:
            raise TypeError(f"data-parallel training needs one parameter dtype, got "
                            f"{sorted(str(d) for d in dtypes)}")
        sizes = [p.value.size for p in params]
        self._params, self._offsets = params, np.cumsum([0] + sizes)
        self._buffer = np.empty(self._offsets[-1] + _TAIL, dtypes.pop())   # (P + 4,)
        shape = np.array([len(params), self._offsets[-1]], np.int64)
        root_shape = self.broadcast(shape.copy(), "the model-shape broadcast")
        if not np.array_equal(shape, root_shape):
            raise DistributedError(f"rank {self.rank}: the model has {shape[0]} parameters "
                                   f"({shape[1]} numbers), rank 0's has {root_shape[0]} "
                                   f"({root_shape[1]}): build the same model on every rank")
        self._pack(p.value for p in params)
        self.broadcast(self._buffer, "the initial weight broadcast")
        for p, flat in zip(params, self._views()):
            p[...] = flat.reshape(p.shape)
        return self

    def _views(self):
        """The buffer's slice for each parameter (flat)."""
        o = self._offsets
        return [self._buffer[o[i]:o[i + 1]] for i in range(len(self._params))]

    def _pack(self, arrays, scale: float = 1.0) -> None:
        for flat, a in zip(self._views(), arrays):
            np.multiply(a.reshape(-1), scale, out=flat)

    def shard(self, n: int) -> slice:
        """This rank's rows of a global batch of ``n`` (``np.array_split`` boundaries)."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def train_step(self, model, batch, optimizer, clip: Optional[float], out_of_time) -> tuple:
        """One synchronous step on this rank's shard of ``batch``.

        ``out_of_time()`` says whether this rank's time budget is spent. Returns
        ``(global mean loss, global units, stop)``, equal on every rank.
        """
        from .. import optim
        if self._params is None:
            raise RuntimeError("DataParallel.train_step before attach(model)")
        optimizer.zero_grad()
        rows = self.shard(model._batch_rows(batch))
        loss, units, weight = 0.0, 0, 0
        if rows.stop > rows.start:
            shard = model._shard_batch(batch, rows)
            loss, units = model._forward_backward(shard)
            weight = model._loss_weight(shard, units)
        self._pack((p.grad for p in self._params), weight)
        self._buffer[-_TAIL:] = (loss * weight, weight, units, bool(out_of_time()))
        self.allreduce(self._buffer, f"the gradient Allreduce of step {self.steps + 1}")
        self.steps += 1
        total = self._buffer[-3]
        for p, flat in zip(self._params, self._views()):
            np.divide(flat.reshape(p.shape), total, out=p.grad)
        loss = float(self._buffer[-4] / total)
        grads = [p.grad for p in self._params]
        norm = optim.clip_grad_norm_(model, clip) if clip is not None else \
            optim._total_norm(grads, 2.0)
        if not (math.isfinite(loss) and math.isfinite(norm)):   # the same on every rank
            what = f"loss became {loss}" if not math.isfinite(loss) else \
                f"gradient norm became {norm}"
            raise FloatingPointError(f"at step {self.steps} the {what}; that step was not "
                                     "applied (lower the learning rate, or clip gradients)")
        optimizer.step()
        return loss, int(self._buffer[-2]), bool(self._buffer[-1] > 0)

    def save(self, model, path) -> None:
        """Rank 0 writes ``model.save(path)`` (atomic); every rank returns once it exists."""
        if self.is_root:
            model.save(path)
        self.barrier(f"the barrier after saving {os.fspath(path)}")


def resolve(distributed) -> Optional[DataParallel]:
    """``fit``'s ``distributed`` argument -> a DataParallel or None."""
    if distributed is None or distributed is False:
        return None
    if distributed is True:
        return DataParallel()
    if isinstance(distributed, DataParallel):
        return distributed
    raise TypeError(f"distributed must be False, True or a fastrnn.distributed.DataParallel, "
                    f"got {distributed!r}")
