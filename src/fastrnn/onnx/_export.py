"""``export``: fastrnn recurrent modules and ready-made models as ONNX graphs.

Each recurrent layer becomes one ONNX ``RNN``/``LSTM``/``GRU`` node (both directions in one
node when bidirectional), its weights converted by :func:`fastrnn.convert.to_onnx`. The
nodes run time-major (``layout=0``); a ``batch_first`` edge is one Transpose. Between layers
the node output ``Y (T, D, B, H)`` becomes the next layer's ``X (T, B, D*H)``: Squeeze for
one direction, Transpose + Reshape for two. Final states of all layers are concatenated to
fastrnn's ``(L*D, B, H)``. The models add Gather (embedding), MatMul + Add or Gemm (heads),
reductions (pooling), Softmax and Tanh around the stack.

The graph computes the eval-mode function: dropout (between layers, before heads) is the
identity at inference and is left out.
"""
from __future__ import annotations

import os
import tempfile
from typing import List, NamedTuple, Optional

import numpy as np

from ..convert import onnx_attributes, to_onnx
from ..models import (LanguageModel, OneToManyGenerator, Seq2Seq, SequenceClassifier,
                      SequenceRegressor)
from ..nn.layers import Linear
from ..nn.recurrent import GRU, LSTM, RNN
from ._graph import Graph

__all__ = ["export"]

# Module options that ONNX's RNN/LSTM/GRU operators cannot compute, and why.
_INEXPRESSIBLE = {
    "proj_size": "ONNX's LSTM has no output projection (PyTorch's proj_size)",
    "layer_norm": "ONNX's LSTM/GRU have no layer normalisation inside the cell",
}
_PARTS = ("encoder", "decoder_step")


class Stack(NamedTuple):
    """Names of a recurrent stack's results in the graph."""

    y: str                  # (T, B, D*H), zero past each length
    finals: List[str]       # per state (h[, c]): (L*D, B, H)
    top_h: str              # the top layer's Y_h (D, B, H)


# -- the recurrent stack ----------------------------------------------------------------------
def _check_expressible(module) -> None:
    """Raise for options ONNX's operators cannot compute: the module's own account
    (``onnx_unsupported_reason()``, where the layers have it), else its option values."""
    hook = getattr(module, "onnx_unsupported_reason", None)
    reason = hook() if callable(hook) else None
    if reason:
        raise ValueError(f"cannot export {type(module).__name__} to ONNX: {reason}")
    for option, why in _INEXPRESSIBLE.items():
        value = getattr(module, option, None)
        if value:
            raise ValueError(f"cannot export {type(module).__name__}({option}={value!r}) to "
                             f"ONNX: {why}")


def _peepholes(module, layer: int):
    """ONNX ``P (D, 3*H)`` of one layer (order p_i, p_o, p_f, as ``weight_p_l{k}``), or None."""
    if not getattr(module, "peepholes", False):
        return None
    names = [f"weight_p_l{layer}" + ("_reverse" if d else "")
             for d in range(module.num_directions)]
    return np.stack([getattr(module, name).value for name in names])


def recurrent_stack(g: Graph, module, x: str, lengths: Optional[str] = None,
                    states: Optional[List[str]] = None) -> Stack:
    """Emit ``module`` (RNN/LSTM/GRU, any layers and directions) over time-major ``x``.

    ``x (T, B, I)``; ``lengths`` an int32 ``(B,)`` name or None; ``states`` names of the
    initial states ``(L*D, B, H)`` (h, and c for LSTM) or None for zeros.
    """
    _check_expressible(module)
    if module.dtype != g.dtype:
        raise TypeError(f"{type(module).__name__} has dtype {module.dtype}, but the model "
                        f"being exported is {g.dtype}")
    D, L = module.num_directions, module.num_layers
    n_states = 2 if isinstance(module, LSTM) else 1
    finals = [[] for _ in range(n_states)]
    layer_input, top_h = x, None
    for layer in range(L):
        W, R, B = to_onnx(module, layer=layer)
        attributes = onnx_attributes(module, layer=layer)
        op_type = attributes.pop("op_type")
        initial = ["" if states is None else
                   (states[i] if L == 1 else g.slice_rows(states[i], layer * D, (layer + 1) * D))
                   for i in range(n_states)]
        inputs = [layer_input, g.weight(f"W_l{layer}", W), g.weight(f"R_l{layer}", R),
                  "" if B is None else g.weight(f"B_l{layer}", B),
                  lengths or "", *initial]
        P = _peepholes(module, layer)
        if P is not None:
            inputs.append(g.weight(f"P_l{layer}", P))
        outputs = g.op(op_type, *inputs, outputs=1 + n_states, **attributes)
        Y, layer_finals = outputs[0], outputs[1:]            # (T, D, B, H), (D, B, H) each
        for i, final in enumerate(layer_finals):
            finals[i].append(final)
        top_h = layer_finals[0]
        if D == 1:
            layer_input = g.squeeze(Y, [1])                                  # (T, B, H)
        else:
            layer_input = g.reshape(g.transpose(Y, [0, 2, 1, 3]), [0, 0, -1])  # (T, B, 2H)
    merged = [f[0] if L == 1 else g.op("Concat", *f, axis=0) for f in finals]
    return Stack(layer_input, merged, top_h)


def _state_names(module) -> List[str]:
    return ["h", "c"] if isinstance(module, LSTM) else ["h"]


def _state_inputs(g: Graph, module, rows: int, suffix: str = "0") -> List[str]:
    """Graph inputs for the initial states, ``(rows, B, H)`` each."""
    return [g.input(f"{s}{suffix}", [rows, "batch", module.hidden_size])
            for s in _state_names(module)]


def _state_outputs(g: Graph, module, finals: List[str], rows: int) -> None:
    for name, value in zip(_state_names(module), finals):
        g.output(f"{name}_n", value, [rows, "batch", module.hidden_size])


def _lengths_input(g: Graph) -> str:
    """Graph input ``lengths (B,)`` int64, as the int32 ``sequence_lens`` ONNX takes."""
    tensor = g.onnx.TensorProto
    lengths = g.input("lengths", ["batch"], tensor.INT64)
    return g.op("Cast", lengths, to=tensor.INT32)


# -- feed-forward parts -----------------------------------------------------------------------
def _linear(g: Graph, layer: Linear, x: str, ndim: int, hint: str) -> str:
    """``x W^T + b`` for ``x`` of ``ndim`` dimensions (last one in_features)."""
    weight = layer.weight.value                                  # (O, I)
    bias = None if layer.bias is None else layer.bias.value     # (O,)
    if ndim == 2:
        inputs = [x, g.weight(f"{hint}_weight", weight)]
        if bias is not None:
            inputs.append(g.weight(f"{hint}_bias", bias))
        return g.op("Gemm", *inputs, transB=1)
    out = g.op("MatMul", x, g.weight(f"{hint}_weight_t", weight.T))
    return out if bias is None else g.op("Add", out, g.weight(f"{hint}_bias", bias))


def _embed(g: Graph, embedding, ids: str) -> str:
    """``weight[ids]``: ids of any shape -> shape + (E,)."""
    return g.op("Gather", g.weight("embedding", embedding.weight.value), ids, axis=0)


def _ids_input(g: Graph, name: str, shape) -> str:
    return g.input(name, shape, g.onnx.TensorProto.INT64)


def _step_mask(g: Graph, y: str, lengths: str) -> str:
    """``(T, B, 1)`` 1 where ``t < lengths[b]``, else 0, in the model's dtype."""
    T = g.op("Gather", g.op("Shape", y), g.scalar(0), axis=0)               # scalar
    steps = g.op("Range", g.scalar(0), T, g.scalar(1))                      # (T,) int64
    lengths = g.op("Cast", lengths, to=g.onnx.TensorProto.INT64)            # (B,)
    valid = g.op("Less", g.unsqueeze(steps, [1]), lengths)                  # (T, B)
    return g.unsqueeze(g.op("Cast", valid, to=g.float_type), [2])


# -- what each kind of object exports to ------------------------------------------------------
def _export_recurrent(g: Graph, module, lengths: bool, initial_state: bool) -> None:
    """Inputs ``x`` (+ ``lengths``, ``h0``/``c0``); outputs ``y``, ``h_n`` (+ ``c_n``)."""
    T, B, I = "time", "batch", module.input_size
    x_shape = [B, T, I] if module.batch_first else [T, B, I]
    x = g.input("x", x_shape)
    x_tm = g.transpose(x, [1, 0, 2]) if module.batch_first else x
    rows = module.num_layers * module.num_directions
    states = _state_inputs(g, module, rows) if initial_state else None
    stack = recurrent_stack(g, module, x_tm, _lengths_input(g) if lengths else None, states)
    y = g.transpose(stack.y, [1, 0, 2]) if module.batch_first else stack.y
    DH = module.num_directions * module.hidden_size
    g.output("y", y, [B, T, DH] if module.batch_first else [T, B, DH])
    _state_outputs(g, module, stack.finals, rows)


def _export_language_model(g: Graph, model: LanguageModel, lengths: bool,
                           initial_state: bool) -> None:
    """``ids (B, T)`` (+ ``h0``/``c0`` ``(L, B, H)``) -> ``logits (B, T, V)``, final state."""
    if lengths:
        raise ValueError("a LanguageModel reads a token stream without lengths: "
                         "export it with lengths=False")
    net = model.net
    ids = _ids_input(g, "ids", ["batch", "time"])
    x = _embed(g, net.embedding, g.transpose(ids, [1, 0]))                  # (T, B, E)
    rows = net.rnn.num_layers
    states = _state_inputs(g, net.rnn, rows) if initial_state else None
    stack = recurrent_stack(g, net.rnn, x, None, states)
    logits = _linear(g, net.head, stack.y, 3, "head")                       # (T, B, V)
    g.output("logits", g.transpose(logits, [1, 0, 2]), ["batch", "time", net.vocab_size])
    _state_outputs(g, net.rnn, stack.finals, rows)


def _pool(g: Graph, model, stack: Stack, lengths: Optional[str]) -> str:
    """The pooled features ``(B, D*H)`` (``(T, B, D*H)`` for pooling 'none')."""
    if model.pooling == "none":
        return stack.y
    if model.pooling == "mean":
        if lengths is None:
            return g.op("ReduceMean", stack.y, axes=[0], keepdims=0)
        total = g.op("ReduceSum", stack.y, g.ints([0]), keepdims=0)         # (B, D*H)
        count = g.unsqueeze(g.op("Cast", lengths, to=g.float_type), [1])    # (B, 1)
        return g.op("Div", total, count)
    by_batch = g.transpose(stack.top_h, [1, 0, 2])                           # (B, D, H)
    return g.reshape(by_batch, [0, -1])


def _export_sequence_model(g: Graph, model, lengths: bool, initial_state: bool) -> None:
    """``x (B, T, F)`` or ids ``(B, T)`` (+ ``lengths``) -> the head's output."""
    if initial_state:
        raise ValueError(f"{type(model).__name__} starts from zero states: export it with "
                         "initial_state=False")
    encoder, rnn = model.encoder, model.encoder.rnn
    if model.tokens:
        ids = _ids_input(g, "x", ["batch", "time"])
        x = _embed(g, encoder.embedding, g.transpose(ids, [1, 0]))           # (T, B, E)
    else:
        x = g.transpose(g.input("x", ["batch", "time", rnn.input_size]), [1, 0, 2])
    lengths_i32 = _lengths_input(g) if lengths else None
    stack = recurrent_stack(g, rnn, x, lengths_i32, None)
    features = _pool(g, model, stack, lengths_i32)
    O = model.head.out_features
    if model.pooling == "none":                                              # per step
        out = _linear(g, model.head, features, 3, "head")                    # (T, B, O)
        if lengths_i32 is not None:
            out = g.op("Mul", out, _step_mask(g, out, lengths_i32))
        g.output("predictions", g.transpose(out, [1, 0, 2]), ["batch", "time", O])
        return
    out = _linear(g, model.head, features, 2, "head")                        # (B, O)
    if isinstance(model, SequenceClassifier):
        g.output("logits", out, ["batch", O])
        g.output("probabilities", g.op("Softmax", out, axis=-1), ["batch", O])
    else:
        g.output("predictions", out, ["batch", O])


def _export_seq2seq_encoder(g: Graph, model: Seq2Seq, lengths: bool) -> None:
    """``source (B, S)`` ids (+ ``lengths``) -> the decoder's initial state ``h_n``(, ``c_n``)."""
    encoder = model.encoder
    ids = _ids_input(g, "source", ["batch", "time"])
    x = _embed(g, encoder.embedding, g.transpose(ids, [1, 0]))               # (S, B, E)
    stack = recurrent_stack(g, encoder.rnn, x, _lengths_input(g) if lengths else None)
    _state_outputs(g, encoder.rnn, stack.finals, encoder.rnn.num_layers)


def _export_generator_encoder(g: Graph, model: OneToManyGenerator) -> None:
    """``source (B, I)`` -> ``h_n = tanh(source W^T + b)`` as ``(L, B, H)`` (LSTM ``c_n = 0``)."""
    rnn = model.decoder.rnn
    L, H = rnn.num_layers, rnn.hidden_size
    v = g.input("source", ["batch", model.init.in_features])
    h = g.op("Tanh", _linear(g, model.init, v, 2, "init"))                   # (B, L*H)
    h = g.transpose(g.reshape(h, [0, L, H]), [1, 0, 2])                      # (L, B, H)
    finals = [h]
    if isinstance(rnn, LSTM):
        zero = g.onnx.helper.make_tensor("zero", g.float_type, [1], [0.0])
        finals.append(g.op("ConstantOfShape", g.op("Shape", h), value=zero))
    _state_outputs(g, rnn, finals, L)


def _export_decoder_step(g: Graph, model) -> None:
    """``token (B,)`` ids, ``h``(, ``c``) ``(L, B, H)`` -> ``logits (B, V)``, ``h_n``(, ``c_n``)."""
    decoder = model.decoder
    rnn = decoder.rnn
    token = _ids_input(g, "token", ["batch"])
    x = _embed(g, decoder.embedding, g.unsqueeze(token, [0]))               # (1, B, E)
    states = _state_inputs(g, rnn, rnn.num_layers, suffix="")
    stack = recurrent_stack(g, rnn, x, None, states)
    logits = _linear(g, decoder.head, g.squeeze(stack.y, [0]), 2, "head")   # (B, V)
    g.output("logits", logits, ["batch", decoder.vocab_size])
    _state_outputs(g, rnn, stack.finals, rnn.num_layers)


def _build(obj, lengths: bool, initial_state: bool, part: Optional[str]) -> Graph:
    decoders = (Seq2Seq, OneToManyGenerator)
    if part is not None and not isinstance(obj, decoders):
        raise ValueError(f"part is for Seq2Seq and OneToManyGenerator (one of {_PARTS}), "
                         f"got part={part!r} for a {type(obj).__name__}")
    if isinstance(obj, decoders) and part not in _PARTS:
        raise ValueError(f"a {type(obj).__name__} exports in two parts: pass part='encoder' "
                         f"or part='decoder_step', got part={part!r}")
    g = Graph(type(obj).__name__ if part is None else f"{type(obj).__name__}_{part}",
              obj.dtype)
    if isinstance(obj, (RNN, LSTM, GRU)):
        _export_recurrent(g, obj, lengths, initial_state)
    elif isinstance(obj, LanguageModel):
        _export_language_model(g, obj, lengths, initial_state)
    elif isinstance(obj, (SequenceClassifier, SequenceRegressor)):
        _export_sequence_model(g, obj, lengths, initial_state)
    else:
        if part == "decoder_step":
            _check_no_options(obj, part, lengths, initial_state)
            _export_decoder_step(g, obj)
        elif isinstance(obj, Seq2Seq):
            _check_no_options(obj, part, False, initial_state)
            _export_seq2seq_encoder(g, obj, lengths)
        else:
            _check_no_options(obj, part, lengths, initial_state)
            _export_generator_encoder(g, obj)
    return g


def _check_no_options(obj, part: str, lengths: bool, initial_state: bool) -> None:
    for name, value in (("lengths", lengths), ("initial_state", initial_state)):
        if value:
            raise ValueError(f"{type(obj).__name__} part={part!r} takes no {name} input: "
                             f"export it with {name}=False")


_SUPPORTED = (RNN, LSTM, GRU, LanguageModel, SequenceClassifier, SequenceRegressor, Seq2Seq,
              OneToManyGenerator)


def export(obj, path=None, *, lengths: bool = False, initial_state: bool = False,
           part: Optional[str] = None):
    """Write ``obj`` as an ONNX model to ``path`` (None: only return it); returns the
    ``onnx.ModelProto``, checked by ``onnx.checker.check_model``.

    ``obj`` and the graph's inputs -> outputs (``B`` and ``T`` are dynamic dimensions):

    * ``RNN``/``LSTM``/``GRU`` (any layers, directions, ``batch_first``):
      ``x (T, B, I)`` (``(B, T, I)`` batch_first) -> ``y (T, B, D*H)``, ``h_n (L*D, B, H)``
      and, LSTM, ``c_n``. ``lengths=True`` adds the input ``lengths (B,)`` int64 (ONNX
      ``sequence_lens``: outputs past a length are zero, final states from each sequence's
      last step); ``initial_state=True`` adds ``h0`` (and ``c0``) ``(L*D, B, H)``.
    * ``LanguageModel``: ``ids (B, T)`` int64 -> ``logits (B, T, V)``, ``h_n``(, ``c_n``)
      ``(L, B, H)``; ``initial_state=True`` adds ``h0``(, ``c0``) to carry state.
    * ``SequenceClassifier``: ``x (B, T, F)`` (or ids ``(B, T)``) -> ``logits (B, C)``,
      ``probabilities (B, C)`` (Softmax). ``SequenceRegressor``: ``predictions (B, O)``,
      or ``(B, T, O)`` many-to-many. ``lengths=True`` adds ``lengths (B,)``.
    * ``Seq2Seq``, ``part='encoder'``: ``source (B, S)`` ids (+ ``lengths``) -> ``h_n``
      (, ``c_n``) ``(L, B, H)``; ``part='decoder_step'``: ``token (B,)``, ``h``(, ``c``)
      ``(L, B, H)`` -> ``logits (B, V)``, ``h_n``(, ``c_n``): call it once per generated
      token. ``OneToManyGenerator``: the same decoder step; its 'encoder' maps
      ``source (B, I)`` to the initial state.

    ``obj.dtype`` is the file's element type. onnxruntime runs float32 files; float64 files
    are valid ONNX, but onnxruntime has no float64 RNN/LSTM/GRU kernels (onnx's
    ``ReferenceEvaluator`` runs them).

    The graph is the eval-mode function (dropout is the identity). Raises ValueError for
    what ONNX's operators cannot express (naming the option), TypeError for other objects.
    A failed write leaves no file behind.
    """
    if not isinstance(obj, _SUPPORTED):
        raise TypeError(f"fastrnn.onnx.export takes one of "
                        f"{[c.__name__ for c in _SUPPORTED]}, got {type(obj).__name__}")
    for name, value in (("lengths", lengths), ("initial_state", initial_state)):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be True or False, got {value!r}")
    g = _build(obj, bool(lengths), bool(initial_state), part)
    model = g.model(doc=f"exported by fastrnn from {type(obj).__name__}"
                        + ("" if part is None else f" ({part})"))
    if path is not None:
        _save(g.onnx, model, path)
    return model


def _save(onnx, model, path) -> None:
    """Write to a temporary file beside ``path``, then rename it into place."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".fastrnn-", suffix=".onnx", dir=folder)
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(model.SerializeToString())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
