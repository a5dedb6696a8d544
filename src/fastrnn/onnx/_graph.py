"""A small builder over ``onnx.helper``: named values, initializers, nodes, typed inputs.

Every value in the graph is a string name. :class:`Graph` hands out fresh names, keeps the
nodes in the order they were added (which is a topological order, since a node can only use
names that exist), and turns the lot into a checked ``onnx.ModelProto``.
"""
from __future__ import annotations

import collections
from typing import Optional, Sequence

import numpy as np

# The opset the exporter writes: LSTM/GRU/RNN-14 (layout attribute), Squeeze/Unsqueeze and
# ReduceSum with axes as inputs (13), ReduceMean with axes as an attribute (before 18).
OPSET = 17


def require_onnx():
    """The ``onnx`` package (the real one, not this subpackage), or a clear ImportError."""
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - exercised only without onnx
        raise ImportError("fastrnn.onnx needs the onnx package: pip install 'fastrnn[onnx]' "
                          "(or pip install onnx)") from exc
    return onnx


class Graph:
    """Nodes, initializers and typed inputs/outputs of one ONNX graph being built.

    ``dtype`` is the floating-point type of the model (float32 or float64): the element
    type of its float inputs, outputs and weights.
    """

    def __init__(self, name: str, dtype):
        self.onnx = require_onnx()
        self.name = name
        self.dtype = np.dtype(dtype)
        self.float_type = self.onnx.helper.np_dtype_to_tensor_dtype(self.dtype)
        self.nodes, self.initializers, self.inputs, self.outputs = [], [], [], []
        self._used = collections.Counter()

    def fresh(self, hint: str) -> str:
        """A name not used before in this graph, starting with ``hint``."""
        self._used[hint] += 1
        return hint if self._used[hint] == 1 else f"{hint}_{self._used[hint] - 1}"

    # -- values -------------------------------------------------------------------------
    def constant(self, hint: str, array) -> str:
        """An initializer holding ``array`` (copied as is, dtype included)."""
        name = self.fresh(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def ints(self, values: Sequence[int]) -> str:
        """A 1-D int64 initializer (shapes, axes, slice bounds)."""
        return self.constant("ints", np.array(values, np.int64))

    def scalar(self, value, dtype=np.int64) -> str:
        """A 0-D initializer."""
        return self.constant("scalar", np.array(value, dtype))

    def weight(self, hint: str, array) -> str:
        """A float initializer in the model's dtype."""
        return self.constant(hint, np.ascontiguousarray(array, dtype=self.dtype))

    def input(self, name: str, shape: Sequence, elem_type: Optional[int] = None) -> str:
        """A graph input; ``shape`` entries are ints or names of symbolic dimensions."""
        elem_type = self.float_type if elem_type is None else elem_type
        self.inputs.append(self.onnx.helper.make_tensor_value_info(name, elem_type, shape))
        self._used[name] += 1
        return name

    def output(self, name: str, value: str, shape: Sequence,
               elem_type: Optional[int] = None) -> None:
        """Publish ``value`` as the graph output ``name`` (through an Identity node)."""
        elem_type = self.float_type if elem_type is None else elem_type
        self.nodes.append(self.onnx.helper.make_node("Identity", [value], [name],
                                                     name=self.fresh(f"output_{name}")))
        self.outputs.append(self.onnx.helper.make_tensor_value_info(name, elem_type, shape))

    # -- nodes --------------------------------------------------------------------------
    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attributes):
        """Add a node; returns its output name, or a list of ``outputs`` names.

        Pass ``""`` for an omitted optional input."""
        names = [self.fresh(f"{op_type.lower()}_out") for _ in range(outputs)]
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), names,
                                                     name=self.fresh(op_type), **attributes))
        return names[0] if outputs == 1 else names

    # -- common pieces ------------------------------------------------------------------
    def transpose(self, value: str, perm: Sequence[int]) -> str:
        return self.op("Transpose", value, perm=list(perm))

    def reshape(self, value: str, shape: Sequence[int]) -> str:
        """Reshape; 0 copies the input's dimension, -1 is inferred."""
        return self.op("Reshape", value, self.ints(shape))

    def squeeze(self, value: str, axes: Sequence[int]) -> str:
        return self.op("Squeeze", value, self.ints(axes))

    def unsqueeze(self, value: str, axes: Sequence[int]) -> str:
        return self.op("Unsqueeze", value, self.ints(axes))

    def slice_rows(self, value: str, start: int, stop: int) -> str:
        """``value[start:stop]`` along axis 0."""
        return self.op("Slice", value, self.ints([start]), self.ints([stop]), self.ints([0]))

    def model(self, doc: str = ""):
        """The checked ``ModelProto`` (``onnx.checker.check_model`` with shape inference)."""
        onnx = self.onnx
        from .. import __version__
        graph = onnx.helper.make_graph(self.nodes, self.name, self.inputs, self.outputs,
                                       self.initializers, doc_string=doc)
        model = onnx.helper.make_model_gen_version(
            graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)],
            producer_name="fastrnn", producer_version=__version__)
        onnx.checker.check_model(model, full_check=True)
        return model
