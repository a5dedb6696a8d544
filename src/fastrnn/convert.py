"""Weights in and out of Keras and ONNX: ``from_keras``/``to_keras``, ``from_onnx``/``to_onnx``.

fastrnn keeps PyTorch's layout: per layer and direction ``w_ih (G*H, I)``, ``w_hh (G*H, H)``,
``b_ih, b_hh (G*H,)``, gate blocks of H rows in the order below. The other formats differ
only by gate order, transposition and how the biases are split::

    cell   gates (G)  torch (fastrnn)   Keras            ONNX
    RNN    1          h                 h                h
    LSTM   4          i f c(g) o        i f c o          i o f c
    GRU    3          r z n(h)          z r h            z r h

    Keras:  kernel (I, G*H) = w_ihᵀ,  recurrent_kernel (H, G*H) = w_hhᵀ,
            bias (G*H,) = b_ih + b_hh, except GRU reset_after=True: bias (2, G*H) = [b_ih, b_hh]
    ONNX:   W (D, G*H, I) = w_ih,  R (D, G*H, H) = w_hh,  B (D, 2*G*H) = [b_ih, b_hh]
            per direction D (0 forward, 1 reverse)

GRU variants: Keras ``reset_after=True`` and ONNX ``linear_before_reset=1`` are PyTorch's
GRU, ``n = tanh(x W_inᵀ + b_in + r (h W_hnᵀ + b_hn))``; Keras ``reset_after=False`` and
ONNX ``linear_before_reset=0`` apply r before the matmul, ``n = tanh(x W_inᵀ + b_in +
(r h) W_hnᵀ + b_hn)``: fastrnn's ``GRU(reset_after=False)``.

Conversions into fastrnn are exact (a permutation of entries). Out to Keras, a module with
two nonzero biases (other than a reset_after GRU) has them folded into Keras' single bias,
``b_ih + b_hh``: the same function, rounded once more.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional

import numpy as np

from .nn.cells import GRUCell, LSTMCell, RNNCell
from .nn.module import _to_numpy
from .nn.recurrent import GRU, LSTM, RNN

__all__ = ["from_keras", "to_keras", "from_onnx", "to_onnx", "onnx_attributes"]

# Gate orders, one letter per block of H rows (c = LSTM's cell input g, h = GRU's n).
TORCH_GATES = {"rnn": "h", "lstm": "ifco", "gru": "rzh"}
KERAS_GATES = {"rnn": "h", "lstm": "ifco", "gru": "zrh"}
ONNX_GATES = {"rnn": "h", "lstm": "iofc", "gru": "zrh"}

KERAS_KINDS = {"SimpleRNN": "rnn", "LSTM": "lstm", "GRU": "gru"}
ONNX_OPS = {"RNN": "rnn", "LSTM": "lstm", "GRU": "gru"}
# ONNX default activations per direction; fastrnn supports exactly these (RNN: Tanh or Relu).
ONNX_ACTIVATIONS = {"rnn": ("Tanh",), "lstm": ("Sigmoid", "Tanh", "Tanh"),
                    "gru": ("Sigmoid", "Tanh")}


class Direction(NamedTuple):
    """One layer direction's weights in PyTorch layout (biases None without bias)."""

    w_ih: np.ndarray             # (G*H, I)
    w_hh: np.ndarray             # (G*H, H)
    b_ih: Optional[np.ndarray]   # (G*H,)
    b_hh: Optional[np.ndarray]   # (G*H,)


def _reorder(array: np.ndarray, source: str, target: str, axis: int = 0) -> np.ndarray:
    """Split ``array`` into ``len(source)`` gate blocks along ``axis`` (named by the letters
    of ``source``) and put them back together in the order ``target``."""
    blocks = dict(zip(source, np.split(array, len(source), axis=axis)))
    return np.ascontiguousarray(np.concatenate([blocks[g] for g in target], axis=axis))


def _lookup(table: dict, key, what: str) -> str:
    if key not in table:
        raise ValueError(f"{what} must be one of {sorted(table)}, got {key!r}")
    return table[key]


def _array(name: str, value, ndim: int) -> np.ndarray:
    array = _to_numpy(value)
    if array.ndim != ndim or array.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a {ndim}-D numeric array, "
                         f"got shape {array.shape} and dtype {array.dtype}")
    return array


def _check_shape(name: str, array: np.ndarray, expected: tuple, hint: str = "") -> None:
    if array.shape != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {array.shape}{hint}")


def _gate_rows(name: str, rows: int, G: int, kind: str) -> int:
    """H from a gate dimension of G*H rows."""
    if rows < G or rows % G:
        raise ValueError(f"{name}: {kind.upper()} has {G} gates, so this dimension must be "
                         f"a positive multiple of {G}, got {rows}")
    return rows // G


# -- building and reading fastrnn modules ----------------------------------------------------
def _suffix(layer: int, reverse: bool) -> str:
    return f"_l{layer}" + ("_reverse" if reverse else "")


def _build(kind: str, directions: List[Direction], *, dtype, batch_first=False,
           peepholes=None, **options):
    """A one-layer fastrnn RNN/LSTM/GRU (bidirectional for two directions), weights loaded;
    ``peepholes (D, 3H)`` (ONNX's P, order p_i, p_o, p_f) builds ``LSTM(peepholes=True)``."""
    if peepholes is not None:
        options["peepholes"] = True
    cls = {"rnn": RNN, "lstm": LSTM, "gru": GRU}[kind]
    hidden_size, input_size = directions[0].w_hh.shape[1], directions[0].w_ih.shape[1]
    has_bias = directions[0].b_ih is not None
    module = cls(input_size, hidden_size, num_layers=1, bias=has_bias,
                 batch_first=batch_first, bidirectional=len(directions) == 2, dtype=dtype,
                 **options)
    state = {}
    for d, direction in enumerate(directions):
        for name, value in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), direction):
            if value is not None:
                state[f"{name}{_suffix(0, d == 1)}"] = value
        if peepholes is not None:
            state[f"weight_p{_suffix(0, d == 1)}"] = peepholes[d]
    module.load_state_dict(state)
    return module


_KINDS = ((RNN, "rnn"), (LSTM, "lstm"), (GRU, "gru"),
          (RNNCell, "rnn"), (LSTMCell, "lstm"), (GRUCell, "gru"))


def _kind_of(module) -> str:
    for cls, kind in _KINDS:
        if isinstance(module, cls):
            return kind
    raise TypeError("expected a fastrnn RNN, LSTM, GRU or one of their cells, "
                    f"got {type(module).__name__}")


def _read(module, layer=None):
    """(kind, directions, options) of a one-layer module or a cell, in PyTorch layout;
    with ``layer`` an int, of that layer of a stacked module."""
    kind = _kind_of(module)
    state = module.state_dict()
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    if "weight_ih" in state:  # a cell
        if layer not in (None, 0):
            raise ValueError(f"a cell has one layer, got layer={layer!r}")
        directions = [Direction(*(state.get(n) for n in names))]
    else:
        if layer is None:
            if "weight_ih_l1" in state:
                raise ValueError(f"{type(module).__name__} has num_layers > 1; Keras and "
                                 "ONNX layers are one layer each: convert layer by layer")
            layer = 0
        elif f"weight_ih_l{layer}" not in state or isinstance(layer, bool):
            raise ValueError(f"layer must be an int in [0, {module.num_layers}), "
                             f"got {layer!r}")
        reverses = (False, True) if f"weight_ih_l{layer}_reverse" in state else (False,)
        directions = [Direction(*(state.get(n + _suffix(layer, r)) for n in names))
                      for r in reverses]
    options = {"rnn": {"nonlinearity": getattr(module, "nonlinearity", None)},
               "gru": {"reset_after": getattr(module, "reset_after", None)}}.get(kind, {})
    if None in options.values():
        raise TypeError(f"{type(module).__name__} does not say its {list(options)}")
    return kind, directions, options


# -- Keras -----------------------------------------------------------------------------------
def _check_keras_activations(kind: str, activation: str, recurrent_activation: str) -> dict:
    """fastrnn options for Keras' activation arguments; only what fastrnn computes."""
    if kind == "rnn":
        if activation not in ("tanh", "relu"):
            raise ValueError(f"SimpleRNN activation must be 'tanh' or 'relu', got {activation!r}")
        return {"nonlinearity": activation}
    if activation != "tanh" or recurrent_activation != "sigmoid":
        raise ValueError(
            f"fastrnn's LSTM/GRU compute activation='tanh', recurrent_activation='sigmoid'; got "
            f"activation={activation!r}, recurrent_activation={recurrent_activation!r} (Keras "
            "before 2.3 defaulted to recurrent_activation='hard_sigmoid')")
    return {}


def _keras_direction(kind: str, arrays, reset_after: bool) -> Direction:
    """One Keras layer's [kernel, recurrent_kernel(, bias)] in PyTorch layout."""
    order, G = KERAS_GATES[kind], len(KERAS_GATES[kind])
    kernel = _array("kernel", arrays[0], 2)
    H = _gate_rows("kernel (I, G*H)", kernel.shape[1], G, kind)
    recurrent = _array("recurrent_kernel", arrays[1], 2)
    _check_shape("recurrent_kernel", recurrent, (H, G * H))
    w_ih = _reorder(kernel.T, order, TORCH_GATES[kind])
    w_hh = _reorder(recurrent.T, order, TORCH_GATES[kind])
    if len(arrays) == 2:
        return Direction(w_ih, w_hh, None, None)
    bias = _to_numpy(arrays[2])
    two_rows = kind == "gru" and reset_after
    hint = (" (a GRU with one bias row is reset_after=False)" if two_rows else
            " (a GRU bias with two rows is reset_after=True)" if kind == "gru" else "")
    _check_shape("bias", bias, (2, G * H) if two_rows else (G * H,), hint)
    b_ih, b_hh = (bias[0], bias[1]) if two_rows else (bias, np.zeros_like(bias))
    return Direction(w_ih, w_hh, *(_reorder(b, order, TORCH_GATES[kind]) for b in (b_ih, b_hh)))


def _same_sizes(directions: List[Direction]) -> None:
    """Both directions of a Bidirectional layer must have the same shapes and biases."""
    if len(directions) == 2:
        for name, a, b in zip(Direction._fields, *directions):
            if (a is None) != (b is None) or (a is not None and a.shape != b.shape):
                raise ValueError(f"the two directions' {name} differ: "
                                 f"{getattr(a, 'shape', None)} vs {getattr(b, 'shape', None)}")


def _keras_arrays(kind: str, direction: Direction, reset_after: bool) -> list:
    """Inverse of :func:`_keras_direction`."""
    order = KERAS_GATES[kind]
    arrays = [np.ascontiguousarray(_reorder(w, TORCH_GATES[kind], order).T)
              for w in direction[:2]]
    b_ih, b_hh = direction[2:]
    if b_ih is None:
        return arrays
    if kind == "gru" and reset_after:
        bias = np.stack([_reorder(b, TORCH_GATES[kind], order) for b in (b_ih, b_hh)])
    else:  # b_hh adds to the pre-activation unconditionally: fold it in
        bias = _reorder(b_ih + b_hh, TORCH_GATES[kind], order)
    return arrays + [bias]


def from_keras(kind: str, weights, *, reset_after: bool = True, activation: str = "tanh",
               recurrent_activation: str = "sigmoid", batch_first: bool = False,
               dtype=np.float32):
    """A fastrnn module from a Keras recurrent layer's ``layer.get_weights()``.

    ``kind``: 'SimpleRNN', 'LSTM' or 'GRU'. ``weights``: ``[kernel (I, G*H),
    recurrent_kernel (H, G*H), bias]`` (no bias with ``use_bias=False``); bias is (G*H,),
    or (2, G*H) = [input bias, recurrent bias] for a GRU with ``reset_after=True`` (Keras'
    default). A ``Bidirectional`` wrapper's weights (forward layer's, then backward layer's:
    4 or 6 arrays) give a bidirectional module. Pass the Keras layer's ``reset_after``,
    ``activation`` ('tanh' or 'relu' for SimpleRNN) and ``recurrent_activation``.

    Returns a one-layer ``fastrnn.nn.recurrent.RNN/LSTM/GRU`` of ``dtype`` computing the
    same function. Keras feeds ``(B, T, I)``: ``batch_first=True`` takes that unchanged.
    """
    kind = _lookup(KERAS_KINDS, kind, "kind")
    options = _check_keras_activations(kind, activation, recurrent_activation)
    if kind == "gru":
        options["reset_after"] = bool(reset_after)
    weights = list(weights)
    if len(weights) not in (2, 3, 4, 6):
        raise ValueError("weights must be [kernel, recurrent_kernel(, bias)] (2 or 3 arrays, "
                         f"or 4 or 6 for Bidirectional), got {len(weights)} arrays")
    per_direction = len(weights) // 2 if len(weights) in (4, 6) else len(weights)
    directions = [_keras_direction(kind, weights[i:i + per_direction], reset_after)
                  for i in range(0, len(weights), per_direction)]
    _same_sizes(directions)
    return _build(kind, directions, dtype=dtype, batch_first=batch_first, **options)


def to_keras(module) -> list:
    """The Keras ``get_weights()`` list for a one-layer fastrnn module or cell.

    Inverse of :func:`from_keras`: ``[kernel, recurrent_kernel, bias]`` (6 arrays for a
    bidirectional module, 2 without bias). Biases other than a reset_after GRU's are folded
    into one, ``b_ih + b_hh``. Build the Keras layer with the module's ``reset_after``
    (GRU) and activation (SimpleRNN ``nonlinearity``).
    """
    kind, directions, options = _read(module)
    reset_after = options.get("reset_after", True)
    return [a for d in directions for a in _keras_arrays(kind, d, reset_after)]


# -- ONNX ------------------------------------------------------------------------------------
def _check_onnx_unsupported(kind, linear_before_reset, P, clip, input_forget) -> None:
    """Raise for ONNX features that fastrnn does not compute."""
    if P is not None and kind != "lstm":
        raise ValueError(f"P (peepholes) is an LSTM input, got one for {kind.upper()}")
    if clip is not None:
        raise ValueError(f"cell clipping is not supported: got clip={clip!r}")
    if input_forget:
        raise ValueError(f"coupled input-forget gates are not supported: got "
                         f"input_forget={input_forget!r}")
    if kind != "gru" and linear_before_reset:
        raise ValueError(f"linear_before_reset is a GRU attribute, got "
                         f"linear_before_reset={linear_before_reset!r} for {kind.upper()}")
    if linear_before_reset not in (0, 1):
        raise ValueError(f"linear_before_reset must be 0 or 1, got {linear_before_reset!r}")


def _text(value):
    """ONNX string attributes come as bytes from ``onnx.helper.get_attribute_value``."""
    return value.decode() if isinstance(value, bytes) else value


def _onnx_options(kind: str, activations, D: int) -> dict:
    """fastrnn options for ONNX ``activations`` (per direction, default when None)."""
    default = ONNX_ACTIVATIONS[kind] * D
    received = default if activations is None else tuple(_text(a) for a in activations)
    lowered = tuple(a.lower() if isinstance(a, str) else a for a in received)
    if kind == "rnn":
        if len(lowered) == D and len(set(lowered)) == 1 and lowered[0] in ("tanh", "relu"):
            return {"nonlinearity": lowered[0]}
        allowed = f"{['Tanh'] * D} or {['Relu'] * D}"
    elif lowered == tuple(a.lower() for a in default):
        return {}
    else:
        allowed = f"{list(default)}"
    raise ValueError(f"{kind.upper()} activations must be {allowed} "
                     f"(the same for both directions), got {list(received)}")


def _onnx_directions(direction) -> int:
    """D for the ONNX ``direction`` attribute."""
    direction = _text(direction)
    if direction == "reverse":
        raise ValueError("direction='reverse' is not supported: it equals direction='forward' "
                         "run on the time-reversed sequence")
    return _lookup({"forward": 1, "bidirectional": 2}, direction, "direction")


def _onnx_direction(kind: str, W, R, B) -> Direction:
    """One ONNX direction's W (G*H, I), R (G*H, H), B (2*G*H,) or None in PyTorch layout."""
    order, target = ONNX_GATES[kind], TORCH_GATES[kind]
    biases = (None, None) if B is None else np.split(B, 2)
    return Direction(*(None if a is None else _reorder(a, order, target)
                       for a in (W, R, *biases)))


def from_onnx(op_type: str, W, R, B=None, *, linear_before_reset: int = 0,
              direction: str = "forward", activations=None, hidden_size=None, P=None,
              clip=None, input_forget: int = 0, layout: int = 0, dtype=np.float32):
    """A fastrnn module from the inputs and attributes of an ONNX RNN, LSTM or GRU node.

    ``W (D, G*H, I)``, ``R (D, G*H, H)``, ``B (D, 2*G*H)`` = [Wb, Rb] or None (no bias),
    D = 1 (``direction='forward'``) or 2 ('bidirectional'; index 1 is the reverse
    direction). ONNX gate orders: LSTM i, o, f, c; GRU z, r, h; RNN one gate.
    GRU ``linear_before_reset=1`` is PyTorch's GRU (``reset_after=True``), 0 (ONNX's
    default) is ``GRU(reset_after=False)``. ``activations``: None (the defaults) or ONNX's
    list per direction; RNN takes ``Tanh`` or ``Relu``. ``layout=1`` (batch-major X) gives
    ``batch_first=True``. ``P (D, 3H)`` (LSTM peepholes, order p_i, p_o, p_f): a nonzero one
    gives ``LSTM(peepholes=True)`` with ``weight_p_l0[_reverse]`` = P, an all-zero one the
    plain LSTM. Not supported, with an error naming what was received: the 'reverse'
    direction alone, ``clip``, ``input_forget=1``, other activations.

    Returns a one-layer ``fastrnn.nn.recurrent.RNN/LSTM/GRU`` of ``dtype``.
    """
    kind = _lookup(ONNX_OPS, op_type, "op_type")
    D = _onnx_directions(direction)
    _check_onnx_unsupported(kind, linear_before_reset, P, clip, input_forget)
    if layout not in (0, 1):
        raise ValueError(f"layout must be 0 or 1, got {layout!r}")
    G = len(ONNX_GATES[kind])
    W, R = _array("W", W, 3), _array("R", R, 3)
    H = _gate_rows("W (D, G*H, I)", W.shape[1], G, kind)
    if hidden_size is not None and hidden_size != H:
        raise ValueError(f"hidden_size={hidden_size!r} does not match W's {G}*H = {W.shape[1]}")
    _check_shape("W", W, (D, G * H, W.shape[2]), f" for direction={_text(direction)!r}")
    _check_shape("R", R, (D, G * H, H))
    if B is not None:
        B = _array("B", B, 2)
        _check_shape("B", B, (D, 2 * G * H))
    options = _onnx_options(kind, activations, D)
    if kind == "gru":
        options["reset_after"] = bool(linear_before_reset)
    if P is not None:
        P = _array("P", P, 2)
        _check_shape("P", P, (D, 3 * H))
        if np.any(P):
            options["peepholes"] = P
    directions = [_onnx_direction(kind, W[d], R[d], None if B is None else B[d])
                  for d in range(D)]
    return _build(kind, directions, dtype=dtype, batch_first=bool(layout), **options)


def to_onnx(module, layer=None):
    """``(W, R, B)`` for an ONNX node computing a one-layer fastrnn module or cell.

    Shapes ``W (D, G*H, I)``, ``R (D, G*H, H)``, ``B (D, 2*G*H)`` (None without bias), in
    ONNX gate order. Inverse of :func:`from_onnx`; :func:`onnx_attributes` gives the node's
    attributes. ``layer=k`` converts layer k of a stacked module (one ONNX node per layer).
    """
    kind, directions, _ = _read(module, layer)
    order, source = ONNX_GATES[kind], TORCH_GATES[kind]

    def stacked(field):
        return np.stack([_reorder(getattr(d, field), source, order) for d in directions])

    W, R = stacked("w_ih"), stacked("w_hh")
    if directions[0].b_ih is None:
        return W, R, None
    return W, R, np.concatenate([stacked("b_ih"), stacked("b_hh")], axis=1)


def onnx_attributes(module, layer=None) -> dict:
    """The ONNX node's ``op_type`` and attributes for a one-layer fastrnn module or cell:
    ``hidden_size``, ``direction``, ``activations`` and (GRU) ``linear_before_reset``.

    ``from_onnx(*to_onnx(m) ...)`` round trip: ``from_onnx(W=W, R=R, B=B, **attrs)``.
    ``layer=k``: the attributes of layer k of a stacked module.
    """
    kind, directions, options = _read(module, layer)
    D = len(directions)
    attributes = {"op_type": {v: k for k, v in ONNX_OPS.items()}[kind],
                  "hidden_size": int(directions[0].w_hh.shape[1]),
                  "direction": "bidirectional" if D == 2 else "forward",
                  "activations": list(ONNX_ACTIVATIONS[kind] * D)}
    if kind == "rnn":
        attributes["activations"] = [options["nonlinearity"].capitalize()] * D
    if kind == "gru":
        attributes["linear_before_reset"] = int(options["reset_after"])
    return attributes
