"""The parameters of the recurrent layers (:mod:`fastrnn.nn.recurrent`), as a mixin.

:class:`_ParametersMixin` gives :class:`~fastrnn.nn._recurrent_base._RecurrentBase` its
parameters' names, shapes and initialisation ('pytorch' or 'keras'), the packed ``w_hh``
the kernels read (made and kept by :mod:`._packs`), and int8 quantization
(``fastrnn.quantize_dynamic``) with its extra state: the int8 values and float32 row
scales that ``state_dict`` carries beside the Parameters.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .. import ops, reference
from .._common import check_memory
from ._packs import cached_packs
from ._recurrent_helpers import _glorot_uniform, _orthogonal
from .module import Module, Parameter

_WEIGHT_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


class _ParametersMixin(Module):
    """Parameters, initialisation, packs and int8 state of :class:`_RecurrentBase`.

    The attributes declared here (for the type checker) are set by
    ``_RecurrentBase.__init__`` or are its and the cells' class attributes.
    """

    _gates: int
    _state_names: tuple
    _forget_gate: Optional[int]
    _LAYER_NORM: tuple
    _cell: str
    layer_norm: bool
    input_size: int
    hidden_size: int
    num_layers: int
    bias: bool
    bidirectional: bool
    init: str
    dtype: np.dtype
    precision: str
    _int8: dict
    _rng: np.random.Generator
    _param_names: list

    # -- parameters ----------------------------------------------------------------------
    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def _out_size(self) -> int:
        """Size of h and of each direction's output: hidden_size (LSTM: proj_size if set)."""
        return self.hidden_size

    @property
    def _state_sizes(self) -> tuple:
        """Size of each state in _state_names (LSTM with proj_size: h P, c H)."""
        return tuple(self.hidden_size for _ in self._state_names)

    def _param(self, kind: str, layer: int, direction: int) -> Parameter:
        """The Parameter ``{kind}_l{layer}[_reverse]``."""
        return getattr(self, f"{kind}_l{layer}{'_reverse' if direction else ''}")

    def _names(self, layer: int, direction: int):
        """Torch's parameter names for one layer and direction (biases only with bias)."""
        return self._param_names[layer][direction]

    def _kinds(self, fan_in: int) -> list:
        """``(kind, shape)`` of one layer and direction's parameters, in torch's order (a
        variant appends its own)."""
        G, H = self._gates, self.hidden_size
        shapes = [(G * H, fan_in), (G * H, self._out_size), (G * H,), (G * H,)]
        kinds = list(zip(_WEIGHT_KINDS, shapes))[:4 if self.bias else 2]
        if self.layer_norm:
            kinds += [(kind, (units * H,)) for kind, units in self._LAYER_NORM]
        return kinds

    def _create_parameters(self) -> None:
        """Register parameters in torch's order, so state_dict() keys come out identical."""
        G, H = self._gates, self.hidden_size
        D, L = self.num_directions, self.num_layers
        # Checked before anything is made (num_layers=2**31 would otherwise grow until the
        # machine runs out): the parameters, and the float64 values that initialise them.
        count = D * G * H * ((self.input_size + H + 2) + (L - 1) * (D * H + H + 2))
        check_memory(f"{type(self).__name__}({self.input_size}, {H}, num_layers={L}) "
                     f"parameters", count * (self.dtype.itemsize + 8))
        self._param_names = []
        for layer in range(self.num_layers):
            fan_in = self.input_size if layer == 0 else self.num_directions * self._out_size
            kinds = self._kinds(fan_in)
            self._param_names.append([])
            for direction in range(self.num_directions):
                suffix = f"_l{layer}{'_reverse' if direction else ''}"
                self._param_names[layer].append([kind + suffix for kind, _ in kinds])
                for name, (_, shape) in zip(self._names(layer, direction), kinds):
                    setattr(self, name, Parameter(np.zeros(shape, self.dtype)))

    def reset_parameters(self) -> None:
        """Fill the parameters from the module's RNG following ``self.init``.

        'pytorch': every parameter U(-1/sqrt(H), 1/sqrt(H)). 'keras': input weights
        Glorot-uniform over the Keras kernel (I, G*H), recurrent weights orthogonal over the
        Keras recurrent kernel (H, G*H), zero biases, and the LSTM forget-gate bias 1 (in
        ``bias_ih``). Both Keras kernels are stored transposed (PyTorch layout).
        """
        bound = 1.0 / np.sqrt(self.hidden_size)
        for name, p in self.named_parameters():
            if self.init == "pytorch":
                value = self._rng.uniform(-bound, bound, p.shape)
            else:
                value = self._keras_value(name, p.shape)
            p[...] = value
        for name, p in self.named_parameters():   # layer norm: gains 1, shifts 0
            if name.startswith("ln_"):
                p[...] = 0.0 if name.startswith("ln_bias") else 1.0

    def _keras_value(self, name: str, shape) -> np.ndarray:
        rows, H = shape[0], self.hidden_size
        if name.startswith("weight_ih"):
            return _glorot_uniform(self._rng, shape[1], rows).T
        if name.startswith("weight_hh"):
            return _orthogonal(self._rng, shape[1], rows).T
        if name.startswith("weight_hr"):     # the projection, a dense kernel (H, P)
            return _glorot_uniform(self._rng, shape[1], rows).T
        value = np.zeros(shape)
        if name.startswith("bias_ih") and self._forget_gate is not None:
            value[self._forget_gate * H:(self._forget_gate + 1) * H] = 1.0
        return value

    def _weights(self, layer: int, direction: int):
        """(w_ih, w_hh, b_ih, b_hh) arrays of one layer and direction; None without bias."""
        names = self._names(layer, direction)[:4 if self.bias else 2]
        values = [getattr(self, name).value for name in names]
        return tuple(values) if self.bias else (*values, None, None)

    def _params(self, layer: int, direction: int):
        return [getattr(self, name) for name in self._names(layer, direction)]

    def _packs(self, layer: int, direction: int, training: bool) -> ops.Packs:
        """w_hh of one layer and direction packed for the kernels, made once and kept until
        the weight changes (its Parameter, its version, the ISA level or dtype differ) or a
        training forward needs the backward pack too."""
        w_ih, w_hh = self._params(layer, direction)[:2]
        quantized = (self._int8[layer, direction] if self.precision == "int8" else None)
        return cached_packs(self, (layer, direction), w_hh, self._cell, self._cell_options(),
                            training, w_ih, self.precision, quantized)

    def _cell_options(self) -> dict:
        return {}

    def _packs_or_none(self, layer: int, direction: int, training: bool):
        """No packs for the layer-normalised kernels (they make their own, in float32: a
        reduced precision is refused rather than silently run in float32)."""
        if not self.layer_norm:
            return self._packs(layer, direction, training)
        if self.precision != "float32":
            raise ValueError(f"precision={self.precision!r} does not support layer_norm yet; "
                             "convert the layer with .to('float32')")
        return None

    # -- int8 (fastrnn.quantize_dynamic) ---------------------------------------------------
    _INT8_SUFFIXES = (".int8", ".scale")

    def _quantize(self) -> None:
        """Switch to int8 inference: each weight_ih/hh quantized per row (reference.
        quantize_rows) and kept as int8 values with float32 row scales; the Parameters
        then hold the values those stand for (q * s), so every path sees one weight."""
        self._int8 = {}
        for layer in range(self.num_layers):
            for direction in range(self.num_directions):
                pair = []
                for p in self._params(layer, direction)[:2]:
                    q, scale = reference.quantize_rows(p.value)
                    p[...] = q * scale[:, None]
                    pair.append((q, scale))
                self._int8[layer, direction] = tuple(pair)
        object.__setattr__(self, "precision", "int8")

    def _int8_names(self):
        """((layer, direction), weight name, 0 or 1) for each quantized weight."""
        for layer in range(self.num_layers):
            for direction in range(self.num_directions):
                for i, name in enumerate(self._names(layer, direction)[:2]):
                    yield (layer, direction), name, i

    def _extra_state(self) -> dict:
        if self.precision != "int8":
            return {}
        state = {}
        for key, name, i in self._int8_names():
            q, scale = self._int8[key][i]
            state[name + ".int8"], state[name + ".scale"] = q, scale
        return state

    def _is_extra_key(self, name: str) -> bool:
        return name.endswith(self._INT8_SUFFIXES) and "." not in name[:name.rindex(".")]

    def _check_extra_state(self, arrays: dict) -> None:
        for key, name, i in self._int8_names():
            shape = getattr(self, name).shape
            for suffix, want, dtype in ((".int8", shape, np.int8),
                                        (".scale", shape[:1], np.float32)):
                value = arrays.get(name + suffix)
                if value is None or value.shape != want or value.dtype != dtype:
                    raise ValueError(f"load_state_dict: int8 state {name + suffix} must be "
                                     f"{np.dtype(dtype)} of shape {want}, got "
                                     f"{None if value is None else (value.dtype, value.shape)}")

    def _load_extra_state(self, arrays: dict) -> None:
        self._int8 = {}
        for key, name, i in self._int8_names():
            self._int8.setdefault(key, [None, None])[i] = (arrays[name + ".int8"].copy(),
                                                           arrays[name + ".scale"].copy())
        self._int8 = {key: tuple(pair) for key, pair in self._int8.items()}
        object.__setattr__(self, "precision", "int8")
