"""Modules: the PyTorch-style layer API of fastrnn."""
from .cells import GRUCell, LSTMCell, RNNCell
from .layers import Dropout, Embedding, Linear
from .module import Module, Parameter
from .recurrent import GRU, LSTM, RNN

__all__ = ["Module", "Parameter", "RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell",
           "Linear", "Embedding", "Dropout"]
