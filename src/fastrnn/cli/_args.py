"""argparse value types: each names what it expects, so errors read
``argument --hidden: expected an integer >= 1, got '0'`` (exit status 2)."""
from __future__ import annotations

import argparse
import math
from typing import Callable


def _number(kind, text: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _bounded(kind, accept: Callable[[float], bool], expected: str, name: str):
    """A type function: ``kind(text)`` that ``accept`` takes, else 'expected <expected>'."""
    def parse(text: str):
        value = _number(kind, text)
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    parse.__name__ = name   # argparse names it in its own messages
    return parse


positive_int = _bounded(int, lambda v: v >= 1, "an integer >= 1", "positive_int")
nonnegative_int = _bounded(int, lambda v: v >= 0, "an integer >= 0", "nonnegative_int")
positive_float = _bounded(float, lambda v: v > 0, "a number > 0", "positive_float")
nonnegative_float = _bounded(float, lambda v: v >= 0, "a number >= 0", "nonnegative_float")
fraction = _bounded(float, lambda v: 0 <= v < 1, "a number in [0, 1)", "fraction")


def clip(text: str):
    """A max gradient norm > 0, or 0 / 'none' for no clipping (None)."""
    if text.strip().lower() in ("none", "off", "0", "0.0"):
        return None
    return positive_float(text)
