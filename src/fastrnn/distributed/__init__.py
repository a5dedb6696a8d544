"""fastrnn beyond one process: batch inference on Dask, data-parallel training over MPI.

* :func:`predict` scores a dask array, bag or dataframe of sequences with a
  SequenceClassifier / SequenceRegressor on any Dask cluster (``pip install
  'fastrnn[dask]'``); the model reaches each worker once, as checkpoint bytes.
* :class:`DataParallel` trains one model replica per MPI rank on its shard of each
  global batch, gradients averaged by one ``Allreduce`` per step (``pip install
  'fastrnn[mpi]'``; run under ``mpiexec -n N``); ``fit(..., distributed=True)`` and
  ``fastrnn train --distributed`` use it.

Dask and mpi4py are imported on first use, never by ``import fastrnn``.
"""
from ._dask import predict
from ._mpi import DataParallel, DistributedError

__all__ = ["predict", "DataParallel", "DistributedError"]
