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
    """A context manager that sets this thread's flags on entry and restores them on exit
    (None: leave that flag as it is); also a decorator (each call of the decorated function
    runs inside the switch)."""

    def __init__(self, grad_enabled: bool | None, inference: bool | None = None):
        self._grad_enabled = grad_enabled
        self._inference = inference
        self._local = threading.local()   # one object may be entered by several threads

    @property
    def _saved(self) -> list:
        """This thread's stack of flags to restore (the object may be re-entered)."""
        return self._local.__dict__.setdefault("stack", [])

    def __enter__(self):
        self._saved.append((_state.grad_enabled, _state.inference))
        if self._grad_enabled is not None:
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
        switch = self._as_decorator()

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            with switch:
                return function(*args, **kwargs)
        return wrapper

    def _as_decorator(self) -> "_Switch":
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _check_mode(function: str, mode) -> bool:
    if not isinstance(mode, bool) and type(mode).__name__ != "bool_":
        raise TypeError(f"{function}(mode) needs True or False, got {mode!r}")
    return bool(mode)


class no_grad(_Switch):  # noqa: N801 (PyTorch's name)
    """Context manager / decorator: forwards inside keep nothing for backward (fast path)."""

    def __init__(self):
        super().__init__(False)


class enable_grad(_Switch):  # noqa: N801
    """Context manager / decorator: grad enabled again inside a ``no_grad`` block."""

    def __init__(self):
        super().__init__(True)


class inference_mode(_Switch):  # noqa: N801
    """``no_grad`` under PyTorch's name; ``inference_mode(False)`` leaves grad mode as it
    is (as in PyTorch)."""

    def __init__(self, mode: bool = True):
        mode = _check_mode("inference_mode", mode)
        super().__init__(False if mode else None, mode)


class set_grad_enabled(_Switch):  # noqa: N801
    """``set_grad_enabled(False)`` switches grad mode at once in this thread; used as a
    context manager (``with set_grad_enabled(False):``) it restores the previous mode on
    exit, and as a decorator it leaves the caller's mode alone, as in PyTorch."""

    def __init__(self, mode: bool):
        super().__init__(_check_mode("set_grad_enabled", mode))
        self._previous = (_state.grad_enabled, _state.inference)
        _state.grad_enabled = self._grad_enabled

    def __enter__(self):
        # The mode is already set by the constructor; restore the one before it on exit.
        self._saved.append(self._previous)
        return None

    def _as_decorator(self) -> "_Switch":
        _state.grad_enabled, _state.inference = self._previous   # undo the constructor
        return _Switch(self._grad_enabled)
