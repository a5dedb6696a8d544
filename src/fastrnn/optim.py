"""Optimizers, gradient clipping and learning-rate schedules, with PyTorch's exact math.

Every optimizer takes its parameters as ``model.named_parameters()`` pairs, a Module, or
plain :class:`~fastrnn.nn.module.Parameter` objects, and updates ``Parameter.value`` in
place from ``Parameter.grad``. The update formulas are those of ``torch.optim`` (CPU,
single-tensor path), operation for operation, so float64 runs agree with PyTorch to
rounding. Notation per parameter: ``θ`` value, ``g`` gradient, ``t`` step count (from 1),
``λ`` weight decay, ``γ`` learning rate.

The :class:`Optimizer` base class owns the parameter list, the per-parameter state
(arrays and a step count), ``zero_grad``, ``state_dict`` / ``load_state_dict`` and
argument checks; each subclass only writes ``_update`` (one parameter's math).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Dict, List, Tuple

import numpy as np

from .nn.module import Module, Parameter

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "Adagrad", "RMSprop",
           "clip_grad_norm_", "clip_grad_value_",
           "LRScheduler", "StepLR", "CosineAnnealingLR", "LinearWarmup"]


# -- parameters -----------------------------------------------------------------------

def named_parameter_list(params) -> List[Tuple[str, Parameter]]:
    """``(name, Parameter)`` pairs from a Module, pairs, a dict, or bare Parameters (named
    ``"0"``, ``"1"``, ...). Raises ``TypeError`` on anything else, ``ValueError`` if empty
    or if one Parameter appears twice."""
    if isinstance(params, Module):
        params = params.named_parameters()
    elif isinstance(params, dict):
        params = params.items()
    elif isinstance(params, Parameter):
        params = [params]
    pairs = []
    for i, item in enumerate(params):
        if isinstance(item, Parameter):
            item = (str(i), item)
        if (not isinstance(item, tuple) or len(item) != 2
                or not isinstance(item[1], Parameter)):
            raise TypeError("params must hold Parameters or (name, Parameter) pairs, "
                            f"got {type(item).__name__} at position {i}")
        pairs.append((str(item[0]), item[1]))
    if not pairs:
        raise ValueError("optimizer got an empty parameter list")
    if len({id(p) for _, p in pairs}) != len(pairs):
        raise ValueError("params holds the same Parameter more than once")
    if len({name for name, _ in pairs}) != len(pairs):
        raise ValueError("params holds two parameters with the same name")
    return pairs


def _check(name: str, value, low: float = 0.0, high: float = math.inf,
           high_open: bool = False) -> float:
    """``value`` as a float in ``[low, high]`` (or ``[low, high)``), else ValueError."""
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    ok = ok and low <= value and (value < high if high_open else value <= high)
    if not ok:
        interval = f"[{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)


def _lerp(start: np.ndarray, end: np.ndarray, weight: float) -> None:
    """``start ← start + weight (end - start)`` in place, rounded as ``torch.lerp_``."""
    if weight < 0.5:
        start += weight * (end - start)
    else:
        start[...] = end - (end - start) * (1 - weight)


# -- the base class -------------------------------------------------------------------

class Optimizer:
    """Base class: parameters, per-parameter state and the ``step`` loop.

    ``state[name]`` is a dict with ``"step"`` (int) and the optimizer's arrays, created
    by ``_init_state`` on the first step. Hyperparameters are attributes (``opt.lr = ...``
    is how a schedule changes the learning rate); ``_hyper`` names them for state_dict.
    """

    _hyper: Tuple[str, ...] = ("lr",)

    def __init__(self, params, lr: float):
        self.params = named_parameter_list(params)
        self.lr = _check("lr", lr)
        self.state: Dict[str, dict] = OrderedDict()

    def zero_grad(self) -> None:
        """Set every parameter's gradient to zero (in place)."""
        for _, p in self.params:
            p.grad[...] = 0

    def step(self) -> None:
        """Apply one update to every parameter from its current ``grad``."""
        for name, p in self.params:
            state = self.state.get(name)
            if state is None:
                state = self.state[name] = self._init_state(p)
            state["step"] += 1
            self._update(p.edit(), p.grad, state)

    def _init_state(self, p: Parameter) -> dict:
        return {"step": 0}

    def _update(self, value: np.ndarray, grad: np.ndarray, state: dict) -> None:
        raise NotImplementedError

    def _decayed(self, value: np.ndarray, grad: np.ndarray, weight_decay: float):
        """``g + λ θ`` (L2 penalty folded into the gradient), a new array if λ != 0."""
        return grad + weight_decay * value if weight_decay != 0 else grad

    # -- state ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """``{"type", "hyperparams": {name: value}, "state": {param: {"step", arrays}}}``;
        copies, so later steps do not change it."""
        state = {name: {k: (v.copy() if isinstance(v, np.ndarray) else v)
                        for k, v in s.items()} for name, s in self.state.items()}
        return {"type": type(self).__name__,
                "hyperparams": {k: getattr(self, k) for k in self._hyper},
                "state": state}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyperparameters and state (as from :meth:`state_dict`, or its JSON and
        array round trip). Everything is checked first: a failed load changes nothing."""
        if state_dict.get("type") != type(self).__name__:
            raise ValueError(f"state_dict is for {state_dict.get('type')!r}, "
                             f"not {type(self).__name__!r}")
        hyper = dict(state_dict.get("hyperparams", {}))
        unknown = [key for key in hyper if key not in self._hyper]
        if unknown:
            raise KeyError(f"unknown hyperparameters {unknown} for {type(self).__name__}")
        old = {key: getattr(self, key) for key in self._hyper}
        try:
            for key, value in hyper.items():   # first: they decide which state arrays exist
                setattr(self, key, tuple(value) if isinstance(value, list) else value)
            self.state = self._checked_states(state_dict.get("state", {}))
        except Exception:
            for key, value in old.items():
                setattr(self, key, value)
            raise

    def _checked_states(self, states: dict) -> "OrderedDict[str, dict]":
        own = dict(self.params)
        unknown = [name for name in states if name not in own]
        if unknown:
            raise KeyError(f"optimizer state for unknown parameters {unknown}")
        return OrderedDict((name, self._checked_state(name, own[name], s))
                           for name, s in states.items())

    def _checked_state(self, name: str, p: Parameter, state: dict) -> dict:
        expected = self._init_state(p)
        if set(state) != set(expected):
            raise ValueError(f"optimizer state for {name!r} must have keys "
                             f"{sorted(expected)}, got {sorted(state)}")
        out = {"step": int(state["step"])}
        for key, value in state.items():
            if key == "step":
                continue
            value = np.asarray(value)
            if value.shape != p.shape:
                raise ValueError(f"optimizer state {name!r}/{key!r} must have shape "
                                 f"{p.shape}, got {value.shape}")
            out[key] = value.astype(p.dtype, copy=True)
        return out

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._hyper)
        return f"{type(self).__name__}({len(self.params)} parameters, {hyper})"


# -- optimizers -----------------------------------------------------------------------

class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, Nesterov and weight decay.

    ``d = g + λ θ``; with momentum μ: ``b₁ = d``, ``b_t = μ b_{t-1} + (1 - dampening) d``,
    then ``d = d + μ b_t`` (Nesterov) or ``d = b_t``; finally ``θ ← θ - γ d``.
    """

    _hyper = ("lr", "momentum", "dampening", "weight_decay", "nesterov")

    def __init__(self, params, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, lr)
        self.momentum = _check("momentum", momentum)
        self.dampening = _check("dampening", dampening)
        self.weight_decay = _check("weight_decay", weight_decay)
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening = 0, got "
                             f"momentum={momentum!r}, dampening={dampening!r}")

    def _init_state(self, p):
        return {"step": 0, "momentum_buffer": np.zeros_like(p.value)} if self.momentum \
            else {"step": 0}

    def _update(self, value, grad, state):
        d = self._decayed(value, grad, self.weight_decay)
        if self.momentum != 0:
            buf = state["momentum_buffer"]
            if state["step"] == 1:
                buf[...] = d
            else:
                buf *= self.momentum
                buf += (1 - self.dampening) * d
            d = d + self.momentum * buf if self.nesterov else buf
        value -= self.lr * d


class Adam(Optimizer):
    """Adam (Kingma & Ba), optionally AMSGrad, with L2 weight decay folded into ``g``.

    ``g ← g + λ θ``; ``m ← m + (1-β₁)(g - m)``; ``v ← β₂ v + (1-β₂) g²``;
    (AMSGrad: ``v̂ ← max(v̂, v)``, used for ``v``);
    ``θ ← θ - (γ / (1-β₁ᵗ)) m / (√v / √(1-β₂ᵗ) + ε)``.
    """

    _hyper = ("lr", "betas", "eps", "weight_decay", "amsgrad")
    _decoupled = False   # AdamW: decay θ directly instead of adding λθ to g

    def __init__(self, params, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False):
        super().__init__(params, lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (_check("betas[0]", betas[0], 0.0, 1.0, high_open=True),
                      _check("betas[1]", betas[1], 0.0, 1.0, high_open=True))
        self.eps = _check("eps", eps)
        self.weight_decay = _check("weight_decay", weight_decay)
        self.amsgrad = bool(amsgrad)

    def _init_state(self, p):
        state = {"step": 0, "exp_avg": np.zeros_like(p.value),
                 "exp_avg_sq": np.zeros_like(p.value)}
        if self.amsgrad:
            state["max_exp_avg_sq"] = np.zeros_like(p.value)
        return state

    def _update(self, value, grad, state):
        beta1, beta2 = self.betas
        if self._decoupled:
            value *= 1 - self.lr * self.weight_decay
        else:
            grad = self._decayed(value, grad, self.weight_decay)
        m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
        _lerp(m, grad, 1 - beta1)
        v *= beta2
        v += (1 - beta2) * grad * grad
        if self.amsgrad:
            np.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
            v = state["max_exp_avg_sq"]
        step_size = self.lr / (1 - beta1 ** t)
        denom = np.sqrt(v) / (1 - beta2 ** t) ** 0.5
        denom += self.eps
        value += -step_size * m / denom


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``θ ← θ (1 - γ λ)`` first,
    then the Adam update without ``λ`` in ``g``. Default ``weight_decay = 1e-2``."""

    _decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


class Adagrad(Optimizer):
    """Adagrad: ``g ← g + λ θ``; ``γ_t = γ / (1 + (t-1) lr_decay)``; ``s ← s + g²``;
    ``θ ← θ - γ_t g / (√s + ε)``, with ``s`` starting at ``initial_accumulator_value``."""

    _hyper = ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps")

    def __init__(self, params, lr: float = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10):
        super().__init__(params, lr)
        self.lr_decay = _check("lr_decay", lr_decay)
        self.weight_decay = _check("weight_decay", weight_decay)
        self.initial_accumulator_value = _check("initial_accumulator_value",
                                                initial_accumulator_value)
        self.eps = _check("eps", eps)

    def _init_state(self, p):
        return {"step": 0,
                "sum": np.full_like(p.value, self.initial_accumulator_value)}

    def _update(self, value, grad, state):
        grad = self._decayed(value, grad, self.weight_decay)
        clr = self.lr / (1 + (state["step"] - 1) * self.lr_decay)
        state["sum"] += grad * grad
        std = np.sqrt(state["sum"])
        std += self.eps
        value += -clr * grad / std


class RMSprop(Optimizer):
    """RMSprop (Hinton), optionally centered and with momentum.

    ``g ← g + λ θ``; ``v ← α v + (1-α) g²``; centered: ``ḡ ← ḡ + (1-α)(g - ḡ)``,
    ``a = √(v - ḡ²) + ε``, else ``a = √v + ε``; with momentum μ: ``b ← μ b + g / a``,
    ``θ ← θ - γ b``; without: ``θ ← θ - γ g / a``.
    """

    _hyper = ("lr", "alpha", "eps", "weight_decay", "momentum", "centered")

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False):
        super().__init__(params, lr)
        self.alpha = _check("alpha", alpha, 0.0, 1.0)
        self.eps = _check("eps", eps)
        self.weight_decay = _check("weight_decay", weight_decay)
        self.momentum = _check("momentum", momentum)
        self.centered = bool(centered)

    def _init_state(self, p):
        state = {"step": 0, "square_avg": np.zeros_like(p.value)}
        if self.momentum > 0:
            state["momentum_buffer"] = np.zeros_like(p.value)
        if self.centered:
            state["grad_avg"] = np.zeros_like(p.value)
        return state

    def _update(self, value, grad, state):
        grad = self._decayed(value, grad, self.weight_decay)
        v = state["square_avg"]
        v *= self.alpha
        v += (1 - self.alpha) * grad * grad
        if self.centered:
            _lerp(state["grad_avg"], grad, 1 - self.alpha)
            avg = np.sqrt(v + -1 * state["grad_avg"] * state["grad_avg"])
        else:
            avg = np.sqrt(v)
        avg += self.eps
        if self.momentum > 0:
            buf = state["momentum_buffer"]
            buf *= self.momentum
            buf += grad / avg
            value += -self.lr * buf
        else:
            value += -self.lr * grad / avg


# -- gradient clipping ----------------------------------------------------------------

def _grads(parameters) -> List[np.ndarray]:
    """Gradient arrays from a Module, Parameters, (name, Parameter) pairs or bare arrays
    (which are clipped in place themselves)."""
    if isinstance(parameters, (Module, Parameter, np.ndarray)):
        parameters = [parameters] if not isinstance(parameters, Module) \
            else parameters.parameters()
    grads = []
    for item in parameters:
        if isinstance(item, tuple) and len(item) == 2:
            item = item[1]
        if isinstance(item, Parameter):
            grads.append(item.grad)
        elif isinstance(item, np.ndarray):
            grads.append(item)
        else:
            raise TypeError("parameters must hold Parameters, (name, Parameter) pairs or "
                            f"gradient arrays, got {type(item).__name__}")
    return grads


def _total_norm(grads: List[np.ndarray], norm_type: float) -> float:
    """The ``norm_type``-norm of all gradients taken as one vector (``inf``: max |g|)."""
    if not grads:
        return 0.0
    if math.isinf(norm_type):
        return float(max(np.abs(g).max(initial=0.0) for g in grads))
    norms = [np.linalg.norm(g.reshape(-1), norm_type) for g in grads]
    return float(np.linalg.norm(np.asarray(norms, dtype=np.float64), norm_type))


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False) -> float:
    """Scale all gradients in place so that their joint norm is at most ``max_norm``.

    ``N = ‖(‖g_1‖, ..., ‖g_k‖)‖_p`` (``p = norm_type``, ``inf`` for max-abs), then every
    ``g ← g · min(1, max_norm / (N + 1e-6))``, as ``torch.nn.utils.clip_grad_norm_``.
    Returns ``N``, the norm before clipping.
    """
    norm_type = float(norm_type)
    _check("max_norm", max_norm)
    grads = _grads(parameters)
    total = _total_norm(grads, norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"the total norm of order {norm_type} of the gradients is "
                           f"{total}, so they cannot be clipped")
    coef = min(float(max_norm) / (total + 1e-6), 1.0)
    if coef < 1.0 or math.isnan(coef):
        for g in grads:
            g *= coef
    return total


def clip_grad_value_(parameters, clip_value: float) -> float:
    """Clamp every gradient element to ``[-clip_value, clip_value]`` in place.

    Returns the total 2-norm of the gradients *before* clipping (PyTorch returns None),
    which training loops log to watch for exploding gradients.
    """
    clip_value = _check("clip_value", clip_value)
    grads = _grads(parameters)
    total = _total_norm(grads, 2.0)
    for g in grads:
        np.clip(g, -clip_value, clip_value, out=g)
    return total


# -- learning-rate schedules ----------------------------------------------------------

class LRScheduler:
    """Base class: sets ``optimizer.lr = lr_at(epoch)`` from the lr it found at start.

    Construction sets epoch 0 (the initial lr); each ``step()`` advances one epoch (or
    one batch, as the training loop chooses). ``get_last_lr()`` returns ``[lr]``, a
    one-element list as in PyTorch.
    """

    def __init__(self, optimizer: Optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a fastrnn Optimizer, got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = float(optimizer.lr)
        self.last_epoch = 0
        self._apply()

    def lr_at(self, epoch: int) -> float:
        raise NotImplementedError

    def _apply(self) -> None:
        self.optimizer.lr = self.lr_at(self.last_epoch)

    def step(self) -> None:
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self) -> List[float]:
        return [self.optimizer.lr]

    def state_dict(self) -> dict:
        return {"base_lr": self.base_lr, "last_epoch": self.last_epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        self.base_lr = float(state_dict["base_lr"])
        self.last_epoch = int(state_dict["last_epoch"])
        self._apply()


class StepLR(LRScheduler):
    """``lr = base_lr · gamma^⌊epoch / step_size⌋``."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1):
        if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size < 1:
            raise ValueError(f"step_size must be a positive int, got {step_size!r}")
        self.step_size = step_size
        self.gamma = _check("gamma", gamma)
        super().__init__(optimizer)

    def lr_at(self, epoch: int) -> float:
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """``lr = eta_min + (base_lr - eta_min) (1 + cos(π epoch / T_max)) / 2`` (PyTorch's
    closed form; past ``T_max`` it rises again, as PyTorch's does)."""

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0):
        if isinstance(T_max, bool) or not isinstance(T_max, int) or T_max < 1:
            raise ValueError(f"T_max must be a positive int, got {T_max!r}")
        self.T_max = T_max
        self.eta_min = _check("eta_min", eta_min)
        super().__init__(optimizer)

    def lr_at(self, epoch: int) -> float:
        cos = 1 + math.cos(math.pi * epoch / self.T_max)
        return self.eta_min + (self.base_lr - self.eta_min) * cos / 2


class LinearWarmup(LRScheduler):
    """Linear ramp to ``base_lr`` over ``warmup_steps``, then constant:
    ``lr = base_lr · (f + (1 - f) · min(epoch, W) / W)`` with ``f = start_factor``
    (default ``1/W``). This is ``torch.optim.lr_scheduler.LinearLR`` with
    ``end_factor = 1``, ``total_iters = W``."""

    def __init__(self, optimizer: Optimizer, warmup_steps: int, start_factor: float = None):
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) \
                or warmup_steps < 1:
            raise ValueError(f"warmup_steps must be a positive int, got {warmup_steps!r}")
        self.warmup_steps = warmup_steps
        self.start_factor = (1.0 / warmup_steps if start_factor is None
                             else _check("start_factor", start_factor, 0.0, 1.0))
        super().__init__(optimizer)

    def lr_at(self, epoch: int) -> float:
        f = self.start_factor
        return self.base_lr * (f + (1 - f) * min(epoch, self.warmup_steps)
                               / self.warmup_steps)
