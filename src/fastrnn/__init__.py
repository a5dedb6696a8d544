"""fastrnn: fast recurrent neural networks (RNN, LSTM, GRU) on the CPU.

``fastrnn.ops`` holds the C kernels (forward and backpropagation through time);
``fastrnn.reference`` is their pure-NumPy twin with the same functions and results.
"""
from . import ops, reference
from ._common import GRUGrads, LSTMGrads, RNNGrads

__version__ = "0.1.0"
__all__ = ["ops", "reference", "RNNGrads", "LSTMGrads", "GRUGrads", "__version__"]
