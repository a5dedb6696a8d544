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
import math
import numbers
import time
from typing import Callable, Iterable, Optional, Tuple

import numpy as np

from .. import optim
from ..data import Vocabulary
from ..grad_mode import no_grad
from ..io import (CheckpointError, checkpoint_bytes, load_checkpoint, load_checkpoint_bytes,
                  save_checkpoint)
from ..nn.module import Module

__all__ = ["Model", "History"]

_OPTIMIZERS = {"sgd": optim.SGD, "adam": optim.Adam, "adamw": optim.AdamW,
               "adagrad": optim.Adagrad, "rmsprop": optim.RMSprop}
_CHECKPOINT_KIND = "fastrnn.models"


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


class History(dict):
    """What ``fit`` returns: ``loss`` (mean training loss per epoch), ``step_loss`` (every
    optimizer step), ``val_*`` (validation metrics per epoch), ``units_per_second``
    (training throughput per epoch), ``units`` (characters, tokens or samples trained on,
    in total) and ``seconds`` (total)."""


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

    def _train_step(self, batch, optimizer: optim.Optimizer, clip: Optional[float]):
        optimizer.zero_grad()
        loss, units = self._forward_backward(batch)
        if not math.isfinite(loss):
            raise FloatingPointError(f"the training loss became {loss}; lower the learning "
                                     "rate or clip gradients (clip=...)")
        if clip is not None:
            optim.clip_grad_norm_(self, clip)
        optimizer.step()
        return loss, units

    def _fit(self, batches: Callable[[int], Tuple[Iterable, int]], *, epochs, lr, optimizer,
             clip, time_budget, verbose, validate: Optional[Callable[[], dict]] = None,
             distributed=None) -> History:
        """Run epochs of ``batches(epoch) -> (iterable of batches, count)`` through
        :meth:`_train_step`, with a tqdm bar showing loss and throughput; stops after
        ``epochs`` or once ``time_budget`` seconds have passed (at least one step runs).
        ``distributed``: a :class:`fastrnn.distributed.DataParallel` (attached here) whose
        ranks each train on their shard of every batch; the bar shows on rank 0 only."""
        if epochs is None and time_budget is None:
            raise ValueError("give epochs, time_budget, or both")
        if epochs is not None:
            epochs = positive_int("epochs", epochs)
        if time_budget is not None and not (isinstance(time_budget, numbers.Real)
                                            and time_budget > 0):
            raise ValueError(f"time_budget must be a positive number of seconds, "
                             f"got {time_budget!r}")
        if clip is not None and not (isinstance(clip, numbers.Real) and clip > 0):
            raise ValueError(f"clip must be None or a positive max gradient norm, got {clip!r}")
        optimizer = self._make_optimizer(optimizer, lr)
        step = self._local_step
        if distributed is not None:
            step = distributed.attach(self).train_step
            verbose = verbose and distributed.is_root
        history = History(loss=[], step_loss=[], units_per_second=[], units=0, seconds=0.0)
        start = time.perf_counter()
        epoch, out_of_time = 0, False
        while not out_of_time and (epochs is None or epoch < epochs):
            out_of_time = self._run_epoch(batches, epoch, step, optimizer, clip, history,
                                          start, time_budget, verbose)
            if validate is not None:
                for key, value in validate().items():
                    history.setdefault(f"val_{key}", []).append(value)
            epoch += 1
        history["seconds"] = time.perf_counter() - start
        self.train()
        return history

    def _local_step(self, model, batch, optimizer, clip, out_of_time) -> tuple:
        """One step in this process: ``(loss, units, stop)``."""
        loss, units = self._train_step(batch, optimizer, clip)
        return loss, units, out_of_time()

    def _run_epoch(self, batches, epoch, step, optimizer, clip, history, start, time_budget,
                   verbose) -> bool:
        """One epoch; returns True when the time budget ran out."""
        from tqdm.auto import tqdm
        self.train()
        self._start_epoch()
        iterable, count = batches(epoch)
        losses, units_done, t0 = [], 0, time.perf_counter()
        bar = tqdm(total=count, desc=f"epoch {epoch + 1}", unit="batch", disable=not verbose,
                   leave=True, dynamic_ncols=True)
        out_of_time = False

        def spent() -> bool:
            return time_budget is not None and time.perf_counter() - start >= time_budget

        with bar:
            for batch in iterable:
                loss, units, out_of_time = step(self, batch, optimizer, clip, spent)
                losses.append(loss)
                units_done += units
                rate = units_done / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix_str(f"loss={np.mean(losses[-50:]):.4f} "
                                    f"{_si(rate)} {self.units}/s", refresh=False)
                bar.update(1)
                if out_of_time:
                    break
        history["step_loss"].extend(losses)
        history["units"] += units_done
        history["loss"].append(float(np.mean(losses)) if losses else float("nan"))
        history["units_per_second"].append(units_done / max(time.perf_counter() - t0, 1e-9))
        return out_of_time

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
    def from_bytes(cls, data: bytes, name: str = "<bytes>") -> "Model":
        """:meth:`load` from the bytes of :meth:`to_bytes` (``name`` in error messages)."""
        config, arrays, _ = load_checkpoint_bytes(data, name)
        return cls._from_checkpoint(name, config, arrays)

    @classmethod
    def load(cls, path) -> "Model":
        """Rebuild a model saved by :meth:`save`, in eval mode; its outputs match the saved
        model's (in eval mode) bitwise.

        ``Model.load`` returns whatever model the file holds; ``SomeModel.load`` also checks
        that the file holds a ``SomeModel``. Raises :class:`fastrnn.io.CheckpointError` for a
        corrupted, truncated or mismatched file.
        """
        config, arrays, _ = load_checkpoint(path)
        return cls._from_checkpoint(path, config, arrays)

    @classmethod
    def _from_checkpoint(cls, path, config, arrays) -> "Model":
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
            model.load_state_dict(arrays)
        except (TypeError, ValueError, KeyError) as exc:
            raise CheckpointError(path, f"the weights or config do not fit a "
                                        f"{found.__name__}: {exc}") from None
        return model.eval()


def _si(value: float) -> str:
    """1234567 -> '1.23M' (for the progress bar)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"
