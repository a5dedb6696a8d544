"""Mixed-precision (bfloat16) training: ``precision="bfloat16"`` with ``training=True``.

The forward is the bf16 inference forward (both products on bf16-rounded operands, float32
accumulation) and saves float32 values; the backward is the float32 backward on the float32
master weights, with float32 ``x`` and saved states in the weight gradients (straight
through the rounding). What is proved:

* ops against the NumPy reference, forward outputs and every gradient, every cell, edge and
  odd sizes, lengths, each ISA level forced in turn: within the float32 training bound of
  tests/test_ops_vs_reference.py (2e-5 relative to max(|want|, 1)). Both round the same
  operands, so the forwards differ only in the order of float32 additions -- except where
  a state element lies within that float32 difference of a bf16 tie and the two round it
  to different neighbours (one bf16 ulp apart; one case of the 80 here). Then ops must be
  within the same bound of the reference whose state operands are moved by one float32
  step (x (1 +- 2^-22)) before rounding: the tie resolved the other way.
* The training forward gives the bits of the bf16 inference forward (same kernels, same
  pack); the SIMD ISA levels give the same bits for every output and gradient (the portable
  build within the bound above), and 1, 2 and 3 threads the same bits.
* The backward reads the float32 weights and the float32 x (not their bf16 roundings).
* Deep bidirectional layers with lengths train in bf16 (float32 Parameters and gradients)
  and match the same layers run on the NumPy reference.
* ``fit(precision="bf16")`` lowers the loss, stays close to float32 training, runs the
  layers in bf16 during the fit only; ``fastrnn train --precision bf16`` runs end to end
  and ``--resume`` keeps the precision; bad values raise.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastrnn
import helpers
from fastrnn import _core, nn, ops, reference
from fastrnn.nn import recurrent

CELLS = helpers.KERNEL_CELLS
SHAPES = [  # (T, B, I, H): edges, SIMD tails, I != H, the per-step projection (B >= 16)
    (1, 1, 1, 1), (4, 1, 3, 1), (5, 2, 7, 7), (6, 3, 33, 7), (3, 4, 5, 33), (4, 2, 65, 65),
    (3, 17, 5, 9), (2, 40, 7, 33),
]
TOLERANCE = {np.float32: 2e-5}   # tests/test_ops_vs_reference.py's float32 bound
LAYERS = [nn.RNN, nn.LSTM, nn.GRU]


def make_case(cell, shape, *, lengths=True, seed=0):
    """Random float32 inputs, weights (scale 1/sqrt(H)), lengths and upstream gradients."""
    kernel, G, _ = CELLS[cell]
    T, B, I, H = shape
    rng = np.random.default_rng(seed)

    def rand(*s, scale=1.0):
        return (scale * rng.standard_normal(s)).astype(np.float32)

    n_states = 2 if kernel == "lstm" else 1
    scale = 1 / np.sqrt(H)
    return {"x": rand(T, B, I), "states": [rand(B, H) for _ in range(n_states)],
            "weights": [rand(G * H, I, scale=scale), rand(G * H, H, scale=scale),
                        rand(G * H, scale=scale), rand(G * H, scale=scale)],
            "lengths": rng.integers(1, T + 1, size=B) if lengths else None,
            "dy": rand(T, B, H), "d_states": [rand(B, H) for _ in range(n_states)]}


def run(module, cell, case, precision="bfloat16", training=True):
    """Forward (then backward when training) through ``module``: (outputs, grads)."""
    kernel, _, options = CELLS[cell]
    *outputs, cache = getattr(module, f"{kernel}_forward")(
        case["x"], *case["states"], *case["weights"], lengths=case["lengths"],
        training=training, precision=precision, **options)
    if not training:
        return outputs, None
    return outputs, getattr(module, f"{kernel}_backward")(case["dy"], *case["d_states"], cache)


def flat(result):
    """Every array of a run: its outputs, then its gradients."""
    outputs, grads = result
    return [*outputs, *grads]


# -- ops against the reference ----------------------------------------------------------

def _error(got, want) -> float:
    """The largest error of any array of run ``got`` against ``want``, relative to
    max(|want|, 1) as helpers.assert_close measures it."""
    return max(float(np.abs(a.astype(np.float64) - b).max()) / max(float(np.abs(b).max()), 1)
               for a, b in zip(flat(got), flat(want)))


def _reference_with_ties_moved(cell, case, factor):
    """The reference run with every state operand times ``factor`` before its bf16
    rounding (x and the weights as they are)."""
    plain = reference._operands

    def moved(inputs, precision, packs=None):
        inputs, rnd = plain(inputs, precision, packs)
        return inputs, lambda a: rnd(a * np.float32(factor))
    reference._operands = moved
    try:
        return run(reference, cell, case)
    finally:
        reference._operands = plain


def assert_matches_reference(cell, case):
    """ops within TOLERANCE of the reference, or of the reference with the state operands
    one float32 step up or down (a bf16 tie that the two backends round apart)."""
    got, want = run(ops, cell, case), run(reference, cell, case)
    if _error(got, want) <= TOLERANCE[np.float32]:
        helpers.assert_runs_close(got, want, np.float32, TOLERANCE)
        return
    errors = [_error(got, _reference_with_ties_moved(cell, case, 1 + sign * 2.0 ** -22))
              for sign in (1, -1)]
    assert min(errors) <= TOLERANCE[np.float32], (_error(got, want), errors)


@pytest.mark.usefixtures("isa")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
def test_training_matches_the_reference(cell, shape, lengths):
    case = make_case(cell, shape, lengths=lengths)
    assert_matches_reference(cell, case)
    got = run(ops, cell, case)
    inferred, _ = run(ops, cell, case, training=False)
    for a, b in zip(got[0], inferred):          # the bf16 inference forward's bits
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cell", CELLS)
def test_training_runs_bf16_products_not_float32(cell):
    """Outputs and dw_hh (which reads the states) move off float32, every value a little.
    (The ReLU RNN's other gradients may keep float32's bits: its derivative reads only the
    sign of y, and the backward's products are float32.)"""
    case = make_case(cell, (5, 3, 16, 16))
    low, full = run(ops, cell, case), run(ops, cell, case, precision="float32")
    for a, b in zip([*low[0], low[1].dw_hh], [*full[0], full[1].dw_hh]):
        assert np.abs(a - b).max() > 0
    for a, b in zip(flat(low), flat(full)):
        assert np.abs(a - b).max() < 0.1


@pytest.mark.parametrize("module", [ops, reference], ids=["ops", "reference"])
def test_backward_reads_float32_weights_and_x(module):
    """One ReLU RNN step without bias from a zero state: dG = dy * [y > 0], and the
    gradients are dx = dG w_ih and dw_ih = dGᵀ x with the float32 w_ih and x."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 5, 24)).astype(np.float32)
    w_ih = rng.standard_normal((16, 24)).astype(np.float32) / 5
    w_hh = rng.standard_normal((16, 16)).astype(np.float32) / 4
    dy = rng.standard_normal((1, 5, 16)).astype(np.float32)
    y, _, cache = module.rnn_forward(x, None, w_ih, w_hh, nonlinearity="relu",
                                     precision="bfloat16")
    grads = module.rnn_backward(dy, None, cache)
    dG = (dy[0] * (y[0] > 0)).astype(np.float64)
    for got, operand, rounded, product in (
            (grads.dx[0], w_ih, reference.bf16_round(w_ih), lambda w: dG @ w),
            (grads.dw_ih, x[0], reference.bf16_round(x[0]), lambda a: dG.T @ a)):
        np.testing.assert_allclose(got, product(operand), rtol=1e-5, atol=1e-6)
        assert np.abs(got - product(rounded)).max() > 1e-4


def test_variants_without_bf16_kernels_are_refused():
    case = make_case("lstm", (3, 2, 4, 5))
    x, states, w = case["x"], case["states"], case["weights"]
    with pytest.raises(ValueError, match="does not support peepholes"):
        ops.lstm_forward(x, *states, *w, precision="bfloat16",
                         peepholes=np.zeros(15, np.float32))
    with pytest.raises(ValueError, match="does not support recurrent_mask"):
        reference.lstm_forward(x, *states, *w, precision="bfloat16",
                               recurrent_mask=np.ones((2, 5), np.float32))
    for module in (ops, reference):
        with pytest.raises(ValueError, match="'int8' runs inference only"):
            module.lstm_forward(x, *states, *w, precision="int8")
    layer = nn.LSTM(4, 5, layer_norm=True, dtype="bfloat16")
    with pytest.raises(ValueError, match="does not support layer_norm"):
        layer(x)


def test_a_training_pack_has_a_float32_backward_pack():
    case = make_case("gru", (4, 3, 6, 8))
    w_ih, w_hh = case["weights"][:2]
    packs = ops.pack_weights("gru", w_hh, precision="bfloat16", w_ih=w_ih)
    forward_only = ops.pack_weights("gru", w_hh, precision="bfloat16", w_ih=w_ih,
                                    backward=False)
    assert packs.precision == "bfloat16" and packs.backward is not None
    assert forward_only.backward is None
    by_pack = [ops.gru_forward(case["x"], case["states"][0], *case["weights"], packs=p)
               for p in (packs, forward_only)]
    grads = [ops.gru_backward(case["dy"], case["d_states"][0], out[-1]) for out in by_pack]
    for a, b in zip([*by_pack[0][:2], *grads[0]], [*by_pack[1][:2], *grads[1]]):
        np.testing.assert_array_equal(a, b)


# -- ISA levels and threads -------------------------------------------------------------

@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", [(5, 3, 7, 33), (3, 17, 5, 9), (4, 2, 65, 65)],
                         ids=lambda s: "T{}B{}I{}H{}".format(*s))
def test_every_isa_level_gives_the_same_bits(cell, shape):
    """avx2, avx512, avx512_bf16: the same bits for every output and gradient; the
    portable build (no FMA in its cell math) within the float32 bound."""
    case = make_case(cell, shape)
    before, results = _core.get_isa(), {}
    try:
        for name in _core.available_isas():
            _core.set_isa(name)
            results[name] = run(ops, cell, case)
    finally:
        _core.set_isa(before)
    simd = [name for name in results if name != "portable"]
    for name in simd[1:]:
        for a, b in zip(flat(results[name]), flat(results[simd[0]])):
            np.testing.assert_array_equal(a, b, err_msg=name)
    if "portable" in results and simd:
        helpers.assert_runs_close(results["portable"], results[simd[0]], np.float32,
                                  TOLERANCE)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("B", [24, 2])     # the batch split; the hidden split
def test_thread_counts_give_the_same_bits(cell, B, restore_threads):
    case = make_case(cell, (6, B, 64, 256))
    runs = []
    for threads in (1, 2, 3):
        restore_threads(threads)
        runs.append(flat(run(ops, cell, case)))
    for other in runs[1:]:
        for a, b in zip(other, runs[0]):
            np.testing.assert_array_equal(a, b)


# -- layers -----------------------------------------------------------------------------

def _layer_run(cls, x, lengths, dy, seed=7, **options):
    """A 2-layer bidirectional bf16 layer's forward and backward: [y, *final states, dx,
    *initial-state grads, *parameter grads]."""
    layer = cls(x.shape[-1], 9, num_layers=2, bidirectional=True, batch_first=True,
                dtype="bfloat16", seed=seed, **options)
    y, state = layer(x, lengths=lengths)
    states = state if isinstance(state, tuple) else (state,)
    dx = layer.backward(dy)
    for p in layer.parameters():
        assert p.value.dtype == p.grad.dtype == np.float32
    initial = [getattr(layer, f"grad_{n}0") for n in layer._state_names]
    return [y, *states, dx, *initial, *(p.grad for p in layer.parameters())]


@pytest.mark.parametrize("cls", LAYERS)
def test_deep_bidirectional_layers_match_the_reference(cls, monkeypatch):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 7, 5)).astype(np.float32)
    lengths = np.array([7, 3, 1, 6])
    dy = rng.standard_normal((4, 7, 18)).astype(np.float32)
    got = _layer_run(cls, x, lengths, dy)
    monkeypatch.setattr(recurrent, "ops", reference)   # the same layer on the NumPy twin
    want = _layer_run(cls, x, lengths, dy)
    monkeypatch.undo()
    for i, (a, b) in enumerate(zip(got, want)):
        helpers.assert_close(f"array {i}", a, b, np.float32, TOLERANCE)
    assert (got[0][1, 3:] == 0).all() and (got[0][2, 1:] == 0).all()


@pytest.mark.parametrize("cls", LAYERS)
def test_layer_grads_follow_float32_training_closely(cls):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 12, 8)).astype(np.float32)
    dy = rng.standard_normal((3, 12, 18)).astype(np.float32)
    low = _layer_run(cls, x, None, dy)
    layer = cls(8, 9, num_layers=2, bidirectional=True, batch_first=True, seed=7)
    layer(x)
    layer.backward(dy)
    full = [p.grad for p in layer.parameters()]
    for a, b in zip(low[-len(full):], full):
        assert 0 < np.abs(a - b).max() <= 0.02 * max(np.abs(b).max(), 1)


@pytest.mark.parametrize("cls", LAYERS)
def test_bf16_copies_are_made_once_per_optimizer_step(cls):
    """Forwards between two optimizer steps reuse one pack (bf16 forward, float32 backward);
    after a step the layer trains on the new weights' pack, as a fresh layer would."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((5, 3, 4)).astype(np.float32)
    layer = cls(4, 6, dtype="bfloat16", seed=1)
    opt = fastrnn.optim.SGD(layer, lr=0.5)
    packs = []
    for _ in range(2):
        y, _ = layer(x)
        layer.backward(np.ones_like(y))
        packs.append(layer._pack_cache[0, 0][-1])
    assert packs[0] is packs[1]
    assert packs[0].precision == "bfloat16" and packs[0].backward is not None
    opt.step()
    layer.zero_grad()
    y, _ = layer(x)
    layer.backward(np.ones_like(y))
    assert layer._pack_cache[0, 0][-1] is not packs[0]
    fresh = cls(4, 6, dtype="bfloat16", seed=2)
    fresh.load_state_dict(layer.state_dict())
    want, _ = fresh(x)
    fresh.backward(np.ones_like(want))
    np.testing.assert_array_equal(y, want)
    for a, b in zip(layer.parameters(), fresh.parameters()):
        np.testing.assert_array_equal(a.grad, b.grad)


# -- fit and the command line -----------------------------------------------------------

TEXT = "to be or not to be, that is the question. " * 40


def _lm(cell="lstm", **options):
    return fastrnn.LanguageModel(fastrnn.data.Vocabulary.from_text(TEXT), hidden=32, embed=8,
                                 cell=cell, seed=0, **options)


class _Precisions:
    """A callback that records the recurrent layers' precision at each epoch's end."""

    def __init__(self, model):
        self.layers = [m for _, m in model.named_modules() if "precision" in vars(m)]
        self.seen = []

    def on_epoch_end(self, history):
        self.seen.append({m.precision for m in self.layers})


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_fit_in_bf16_lowers_the_loss_close_to_float32(cell):
    losses = {}
    for precision in ("float32", "bf16"):
        model = _lm(cell)
        seen = _Precisions(model)
        history = model.fit(TEXT, epochs=4, seq_len=16, batch_size=4, verbose=False,
                            precision=precision, callbacks=[seen])
        losses[precision] = np.array(history["step_loss"])
        layer_precision = "bfloat16" if precision == "bf16" else "float32"
        assert seen.seen == [{layer_precision}] * 4           # bf16 during the fit
        assert {m.precision for m in seen.layers} == {"float32"}   # restored after
        assert all(p.value.dtype == np.float32 for p in model.parameters())
    low, full = losses["bf16"], losses["float32"]
    assert low[-5:].mean() < low[:5].mean() - 0.3
    assert 0 < np.abs(low - full).max() < 0.02


def test_fit_precision_none_keeps_the_layers_and_float32_overrides_them():
    model = _lm().to("bfloat16")
    seen = _Precisions(model)
    model.fit(TEXT, epochs=1, seq_len=16, batch_size=4, verbose=False, callbacks=[seen])
    model.fit(TEXT, epochs=1, seq_len=16, batch_size=4, verbose=False, callbacks=[seen],
              precision="float32")
    assert seen.seen == [{"bfloat16"}, {"float32"}]
    assert {m.precision for m in seen.layers} == {"bfloat16"}


@pytest.mark.parametrize("bad", ["float16", "int8", "BF16", 16, np.float32])
def test_fit_refuses_other_precisions(bad):
    with pytest.raises(ValueError, match="precision must be None or one of"):
        _lm().fit(TEXT, epochs=1, verbose=False, precision=bad)


def test_fit_refuses_layers_that_cannot_train_in_bf16():
    with pytest.raises(ValueError, match="needs float32 layers"):
        _lm(dtype="float64").fit(TEXT, epochs=1, verbose=False, precision="bf16")
    quantized = fastrnn.quantize_dynamic(_lm())
    with pytest.raises(ValueError, match="int8 layer"):
        quantized.fit(TEXT, epochs=1, verbose=False, precision="bfloat16")


def test_cli_train_in_bf16_and_resume(tmp_path, capsys):
    from fastrnn.cli import main
    from fastrnn.io import load_checkpoint
    text = tmp_path / "tiny.txt"
    text.write_text(TEXT, encoding="utf-8")
    ckpt = tmp_path / "bf16.ckpt"
    tiny = ["--hidden", "16", "--embed", "8", "--seq-len", "16", "--batch", "4"]
    assert main(["train", str(text), "--epochs", "1", "--precision", "bf16", "--output",
                 str(ckpt), *tiny]) == 0
    out = capsys.readouterr().out
    assert "bf16 products" in out and "bits per character" in out
    stored = load_checkpoint(ckpt)[2]["training"]["user"]["cli"]
    assert stored["precision"] == "bf16"
    assert main(["train", "--resume", str(ckpt), "--epochs", "2", "--quiet"]) == 0
    assert load_checkpoint(ckpt)[2]["training"]["user"]["cli"]["precision"] == "bf16"
    assert main(["sample", str(ckpt), "--length", "10", "--seed", "1"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["train", str(text), "--precision", "float16"])
    assert info.value.code == 2 and "--precision" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["train", str(text), "--precision", "bf16", "--dtype", "float64", "--output",
              str(tmp_path / "f64.ckpt"), *tiny])
    assert info.value.code == 2 and "needs float32 weights" in capsys.readouterr().err
