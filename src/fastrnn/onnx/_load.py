"""``load``: an ONNX graph of ``RNN``/``LSTM``/``GRU`` nodes, run by fastrnn modules.

Each recurrent node becomes a one-layer fastrnn module built by
:func:`fastrnn.convert.from_onnx` (gate orders and bias split converted there); the nodes
between them may be shape-only ops (Transpose, Reshape, Squeeze, Unsqueeze, Concat, Slice,
Cast, Identity, Constant), computed with NumPy, which is what a stacked export holds. The
node semantics handled here, beyond ``from_onnx``::

    layout 1         X (B, T, I), initial_h/c (B, D, H), Y (B, T, D, H), Y_h/c (B, D, H)
    layout 0         X (T, B, I), initial_h/c (D, B, H), Y (T, D, B, H), Y_h/c (D, B, H)
    direction        'reverse' runs the forward module over each sequence reversed
                     within its length; 'bidirectional' is a bidirectional module
    sequence_lens    fastrnn's lengths: Y zero past a length, Y_h/Y_c from the last step

Weights (W, R, B, P) are constants (initializers or Constant nodes) or, as in ONNX's
backend tests, graph inputs: then the module is built when the inputs arrive.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

import numpy as np

from ..convert import ONNX_OPS, _text, from_onnx
from ..nn.recurrent import _Reverser
from ._graph import require_onnx

__all__ = ["load", "OnnxRecurrentGraph"]

_RECURRENT_INPUTS = ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P")
_WEIGHT_INPUTS = ("W", "R", "B", "P")
_ATTRIBUTES = {"activations", "activation_alpha", "activation_beta", "clip", "direction",
               "hidden_size", "input_forget", "layout", "linear_before_reset"}
_MAX_FILE_BYTES = 2 ** 31   # protobuf's own limit for one message


class RecurrentNode:
    """One ONNX RNN/LSTM/GRU node: its attributes, checked, and its fastrnn module.

    :meth:`__call__` takes the node's inputs by ONNX name (X, sequence_lens, initial_h,
    initial_c; W, R, B, P when they were not constants) and returns its outputs
    ``[Y, Y_h(, Y_c)]`` in the node's layout.
    """

    def __init__(self, node, constants: Dict[str, np.ndarray]):
        self.name = node.name or node.output[0]
        self.op_type = node.op_type
        self.kind = ONNX_OPS[node.op_type]
        self.inputs = dict(zip(_RECURRENT_INPUTS, node.input))      # slot -> value name
        self.outputs = list(node.output)
        self.attributes = self._attributes(node)
        self.layout = self.attributes.get("layout", 0)
        if self.layout not in (0, 1):
            raise self._error(f"attribute layout must be 0 or 1, got {self.layout!r}")
        self.direction = _text(self.attributes.get("direction", "forward"))
        self.reverse = self.direction == "reverse"
        weights = {slot: constants.get(self.inputs.get(slot, ""))
                   for slot in _WEIGHT_INPUTS}
        self.module = None
        if all(weights[slot] is not None or not self.inputs.get(slot)
               for slot in _WEIGHT_INPUTS):
            self.module = self._build(weights)

    def _error(self, message: str) -> ValueError:
        return ValueError(f"{self.op_type} node {self.name!r}: {message}")

    def _attributes(self, node) -> dict:
        onnx = require_onnx()
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        unknown = sorted(set(attributes) - _ATTRIBUTES)
        if unknown:
            raise self._error(f"attribute {unknown[0]!r} is not an {node.op_type} attribute "
                              f"of opset 14+ that fastrnn reads")
        for name in ("activation_alpha", "activation_beta"):
            if name in attributes:
                raise self._error(f"attribute {name}={attributes[name]!r} is not supported "
                                  "(it parameterises activations fastrnn does not compute)")
        return attributes

    def _build(self, weights: Dict[str, Optional[np.ndarray]]):
        """The fastrnn module for this node's weights (ONNX layout, converted)."""
        W, R = weights["W"], weights["R"]
        if W is None or R is None:
            raise self._error("inputs W and R are required")
        if W.dtype not in (np.float32, np.float64):
            raise self._error(f"W has dtype {W.dtype}; fastrnn computes float32 and float64")
        a = self.attributes
        try:
            return from_onnx(self.op_type, W, R, weights["B"],
                             linear_before_reset=a.get("linear_before_reset", 0),
                             direction="forward" if self.reverse else self.direction,
                             activations=a.get("activations"), hidden_size=a.get("hidden_size"),
                             P=weights.get("P"), clip=a.get("clip"),
                             input_forget=a.get("input_forget", 0), dtype=W.dtype)
        except ValueError as exc:
            raise self._error(str(exc)) from None

    # -- running ----------------------------------------------------------------------------
    def __call__(self, values: Dict[str, np.ndarray]) -> List[Optional[np.ndarray]]:
        given = {slot: values[name] for slot, name in self.inputs.items() if name}
        module = self.module
        if module is None:
            module = self._build({slot: given.get(slot) for slot in _WEIGHT_INPUTS})
        X = given["X"]
        state_slots = ("initial_h", "initial_c") if self.kind == "lstm" else ("initial_h",)
        states = [given.get(slot) for slot in state_slots]
        if self.layout == 1:                     # batch-major: X (B, T, I), states (B, D, H)
            X = X.transpose(1, 0, 2)
            states = [None if s is None else s.transpose(1, 0, 2) for s in states]
        lengths = given.get("sequence_lens")
        y, finals = self._run(module, np.ascontiguousarray(X), states, lengths)
        T, B = y.shape[:2]
        D, H = module.num_directions, module.hidden_size
        Y = y.reshape(T, B, D, H).transpose(0, 2, 1, 3)                 # (T, D, B, H)
        if self.layout == 1:
            Y = Y.transpose(2, 0, 1, 3)                                 # (B, T, D, H)
            finals = [f.transpose(1, 0, 2) for f in finals]             # (B, D, H)
        return [np.ascontiguousarray(a) for a in (Y, *finals)]

    def _run(self, module, X, states, lengths):
        """``y (T, B, D*H)`` and the final states ``(D, B, H)`` each (time-major)."""
        if lengths is not None:
            lengths = np.asarray(lengths)
            if lengths.dtype.kind not in "iu":
                raise self._error(f"sequence_lens must be integers, got {lengths.dtype}")
            lengths = lengths.astype(np.int64)
        if self.kind == "lstm":
            h0, c0 = states
            if (h0 is None) != (c0 is None):    # ONNX: a missing one is zeros
                zeros = np.zeros_like(c0 if h0 is None else h0)
                h0, c0 = (zeros, c0) if h0 is None else (h0, zeros)
            states = None if h0 is None else (h0, c0)
        else:
            states = states[0]
        reverser = _Reverser(lengths, *X.shape[:2]) if self.reverse else None
        if reverser is not None:
            X = np.ascontiguousarray(reverser(X))
        y, finals = module(X, states, lengths=lengths)
        if reverser is not None:
            y = reverser(y)
        return y, list(finals) if self.kind == "lstm" else [finals]


def peephole_kernel_available() -> bool:
    """Whether fastrnn's LSTM takes ``peepholes=True`` (the kernel nonzero P needs)."""
    import inspect

    from ..nn.recurrent import LSTM
    return "peepholes" in inspect.signature(LSTM.__init__).parameters


# -- the shape-only nodes between recurrent ones ---------------------------------------------
def _axes(inputs, attributes, index: int = 1):
    if len(inputs) > index and inputs[index] is not None:
        return [int(a) for a in inputs[index]]
    return attributes.get("axes")


def _reshape(data, shape, allowzero=0):
    shape = [int(s) for s in shape]
    if not allowzero:
        shape = [data.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return data.reshape(shape)


def _slice(data, starts, ends, axes=None, steps=None):
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        index[int(axis)] = slice(int(start), int(end), int(step))
    return data[tuple(index)]


def _squeeze(inputs, attributes):
    axes = _axes(inputs, attributes)
    return np.squeeze(inputs[0], axis=None if axes is None else tuple(axes))


def _unsqueeze(inputs, attributes):
    out = inputs[0]
    rank = out.ndim + len(_axes(inputs, attributes))
    for axis in sorted(a % rank for a in _axes(inputs, attributes)):
        out = np.expand_dims(out, axis)
    return out


def _cast(inputs, attributes):
    onnx = require_onnx()
    return inputs[0].astype(onnx.helper.tensor_dtype_to_np_dtype(attributes["to"]))


_SHAPE_OPS = {
    "Identity": lambda inputs, a: inputs[0],
    "Transpose": lambda inputs, a: np.transpose(inputs[0], a.get("perm")),
    "Reshape": lambda inputs, a: _reshape(inputs[0], inputs[1], a.get("allowzero", 0)),
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Concat": lambda inputs, a: np.concatenate(inputs, axis=a["axis"]),
    "Slice": lambda inputs, a: (_slice(inputs[0], a["starts"], a["ends"], a.get("axes"))
                                if "starts" in a else _slice(*inputs)),   # opset < 10: attributes
    "Cast": _cast,
}


class _ShapeNode:
    """A Transpose/Reshape/... node, run with NumPy."""

    def __init__(self, node):
        onnx = require_onnx()
        self.op_type, self.inputs, self.outputs = node.op_type, list(node.input), \
            list(node.output)
        self.attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def __call__(self, values):
        inputs = [values[name] if name else None for name in self.inputs]
        return [_SHAPE_OPS[self.op_type](inputs, self.attributes)]


# -- the graph ---------------------------------------------------------------------------------
class OnnxRecurrentGraph:
    """An ONNX graph whose recurrent nodes run on fastrnn modules.

    ``inputs``: names of the inputs to feed (graph inputs that are not constants);
    ``outputs``: the graph's output names; ``nodes``: the recurrent nodes in order, each
    with its ``module`` (a fastrnn RNN/LSTM/GRU, or None while its weights are graph
    inputs). ``graph(*arrays, **named)`` returns the outputs as a tuple, in order;
    ``graph.run(feeds)`` returns them as a dict.
    """

    def __init__(self, model):
        onnx = require_onnx()
        graph = model.graph
        self.constants = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
        self.steps, self.nodes = [], []
        for node in graph.node:
            if node.domain not in ("", "ai.onnx"):
                raise ValueError(f"node {node.name!r} is from domain {node.domain!r}; "
                                 "fastrnn.onnx.load reads standard ONNX operators")
            if node.op_type == "Constant":
                value = onnx.helper.get_attribute_value(node.attribute[0])
                if not isinstance(value, onnx.TensorProto):
                    raise ValueError(f"Constant node {node.name!r}: only 'value' tensors "
                                     "are supported")
                self.constants[node.output[0]] = onnx.numpy_helper.to_array(value)
            elif node.op_type in ONNX_OPS:
                step = RecurrentNode(node, self.constants)
                self.nodes.append(step)
                self.steps.append(step)
            elif node.op_type in _SHAPE_OPS:
                self.steps.append(_ShapeNode(node))
            else:
                raise ValueError(
                    f"node {node.name or node.output[0]!r} is a {node.op_type}: "
                    "fastrnn.onnx.load reads chains of RNN/LSTM/GRU nodes, joined by "
                    f"{sorted(_SHAPE_OPS)} nodes")
        if not self.nodes:
            raise ValueError("the graph holds no RNN, LSTM or GRU node")
        self.inputs = [i.name for i in graph.input if i.name not in self.constants]
        self.outputs = [o.name for o in graph.output]

    @property
    def modules(self) -> list:
        """The fastrnn module of each recurrent node (None where weights are inputs)."""
        return [node.module for node in self.nodes]

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Run the graph on ``feeds`` (input name -> array); returns output name -> array."""
        missing = [name for name in self.inputs if name not in feeds]
        unknown = sorted(set(feeds) - set(self.inputs))
        if missing or unknown:
            raise ValueError(f"the graph's inputs are {self.inputs}; missing {missing}, "
                             f"unknown {unknown}")
        values = dict(self.constants)
        values.update({name: np.asarray(value) for name, value in feeds.items()})
        for step in self.steps:
            for name, value in zip(step.outputs, step(values)):
                if name:
                    values[name] = value
        return {name: values[name] for name in self.outputs}

    def __call__(self, *arrays, **named):
        """Inputs in ``self.inputs`` order (or by name) -> outputs tuple in order."""
        if len(arrays) > len(self.inputs):
            raise ValueError(f"the graph takes {len(self.inputs)} inputs {self.inputs}, "
                             f"got {len(arrays)} positional arrays")
        feeds = dict(zip(self.inputs, arrays))
        feeds.update(named)
        out = self.run(feeds)
        return tuple(out[name] for name in self.outputs)


def load(source) -> OnnxRecurrentGraph:
    """Read an ONNX model (a path or an ``onnx.ModelProto``) into fastrnn modules.

    The graph must be a chain of ONNX ``RNN``/``LSTM``/``GRU`` nodes (optionally joined by
    shape-only nodes). Read per node: ``direction`` (forward, reverse, bidirectional),
    ``layout`` 0 and 1, ``linear_before_reset`` (GRU), ``hidden_size``, inputs
    ``sequence_lens``, ``initial_h``, ``initial_c`` and ``P`` (peepholes: an all-zero P is
    plain LSTM; a nonzero one becomes ``LSTM(peepholes=True)``), default ``activations``
    (RNN: Tanh or Relu). Raises ValueError naming the attribute for what fastrnn does not
    compute (other activations, ``activation_alpha``/``beta``, ``clip``, ``input_forget=1``)
    and for any other node type.
    """
    onnx = require_onnx()
    if isinstance(source, onnx.ModelProto):
        model = source
    else:
        path = os.fspath(source)
        size = os.path.getsize(path)
        if size > _MAX_FILE_BYTES:
            raise ValueError(f"{path} holds {size} bytes, more than one ONNX protobuf can "
                             "(2 GiB); models with external data are not supported")
        try:
            model = onnx.load(path, load_external_data=False)
        except Exception as exc:   # protobuf's DecodeError and kin
            if isinstance(exc, OSError):
                raise
            raise ValueError(f"{path} is not an ONNX model: {exc}") from None
    onnx.checker.check_model(model)
    return OnnxRecurrentGraph(model)
