"""The training loop behind every model's ``fit``: stopping safely, checkpoints, resuming.

One :class:`Run` per ``fit`` call. It owns the optimizer, the optional scheduler, the
history and the position in the data, and it writes *training checkpoints*: a model
checkpoint (class, config, weights: what :meth:`Model.load` reads) plus, under array names
starting with ``training:`` and the ``meta["training"]`` JSON, everything needed to
continue exactly where it stopped:

- the optimizer's hyperparameters, step counts and moment arrays (``training:optimizer:
  <param>:<key>``) and the scheduler's state;
- the data position: epoch, step within the epoch, the shuffling generator's state at the
  epoch's start (the epoch's batches are rebuilt from it and the done ones skipped);
- the state of every random generator inside the model (dropout masks), the state a
  model carries between batches (a language model's hidden state, ``training:carry:<i>``),
  and the history so far;
- a fingerprint of the data and batch layout, so resuming on other data is refused.

Resuming with the same data and options therefore reaches bit-identical weights to a run
that was never interrupted.

Stopping: SIGINT (Ctrl-C) and SIGTERM set a flag that the loop reads at the next step
boundary (a second Ctrl-C raises ``KeyboardInterrupt`` at once); a non-finite loss or
gradient stops before the optimizer step, so the weights stay the last finite ones.
Messages go to the ``fastrnn`` logger.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
import numbers
import os
import signal
import threading
import time
from typing import Callable, Optional

import numpy as np

from .. import optim
from ..io import CheckpointError, _to_json, load_checkpoint, save_checkpoint

log = logging.getLogger("fastrnn")

PREFIX = "training:"          # array names are plain names: no "/" (fastrnn.io)
_OPTIM = PREFIX + "optimizer:"
_CARRY = PREFIX + "carry:"

# fit's keyword options beyond each model's data and hyperparameters, with their defaults
OPTIONS = {"checkpoint": None, "checkpoint_every": None, "resume": None, "patience": None,
           "callbacks": None, "scheduler": None, "validate_every": None,
           "checkpoint_meta": None, "precision": None}

# fit's precision spellings -> the recurrent layers' precision
FIT_PRECISIONS = {"bf16": "bfloat16", "bfloat16": "bfloat16", "float32": "float32"}

OPTIONS_DOC = """Training options (every model's ``fit``):

    checkpoint: path of a training checkpoint, written at the end (whatever stopped the
        run: epochs, time budget, Ctrl-C/SIGTERM, a non-finite loss, early stopping) and
        every ``checkpoint_every`` seconds; its folder is created before training starts.
        ``Model.load`` reads it; ``fit(..., resume=path)`` continues from it.
    checkpoint_every: seconds between periodic checkpoints (atomic writes).
    resume: a training checkpoint to continue from: weights, optimizer and scheduler state,
        random generators and data position are restored, so the result is bit-identical
        to an uninterrupted run with the same data and options. ``epochs`` counts all
        epochs, those before the checkpoint included; ``time_budget`` counts this call.
    patience: stop when the validation loss has not improved for this many epochs
        (needs ``validation_data``).
    callbacks: objects with ``on_epoch_end(history)``, called after every epoch; a callback
        that returns True stops training.
    scheduler: a ``fastrnn.optim.LRScheduler`` (or a function ``optimizer -> scheduler``),
        stepped after every epoch and saved in checkpoints.
    validate_every: also evaluate the validation data every this many steps
        (``history["validation"]`` lists every evaluation with its step).
    checkpoint_meta: a JSON-able dict stored in the checkpoint (``meta["training"]["user"]``).
    precision: ``"bf16"`` (or ``"bfloat16"``): mixed-precision training. During ``fit``
        (its validation included) every recurrent layer runs the two products of each
        step, ``x_t w_ihᵀ`` and ``h_{t-1} w_hhᵀ``, on bf16-rounded operands with float32
        accumulation (the bf16 copies of the weights are made once per optimizer step);
        the cell math, the saved values, the whole backward, the gradients, the
        Parameters (the float32 master weights) and the optimizer stay float32, and the
        other layers (embedding, output layer, loss) run float32. No loss scaling is
        needed: bf16 has float32's exponent range (gradients are float32 anyway).
        ``"float32"``: full precision during ``fit``. None (default): each layer as it is
        (``.to("bfloat16")`` layers train in bf16 too). The layers' precision is restored
        when ``fit`` returns or raises. Needs float32 layers; int8 ones cannot train.

``fit`` returns its :class:`History`; ``history["stop_reason"]`` is one of ``"epochs"``,
``"time_budget"``, ``"interrupted"``, ``"diverged"``, ``"early_stopping"``, ``"callback"``.
A Ctrl-C or SIGTERM stops at the next step boundary (a second Ctrl-C raises
``KeyboardInterrupt`` at once).
"""


class History(dict):
    """What ``fit`` returns: ``loss`` (mean training loss per epoch), ``step_loss`` (every
    optimizer step), ``val_*`` (validation metrics per epoch), ``validation`` (every
    evaluation: ``{"step", "epoch", "train_loss", metrics...}``), ``units_per_second``
    (training throughput per epoch), ``units`` (characters, tokens or samples trained on,
    in total), ``seconds`` (total), ``stop_reason`` and ``message`` (why it stopped)."""


# -- Ctrl-C and SIGTERM -----------------------------------------------------------------

class StopRequest:
    """Set by SIGINT/SIGTERM while :func:`graceful_stop` is active."""

    def __init__(self):
        self.signum: Optional[int] = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


_active: Optional[StopRequest] = None


def _handler(request: StopRequest):
    def handle(signum, frame):
        if request.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt   # the second Ctrl-C: stop now
        request.signum = signum
    return handle


@contextlib.contextmanager
def graceful_stop():
    """Within: SIGINT and SIGTERM set ``request.signum`` instead of raising. Nested uses
    share the outer request; outside the main thread nothing is installed."""
    global _active
    if _active is not None or threading.current_thread() is not threading.main_thread():
        yield _active or StopRequest()
        return
    request = StopRequest()
    signals = [signal.SIGINT] + ([signal.SIGTERM] if hasattr(signal, "SIGTERM") else [])
    previous = {s: signal.signal(s, _handler(request)) for s in signals}
    _active = request
    try:
        yield request
    finally:
        _active = None
        for s, old in previous.items():
            signal.signal(s, old)


# -- helpers ----------------------------------------------------------------------------

def fingerprint(*parts) -> str:
    """A short hash of arrays and plain values (the data and the batch layout)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(str((part.dtype.str, part.shape)).encode())
            h.update(np.ascontiguousarray(part).reshape(-1).view(np.uint8))
        else:
            h.update(repr(part).encode())
    return h.hexdigest()[:16]


def safe_exp(x: float) -> float:
    """``exp(x)``, ``inf`` on overflow (perplexities of a diverged model)."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def check_output_path(path, name: str = "checkpoint") -> str:
    """Create ``path``'s folder and check that a file can be written there, before any
    training; ``ValueError``/``OSError`` naming ``name`` and the path otherwise."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{name} {path!r} is a directory; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise OSError(f"{name} {path!r}: cannot create its folder {folder!r}: "
                      f"{exc.strerror or exc}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{name} {path!r}: the folder {folder!r} is not writable")
    return path


def _generators(model) -> dict:
    """Every NumPy random generator inside the model's modules, by ``module/attribute``."""
    found = {}
    for module_name, module in model.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, np.random.Generator):
                found[f"{module_name}/{attr}"] = value
    return found


def overfitting(validation: list) -> bool:
    """True when, over the last three evaluations, the held-out loss rose twice in a row
    while the training loss fell twice in a row."""
    if len(validation) < 3:
        return False
    v = [r["loss"] for r in validation[-3:]]
    t = [r["train_loss"] for r in validation[-3:]]
    return v[0] < v[1] < v[2] and t[0] > t[1] > t[2]


def _si(value: float) -> str:
    """1234567 -> '1.23M' (for the progress bar)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def _positive_number(name, value, allow_none=True):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"{name} must be {'None or ' if allow_none else ''}a positive "
                         f"number, got {value!r}")
    return value


def fit_precision(model, precision) -> Optional[str]:
    """``fit``'s ``precision`` as a layer precision ('bfloat16', 'float32'), or None (keep
    each layer's); ``ValueError`` for another value or for layers that cannot train in it
    (int8 layers, float64 ones in bf16)."""
    if precision is None:
        return None
    if not isinstance(precision, str) or precision not in FIT_PRECISIONS:
        raise ValueError(f"precision must be None or one of {sorted(FIT_PRECISIONS)}, got "
                         f"{precision!r}")
    precision = FIT_PRECISIONS[precision]
    for name, layer in _recurrent_layers(model):
        if layer.precision == "int8":
            raise ValueError(f"precision={precision!r}: {name or 'the model'} is an int8 "
                             "layer (fastrnn.quantize_dynamic), which cannot train; train "
                             "in float32 or bf16 and quantize afterwards")
        if precision != "float32" and layer.dtype != np.float32:
            raise ValueError(f"precision={precision!r} needs float32 layers, got "
                             f"{name or 'the model'} in {layer.dtype}; convert the model "
                             "with .to('float32')")
    return precision


def _recurrent_layers(model) -> list:
    """``(name, module)`` of every module with a ``precision`` (the recurrent layers)."""
    return [(name, m) for name, m in model.named_modules() if "precision" in vars(m)]


@contextlib.contextmanager
def layers_in_precision(model, precision: Optional[str]):
    """Within: every recurrent layer of ``model`` in ``precision`` (None: unchanged); each
    layer's own precision is restored on exit (their packs follow the precision)."""
    layers = [] if precision is None else [m for _, m in _recurrent_layers(model)]
    before = [m.precision for m in layers]
    for m in layers:
        object.__setattr__(m, "precision", precision)
    try:
        yield
    finally:
        for m, p in zip(layers, before):
            object.__setattr__(m, "precision", p)


def _positive_int(name, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be None or a positive int, got {value!r}")
    return int(value)


# -- one fit call -----------------------------------------------------------------------

class Run:
    """State and loop of one ``fit`` call (see the module docstring)."""

    def __init__(self, model, batches, *, epochs, lr, optimizer, clip, time_budget, verbose,
                 validate=None, data_rng=None, data_key="", checkpoint=None,
                 checkpoint_every=None, resume=None, patience=None, callbacks=None,
                 scheduler=None, validate_every=None, checkpoint_meta=None, distributed=None,
                 precision=None):
        if epochs is None and time_budget is None:
            raise ValueError("give epochs, time_budget, or both")
        self.epochs = _positive_int("epochs", epochs)
        self.time_budget = _positive_number("time_budget", time_budget)
        if clip is not None and not (isinstance(clip, numbers.Real) and clip > 0):
            raise ValueError(f"clip must be None or a positive max gradient norm, got {clip!r}")
        self.model, self.batches, self.clip, self.verbose = model, batches, clip, verbose
        self.precision = fit_precision(model, precision)
        self.parallel, self.is_root = distributed, True
        if distributed is not None:
            if resume is not None:
                raise ValueError("resume= does not work with distributed training (each "
                                 "rank carries its own data state); resume on one process")
            distributed.attach(model)
            self.is_root = distributed.is_root
            self.verbose = verbose and self.is_root
        self.validate, self.data_rng, self.data_key = validate, data_rng, data_key
        self.checkpoint_every = _positive_number("checkpoint_every", checkpoint_every)
        if self.checkpoint_every is not None and checkpoint is None:
            raise ValueError("checkpoint_every needs checkpoint=PATH")
        self.checkpoint = None if checkpoint is None else check_output_path(checkpoint)
        self.patience = _positive_int("patience", patience)
        self.validate_every = _positive_int("validate_every", validate_every)
        if validate is None and (self.patience or self.validate_every):
            raise ValueError("patience and validate_every need validation_data")
        self.callbacks = list(callbacks or [])
        for i, cb in enumerate(self.callbacks):
            if not callable(getattr(cb, "on_epoch_end", None)):
                raise TypeError(f"callbacks[{i}] must have an on_epoch_end(history) method, "
                                f"got {type(cb).__name__}")
        if checkpoint_meta is not None and not isinstance(checkpoint_meta, dict):
            raise TypeError(f"checkpoint_meta must be a dict, got "
                            f"{type(checkpoint_meta).__name__}")
        self.user_meta = checkpoint_meta or {}
        self.optimizer = model._make_optimizer(optimizer, lr)
        self.scheduler = self._make_scheduler(scheduler)
        self.history = History(loss=[], step_loss=[], units_per_second=[], units=0,
                               seconds=0.0, validation=[], stop_reason=None, message="")
        self.epoch = self.step_in_epoch = 0
        self.epoch_units, self.epoch_seconds = 0, 0.0
        self.epoch_rng_state = None
        self.best, self.since_best, self.warned = math.inf, 0, False
        self._resume_arrays = None
        if resume is not None:
            self._restore(resume)

    def _make_scheduler(self, scheduler):
        if scheduler is None or isinstance(scheduler, optim.LRScheduler):
            return scheduler
        if callable(scheduler):
            made = scheduler(self.optimizer)
            if isinstance(made, optim.LRScheduler):
                return made
        raise TypeError("scheduler must be a fastrnn.optim.LRScheduler or a function "
                        f"optimizer -> LRScheduler, got {scheduler!r}")

    # -- checkpoints ------------------------------------------------------------------
    def _training_meta(self) -> dict:
        opt = self.optimizer.state_dict()
        rng_state = (self.epoch_rng_state if self.step_in_epoch
                     else self.data_rng.bit_generator.state if self.data_rng else None)
        return {
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
            "epoch_units": self.epoch_units, "epoch_seconds": self.epoch_seconds,
            "data_key": self.data_key, "data_rng": rng_state,
            "generators": {k: g.bit_generator.state
                           for k, g in _generators(self.model).items()},
            "optimizer": {"type": opt["type"], "hyperparams": opt["hyperparams"],
                          "steps": {n: s["step"] for n, s in opt["state"].items()}},
            "scheduler": (None if self.scheduler is None else
                          {"type": type(self.scheduler).__name__,
                           "state": self.scheduler.state_dict()}),
            "best": self.best, "since_best": self.since_best, "warned": self.warned,
            "history": dict(self.history), "user": self.user_meta,
        }

    def _training_arrays(self) -> dict:
        arrays = {}
        for name, state in self.optimizer.state.items():
            for key, value in state.items():
                if key != "step":
                    arrays[f"{_OPTIM}{name}:{key}"] = value
        if self.step_in_epoch:   # between epochs the carried state is reset anyway
            for i, part in enumerate(self.model._carried_state()):
                arrays[f"{_CARRY}{i}"] = part
        return arrays

    def save(self) -> None:
        """Write the training checkpoint (atomically: a temporary file, then a rename);
        in distributed training rank 0 writes (the weights are the same on every rank)."""
        if not self.is_root:
            return
        arrays = dict(self.model.state_dict())
        arrays.update(self._training_arrays())
        save_checkpoint(self.checkpoint, self.model._checkpoint_config(), arrays,
                        {"training": self._training_meta()})
        self.saved_at = time.perf_counter()
        log.debug("saved checkpoint %s", self.checkpoint)

    def _restore(self, path) -> None:
        config, arrays, meta = load_checkpoint(path)
        state = meta.get("training") if isinstance(meta, dict) else None
        if state is None:
            raise CheckpointError(path, "holds no training state (it was written by "
                                        "Model.save, not by fit(checkpoint=...)); load it "
                                        "with Model.load to fine-tune from its weights")
        if config.get("model") != type(self.model).__name__ or \
                config.get("config") != _to_json("config", self.model.config):
            raise CheckpointError(path, "was written by a different model (class or "
                                        "configuration); build the model with "
                                        "Model.load(path) before resuming")
        if state["data_key"] != self.data_key:
            raise CheckpointError(path, "was trained on other data or another batch layout "
                                        "(batch size, sequence length); resuming needs the "
                                        "same ones")
        try:
            self._restore_state(state, arrays)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(path, f"its training state does not fit: {exc}") from None

    def _restore_state(self, state: dict, arrays: dict) -> None:
        weights = {k: v for k, v in arrays.items() if not k.startswith(PREFIX)}
        self.model.load_state_dict(weights)
        opt = state["optimizer"]
        per_param = {name: {"step": step} for name, step in opt["steps"].items()}
        for key, value in arrays.items():
            if key.startswith(_OPTIM):
                name, _, slot = key[len(_OPTIM):].rpartition(":")
                per_param[name][slot] = value
        self.optimizer.load_state_dict({"type": opt["type"], "hyperparams":
                                        opt["hyperparams"], "state": per_param})
        if (state["scheduler"] is None) != (self.scheduler is None):
            raise ValueError("the checkpoint's run had "
                             f"{'no' if state['scheduler'] is None else 'a'} scheduler; "
                             "resume with the same")
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"]["state"])
        gens = _generators(self.model)
        if set(gens) != set(state["generators"]):
            raise ValueError("the model's random generators differ from the checkpoint's")
        self._generator_states = state["generators"]
        if self.data_rng is not None and state["data_rng"] is not None:
            self.data_rng.bit_generator.state = state["data_rng"]
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.epoch_units, self.epoch_seconds = state["epoch_units"], state["epoch_seconds"]
        self.best, self.since_best, self.warned = (state["best"], state["since_best"],
                                                   state["warned"])
        self.history = History(state["history"])
        self.history["stop_reason"], self.history["message"] = None, ""
        self._resume_arrays = [arrays[k] for k in sorted(
            (k for k in arrays if k.startswith(_CARRY)), key=lambda k: int(k[len(_CARRY):]))]

    def _restore_position(self) -> None:
        """After the resumed epoch's batches were skipped: generators and carried state."""
        for key, g in _generators(self.model).items():
            g.bit_generator.state = self._generator_states[key]
        if self.step_in_epoch and self._resume_arrays:
            self.model._set_carried_state(tuple(self._resume_arrays))
        self._resume_arrays = None

    # -- the loop ---------------------------------------------------------------------
    def run(self) -> History:
        start = time.perf_counter()
        self.saved_at, self.bar = start, None
        with graceful_stop() as stop, layers_in_precision(self.model, self.precision):
            self.stop = stop
            try:
                reason = self._loop(start)
            finally:
                if self.bar is not None:
                    self.bar.close()
            self._finish(reason, start)
        return self.history

    def _loop(self, start) -> str:
        while True:
            if self.epochs is not None and self.epoch >= self.epochs:
                return "epochs"
            iterable, count = self._epoch_batches()
            if self.bar is None:
                self._open_bar(count)
            reason = self._run_epoch(iterable, count, start)
            if reason is None:
                reason = self._end_epoch()
            if reason is not None:
                return reason

    def _open_bar(self, count: int) -> None:
        from tqdm.auto import tqdm
        self.bar = tqdm(total=self.epochs * count if self.epochs else None,
                        initial=len(self.history["step_loss"]), desc="train", unit="step",
                        disable=not self.verbose, dynamic_ncols=True, mininterval=0.5,
                        smoothing=0.1)

    def _epoch_batches(self):
        """The current epoch's batches, the done ones skipped when resuming mid-epoch."""
        self.model.train()
        self.epoch_rng_state = (self.data_rng.bit_generator.state
                                if self.data_rng is not None else None)
        self.model._start_epoch()
        iterable, count = self.batches(self.epoch)
        iterable = iter(iterable)
        if self._resume_arrays is not None:
            for _ in itertools.islice(iterable, self.step_in_epoch):
                pass
            self._restore_position()
        return iterable, count

    def _run_epoch(self, iterable, count, start) -> Optional[str]:
        """Steps to the epoch's end; the reason to stop early, or None."""
        t0 = time.perf_counter() - self.epoch_seconds

        def spent() -> bool:   # (in distributed training, all ranks agree on it)
            return self.stop.requested or (self.time_budget is not None and
                                           time.perf_counter() - start >= self.time_budget)
        for batch in iterable:
            if self.parallel is None and self.stop.requested:
                return "interrupted"
            loss, units, stop = self._step(batch, spent)
            if loss is None:
                return "diverged"
            self.history["step_loss"].append(loss)
            self.step_in_epoch += 1
            self.epoch_units += units
            self.history["units"] += units
            self.epoch_seconds = time.perf_counter() - t0
            self._show(loss, count)
            if (self.validate_every and self.step_in_epoch < count
                    and len(self.history["step_loss"]) % self.validate_every == 0):
                self._validation()   # (the epoch's last step is validated at its end)
            if self.checkpoint_every and \
                    time.perf_counter() - self.saved_at >= self.checkpoint_every:
                self.save()
            if stop:
                return "interrupted" if self.stop.requested else "time_budget"
        return None

    def _step(self, batch, spent):
        """One optimizer step: ``(loss, units, stop)``; ``(None, 0, True)`` (and nothing
        applied) when the loss or the gradient is not finite."""
        model, optimizer = self.model, self.optimizer
        if self.parallel is not None:
            try:
                return self.parallel.train_step(model, batch, optimizer, self.clip, spent)
            except FloatingPointError as exc:   # before the update, on every rank alike
                self.history["message"] = f"training stopped: {exc}"
                return None, 0, True
        optimizer.zero_grad()
        loss, units = model._forward_backward(batch)
        norm = (optim.clip_grad_norm_(model, self.clip) if self.clip is not None
                else optim._total_norm([p.grad for p in model.parameters()], 2.0))
        if not (math.isfinite(loss) and math.isfinite(norm)):
            what = f"loss became {loss}" if not math.isfinite(loss) else \
                f"gradient norm became {norm}"
            self.history["message"] = (
                f"training stopped at step {len(self.history['step_loss']) + 1}: the {what}; "
                "that step was not applied, the weights are the last finite ones (lower "
                "the learning rate, or clip gradients)")
            return None, 0, True
        optimizer.step()
        return float(loss), units, spent()

    def _show(self, loss, count) -> None:
        recent = self.history["step_loss"][-50:]
        rate = self.epoch_units / max(self.epoch_seconds, 1e-9)
        epochs = f"/{self.epochs}" if self.epochs else ""
        val = self.history["validation"]
        held = f" val={val[-1]['loss']:.4f}" if val else ""
        self.bar.set_postfix_str(f"epoch {self.epoch + 1}{epochs} loss={np.mean(recent):.4f}"
                                 f"{held} {_si(rate)} {self.model.units}/s", refresh=False)
        self.bar.update(1)

    def _validation(self) -> dict:
        metrics = self.validate()
        self.model.train()
        recent = self.history["step_loss"][-50:]
        record = {"step": len(self.history["step_loss"]), "epoch": self.epoch + 1,
                  "train_loss": float(np.mean(recent)) if recent else math.nan,
                  **{k: float(v) for k, v in metrics.items()}}
        self.history["validation"].append(record)
        if not self.warned and overfitting(self.history["validation"]):
            self.warned = True
            v = self.history["validation"]
            (log.warning if self.is_root else log.debug)("held-out loss rose from %.4f to %.4f while training loss fell from "
                        "%.4f to %.4f: the model is overfitting (more data, dropout, a "
                        "smaller model, or early stopping with patience= help)",
                        v[-3]["loss"], v[-1]["loss"], v[-3]["train_loss"],
                        v[-1]["train_loss"])
        return metrics

    def _end_epoch(self) -> Optional[str]:
        """Epoch bookkeeping, validation, scheduler, callbacks, patience."""
        h = self.history
        losses = h["step_loss"][len(h["step_loss"]) - self.step_in_epoch:]
        h["loss"].append(float(np.mean(losses)) if losses else float("nan"))
        h["units_per_second"].append(self.epoch_units / max(self.epoch_seconds, 1e-9))
        reason = None
        if self.validate is not None:
            for key, value in self._validation().items():
                h.setdefault(f"val_{key}", []).append(value)
            reason = self._patience(h["val_loss"][-1]) if "val_loss" in h else None
        self.epoch += 1
        self.step_in_epoch, self.epoch_units, self.epoch_seconds = 0, 0, 0.0
        if self.scheduler is not None:
            self.scheduler.step()
        for cb in self.callbacks:
            if cb.on_epoch_end(h) and reason is None:
                reason = "callback"
                h["message"] = f"stopped by {type(cb).__name__}.on_epoch_end"
        return reason

    def _patience(self, val_loss: float) -> Optional[str]:
        if val_loss < self.best:
            self.best, self.since_best = val_loss, 0
            return None
        self.since_best += 1
        if self.patience and self.since_best >= self.patience:
            self.history["message"] = (f"early stopping: the validation loss has not improved "
                                       f"on {self.best:.4f} for {self.since_best} epochs")
            return "early_stopping"
        return None

    def _finish(self, reason: str, start: float) -> None:
        h = self.history
        h["stop_reason"] = reason
        h["seconds"] = h.get("seconds", 0.0) + time.perf_counter() - start
        if reason == "interrupted":
            h["message"] = (f"interrupted by {self.stop.name} at epoch {self.epoch + 1}, "
                            f"step {len(h['step_loss'])}")
        if self.checkpoint is not None:
            self.save()
            if self.parallel is not None:
                self.parallel.barrier(f"the barrier after saving {self.checkpoint}")
            if reason in ("interrupted", "diverged"):
                h["message"] += f"; saved {self.checkpoint}"
        if self.step_in_epoch:   # a partial epoch (after the checkpoint: resuming redoes it)
            losses = h["step_loss"][len(h["step_loss"]) - self.step_in_epoch:]
            h["loss"].append(float(np.mean(losses)))
            h["units_per_second"].append(self.epoch_units / max(self.epoch_seconds, 1e-9))
        if h["message"] and self.is_root:
            (log.warning if reason == "diverged" else log.info)(h["message"])
        self.model.train()


def fit(model, batches: Callable, **kwargs):
    """Run one :class:`Run` (what :meth:`Model._fit` calls)."""
    return Run(model, batches, **kwargs).run()
