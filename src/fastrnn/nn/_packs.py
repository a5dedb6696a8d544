"""Packed recurrent weights and C steppers kept between calls (see fastrnn.ops.pack_weights).

A module that runs the same ``w_hh`` for many calls (every streaming step, every batch
between two optimizer steps) packs it once into the kernels' panel layout. The pack is
remade when it could be stale: another Parameter object, a new ``Parameter.version`` (every
sanctioned change of a value bumps it; ``Parameter.value`` is read-only), another ISA level,
or a training call that needs the backward pack as well.
"""
from __future__ import annotations

from .. import _core, ops
from .._common import TRAINABLE_PRECISIONS
from .module import Module, Parameter


def cached_packs(owner: Module, key, w_hh: Parameter, cell: str, options: dict,
                 backward: bool, w_ih: Parameter = None, precision: str = "float32",
                 quantized=None) -> ops.Packs:
    """The packs of ``w_hh`` for ``cell`` kept on ``owner`` under ``key``, remade if stale.
    A bfloat16 or int8 pack holds ``w_ih`` too (its Parameter and version are then
    checked); an int8 pack is made from ``quantized`` ((q_ih, s_ih), (q_hh, s_hh)). For a
    training forward (``backward``) a float32 or bfloat16 pack has the float32 backward
    pack too (bf16 training's backward runs float32): made once per optimizer step, as the
    bf16 copies of the weights are."""
    cache = owner.__dict__.setdefault("_pack_cache", {})
    isa = _core.get_isa()
    entry = cache.get(key)
    reduced = precision != "float32"
    trains = precision in TRAINABLE_PRECISIONS     # has a backward
    stamp = (w_hh, w_hh.version, isa, precision, w_ih if reduced else None,
             w_ih.version if reduced else None, quantized)
    if (entry is None or entry[0] is not w_hh or entry[1:4] != stamp[1:4] or
            entry[4] is not stamp[4] or entry[5] != stamp[5] or entry[6] is not quantized or
            (backward and entry[-1].backward is None and trains)):
        packs = ops.pack_weights(cell, w_hh.value, backward=backward and trains,
                                 precision=precision, w_ih=w_ih.value if reduced else None,
                                 quantized=quantized, **options)
        entry = cache[key] = (*stamp, packs)
    return entry[-1]


def cached_stepper(owner: Module, kind: str, layers, input_size: int, hidden_size: int,
                   convert) -> _core.Stepper:
    """The C stepper over ``layers()`` (per layer ``(w_ih, w_hh, b_ih, b_hh, pack)``, flat
    contiguous arrays) kept on ``owner``; rebuilt only after any Parameter changed
    (``Parameter.changes``), the ISA level or the owner's precision moved, so a streaming
    loop pays for none of them."""
    stepper = current_stepper(owner)
    if stepper is None:
        stepper = _core.Stepper(kind, layers(), owner.dtype, input_size, hidden_size, convert)
        owner.__dict__["_stepper_entry"] = (_stepper_key(owner), stepper)
    return stepper


def _stepper_key(owner: Module):
    return Parameter.changes, _core.get_isa(), getattr(owner, "precision", "float32")


def current_stepper(owner: Module):
    """The stepper kept on ``owner`` if nothing it was built from has changed, else None:
    the cheap check a streaming ``step()`` makes first (a dict lookup and a tuple)."""
    entry = owner.__dict__.get("_stepper_entry")
    return entry[1] if entry is not None and entry[0] == _stepper_key(owner) else None
