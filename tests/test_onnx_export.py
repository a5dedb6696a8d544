"""fastrnn.onnx.export: the file passes onnx.checker and onnxruntime computes fastrnn's
outputs (float32, max relative error <= 1e-5). onnxruntime has no float64 kernels for
RNN/LSTM/GRU ("LSTM operator does not support double yet"), so float64 graphs are run by
onnx's ReferenceEvaluator (<= 1e-12), which ignores sequence_lens: with lengths it is fed
one sequence at a time, cut to its length."""
from __future__ import annotations

import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

import fastrnn  # noqa: E402
from fastrnn.data import Vocabulary  # noqa: E402
from fastrnn.models import (LanguageModel, OneToManyGenerator, Seq2Seq,  # noqa: E402
                            SequenceClassifier, SequenceRegressor)
from fastrnn.nn.recurrent import GRU, LSTM, RNN  # noqa: E402
from onnx_helpers import assert_close, run_onnxruntime, run_reference  # noqa: E402

T, B, I, H = 6, 4, 3, 5
LENGTHS = np.array([6, 2, 1, 4])

CELLS = {"rnn_tanh": (RNN, {}), "rnn_relu": (RNN, {"nonlinearity": "relu"}),
         "lstm": (LSTM, {}), "gru": (GRU, {}), "gru_reset_before": (GRU, {"reset_after": False})}


def _module(cell, dtype, **options):
    cls, kwargs = CELLS[cell]
    return cls(I, H, dtype=dtype, seed=3, **kwargs, **options).eval()


def _feeds(module, rng, dtype, lengths: bool, initial_state: bool) -> dict:
    x_shape = (B, T, I) if module.batch_first else (T, B, I)
    feeds = {"x": rng.standard_normal(x_shape).astype(dtype)}
    if lengths:
        feeds["lengths"] = LENGTHS.copy()
    if initial_state:
        rows = module.num_layers * module.num_directions
        for name in (["h0", "c0"] if isinstance(module, LSTM) else ["h0"]):
            feeds[name] = rng.standard_normal((rows, B, H)).astype(dtype)
    return feeds


def _fastrnn_outputs(module, feeds) -> dict:
    """fastrnn's outputs under the graph's output names."""
    if isinstance(module, LSTM):
        state = (feeds["h0"], feeds["c0"]) if "h0" in feeds else None
    else:
        state = feeds.get("h0")
    y, finals = module(feeds["x"], state, lengths=feeds.get("lengths"))
    finals = finals if isinstance(module, LSTM) else (finals,)
    return dict(zip(["y", "h_n", "c_n"], (y, *finals)))


def _assert_outputs(got: dict, expected: dict, dtype) -> None:
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        assert_close(got[name], value, dtype, name)


# -- recurrent modules: every cell, layers, directions, layouts, lengths, initial states ---
@pytest.mark.parametrize("initial_state", [False, True])
@pytest.mark.parametrize("lengths", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_recurrent_module_float32_matches_onnxruntime(cell, num_layers, bidirectional,
                                                      batch_first, lengths, initial_state,
                                                      tmp_path):
    pytest.importorskip("onnxruntime")
    module = _module(cell, np.float32, num_layers=num_layers, bidirectional=bidirectional,
                     batch_first=batch_first)
    path = tmp_path / "model.onnx"
    fastrnn.onnx.export(module, path, lengths=lengths, initial_state=initial_state)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count(CELLS[cell][0].__name__) == num_layers
    feeds = _feeds(module, np.random.default_rng(0), np.float32, lengths, initial_state)
    _assert_outputs(run_onnxruntime(model, feeds), _fastrnn_outputs(module, feeds),
                    np.float32)


def _per_sequence(module, model, feeds) -> dict:
    """The reference evaluator's outputs, assembled one sequence (cut to its length) at a
    time; past a length ``y`` is zero, as with ONNX's sequence_lens."""
    time_axis = 1 if module.batch_first else 0
    batch_axis = 1 - time_axis
    out = {"y": np.zeros(_fastrnn_outputs(module, feeds)["y"].shape, feeds["x"].dtype)}
    pieces = {}
    for b, n in enumerate(feeds["lengths"]):
        row = dict(feeds, lengths=np.array([n]))
        row["x"] = np.take(feeds["x"], [b], axis=batch_axis).take(range(n), axis=time_axis)
        for name in ("h0", "c0"):
            if name in feeds:
                row[name] = feeds[name][:, b:b + 1]
        result = run_reference(model, row)
        index = (slice(0, n), b) if time_axis == 0 else (b, slice(0, n))
        out["y"][index] = result["y"][(slice(None), 0) if time_axis == 0 else (0,)]
        for name in ("h_n", "c_n"):
            if name in result:
                pieces.setdefault(name, []).append(result[name])
    out.update({name: np.concatenate(parts, axis=1) for name, parts in pieces.items()})
    return out


@pytest.mark.parametrize("lengths", [False, True])
@pytest.mark.parametrize("batch_first,initial_state", [(False, True), (True, False)])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", sorted(set(CELLS) - {"rnn_relu"}))
def test_recurrent_module_float64_matches_reference_evaluator(cell, num_layers, bidirectional,
                                                              batch_first, initial_state,
                                                              lengths):
    """float64 RNN(relu) has no runtime at all: onnxruntime lacks the double kernel and the
    ReferenceEvaluator knows only Tanh and Affine as RNN activations; its float32 graph is
    the same apart from the element type and passes against onnxruntime above."""
    module = _module(cell, np.float64, num_layers=num_layers, bidirectional=bidirectional,
                     batch_first=batch_first)
    model = fastrnn.onnx.export(module, lengths=lengths, initial_state=initial_state)
    feeds = _feeds(module, np.random.default_rng(1), np.float64, lengths, initial_state)
    got = _per_sequence(module, model, feeds) if lengths else run_reference(model, feeds)
    _assert_outputs(got, _fastrnn_outputs(module, feeds), np.float64)


def test_onnxruntime_has_no_float64_recurrent_kernels():
    """Why float64 is checked with the ReferenceEvaluator: if this starts failing,
    onnxruntime gained the kernels and the float64 tests can use it too."""
    pytest.importorskip("onnxruntime")
    module = _module("lstm", np.float64)
    feeds = _feeds(module, np.random.default_rng(0), np.float64, False, False)
    with pytest.raises(Exception, match="double|implementation"):
        run_onnxruntime(fastrnn.onnx.export(module), feeds)


# -- the ready-made models -------------------------------------------------------------------
def _runner(dtype):
    """onnxruntime for float32, the reference evaluator for float64 (no lengths there)."""
    if dtype == np.float32:
        pytest.importorskip("onnxruntime")
        return run_onnxruntime
    return run_reference


DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell,layers", [("lstm", 2), ("gru", 1), ("rnn", 2)])
def test_language_model(cell, layers, dtype):
    model = LanguageModel(11, embed=4, hidden=H, layers=layers, cell=cell, dtype=dtype,
                          seed=0).eval()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 11, (B, T))
    state = model.forward(ids[:, :2])[1]          # a nonzero state to continue from
    parts = state if cell == "lstm" else (state,)
    feeds = {"ids": ids, **dict(zip(["h0", "c0"], parts))}
    graph = fastrnn.onnx.export(model, initial_state=True)
    logits, final = model.forward(ids, state)
    expected = {"logits": logits,
                **dict(zip(["h_n", "c_n"], final if cell == "lstm" else (final,)))}
    _assert_outputs(_runner(dtype)(graph, feeds), expected, dtype)


CLASSIFIERS = [
    dict(input_size=I, pooling="last"),
    dict(input_size=I, pooling="mean", bidirectional=True, layers=2),
    dict(vocab_size=9, pooling="last", bidirectional=True, cell="gru"),
    dict(vocab_size=9, pooling="mean", cell="rnn"),
]


@pytest.mark.parametrize("lengths", [False, True])
@pytest.mark.parametrize("options", CLASSIFIERS, ids=lambda o: "-".join(map(str, o.values())))
def test_sequence_classifier_float32(options, lengths):
    model = SequenceClassifier(3, hidden=H, dtype=np.float32, seed=0, **options).eval()
    rng = np.random.default_rng(0)
    x = (rng.integers(0, 9, (B, T)) if "vocab_size" in options
         else rng.standard_normal((B, T, I)).astype(np.float32))
    feeds = {"x": x, **({"lengths": LENGTHS} if lengths else {})}
    graph = fastrnn.onnx.export(model, lengths=lengths)
    logits = model.forward(x, LENGTHS if lengths else None)
    expected = {"logits": logits,
                "probabilities": model.predict_proba(x, LENGTHS if lengths else None)}
    _assert_outputs(_runner(np.float32)(graph, feeds), expected, np.float32)


@pytest.mark.parametrize("options", CLASSIFIERS[:2], ids=["last", "mean-bidirectional"])
def test_sequence_classifier_float64(options):
    model = SequenceClassifier(3, hidden=H, dtype=np.float64, seed=0, **options).eval()
    x = np.random.default_rng(0).standard_normal((B, T, I))
    got = run_reference(fastrnn.onnx.export(model), {"x": x})
    _assert_outputs(got, {"logits": model.forward(x), "probabilities": model.predict_proba(x)},
                    np.float64)


@pytest.mark.parametrize("lengths", [False, True])
@pytest.mark.parametrize("options", [dict(many_to_many=True, bidirectional=True),
                                     dict(many_to_many=True, cell="gru", layers=2),
                                     dict(pooling="mean", output_size=2),
                                     dict(pooling="last", cell="rnn")],
                         ids=["m2m-bi", "m2m-gru", "mean", "last-rnn"])
def test_sequence_regressor_float32(options, lengths):
    model = SequenceRegressor(I, hidden=H, dtype=np.float32, seed=0, **options).eval()
    x = np.random.default_rng(0).standard_normal((B, T, I)).astype(np.float32)
    feeds = {"x": x, **({"lengths": LENGTHS} if lengths else {})}
    expected = {"predictions": model.predict(x, LENGTHS if lengths else None)}
    got = run_onnxruntime(fastrnn.onnx.export(model, lengths=lengths), feeds)
    if lengths and options.get("many_to_many"):
        assert np.all(got["predictions"][1, 2:] == 0)    # past a length: zero, like predict
    _assert_outputs(got, expected, np.float32)


def test_sequence_regressor_float64_many_to_many():
    model = SequenceRegressor(I, 2, many_to_many=True, hidden=H, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((B, T, I))
    got = run_reference(fastrnn.onnx.export(model.eval()), {"x": x})
    _assert_outputs(got, {"predictions": model.predict(x)}, np.float64)


def _seq2seq(cell, layers, dtype):
    words = ["abc", "bcd", "cab", "dd"]
    return Seq2Seq(Vocabulary.from_sequences(words), Vocabulary.from_sequences(words),
                   embed=4, hidden=H, layers=layers, cell=cell, dtype=dtype, seed=0).eval()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell,layers", [("lstm", 2), ("gru", 1)])
def test_seq2seq_encoder_and_decoder_step(cell, layers, dtype):
    model = _seq2seq(cell, layers, dtype)
    rng = np.random.default_rng(0)
    V = len(model.src_vocab)
    source = rng.integers(0, V, (B, T))
    lengths = dtype == np.float32               # the reference evaluator ignores lengths
    encoder = fastrnn.onnx.export(model, part="encoder", lengths=lengths)
    state = model.encoder(np.ascontiguousarray(source.T), None,
                          LENGTHS if lengths else None)[1]
    parts = state if cell == "lstm" else (state,)
    feeds = {"source": source, **({"lengths": LENGTHS} if lengths else {})}
    _assert_outputs(_runner(dtype)(encoder, feeds), dict(zip(["h_n", "c_n"], parts)), dtype)

    step = fastrnn.onnx.export(model, part="decoder_step")
    token = rng.integers(0, len(model.tgt_vocab), B)
    logits, new = model.decoder.step(token, state)
    expected = {"logits": logits, **dict(zip(["h_n", "c_n"], new if cell == "lstm" else (new,)))}
    feeds = {"token": token, **dict(zip(["h", "c"], parts))}
    _assert_outputs(_runner(dtype)(step, feeds), expected, dtype)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_one_to_many_generator_parts(cell):
    vocab = Vocabulary.from_sequences(["ab", "ba"])
    model = OneToManyGenerator(I, vocab, embed=4, hidden=H, layers=2, cell=cell,
                               dtype=np.float32, seed=0).eval()
    v = np.random.default_rng(0).standard_normal((B, I)).astype(np.float32)
    state = model._condition(v)
    parts = state if cell == "lstm" else (state,)
    got = run_onnxruntime(fastrnn.onnx.export(model, part="encoder"), {"source": v})
    _assert_outputs(got, dict(zip(["h_n", "c_n"], parts)), np.float32)
    token = np.array([0, 1, 2, 3]) % len(vocab)
    logits, new = model.decoder.step(token, state)
    got = run_onnxruntime(fastrnn.onnx.export(model, part="decoder_step"),
                          {"token": token, **dict(zip(["h", "c"], parts))})
    expected = {"logits": logits, **dict(zip(["h_n", "c_n"], new if cell == "lstm" else (new,)))}
    _assert_outputs(got, expected, np.float32)


def test_greedy_decoding_through_onnxruntime_matches_predict():
    """A deployment loop: the exported encoder once, then the decoder step per token."""
    pytest.importorskip("onnxruntime")
    words = ["abc", "bca", "cab", "acb"]
    vocab = Vocabulary.from_sequences(words)
    model = Seq2Seq(vocab, vocab, embed=6, hidden=12, cell="lstm", seed=0)
    model.fit(words * 8, [w[::-1] for w in words] * 8, epochs=30, verbose=False, seed=0)
    model.eval()
    sources, lengths = np.array([vocab.encode(w) for w in words]), np.full(4, 3)
    encoder = fastrnn.onnx.export(model, part="encoder", lengths=True)
    step = fastrnn.onnx.export(model, part="decoder_step")
    state = run_onnxruntime(encoder, {"source": sources, "lengths": lengths})
    h, c = state["h_n"], state["c_n"]
    token, rows = np.full(4, vocab.id("<bos>")), []
    for _ in range(4):
        out = run_onnxruntime(step, {"token": token, "h": h, "c": c})
        token, h, c = out["logits"].argmax(-1), out["h_n"], out["c_n"]
        rows.append(token)
    decoded = [vocab.decode(row) for row in np.stack(rows, axis=1)]
    assert decoded == model.predict(words, max_len=4)


# -- peepholes (LSTM(peepholes=True), once that kernel is on main) ----------------------------
@pytest.mark.skipif(not fastrnn.onnx._load.peephole_kernel_available(),
                    reason="LSTM(peepholes=True) is not built yet")
@pytest.mark.parametrize("bidirectional", [False, True])
def test_peephole_lstm_exports_p_and_loads_back(bidirectional):
    pytest.importorskip("onnxruntime")
    module = LSTM(I, H, num_layers=2, bidirectional=bidirectional, peepholes=True, seed=0)
    rng = np.random.default_rng(0)
    for name, p in module.named_parameters():
        if name.startswith("weight_p"):
            p[...] = rng.uniform(-.5, .5, p.shape)
    module.eval()
    model = fastrnn.onnx.export(module, lengths=True)
    assert sum(len(n.input) == 8 and n.input[7] != "" for n in model.graph.node) == 2
    feeds = _feeds(module, rng, np.float32, True, False)
    expected = _fastrnn_outputs(module, feeds)
    _assert_outputs(run_onnxruntime(model, feeds), expected, np.float32)
    loaded = fastrnn.onnx.load(model).run(feeds)
    for name, value in expected.items():
        np.testing.assert_array_equal(loaded[name], value)


# -- errors -------------------------------------------------------------------------------------
def test_export_asks_the_module_what_onnx_cannot_express():
    """Layers with variant options say why ONNX cannot hold them (onnx_unsupported_reason)."""
    lstm = _module("lstm", np.float32)
    lstm.onnx_unsupported_reason = lambda: "recurrent_dropout: no recurrent dropout in ONNX"
    with pytest.raises(ValueError, match="cannot export LSTM to ONNX: recurrent_dropout: no"):
        fastrnn.onnx.export(lstm)


def test_export_refuses_what_onnx_cannot_express():
    lstm = _module("lstm", np.float32)
    lstm.proj_size = 3               # as LSTM(proj_size=3) would say
    with pytest.raises(ValueError, match=r"proj_size=3.*no output projection"):
        fastrnn.onnx.export(lstm)
    gru = _module("gru", np.float32)
    gru.layer_norm = True
    with pytest.raises(ValueError, match=r"layer_norm=True.*layer normalisation"):
        fastrnn.onnx.export(gru)


@pytest.mark.parametrize("call,error,match", [
    (lambda: fastrnn.onnx.export(fastrnn.nn.Linear(2, 3)), TypeError, "got Linear"),
    (lambda: fastrnn.onnx.export(fastrnn.RNNCell(2, 3)), TypeError, "got RNNCell"),
    (lambda: fastrnn.onnx.export(_module("gru", np.float32), lengths=1), TypeError,
     "lengths must be True or False, got 1"),
    (lambda: fastrnn.onnx.export(_module("gru", np.float32), part="encoder"), ValueError,
     "part is for Seq2Seq"),
    (lambda: fastrnn.onnx.export(_seq2seq("gru", 1, np.float32)), ValueError,
     "pass part='encoder' or part='decoder_step', got part=None"),
    (lambda: fastrnn.onnx.export(_seq2seq("gru", 1, np.float32), part="decoder_step",
                                 lengths=True), ValueError, "takes no lengths"),
    (lambda: fastrnn.onnx.export(LanguageModel(5), lengths=True), ValueError,
     "without lengths"),
    (lambda: fastrnn.onnx.export(SequenceClassifier(2, input_size=3), initial_state=True),
     ValueError, "initial_state=False"),
    (lambda: fastrnn.convert.to_onnx(GRU(I, H, num_layers=2), layer=2), ValueError,
     r"layer must be an int in \[0, 2\), got 2"),
    (lambda: fastrnn.convert.onnx_attributes(fastrnn.GRUCell(I, H), layer=1), ValueError,
     "a cell has one layer, got layer=1"),
])
def test_export_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    target = tmp_path / "model.onnx"
    fastrnn.onnx.export(_module("gru", np.float32), target)
    before = target.read_bytes()

    def fail(*args):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        fastrnn.onnx.export(_module("lstm", np.float32), target)
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]     # no temporary left behind
    assert target.read_bytes() == before                        # the old file is intact


def test_importing_fastrnn_does_not_import_onnx_or_shadow_it():
    import subprocess
    import sys
    code = ("import sys, fastrnn; assert 'onnx' not in sys.modules; "
            "import onnx; assert onnx.__file__ != fastrnn.onnx.__file__; "
            "assert hasattr(onnx, 'helper')")
    subprocess.run([sys.executable, "-c", code], check=True)
