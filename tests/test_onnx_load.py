"""fastrnn.onnx.load: ONNX's own backend test vectors for RNN/LSTM/GRU, hand-built nodes
with every attribute against onnxruntime, round trips through export, and clear errors.

The backend vectors: older onnx wheels ship them as files under
onnx/backend/test/data/node/test_{lstm,gru,rnn,simple_rnn}_*; newer ones ship only the
generators (onnx/backend/test/case/node/{lstm,gru,rnn}.py) that write those files, so the
test writes them into the same layout (model.onnx, test_data_set_0/input_*.pb,
output_*.pb) and reads them back with onnx.numpy_helper.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import fastrnn  # noqa: E402
from fastrnn.convert import to_onnx  # noqa: E402
from fastrnn.nn.recurrent import GRU, LSTM, RNN  # noqa: E402
from fastrnn.onnx._load import peephole_kernel_available  # noqa: E402
from onnx_helpers import RTOL, assert_close, relative_error, run_onnxruntime  # noqa: E402

RECURRENT_OPS = ("RNN", "LSTM", "GRU")
PACKAGE_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"


# -- ONNX's backend test vectors ------------------------------------------------------------
def _generated_cases() -> dict:
    """name -> TestCase from onnx's generators for the three operators."""
    import importlib
    cases = importlib.import_module("onnx.backend.test.case.node")
    for op in ("lstm", "gru", "rnn"):       # importing a generator module runs its exports
        importlib.import_module(f"onnx.backend.test.case.node.{op}")
    return {c.name: c for c in cases._NodeTestCases
            if {n.op_type for n in c.model.graph.node} <= set(RECURRENT_OPS)}


def _shipped_dirs() -> list:
    if not PACKAGE_DATA.is_dir():
        return []
    return sorted(d.name for d in PACKAGE_DATA.iterdir()
                  if d.name.startswith(("test_lstm", "test_gru", "test_rnn", "test_simple_rnn"))
                  and (d / "model.onnx").exists())


SHIPPED = _shipped_dirs()
GENERATED = {} if SHIPPED else _generated_cases()
BACKEND_CASES = SHIPPED or sorted(GENERATED)
PEEPHOLE_XFAIL = pytest.mark.xfail(
    raises=NotImplementedError, strict=True,
    reason="nonzero LSTM peepholes P need LSTM(peepholes=True), the peephole kernel, "
           "which is not on main yet")


def _write_case(case, folder: Path) -> None:
    """A generated case in the layout of onnx/backend/test/data/node/<name>."""
    data = folder / "test_data_set_0"
    data.mkdir(parents=True)
    onnx.save(case.model, folder / "model.onnx")
    inputs, outputs = case.data_sets[0]
    for kind, arrays in (("input", inputs), ("output", outputs)):
        for i, array in enumerate(arrays):
            (data / f"{kind}_{i}.pb").write_bytes(
                numpy_helper.from_array(np.asarray(array)).SerializeToString())


def _read_tensors(folder: Path, kind: str) -> list:
    files = sorted(folder.glob(f"{kind}_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
    tensors = []
    for f in files:
        tensor = TensorProto()
        tensor.ParseFromString(f.read_bytes())
        tensors.append(numpy_helper.to_array(tensor))
    return tensors


@pytest.fixture(scope="module")
def backend_data(tmp_path_factory):
    if SHIPPED:
        return PACKAGE_DATA
    root = tmp_path_factory.mktemp("onnx_node_tests")
    for name, case in GENERATED.items():
        _write_case(case, root / name)
    return root


def _peephole_case(name: str) -> bool:
    return "peephole" in name


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=PEEPHOLE_XFAIL) if _peephole_case(n) and not peephole_kernel_available()
    else n for n in BACKEND_CASES])
def test_onnx_backend_vectors(name, backend_data):
    folder = backend_data / name
    model = onnx.load(folder / "model.onnx")
    data = folder / "test_data_set_0"
    inputs, expected = _read_tensors(data, "input"), _read_tensors(data, "output")
    graph = fastrnn.onnx.load(folder / "model.onnx")
    feeds = dict(zip([i.name for i in model.graph.input], inputs))
    got = graph(**feeds)
    assert len(got) == len(expected)
    for actual, want in zip(got, expected):
        # the backend's own tolerance, and the project's float32 bar on top
        np.testing.assert_allclose(actual, want, rtol=1e-3, atol=1e-7)
        assert relative_error(actual, want) <= RTOL[want.dtype], name


def test_every_recurrent_backend_case_is_collected():
    """All of onnx's cases for the three operators: defaults, initial bias, sequence
    length, batchwise (layout 1), peepholes, and in newer onnx reverse and bidirectional."""
    assert len(BACKEND_CASES) >= 12
    for op in ("lstm", "gru", "rnn"):
        assert any(op in n for n in BACKEND_CASES), op


# -- round trips: export then load gives back the same function, bitwise --------------------
CELLS = {"rnn_tanh": (RNN, {}), "rnn_relu": (RNN, {"nonlinearity": "relu"}),
         "lstm": (LSTM, {}), "gru": (GRU, {}), "gru_reset_before": (GRU, {"reset_after": False})}
T, B, I, H = 6, 4, 3, 5
LENGTHS = np.array([6, 2, 1, 4])


@pytest.mark.parametrize("extras", [False, True], ids=["plain", "lengths+states"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_export_then_load_is_bitwise_identical(cell, num_layers, bidirectional, batch_first,
                                               extras, dtype, tmp_path):
    cls, kwargs = CELLS[cell]
    module = cls(I, H, num_layers=num_layers, bidirectional=bidirectional,
                 batch_first=batch_first, dtype=dtype, seed=1, **kwargs).eval()
    path = tmp_path / "m.onnx"
    fastrnn.onnx.export(module, path, lengths=extras, initial_state=extras)
    graph = fastrnn.onnx.load(path)
    assert len(graph.modules) == num_layers
    assert all(type(m) is cls and m.num_directions == module.num_directions
               for m in graph.modules)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
    feeds, state = {"x": x}, None
    if extras:
        rows = num_layers * module.num_directions
        parts = [rng.standard_normal((rows, B, H)).astype(dtype)
                 for _ in range(2 if cls is LSTM else 1)]
        feeds.update(lengths=LENGTHS, **dict(zip(["h0", "c0"], parts)))
        state = tuple(parts) if cls is LSTM else parts[0]
    y, finals = module(x, state, lengths=LENGTHS if extras else None)
    expected = (y, *(finals if cls is LSTM else (finals,)))
    got = graph(**feeds)
    assert graph.outputs == ["y", "h_n", "c_n"][:len(expected)]
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


def test_loaded_module_weights_are_the_exported_ones():
    module = LSTM(I, H, bidirectional=True, seed=0)
    graph = fastrnn.onnx.load(fastrnn.onnx.export(module))
    for name, value in module.state_dict().items():
        np.testing.assert_array_equal(graph.modules[0].state_dict()[name], value)


# -- hand-built nodes with every attribute, against onnxruntime ------------------------------
GATES = {"RNN": 1, "LSTM": 4, "GRU": 3}


def _node_model(op, *, direction="forward", layout=0, lengths=False, states=(),
                bias=True, peepholes=None, dtype=np.float32, rng=None, **attributes):
    """A one-node ONNX model with random weights as initializers; returns (model, feeds)."""
    rng = np.random.default_rng(0) if rng is None else rng
    D, G = (2 if direction == "bidirectional" else 1), GATES[op]
    initializers = [numpy_helper.from_array(rng.uniform(-.6, .6, shape).astype(dtype), name)
                    for name, shape in (("W", (D, G * H, I)), ("R", (D, G * H, H)),
                                        ("B", (D, 2 * G * H)))[:3 if bias else 2]]
    if peepholes is not None:
        initializers.append(numpy_helper.from_array(peepholes.astype(dtype), "P"))
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    x_shape = (B, T, I) if layout else (T, B, I)
    state_shape = (B, D, H) if layout else (D, B, H)
    feeds = {"X": rng.standard_normal(x_shape).astype(dtype)}
    inputs = [helper.make_tensor_value_info("X", elem, x_shape)]
    if lengths:
        feeds["sequence_lens"] = LENGTHS.astype(np.int32)
        inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, [B]))
    for name in states:
        feeds[name] = rng.standard_normal(state_shape).astype(dtype)
        inputs.append(helper.make_tensor_value_info(name, elem, state_shape))
    node_inputs = ["X", "W", "R", "B" if bias else "", "sequence_lens" if lengths else "",
                   "initial_h" if "initial_h" in states else ""]
    if op == "LSTM":
        node_inputs += ["initial_c" if "initial_c" in states else "",
                        "P" if peepholes is not None else ""]
    outputs = ["Y", "Y_h", "Y_c"][:3 if op == "LSTM" else 2]
    attributes.setdefault("hidden_size", H)
    node = helper.make_node(op, node_inputs, outputs, direction=direction,
                            **({"layout": layout} if layout else {}), **attributes)
    y_shape = (B, T, D, H) if layout else (T, D, B, H)
    output_shapes = [y_shape] + [state_shape] * (len(outputs) - 1)
    graph = helper.make_graph([node], "node", inputs,
                              [helper.make_tensor_value_info(n, elem, shape)
                               for n, shape in zip(outputs, output_shapes)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model, feeds


def _layout0_twin(feeds, **options):
    """The same node (same weights) with layout 0, and the feeds transposed to it:
    onnxruntime runs only layout 0."""
    model, _ = _node_model(**options, layout=0)
    return model, {k: (v.transpose(1, 0, 2) if v.ndim == 3 else v) for k, v in feeds.items()}


NODE_OPTIONS = {"rnn": ("RNN", {}), "rnn_relu": ("RNN", {"activations": ["Relu"]}),
                "lstm": ("LSTM", {}), "gru_lbr1": ("GRU", {"linear_before_reset": 1}),
                "gru_lbr0": ("GRU", {})}
NODE_STATES = [pytest.param(name, states, id=f"{name}-{label}")
               for name in NODE_OPTIONS
               for label, states in (("zeros", ()), ("h", ("initial_h",)),
                                     ("h+c", ("initial_h", "initial_c")))
               if name == "lstm" or "initial_c" not in states]


@pytest.mark.parametrize("lengths", [False, True])
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("name,states", NODE_STATES)
def test_node_attributes_match_onnxruntime(name, states, direction, layout, lengths):
    pytest.importorskip("onnxruntime")
    op, attributes = NODE_OPTIONS[name]
    if direction == "bidirectional" and "activations" in attributes:
        attributes = {"activations": attributes["activations"] * 2}
    options = dict(op=op, direction=direction, lengths=lengths, states=states, **attributes)
    model, feeds = _node_model(layout=layout, **options)
    got = fastrnn.onnx.load(model).run(feeds)
    ort_model, ort_feeds = _layout0_twin(feeds, **options) if layout else (model, feeds)
    expected = run_onnxruntime(ort_model, ort_feeds)
    for name, value in expected.items():
        if layout:   # back to batch-major: Y (T, D, B, H) -> (B, T, D, H), Y_h -> (B, D, H)
            value = value.transpose(2, 0, 1, 3) if value.ndim == 4 else value.transpose(1, 0, 2)
        assert_close(got[name], value, np.float32, name)


def test_lstm_with_only_initial_c_starts_from_zero_h():
    pytest.importorskip("onnxruntime")
    model, feeds = _node_model("LSTM", states=("initial_c",))
    got, expected = fastrnn.onnx.load(model).run(feeds), run_onnxruntime(model, feeds)
    for name in expected:
        assert_close(got[name], expected[name], np.float32, name)


def test_node_without_bias_and_float64():
    model, feeds = _node_model("GRU", bias=False, dtype=np.float64, linear_before_reset=1)
    graph = fastrnn.onnx.load(model)
    assert graph.modules[0].dtype == np.float64 and not graph.modules[0].bias
    from onnx.reference import ReferenceEvaluator
    expected = ReferenceEvaluator(model).run(None, feeds)
    for a, b in zip(graph(**feeds), expected):
        assert_close(a, b, np.float64)


def test_zero_peepholes_are_plain_lstm():
    zero = np.zeros((1, 3 * H))
    with_p = fastrnn.onnx.load(_node_model("LSTM", peepholes=zero)[0])
    model, feeds = _node_model("LSTM")
    for a, b in zip(with_p(**feeds), fastrnn.onnx.load(model)(**feeds)):
        np.testing.assert_array_equal(a, b)


def test_weights_fed_as_graph_inputs():
    """As in ONNX's backend tests, W, R, B may be graph inputs: the module is built per run."""
    model, feeds = _node_model("LSTM")
    module = LSTM(I, H, seed=5)
    W, R, Bias = to_onnx(module)
    for init in list(model.graph.initializer):
        model.graph.input.append(helper.make_tensor_value_info(init.name, TensorProto.FLOAT,
                                                               init.dims))
    del model.graph.initializer[:]
    graph = fastrnn.onnx.load(model)
    assert graph.modules == [None] and graph.inputs == ["X", "W", "R", "B"]
    Y, Y_h, Y_c = graph(X=feeds["X"], W=W, R=R, B=Bias)
    y, (h, c) = module(feeds["X"])
    np.testing.assert_array_equal(Y[:, 0], y)
    np.testing.assert_array_equal(Y_h[0], h[0])


# -- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("op,attributes,match", [
    ("LSTM", {"clip": 3.0}, "clip"),
    ("LSTM", {"input_forget": 1}, "input_forget"),
    ("LSTM", {"activations": ["Sigmoid", "Tanh", "Relu"]}, "activations"),
    ("GRU", {"activations": ["HardSigmoid", "Tanh"]}, "activations"),
    ("RNN", {"activations": ["Sigmoid"]}, "activations"),
    ("RNN", {"activations": ["Affine"], "activation_alpha": [2.0]}, "activation_alpha"),
    ("GRU", {"linear_before_reset": 2}, "linear_before_reset must be 0 or 1"),
    ("GRU", {"layout": 2}, "layout must be 0 or 1"),
    ("LSTM", {"hidden_size": H + 1}, "hidden_size"),
])
def test_unsupported_attributes_are_named(op, attributes, match):
    kwargs = dict(attributes)
    layout = kwargs.pop("layout", 0)
    model, _ = _node_model(op, **kwargs)
    if layout:
        model.graph.node[0].attribute.append(helper.make_attribute("layout", layout))
    with pytest.raises(ValueError, match=match) as info:
        fastrnn.onnx.load(model)
    assert f"{op} node" in str(info.value)


def _model_with_node(node, inputs, outputs, initializers=()):
    graph = helper.make_graph([node], "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def test_nonzero_peepholes_raise_not_implemented_naming_p():
    if peephole_kernel_available():
        pytest.skip("the peephole kernel has landed")
    model, _ = _node_model("LSTM", peepholes=np.full((1, 3 * H), 0.1))
    with pytest.raises(NotImplementedError, match=r"input P \(peepholes"):
        fastrnn.onnx.load(model)


def test_other_nodes_are_refused_by_name():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    model = _model_with_node(helper.make_node("Relu", ["x"], ["y"], name="act"), [x], [y])
    with pytest.raises(ValueError, match="node 'act' is a Relu"):
        fastrnn.onnx.load(model)


def test_graph_without_recurrent_node_is_refused():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    model = _model_with_node(helper.make_node("Identity", ["x"], ["y"]), [x], [y])
    with pytest.raises(ValueError, match="no RNN, LSTM or GRU node"):
        fastrnn.onnx.load(model)


def test_float16_weights_are_refused():
    model, _ = _node_model("GRU", dtype=np.float16)
    with pytest.raises(ValueError, match="W has dtype float16"):
        fastrnn.onnx.load(model)


def test_run_names_missing_and_unknown_inputs():
    model, feeds = _node_model("RNN", lengths=True)
    graph = fastrnn.onnx.load(model)
    with pytest.raises(ValueError, match=r"missing \['sequence_lens'\], unknown \['Z'\]"):
        graph.run({"X": feeds["X"], "Z": 1})
    with pytest.raises(ValueError, match="takes 2 inputs"):
        graph(feeds["X"], feeds["sequence_lens"], feeds["X"])


def test_load_checks_the_file(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a protobuf")
    with pytest.raises(ValueError, match="broken.onnx is not an ONNX model"):
        fastrnn.onnx.load(path)
    with pytest.raises(FileNotFoundError):
        fastrnn.onnx.load(tmp_path / "absent.onnx")
