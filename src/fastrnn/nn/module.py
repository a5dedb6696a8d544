"""Parameters and the Module base class (the torch.nn.Module habits, in NumPy).

A :class:`Module` owns :class:`Parameter` objects (a value and its gradient) and child
modules, set as attributes. It runs ``forward`` when called and ``backward`` when asked:
there is no autograd, each module caches what its own backward needs during a forward with
grad enabled (see :mod:`fastrnn.grad_mode`; ``train()``/``eval()`` switch only dropout).
Gradients accumulate into ``Parameter.grad`` until ``zero_grad()``.

PyTorch habits that work: ``.to(torch.float64)`` / ``.to("float64")`` / ``.double()`` /
``.float()`` cast every parameter in place and return the module; ``.to("cpu")`` and
``.cpu()`` are no-ops (fastrnn runs on the CPU; another device raises ``ValueError``);
``state_dict(format="torch")`` gives tensors that ``torch.nn.LSTM.load_state_dict`` takes
(torch refuses NumPy arrays).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterator, Tuple

import numpy as np

from .._common import check_device, split_precision


class Parameter:
    """A trainable array and its gradient (same shape and dtype, accumulated by backward).

    ``version`` counts changes of the value, like ``torch.Tensor._version``, so whatever is
    derived from the value (the recurrent layers' packed weights) knows when to be rebuilt.
    NumPy cannot see writes into an array's memory, so ``p.value`` is a read-only view (as
    PyTorch refuses in-place changes of a leaf that requires grad); change the value with
    ``p[...] = new`` or ``p.value = new``, or write into the array that ``p.edit()``
    returns. Each of these, optimizer steps and ``load_state_dict`` bump the version.
    """

    __slots__ = ("_value", "_view", "grad", "version")
    changes = 0  # bumped with every version of every Parameter: one cheap "anything changed?"

    def __init__(self, value: np.ndarray):
        self._set(value)
        self.grad = np.zeros_like(self._value)
        self.version = 0

    def _set(self, value) -> None:
        self._value = np.array(value, order="C")  # its own memory, never the caller's
        self._view = self._value.view()
        self._view.flags.writeable = False

    @property
    def value(self) -> np.ndarray:
        """The value, read-only (see the class docstring)."""
        return self._view

    @value.setter
    def value(self, new) -> None:
        self._set(new)
        self.bump_version()

    def __getitem__(self, index):
        return self._value[index]

    def __setitem__(self, index, new) -> None:
        self._value[index] = new
        self.bump_version()

    def edit(self) -> np.ndarray:
        """The writeable value array, for changing it in place; bumps the version first."""
        self.bump_version()
        return self._value

    def __deepcopy__(self, memo) -> "Parameter":
        """A copy whose read-only view looks at its own value (copying the two slots apart
        would leave the view on a stale copy)."""
        new = Parameter.__new__(Parameter)
        new._set(self._value)
        new.grad = self.grad.copy()
        new.version = self.version
        memo[id(self)] = new
        return new

    def bump_version(self) -> None:
        """Record that the value changed (in place by hand: see the class docstring)."""
        self.version += 1
        Parameter.changes += 1

    @property
    def shape(self):
        return self.value.shape

    @property
    def dtype(self):
        return self.value.dtype

    def __repr__(self) -> str:
        return f"Parameter(shape={self.value.shape}, dtype={self.value.dtype})"


def _is_device(value) -> bool:
    """A torch.device, or a string naming a device rather than a dtype."""
    if type(value).__name__ == "device" and type(value).__module__ == "torch":
        return True
    return isinstance(value, str) and value.split(":", 1)[0].strip().lower() in (
        "cpu", "cuda", "mps", "xpu", "meta", "hip", "xla", "ipu", "vulkan", "mkldnn")


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


class Module:
    """Base class: parameters and children are found from attributes, in set order."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(
                f"{type(self).__name__}.__init__ must call super().__init__() first")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        object.__delattr__(self, name)

    # -- calling ---------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError

    def backward(self, *args, **kwargs):
        raise NotImplementedError

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # -- traversal -------------------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[Tuple[str, "Module"]]:
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix: str = "") -> Iterator[Tuple[str, Parameter]]:
        """(name, Parameter) pairs; ``p.value`` is the array, ``p.grad`` its gradient."""
        for module_name, module in self.named_modules(prefix):
            for name, parameter in module._parameters.items():
                yield (f"{module_name}.{name}" if module_name else name), parameter

    def parameters(self) -> Iterator[Parameter]:
        for _, parameter in self.named_parameters():
            yield parameter

    def children(self) -> Iterator["Module"]:
        yield from self._modules.values()

    # -- modes and gradients ---------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        for _, module in self.named_modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self) -> None:
        for parameter in self.parameters():
            parameter.grad[...] = 0

    # -- dtype and device (PyTorch's spellings) ----------------------------------------
    def to(self, *args, dtype=None, device=None) -> "Module":
        """Cast every parameter (and its gradient) to ``dtype``, in place; returns self.

        As ``torch.nn.Module.to``: ``to(dtype)``, ``to(device)``, ``to(device, dtype)`` or
        keywords; ``dtype`` float32 or float64 in any spelling (``torch.float64``,
        ``"float64"``, ``np.float64``); ``device`` must be the CPU. A cast drops what the
        last forward kept for backward (it belongs to the old dtype).

        ``"bfloat16"`` (or ``torch.bfloat16``) keeps float32 parameters and switches the
        recurrent layers to bf16 products (``precision="bfloat16"``, see
        :mod:`fastrnn.ops`): inference, and mixed-precision training (bf16 forward
        products, float32 backward, gradients and optimizer); any other dtype switches
        them back to full precision.
        """
        if len(args) > 2:
            raise TypeError(f"to() takes at most 2 positional arguments, got {len(args)}")
        for arg in args:
            if _is_device(arg):
                device = arg
            elif dtype is None:
                dtype = arg
            else:
                raise TypeError(f"to() got two dtypes: {dtype!r} and {arg!r}")
        check_device(device)
        if dtype is not None:
            dtype, precision = split_precision(dtype)
            self._cast(dtype)
            for _, module in self.named_modules():
                if "precision" in module.__dict__:
                    object.__setattr__(module, "precision", precision)
        return self

    def float(self) -> "Module":
        """Cast every parameter to float32 (see :meth:`to`)."""
        return self.to(np.float32)

    def double(self) -> "Module":
        """Cast every parameter to float64 (see :meth:`to`)."""
        return self.to(np.float64)

    def cpu(self) -> "Module":
        """A no-op returning self: fastrnn's modules live on the CPU."""
        return self

    def cuda(self, device=None) -> "Module":
        raise ValueError("fastrnn runs on the CPU only: there is no cuda(); the modules "
                         "already run on the CPU")

    def _cast(self, dtype: np.dtype) -> None:
        for _, module in self.named_modules():
            for parameter in module._parameters.values():
                if parameter.value.dtype != dtype:
                    parameter.value = parameter.value.astype(dtype)
                    parameter.grad = parameter.grad.astype(dtype)
            module._drop_tape()
            module._set_dtype(dtype)

    def _set_dtype(self, dtype: np.dtype) -> None:
        """Record a new dtype after a cast (modules that keep a ``dtype`` attribute)."""
        if "dtype" in self.__dict__:
            object.__setattr__(self, "dtype", dtype)

    def _drop_tape(self) -> None:
        """Forget what the last forward kept for backward (overridden where there is any)."""

    # -- state -----------------------------------------------------------------------
    def state_dict(self, format: str = "numpy") -> "OrderedDict[str, np.ndarray]":
        """Copies of every parameter value, by name.

        ``format="numpy"`` (default): NumPy arrays. ``format="torch"``: torch tensors, which
        the PyTorch module of the same architecture loads directly
        (``torch.nn.LSTM(...).load_state_dict(lstm.state_dict(format="torch"))``; torch
        refuses NumPy arrays). Needs torch installed.
        """
        if format not in ("numpy", "torch"):
            raise ValueError(f"format must be 'numpy' or 'torch', got {format!r}")
        state = OrderedDict((name, p.value.copy()) for name, p in self.named_parameters())
        if format == "numpy":   # e.g. int8 weights and scales of a quantized layer
            for prefix, module in self.named_modules():
                for name, value in module._extra_state().items():
                    state[f"{prefix}.{name}" if prefix else name] = value.copy()
        if format == "torch":
            try:
                import torch
            except ImportError:
                raise ImportError("state_dict(format='torch') needs PyTorch: "
                                  "pip install torch") from None
            state = OrderedDict((name, torch.from_numpy(v)) for name, v in state.items())
        return state

    def load_state_dict(self, state_dict, strict: bool = True) -> None:
        """Copy values in by name (NumPy arrays or torch tensors).

        Every key is checked before anything is written, so a failed load leaves the
        module unchanged. With ``strict`` a missing or unexpected key raises ``KeyError``
        naming it; a wrong shape raises ``ValueError`` naming the key and both shapes.
        """
        own = dict(self.named_parameters())
        incoming = {name: _to_numpy(value) for name, value in state_dict.items()}
        extra = self._claim_extra_state(incoming)
        missing = [name for name in own if name not in incoming]
        claimed = {key for _, _, keys in extra for key in keys}
        unexpected = [name for name in incoming if name not in own and name not in claimed]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        for name, value in incoming.items():
            if name in own and value.shape != own[name].shape:
                raise ValueError(f"load_state_dict: {name} must have shape "
                                 f"{own[name].shape}, got {value.shape}")
        for name, value in incoming.items():
            if name in own:
                own[name][...] = value.astype(own[name].dtype, copy=False)
        for module, arrays, _ in extra:
            module._load_extra_state(arrays)

    def _claim_extra_state(self, incoming: dict) -> list:
        """``(module, {name: array}, full keys)`` for each module that claims keys of
        ``incoming`` as its extra state (checked before anything is written)."""
        claims = []
        for prefix, module in self.named_modules():
            lead = f"{prefix}." if prefix else ""
            mine = {key[len(lead):]: value for key, value in incoming.items()
                    if key.startswith(lead) and module._is_extra_key(key[len(lead):])}
            if mine:
                module._check_extra_state(mine)
                claims.append((module, mine, {lead + name for name in mine}))
        return claims

    # -- extra state: arrays beside the parameters (int8 weights; see nn.recurrent) -----
    def _extra_state(self) -> dict:
        """Arrays this module adds to its state_dict (none by default)."""
        return {}

    def _is_extra_key(self, name: str) -> bool:
        return False

    def _check_extra_state(self, arrays: dict) -> None:
        """Raise for extra state this module cannot load (names without its prefix)."""

    def _load_extra_state(self, arrays: dict) -> None:
        """Take the extra state claimed by _is_extra_key (names without the prefix)."""

    def num_parameters(self) -> int:
        return sum(p.value.size for p in self.parameters())

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self._modules.items():
            lines.append(f"  ({name}): " + repr(child).replace("\n", "\n  "))
        return lines[0] + (")" if len(lines) == 1 else "\n" + "\n".join(lines[1:]) + "\n)")
