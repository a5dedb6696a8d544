"""The recurrent layers keep w_hh packed between calls: a stale pack must never be used.

Every way of changing a weight (``p[...] =``, ``p.value =``, an optimizer step,
``load_state_dict``, a new Parameter, another ISA level) is followed by a forward, a
backward and a step() whose results must equal a fresh module's with the same weights.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from fastrnn import _core
from fastrnn.nn.module import Parameter
from fastrnn.optim import SGD

CELLS = ("RNN", "LSTM", "GRU")


def build(cell, seed=0):
    return getattr(fastrnn, cell)(5, 17, num_layers=2, dtype=np.float64, seed=seed)


def results(module, x):
    """Forward, backward and two steps: every place a pack is read."""
    module.train()
    module.zero_grad()
    y, _ = module(x)
    module.backward(np.ones_like(y))
    grads = [p.grad.copy() for _, p in sorted(module.named_parameters(), key=lambda kv: kv[0])]
    out1, state = module.step(x[0])
    out2, _ = module.step(x[1], state)
    return [y, *grads, out1, out2]


def assert_fresh(module, x):
    """module's results equal those of a new module loaded with its current weights."""
    fresh = build(type(module).__name__, seed=99)
    fresh.load_state_dict(module.state_dict())
    for got, want in zip(results(module, x), results(fresh, x)):
        np.testing.assert_array_equal(got, want)


@pytest.fixture
def x():
    return np.random.default_rng(1).standard_normal((4, 3, 5))


def new_weight(module, name):
    rng = np.random.default_rng(7)
    return rng.standard_normal(getattr(module, name).shape) * 0.3


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("how", ["setitem", "assign", "optimizer", "load_state_dict",
                                 "new_parameter", "edit"])
def test_changed_weights_are_repacked(cell, how, x):
    module = build(cell)
    results(module, x)                          # packs made and cached
    name = "weight_hh_l1"
    value = new_weight(module, name)
    p = getattr(module, name)
    if how == "setitem":
        p[...] = value
    elif how == "assign":
        p.value = value
    elif how == "optimizer":
        p.grad[...] = 1.0
        SGD([p], lr=0.5).step()
    elif how == "load_state_dict":
        module.load_state_dict({name: value}, strict=False)
    elif how == "new_parameter":
        setattr(module, name, Parameter(value))
    else:
        p.edit()[0, 0] += 1.0
    assert_fresh(module, x)


def test_in_place_writes_into_value_are_refused():
    module = build("LSTM")
    with pytest.raises(ValueError, match="read-only"):
        module.weight_hh_l0.value[0, 0] = 1.0


@pytest.mark.skipif(len(_core.available_isas()) < 2, reason="one ISA level only")
def test_another_isa_level_repacks(x):
    module = build("GRU")
    want = results(module, x)
    previous = _core.get_isa()
    _core.set_isa("portable")
    try:
        got = results(module, x)
    finally:
        _core.set_isa(previous)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_unchanged_weights_reuse_the_pack(x):
    module = build("LSTM")
    results(module, x)
    first = module._packs(0, 0, True)
    results(module, x)
    assert module._packs(0, 0, True) is first


@pytest.mark.parametrize("cell", ["RNNCell", "LSTMCell", "GRUCell"])
def test_cells_repack_after_a_change(cell):
    """The cells' inference step reads a kept pack too; a changed weight is repacked."""
    rng = np.random.default_rng(3)
    module = getattr(fastrnn, cell)(4, 9, dtype=np.float64, seed=0).eval()
    x = rng.standard_normal((2, 4))
    module(x)
    module.weight_hh[...] = rng.standard_normal(module.weight_hh.shape)
    fresh = getattr(fastrnn, cell)(4, 9, dtype=np.float64, seed=5).eval()
    fresh.load_state_dict(module.state_dict())
    got, want = module(x), fresh(x)
    for a, b in zip(got if isinstance(got, tuple) else (got,),
                    want if isinstance(want, tuple) else (want,)):
        np.testing.assert_array_equal(a, b)
