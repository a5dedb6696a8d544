"""Optimizers, clipping and schedules: hand-computed updates, state round trips, errors,
and live PyTorch parity (float64, several steps) when torch is importable."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fastrnn.nn.layers import Linear
from fastrnn.nn.module import Module, Parameter
from fastrnn.optim import (SGD, Adagrad, Adam, AdamW, CosineAnnealingLR, LinearWarmup,
                           RMSprop, StepLR, clip_grad_norm_, clip_grad_value_)

SHAPES = [(3, 4), (4,), (2, 1, 3)]
CASES = [
    (SGD, dict(lr=0.1)),
    (SGD, dict(lr=0.1, momentum=0.9)),
    (SGD, dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01)),
    (SGD, dict(lr=0.05, momentum=0.9, weight_decay=0.02, nesterov=True)),
    (Adam, dict()),
    (Adam, dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)),
    (Adam, dict(lr=0.01, amsgrad=True)),
    (AdamW, dict()),
    (AdamW, dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    (Adagrad, dict()),
    (Adagrad, dict(lr=0.1, lr_decay=0.05, weight_decay=0.01, initial_accumulator_value=0.1)),
    (RMSprop, dict()),
    (RMSprop, dict(lr=0.01, alpha=0.9, centered=True)),
    (RMSprop, dict(lr=0.01, momentum=0.9, weight_decay=0.01)),
    (RMSprop, dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.1, eps=1e-4)),
]
IDS = [f"{cls.__name__}-{kw}" for cls, kw in CASES]


def make_params(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [Parameter(rng.standard_normal(s).astype(dtype)) for s in SHAPES]


def grad_sequence(steps, seed=1):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s) for s in SHAPES] for _ in range(steps)]


def run(opt, params, grads):
    for step_grads in grads:
        opt.zero_grad()
        for p, g in zip(params, step_grads):
            p.grad += g
        opt.step()


# -- parity with torch ----------------------------------------------------------------

def torch_twins(torch, params, grads=False):
    """Torch copies of ``params`` (their gradients too when ``grads``)."""
    tparams = [torch.tensor(p.value.copy(), requires_grad=True) for p in params]
    if grads:
        for tp, p in zip(tparams, params):
            tp.grad = torch.tensor(p.grad.copy())
    return tparams


def step_both(theirs, tparams, ours, params, step_grads, torch):
    """One optimizer step with the same gradients in torch and in fastrnn."""
    for tp, g in zip(tparams, step_grads):
        tp.grad = torch.tensor(g)
    theirs.step()
    run(ours, params, [step_grads])


@pytest.mark.parametrize("cls,kwargs", CASES, ids=IDS)
def test_optimizer_matches_torch(cls, kwargs):
    torch = pytest.importorskip("torch")
    params = make_params()
    tparams = torch_twins(torch, params)
    ours = cls(params, **kwargs)
    theirs = getattr(torch.optim, cls.__name__)(tparams, **kwargs)
    for step_grads in grad_sequence(10):
        step_both(theirs, tparams, ours, params, step_grads, torch)
        for p, tp in zip(params, tparams):
            np.testing.assert_allclose(p.value, tp.detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cls,kwargs", [c for c in CASES if c[0] in (Adam, SGD)][:4], ids=str)
def test_optimizer_matches_torch_with_changing_lr(cls, kwargs):
    torch = pytest.importorskip("torch")
    params = make_params(seed=3)
    tparams = torch_twins(torch, params)
    ours = cls(params, **kwargs)
    theirs = getattr(torch.optim, cls.__name__)(tparams, **kwargs)
    for k, step_grads in enumerate(grad_sequence(6, seed=4)):
        ours.lr = theirs.param_groups[0]["lr"] = 0.1 / (k + 1)
        step_both(theirs, tparams, ours, params, step_grads, torch)
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.value, tp.detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    torch = pytest.importorskip("torch")
    params = make_params()
    for p, g in zip(params, grad_sequence(1)[0]):
        p.grad += g
    tparams = torch_twins(torch, params, grads=True)
    expected = torch.nn.utils.clip_grad_norm_(tparams, max_norm, norm_type)
    total = clip_grad_norm_(params, max_norm, norm_type)
    assert total == pytest.approx(expected.item(), rel=1e-13)
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-13)


def test_clip_grad_value_matches_torch():
    torch = pytest.importorskip("torch")
    params = make_params()
    for p, g in zip(params, grad_sequence(1)[0]):
        p.grad += g
    before = math.sqrt(sum(float(np.sum(p.grad ** 2)) for p in params))
    tparams = torch_twins(torch, params, grads=True)
    torch.nn.utils.clip_grad_value_(tparams, 0.5)
    assert clip_grad_value_(params, 0.5) == pytest.approx(before, rel=1e-13)
    for p, tp in zip(params, tparams):
        np.testing.assert_array_equal(p.grad, tp.grad.numpy())


@pytest.mark.parametrize("make", [
    (lambda o: StepLR(o, step_size=3, gamma=0.5),
     lambda t: __import__("torch").optim.lr_scheduler.StepLR(t, step_size=3, gamma=0.5)),
    (lambda o: CosineAnnealingLR(o, T_max=7, eta_min=0.01),
     lambda t: __import__("torch").optim.lr_scheduler.CosineAnnealingLR(t, T_max=7,
                                                                        eta_min=0.01)),
    (lambda o: LinearWarmup(o, warmup_steps=4, start_factor=0.25),
     lambda t: __import__("torch").optim.lr_scheduler.LinearLR(t, start_factor=0.25,
                                                               total_iters=4)),
], ids=["StepLR", "CosineAnnealingLR", "LinearWarmup"])
def test_schedules_match_torch(make):
    torch = pytest.importorskip("torch")
    ours_make, theirs_make = make
    opt = SGD(make_params(), lr=0.3)
    topt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.3)
    ours, theirs = ours_make(opt), theirs_make(topt)
    for _ in range(12):
        assert ours.get_last_lr()[0] == pytest.approx(theirs.get_last_lr()[0], rel=1e-12)
        assert opt.lr == ours.get_last_lr()[0]
        topt.step()
        theirs.step()
        ours.step()


# -- by hand (no torch) ---------------------------------------------------------------

def test_sgd_momentum_by_hand():
    p = Parameter(np.array([1.0, -2.0]))
    opt = SGD([p], lr=0.1, momentum=0.9, weight_decay=0.5)
    theta, buf = p.value.copy(), None
    for g in ([1.0, 1.0], [0.0, 2.0], [-1.0, 0.5]):
        p.grad[...] = g
        d = np.array(g) + 0.5 * theta
        buf = d if buf is None else 0.9 * buf + d
        theta = theta - 0.1 * buf
        opt.step()
        np.testing.assert_allclose(p.value, theta, rtol=1e-15)
    assert opt.state["0"]["step"] == 3


def test_sgd_nesterov_by_hand():
    p = Parameter(np.array([0.0]))
    opt = SGD([p], lr=1.0, momentum=0.5, nesterov=True)
    p.grad[...] = 1.0
    opt.step()            # buf = 1, d = 1 + 0.5 * 1
    assert p.value[0] == -1.5
    opt.step()            # buf = 0.5 + 1 = 1.5, d = 1 + 0.75
    assert p.value[0] == -1.5 - 1.75


def test_adam_first_step_closed_form():
    g = np.array([0.3, -2.0, 1e-3])
    p = Parameter(np.array([1.0, 2.0, 3.0]))
    p.grad[...] = g
    Adam([p], lr=0.01, eps=1e-8).step()
    # m̂ = g and √v̂ = |g| after one step, so θ₁ = θ₀ - lr g / (|g| + eps)
    np.testing.assert_allclose(p.value, [1, 2, 3] - 0.01 * g / (np.abs(g) + 1e-8), rtol=1e-14)


def test_adamw_decay_is_decoupled_and_adam_is_not():
    p, q = Parameter(np.array([2.0])), Parameter(np.array([2.0]))
    AdamW([p], lr=0.1, weight_decay=0.5).step()       # zero grad: only θ (1 - γλ)
    assert p.value[0] == pytest.approx(2.0 * (1 - 0.05), rel=1e-15)
    Adam([q], lr=0.1, weight_decay=0.5).step()        # g = λθ = 1: a full Adam step
    assert q.value[0] == pytest.approx(2.0 - 0.1 * 1 / (1 + 1e-8), rel=1e-14)


def test_adagrad_and_rmsprop_first_steps():
    g = np.array([0.5, -4.0])
    p = Parameter(np.zeros(2))
    p.grad[...] = g
    Adagrad([p], lr=0.1).step()
    np.testing.assert_allclose(p.value, -0.1 * g / (np.abs(g) + 1e-10), rtol=1e-15)
    p = Parameter(np.zeros(2))
    p.grad[...] = g
    RMSprop([p], lr=0.01, alpha=0.99).step()
    np.testing.assert_allclose(p.value, -0.01 * g / (0.1 * np.abs(g) + 1e-8), rtol=1e-14)


def test_clip_grad_norm_by_hand():
    a, b = Parameter(np.zeros(1)), Parameter(np.zeros(1))
    a.grad[...], b.grad[...] = 3.0, -4.0
    assert clip_grad_norm_([a, b], 1.0) == 5.0
    np.testing.assert_allclose([a.grad[0], b.grad[0]], [3 / (5 + 1e-6), -4 / (5 + 1e-6)])
    a.grad[...], b.grad[...] = 3.0, -4.0
    assert clip_grad_norm_([a, b], 10.0) == 5.0                  # no clipping
    assert (a.grad[0], b.grad[0]) == (3.0, -4.0)
    assert clip_grad_norm_([a, b], 2.0, norm_type=math.inf) == 4.0
    np.testing.assert_allclose(b.grad, -4 * 2 / (4 + 1e-6))
    a.grad[...] = np.inf
    with pytest.raises(RuntimeError, match="cannot be clipped"):
        clip_grad_norm_([a, b], 1.0, error_if_nonfinite=True)


def test_clip_accepts_modules_pairs_and_arrays():
    layer = Linear(3, 2, dtype=np.float64, seed=0)
    layer.weight.grad[...] = 1.0
    assert clip_grad_norm_(layer, 1e9) == pytest.approx(math.sqrt(6))
    assert clip_grad_norm_(layer.named_parameters(), 1e9) == pytest.approx(math.sqrt(6))
    g = np.array([3.0, 4.0])
    assert clip_grad_value_(g, 3.5) == 5.0
    np.testing.assert_array_equal(g, [3.0, 3.5])
    with pytest.raises(TypeError, match="parameters must hold"):
        clip_grad_norm_(["x"], 1.0)
    with pytest.raises(ValueError, match="max_norm must be a number"):
        clip_grad_norm_(layer, -1.0)


# -- API ------------------------------------------------------------------------------

class TwoLayers(Module):
    def __init__(self):
        super().__init__()
        self.a = Linear(2, 3, dtype=np.float64, seed=0)
        self.b = Linear(3, 1, dtype=np.float64, seed=1)


@pytest.mark.parametrize("given", ["module", "named", "parameters", "dict"])
def test_param_forms(given):
    model = TwoLayers()
    params = {"module": model, "named": model.named_parameters(),
              "parameters": list(model.parameters()),
              "dict": dict(model.named_parameters())}[given]
    opt = SGD(params, lr=0.5)
    assert len(opt.params) == 4
    if given != "parameters":
        assert [n for n, _ in opt.params] == ["a.weight", "a.bias", "b.weight", "b.bias"]
    model.b.bias.grad[...] = 2.0
    before = model.b.bias.value.copy()
    opt.step()
    np.testing.assert_array_equal(model.b.bias.value, before - 1.0)
    opt.zero_grad()
    assert not any(p.grad.any() for p in model.parameters())


def test_lr_is_settable_and_value_updated_in_place():
    p = Parameter(np.ones(2))
    view = p.value
    opt = SGD([p], lr=1.0)
    opt.lr = 0.25
    p.grad[...] = 1.0
    opt.step()
    assert view is p.value and np.array_equal(view, [0.75, 0.75])


@pytest.mark.parametrize("cls,kwargs", CASES, ids=IDS)
def test_state_dict_round_trip_resumes_exactly(cls, kwargs):
    grads = grad_sequence(5, seed=9)
    params = make_params()
    opt = cls(params, **kwargs)
    run(opt, params, grads[:3])
    saved_values = [p.value.copy() for p in params]
    state = opt.state_dict()
    run(opt, params, grads[3:])
    # a fresh optimizer over fresh parameters, resumed from the saved state
    resumed = [Parameter(v) for v in saved_values]
    opt2 = cls(resumed, **{**kwargs, "lr": 123.0})
    opt2.load_state_dict(state)
    assert opt2.lr == kwargs.get("lr", opt.lr)
    run(opt2, resumed, grads[3:])
    for p, q in zip(params, resumed):
        np.testing.assert_array_equal(p.value, q.value)


def test_state_dict_is_a_copy_and_loads_from_lists():
    p = Parameter(np.ones(2))
    opt = Adam([p], lr=0.1)
    p.grad[...] = 1.0
    opt.step()
    state = opt.state_dict()
    opt.step()
    assert state["state"]["0"]["step"] == 1
    state["hyperparams"]["betas"] = list(state["hyperparams"]["betas"])   # as after JSON
    opt.load_state_dict(state)
    assert opt.betas == (0.9, 0.999) and opt.state["0"]["step"] == 1


def test_load_state_dict_errors_leave_optimizer_unchanged():
    p = Parameter(np.ones(2))
    opt = Adam([p], lr=0.1)
    p.grad[...] = 1.0
    opt.step()
    good = opt.state_dict()
    with pytest.raises(ValueError, match="state_dict is for 'SGD', not 'Adam'"):
        opt.load_state_dict(SGD([p], lr=1.0).state_dict())
    bad = opt.state_dict()
    bad["hyperparams"]["lr"] = 5.0
    bad["state"]["0"]["exp_avg"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"'0'/'exp_avg' must have shape \(2,\), got \(3,\)"):
        opt.load_state_dict(bad)
    assert opt.lr == 0.1
    bad = opt.state_dict()
    bad["hyperparams"]["amsgrad"] = True      # needs max_exp_avg_sq, which is absent
    with pytest.raises(ValueError, match="must have keys"):
        opt.load_state_dict(bad)
    assert opt.amsgrad is False
    bad = opt.state_dict()
    bad["state"]["nope"] = bad["state"]["0"]
    with pytest.raises(KeyError, match="nope"):
        opt.load_state_dict(bad)
    np.testing.assert_array_equal(opt.state["0"]["exp_avg"], good["state"]["0"]["exp_avg"])


def test_optimizer_errors():
    p = Parameter(np.ones(2))
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)
    with pytest.raises(ValueError, match="lr must be a number in"):
        Adam([p], lr=-1.0)
    with pytest.raises(ValueError, match=r"betas\[1\] must be a number in \[0.0, 1.0\)"):
        Adam([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0"):
        SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="same Parameter more than once"):
        SGD([p, p], lr=0.1)
    with pytest.raises(TypeError, match="position 0"):
        SGD([np.ones(2)], lr=0.1)
    with pytest.raises(ValueError, match="step_size must be a positive int"):
        StepLR(SGD([p], lr=0.1), step_size=0)
    with pytest.raises(TypeError, match="fastrnn Optimizer"):
        StepLR(object(), step_size=1)


def test_schedules_by_hand_and_state():
    opt = SGD([Parameter(np.ones(1))], lr=1.0)
    sched = CosineAnnealingLR(opt, T_max=4, eta_min=0.0)
    lrs = [sched.get_last_lr()[0]]
    for _ in range(4):
        sched.step()
        lrs.append(opt.lr)
    np.testing.assert_allclose(lrs, [1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5,
                                     (1 + math.cos(3 * math.pi / 4)) / 2, 0.0], atol=1e-15)
    opt = SGD([Parameter(np.ones(1))], lr=1.0)
    sched = StepLR(opt, step_size=2, gamma=0.1)
    for _ in range(5):
        sched.step()
    assert opt.lr == pytest.approx(0.01)
    state = sched.state_dict()
    opt2 = SGD([Parameter(np.ones(1))], lr=1.0)
    sched2 = StepLR(opt2, step_size=2, gamma=0.1)
    sched2.load_state_dict(state)
    assert opt2.lr == opt.lr
    opt = SGD([Parameter(np.ones(1))], lr=2.0)
    warm = LinearWarmup(opt, warmup_steps=4)
    seen = [opt.lr]
    for _ in range(5):
        warm.step()
        seen.append(opt.lr)
    np.testing.assert_allclose(seen, [0.5, 0.875, 1.25, 1.625, 2.0, 2.0])
