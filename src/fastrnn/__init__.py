"""fastrnn: fast recurrent neural networks (RNN, LSTM, GRU) on the CPU.

* ``fastrnn.ops``: the C kernels, forward and backpropagation through time, per cell;
  ``fastrnn.reference`` is their pure-NumPy twin with the same functions and results.
* ``fastrnn.RNN``, ``LSTM``, ``GRU`` and the cells: PyTorch-compatible layers
  (``fastrnn.nn`` also has ``Linear``, ``Embedding``, ``Dropout``).
* ``fastrnn.losses``, ``fastrnn.optim``, ``fastrnn.io`` (checkpoints), ``fastrnn.convert``
  (Keras and ONNX weights).
* ``fastrnn.no_grad()``, ``inference_mode()``, ``set_grad_enabled()``: grad mode, as in
  PyTorch (a forward inside keeps nothing for backward; ``eval()`` only switches dropout).
* ``fastrnn.models``: language model, sequence classifier and regressor, seq2seq, and a
  one-to-many generator, each with fit / evaluate / predict / save / load;
  ``fastrnn.generate`` samples text from a language model.
* ``fastrnn.onnx``: ``export`` modules and models to ONNX files, ``load`` ONNX RNN/LSTM/GRU
  graphs into fastrnn (needs the optional ``onnx`` package, imported on first use).
* Reduced precision inference: ``.to("bfloat16")`` (or ``dtype="bfloat16"``) and
  ``fastrnn.quantize_dynamic`` (int8); see ``fastrnn.ops`` and ``fastrnn.quantize``.
  bf16 also trains (bf16 forward products, float32 backward): ``fit(..., precision="bf16")``.
"""
from ._threads import get_num_threads, set_num_threads  # first: it prepares OpenMP

from . import convert, data, generate, io, losses, models, nn, ops, optim, reference  # noqa: I001
from ._common import (GRUGrads, LayerNormGRUGrads, LayerNormLSTMGrads, LSTMGrads,
                      PeepholeLSTMGrads,
                      ProjectedLSTMGrads, RNNGrads)
from .grad_mode import (enable_grad, inference_mode, is_grad_enabled, is_inference_mode_enabled,
                        no_grad, set_grad_enabled)
from .io import CheckpointError, load_checkpoint, save_checkpoint
from .models import (LanguageModel, OneToManyGenerator, Seq2Seq, SequenceClassifier,
                     SequenceRegressor)
from .nn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from .quantize import quantize_dynamic
from . import onnx  # noqa: E402  (fastrnn.onnx; the onnx package itself loads lazily)

__version__ = "0.1.0"
__all__ = ["ops", "reference", "nn", "losses", "optim", "io", "convert", "models", "data",
           "generate", "LanguageModel", "SequenceClassifier", "SequenceRegressor", "Seq2Seq",
           "OneToManyGenerator", "onnx",
           "RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell",
           "RNNGrads", "LSTMGrads", "PeepholeLSTMGrads", "ProjectedLSTMGrads", "LayerNormLSTMGrads",
           "GRUGrads", "LayerNormGRUGrads",
           "set_num_threads", "get_num_threads",
           "save_checkpoint", "load_checkpoint", "CheckpointError", "__version__",
           "no_grad", "enable_grad", "inference_mode", "set_grad_enabled", "is_grad_enabled",
           "is_inference_mode_enabled", "quantize_dynamic"]
