"""Packed recurrent weights and C steppers kept between calls (see fastrnn.ops.pack_weights).

A module that runs the same ``w_hh`` for many calls (every streaming step, every batch
between two optimizer steps) packs it once into the kernels' panel layout. The pack is
remade when it could be stale: another Parameter object, a new ``Parameter.version`` (every
sanctioned change of a value bumps it; ``Parameter.value`` is read-only), another ISA level,
or a training call that needs the backward pack as well.
"""
from __future__ import annotations

from .. import _core, ops
from .module import Module, Parameter


def cached_packs(owner: Module, key, w_hh: Parameter, cell: str, options: dict,
                 backward: bool) -> ops.Packs:
    """The packs of ``w_hh`` for ``cell`` kept on ``owner`` under ``key``, remade if stale."""
    cache = owner.__dict__.setdefault("_pack_cache", {})
    isa = _core.get_isa()
    entry = cache.get(key)
    if (entry is None or entry[0] is not w_hh or entry[1] != w_hh.version or
            entry[2] != isa or (backward and entry[3].backward is None)):
        packs = ops.pack_weights(cell, w_hh.value, backward=backward, **options)
        entry = cache[key] = (w_hh, w_hh.version, isa, packs)
    return entry[3]


def cached_stepper(owner: Module, kind: str, layers, input_size: int, hidden_size: int,
                   convert) -> _core.Stepper:
    """The C stepper over ``layers()`` (per layer ``(w_ih, w_hh, b_ih, b_hh, pack)``, flat
    contiguous arrays) kept on ``owner``; rebuilt only after any Parameter changed
    (``Parameter.changes``) or the ISA level moved, so a streaming loop pays for neither."""
    key = (Parameter.changes, _core.get_isa())
    entry = owner.__dict__.get("_stepper_entry")
    if entry is None or entry[0] != key:
        stepper = _core.Stepper(kind, layers(), owner.dtype, input_size, hidden_size, convert)
        entry = owner.__dict__["_stepper_entry"] = (key, stepper)
    return entry[1]
