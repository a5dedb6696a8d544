"""ONNX files in and out: :func:`export` (fastrnn -> ``.onnx``) and :func:`load` (back).

* ``export(obj, path, lengths=False, initial_state=False, part=None)`` writes a recurrent
  module (RNN/LSTM/GRU) or a ready-made model as a graph of ONNX ``RNN``/``LSTM``/``GRU``
  nodes plus Gather, MatMul/Gemm, Softmax etc., which onnxruntime runs.
* ``load(path)`` reads a graph whose recurrent nodes are ONNX ``RNN``/``LSTM``/``GRU``
  (chained through shape-only nodes such as Transpose and Reshape) into fastrnn modules,
  returning an :class:`OnnxRecurrentGraph` that runs it and returns the ONNX outputs
  (``Y``, ``Y_h``, ``Y_c`` in ONNX layout for a single node).

Needs the optional ``onnx`` package (``pip install 'fastrnn[onnx]'``), imported only when
these functions are called. This subpackage never shadows the real ``onnx``: everything
here imports it absolutely.
"""
from ._export import export
from ._load import OnnxRecurrentGraph, load

__all__ = ["export", "load", "OnnxRecurrentGraph"]
