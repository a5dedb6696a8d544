"""Grad mode: whether a forward keeps what backward needs (PyTorch's ``no_grad``).

Two switches, as in PyTorch, decide what a module does:

* ``module.train()`` / ``module.eval()`` switch dropout only.
* Grad mode, switched by :func:`no_grad`, :func:`inference_mode` and
  :func:`set_grad_enabled`, decides whether a forward keeps its tape (the kernel caches,
  dropout masks, layer inputs) for ``backward``. With grad disabled the forward takes the
  fast inference path of the kernels: nothing is saved, and a ``backward`` that follows
  raises ``RuntimeError``.

Grad mode is per thread (a new thread starts with grad enabled), so threads can run a
shared model under ``no_grad`` while another thread trains. Each switch is a context
manager and a decorator::

    with fastrnn.no_grad():
        y, h_n = lstm(x)              # nothing kept; lstm.backward(...) would raise

    @fastrnn.no_grad()
    def predict(x): ...

``inference_mode`` is ``no_grad`` here (fastrnn has no tensor version counters to skip);
it exists so code written for PyTorch reads the same.
"""
from __future__ import annotations

import functools
import threading

__all__ = ["no_grad", "enable_grad", "inference_mode", "set_grad_enabled",
           "is_grad_enabled", "is_inference_mode_enabled"]


class _State(threading.local):
    """Per-thread flags; each new thread sees the class defaults."""

    grad_enabled = True
    inference = False


_state = _State()


def is_grad_enabled() -> bool:
    """True when forwards in this thread keep what backward needs (the default)."""
    return _state.grad_enabled


def is_inference_mode_enabled() -> bool:
    """True inside :func:`inference_mode` in this thread."""
    return _state.inference


class _Switch:
    """A context manager that sets this thread's flags on entry and restores them on exit;
    also a decorator (each call of the decorated function runs inside the switch)."""

    def __init__(self, grad_enabled: bool, inference: bool | None = None):
        self._grad_enabled = bool(grad_enabled)
        self._inference = inference
        self._saved = []   # a stack: the same object may be entered again while inside

    def __enter__(self):
        self._saved.append((_state.grad_enabled, _state.inference))
        _state.grad_enabled = self._grad_enabled
        if self._inference is not None:
            _state.inference = self._inference
        return None

    def __exit__(self, *exc_info) -> bool:
        _state.grad_enabled, _state.inference = self._saved.pop()
        return False

    def __call__(self, function):
        if not callable(function):
            raise TypeError(f"{type(self).__name__} decorates a function, got {function!r}")

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            with self._fresh():
                return function(*args, **kwargs)
        return wrapper

    def _fresh(self) -> "_Switch":
        """A new switch with the same settings (a decorated function may run in several
        threads at once; each call needs its own saved flags)."""
        clone = object.__new__(type(self))
        _Switch.__init__(clone, self._grad_enabled, self._inference)
        return clone

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class no_grad(_Switch):  # noqa: N801 (PyTorch's name)
    """Context manager / decorator: forwards inside keep nothing for backward (fast path)."""

    def __init__(self):
        super().__init__(False)


class enable_grad(_Switch):  # noqa: N801
    """Context manager / decorator: grad enabled again inside a ``no_grad`` block."""

    def __init__(self):
        super().__init__(True)


class inference_mode(_Switch):  # noqa: N801
    """``no_grad`` under PyTorch's name; ``inference_mode(False)`` is a no-op switch."""

    def __init__(self, mode: bool = True):
        if not isinstance(mode, bool):
            raise TypeError(f"inference_mode(mode) needs True or False, got {mode!r}")
        self.mode = mode
        if mode:
            super().__init__(False, True)
        else:
            super().__init__(is_grad_enabled(), False)

    def __enter__(self):
        if not self.mode:   # keep the grad mode in force at entry, as PyTorch does
            self._grad_enabled = is_grad_enabled()
        return super().__enter__()

    def _fresh(self) -> "_Switch":
        return inference_mode(self.mode)


class set_grad_enabled(_Switch):  # noqa: N801
    """``set_grad_enabled(False)`` switches grad mode at once in this thread; used as a
    context manager (``with set_grad_enabled(False):``) it restores the previous mode on
    exit, as in PyTorch."""

    def __init__(self, mode: bool):
        if not isinstance(mode, (bool,)) and type(mode).__name__ != "bool_":
            raise TypeError(f"set_grad_enabled(mode) needs True or False, got {mode!r}")
        super().__init__(bool(mode))
        self._previous = (_state.grad_enabled, _state.inference)
        _state.grad_enabled = bool(mode)

    def __enter__(self):
        # The mode is already set by the constructor; restore the one before it on exit.
        self._saved.append(self._previous)
        return None

    def _fresh(self) -> "_Switch":
        return _Switch(self._grad_enabled)

    def __call__(self, function):
        # As a decorator the constructor must not have switched the caller's mode.
        _state.grad_enabled, _state.inference = self._previous
        return super().__call__(function)
