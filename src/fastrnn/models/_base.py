"""The :class:`Model` base class: configuration, the shared training loop, checkpoints.

A model is a :class:`~fastrnn.nn.module.Module` built from keyword arguments that it keeps
in ``self.config`` (JSON-able, vocabularies included). That is what makes ``save``/``load``
generic: a checkpoint holds the class name, the config and the weights (``state_dict``),
in one :mod:`fastrnn.io` file that never unpickles.

Training is one loop for every model (:meth:`Model._fit`); a subclass only says how to
cut its data into batches and what one batch's forward + loss + backward is
(:meth:`Model._forward_backward`, returning the loss and how many units -- characters,
tokens, samples -- the batch held, for the throughput shown on the progress bar).
"""
from __future__ import annotations

import contextlib
import numbers
from typing import Callable, Iterable, Optional, Tuple, Type, TypeVar

import numpy as np

from .. import optim
from ..data import Vocabulary
from ..grad_mode import no_grad
from ..io import (CheckpointError, checkpoint_bytes, load_checkpoint, load_checkpoint_bytes,
                  save_checkpoint)
from ..nn.module import Module
from . import _training
from ._training import History

__all__ = ["Model", "History"]

_OPTIMIZERS = {"sgd": optim.SGD, "adam": optim.Adam, "adamw": optim.AdamW,
               "adagrad": optim.Adagrad, "rmsprop": optim.RMSprop}
_CHECKPOINT_KIND = "fastrnn.models"
_M = TypeVar("_M", bound="Model")


# -- small argument helpers shared by the models ----------------------------------------

def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def choice(name: str, value, options) -> str:
    if value not in options:
        raise ValueError(f"{name} must be one of {list(options)}, got {value!r}")
    return value


def child_seeds(seed, n: int) -> list:
    """``n`` independent integer seeds drawn from ``seed`` (all None when seed is None)."""
    if seed is None:
        return [None] * n
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be None or an int, got {seed!r}")
    return [int(s) for s in np.random.SeedSequence(int(seed)).generate_state(n)]


def _encode_config(value):
    """Config values made JSON-able: Vocabulary -> {"vocabulary": ...}, dtype -> name."""
    if isinstance(value, Vocabulary):
        return {"vocabulary": value.to_config()}
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        return np.dtype(value).name
    return value


def _decode_config(value):
    if isinstance(value, dict) and set(value) == {"vocabulary"}:
        return Vocabulary.from_config(value["vocabulary"])
    return value


def resolve_distributed(distributed):
    """``fit``'s ``distributed`` (False, True or a DataParallel) -> a DataParallel or None."""
    if distributed is False or distributed is None:
        return None
    from ..distributed._mpi import resolve
    return resolve(distributed)


# -- the base class ---------------------------------------------------------------------

class Model(Module):
    """Base class of the ready-made models: config, ``fit`` loop, ``save``/``load``.

    Subclasses call ``super().__init__(**config)`` with their constructor arguments, and
    implement :meth:`_forward_backward`; ``fit`` methods hand batches to :meth:`_fit`.
    """

    _registry: dict = {}
    units = "samples"          # what the throughput counts (shown as "<units>/s")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        Model._registry[cls.__name__] = cls

    def __init__(self, **config):
        super().__init__()
        self.config = {name: _encode_config(value) for name, value in config.items()}

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.config.get("dtype", "float32"))

    def _set_dtype(self, dtype: np.dtype) -> None:
        """After ``.to(dtype)`` / ``.double()``: the config (and so checkpoints) follow."""
        if "dtype" in self.config:
            self.config["dtype"] = dtype.name

    # -- one training step (the subclass's part) -----------------------------------------
    def _forward_backward(self, batch) -> Tuple[float, int]:
        """Training forward, loss and backward for one batch (gradients accumulate).

        Returns ``(loss, units)``: the batch's mean loss and its size in ``self.units``.
        """
        raise NotImplementedError

    def _start_epoch(self) -> None:
        """Called before each training epoch (e.g. to reset carried state)."""

    # -- data-parallel training (fastrnn.distributed.DataParallel) --------------------------
    def _batch_rows(self, batch) -> int:
        """How many independent rows (sequences, streams) ``batch`` holds."""
        raise NotImplementedError(f"{type(self).__name__} does not support distributed "
                                  "training")

    def _shard_batch(self, batch, rows: slice):
        """The part of ``batch`` made of ``rows``, as ``_forward_backward`` takes it."""
        raise NotImplementedError(f"{type(self).__name__} does not support distributed "
                                  "training")

    def _loss_weight(self, batch, units: int) -> int:
        """How many items the batch's mean loss averages over (default: its units)."""
        return units

    # -- the shared loop ------------------------------------------------------------------
    def _make_optimizer(self, optimizer, lr: float) -> optim.Optimizer:
        if isinstance(optimizer, optim.Optimizer):
            return optimizer
        name = "adam" if optimizer is None else optimizer
        if not isinstance(name, str) or name.lower() not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be a fastrnn.optim.Optimizer or one of "
                             f"{sorted(_OPTIMIZERS)}, got {optimizer!r}")
        return _OPTIMIZERS[name.lower()](self, lr=lr)

    def _carried_state(self) -> tuple:
        """Arrays the model carries from one batch to the next (saved in checkpoints)."""
        return ()

    def _set_carried_state(self, parts: tuple) -> None:
        """Restore what :meth:`_carried_state` returned (when resuming mid-epoch)."""

    def _fit(self, batches: Callable[[int], Tuple[Iterable, int]], *, epochs, lr, optimizer,
             clip, time_budget, verbose, validate: Optional[Callable[[], dict]] = None,
             data_rng: Optional[np.random.Generator] = None, data_key: str = "",
             distributed=None, **options) -> History:
        """Run epochs of ``batches(epoch) -> (iterable of batches, count)`` through one
        optimizer step each, with one tqdm bar for the run; stops after ``epochs``, once
        ``time_budget`` seconds have passed, on Ctrl-C/SIGTERM, a non-finite loss, early
        stopping or a callback. ``data_rng``: the generator that shuffles the batches;
        ``data_key``: a fingerprint of the data and batch layout (for ``resume``);
        ``distributed``: a :class:`fastrnn.distributed.DataParallel` (attached here) whose
        ranks each train on their shard of every batch (the bar and checkpoints on rank 0);
        ``options``: see :data:`fastrnn.models._training.OPTIONS_DOC`."""
        unknown = sorted(set(options) - set(_training.OPTIONS))
        if unknown:
            raise TypeError(f"fit() got unexpected keyword arguments {unknown}; training "
                            f"options are {sorted(_training.OPTIONS)}")
        return _training.fit(self, batches, epochs=epochs, lr=lr, optimizer=optimizer,
                             clip=clip, time_budget=time_budget, verbose=verbose,
                             validate=validate, data_rng=data_rng, data_key=data_key,
                             distributed=distributed, **options)

    # -- inference mode -------------------------------------------------------------------
    @contextlib.contextmanager
    def inference(self):
        """Context: eval mode (no dropout) and ``fastrnn.no_grad()`` (nothing cached: the
        kernels' fast inference path), restoring both afterwards."""
        was_training = self.training
        self.eval()
        try:
            with no_grad():
                yield self
        finally:
            self.train(was_training)

    # -- checkpoints ----------------------------------------------------------------------
    def _checkpoint_config(self) -> dict:
        return {"kind": _CHECKPOINT_KIND, "model": type(self).__name__, "config": self.config}

    def save(self, path) -> None:
        """Write the model (class, config with vocabularies, weights) to one checkpoint file."""
        save_checkpoint(path, self._checkpoint_config(), self.state_dict())

    def to_bytes(self) -> bytes:
        """The checkpoint :meth:`save` writes, as bytes (what ``fastrnn.distributed`` ships
        to workers: plain data, never a pickle of live state)."""
        return checkpoint_bytes(self._checkpoint_config(), self.state_dict())

    @classmethod
    def from_bytes(cls: Type[_M], data: bytes, name: str = "<bytes>") -> _M:
        """:meth:`load` from the bytes of :meth:`to_bytes` (``name`` in error messages)."""
        config, arrays, _ = load_checkpoint_bytes(data, name)
        return cls._from_checkpoint(name, config, arrays)

    @classmethod
    def load(cls: Type[_M], path) -> _M:
        """Rebuild a model saved by :meth:`save` (or by ``fit(checkpoint=...)``), in eval
        mode; its outputs match the saved model's (in eval mode) bitwise.

        ``Model.load`` returns whatever model the file holds; ``SomeModel.load`` also checks
        that the file holds a ``SomeModel``. Raises :class:`fastrnn.io.CheckpointError` for a
        corrupted, truncated or mismatched file.
        """
        config, arrays, _ = load_checkpoint(path)
        return cls._from_checkpoint(path, config, arrays)

    @classmethod
    def _from_checkpoint(cls: Type[_M], path, config, arrays) -> _M:
        if not isinstance(config, dict) or config.get("kind") != _CHECKPOINT_KIND:
            raise CheckpointError(path, "this checkpoint does not hold a fastrnn model "
                                        "(it was not written by Model.save)")
        found = Model._registry.get(config.get("model"))
        if found is None:
            raise CheckpointError(path, f"unknown model class {config.get('model')!r}")
        if not issubclass(found, cls):
            raise CheckpointError(path, f"holds a {found.__name__}, not a {cls.__name__}")
        kwargs = {name: _decode_config(value) for name, value in config["config"].items()}
        try:
            model = found(**kwargs)
            model.load_state_dict({k: v for k, v in arrays.items()
                                   if not k.startswith(_training.PREFIX)})
        except (TypeError, ValueError, KeyError) as exc:
            raise CheckpointError(path, f"the weights or config do not fit a "
                                        f"{found.__name__}: {exc}") from None
        model.eval()
        return model
