"""Reduced precision on real tasks: fastrnn bf16 / int8 against PyTorch bf16 autocast and
ONNX Runtime int8, on the same trained weights.

    python bench/lowp_accuracy.py              # the three tasks, then the bench shapes
    python bench/lowp_accuracy.py --quick      # a smoke test: tiny models, seconds
    python bench/lowp_accuracy.py --json out.json

Three models are trained, short and seeded, in float32 (LSTM, one layer, Adam):

* **char-LM** on the embedded corpus (:func:`fastrnn.data.default_corpus`), trained on
  the first 95 % (two epochs, hidden 256); scored in **bits per character** on the held-out last 5 %,
  folded into 16 rows each read from a zero state (every engine reads the same rows);
* **sequential digits** (scikit-learn's 8x8 digits, one pixel row per step, stratified
  75/25 split as examples/digits.py): test **accuracy**;
* **CO2 forecaster** (statsmodels' Mauna Loa record, monthly, as examples/forecast.py):
  **RMSE** (ppm) of next month's level on the last 20 % of months.

Each trained model is then run, unchanged, by every engine:

* ``fastrnn float32``, ``fastrnn bf16`` (``model.to("bfloat16")``: bf16 recurrent products,
  float32 accumulation, state and head), ``fastrnn int8`` (``fastrnn.quantize_dynamic``:
  int8 recurrent weights per row, activations quantized per row and step, float32 head);
* ``torch float32`` and ``torch bf16 autocast``: the same weights copied into
  ``torch.nn.Embedding`` / ``LSTM`` / ``Linear`` (``state_dict(format="torch")``), the
  whole forward under ``torch.autocast("cpu", dtype=torch.bfloat16)`` -- what a PyTorch
  user does (autocast also runs the head's matmul in bf16);
* ``ort float32`` and ``ort int8``: the model exported by :func:`fastrnn.onnx.export`,
  and ``onnxruntime.quantization.quantize_dynamic`` of that file (QInt8 weights; LSTM
  becomes ``DynamicQuantizeLSTM``, the head's MatMul is quantized too) -- what an ONNX
  Runtime user does.

The float32 rows of torch and ORT check that the copy and the export are exact. Targets
(issue 9): bpc within 0.02 of float32, accuracy within 0.5 points, RMSE within 5 %.

Last, the **output error on the bench shapes** (``fastrnn bench``'s problems: PyTorch-
initialised weights, normal inputs, one forward; RNN, LSTM, GRU): max |y - y32| / max |y32|
against fastrnn's float32 output, for fastrnn bf16 beside torch bf16 autocast and fastrnn
int8 beside ORT int8 (LSTM only: ORT has no int8 GRU or RNN). Engines whose package is
not installed are left out; a task whose dataset package is missing is skipped.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from typing import Callable, NamedTuple

import numpy as np

import fastrnn
from fastrnn.data import Vocabulary, batchify, default_corpus
from fastrnn.models import LanguageModel, SequenceClassifier, SequenceRegressor

TARGETS = {"bpc": ("lower", 0.02, "abs"), "accuracy": ("higher", 0.005, "abs"),
           "rmse": ("lower", 0.05, "rel")}


# --------------------------------------------------------------------------- tasks

class Task(NamedTuple):
    """A trained model, the inputs every engine reads, and how its outputs are scored."""
    name: str
    metric: str                       # "bpc", "accuracy" or "rmse"
    model: object
    inputs: np.ndarray                # batch-first, what model.forward takes
    score: Callable                   # outputs -> float
    info: dict


def char_lm(quick: bool, seed: int) -> Task:
    text = default_corpus()
    vocab = Vocabulary.from_text(text)
    split = int(0.95 * len(text))
    train, held_out = text[:split], text[split:]
    hidden, chars, epochs = (32, 20_000, 1) if quick else (256, len(train), 2)
    model = LanguageModel(vocab, hidden=hidden, cell="lstm", seed=seed)
    model.fit(train[:chars], epochs=epochs, seq_len=64, batch_size=32, lr=3e-3,
              verbose=False)
    rows = batchify(np.asarray(vocab.encode(held_out[:2_000] if quick else held_out)), 16)
    ids = np.ascontiguousarray(rows.T)                        # (16, T) batch-first

    def bpc(logits):                                          # (B, T, V) -> bits per char
        logits = logits[:, :-1].astype(np.float64)
        logits -= logits.max(axis=-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        target = ids[:, 1:]
        picked = np.take_along_axis(logp, target[..., None], axis=-1)
        return float(-picked.mean() / math.log(2))
    return Task("char-LM", "bpc", model, ids, bpc,
                {"hidden": hidden, "train_chars": chars, "epochs": epochs,
                 "held_out_chars": int(ids.size)})


def digits(quick: bool, seed: int) -> Task:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)                   # (N, 8 rows, 8 columns)
    x_train, x_test, y_train, y_test = train_test_split(
        x, data.target, test_size=0.25, stratify=data.target, random_state=seed)
    hidden, epochs = (16, 1) if quick else (128, 30)
    model = SequenceClassifier(num_classes=10, input_size=8, hidden=hidden, cell="lstm",
                               seed=seed)
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, lr=5e-3, seed=seed,
              verbose=False)
    return Task("sequential digits", "accuracy", model, x_test,
                lambda logits: float(np.mean(logits.argmax(axis=-1) == y_test)),
                {"hidden": hidden, "epochs": epochs, "test_samples": len(x_test)})


def co2(quick: bool, seed: int) -> Task:
    import statsmodels.api as sm
    weekly = sm.datasets.co2.load_pandas().data["co2"]
    level = weekly.resample("MS").mean().interpolate().to_numpy()
    change = np.diff(level)                        # change[t] = level[t + 1] - level[t]
    split, width = int(0.8 * len(change)), 24
    mean, std = change[:split].mean(), change[:split].std()
    scaled = (change - mean) / std

    def windows(targets):
        x = np.stack([scaled[t - width:t] for t in targets])
        return x[:, :, None].astype(np.float32), scaled[list(targets)].astype(np.float32)
    x_train, y_train = windows(range(width, split))
    x_test, _ = windows(range(split, len(change)))
    hidden, epochs = (8, 2) if quick else (32, 150)
    model = SequenceRegressor(input_size=1, hidden=hidden, cell="lstm", seed=seed)
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, lr=3e-3, seed=seed,
              verbose=False)
    t = np.arange(split, len(change))

    def rmse(predictions):                         # scaled changes -> level RMSE (ppm)
        forecast = level[t] + predictions.reshape(len(t)) * std + mean
        return float(np.sqrt(np.mean(np.square(forecast - level[t + 1]))))
    return Task("CO2 forecaster", "rmse", model, x_test, rmse,
                {"hidden": hidden, "epochs": epochs, "test_months": len(t)})


TASKS = {"char_lm": char_lm, "digits": digits, "co2": co2}
_TASK_NEEDS = {"digits": "sklearn", "co2": "statsmodels"}


# --------------------------------------------------------------------------- engines

def _fastrnn_engines(model) -> dict:
    """float32, bf16 and int8 fastrnn copies of the model: inputs -> outputs."""
    bf16 = type(model).from_bytes(model.to_bytes()).to("bfloat16")
    int8 = fastrnn.quantize_dynamic(model)

    def run(m):
        def forward(inputs):
            with m.inference():
                out = m.forward(inputs)
            return out[0] if isinstance(out, tuple) else out     # LM: (logits, state)
        return forward
    return {"fastrnn float32": run(model), "fastrnn bf16": run(bf16), "fastrnn int8": run(int8)}


def _torch_module(model):
    """The model's float32 weights in a torch.nn module of the same function."""
    import torch
    lm = isinstance(model, LanguageModel)
    parts = model.net if lm else model.encoder
    rnn_src, head_src = parts.rnn, (model.net.head if lm else model.head)
    if rnn_src.num_directions != 1:
        raise ValueError("the torch twin here is unidirectional only")

    class Twin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = None
            if parts.embedding is not None:
                w = parts.embedding.weight.value
                self.embedding = torch.nn.Embedding(*w.shape)
            self.rnn = getattr(torch.nn, rnn_src.__class__.__name__)(
                rnn_src.input_size, rnn_src.hidden_size, rnn_src.num_layers,
                batch_first=True)
            self.head = torch.nn.Linear(head_src.in_features, head_src.out_features)

        def forward(self, x):
            if self.embedding is not None:
                x = self.embedding(x)
            y, state = self.rnn(x)
            if lm:
                return self.head(y)                                # (B, T, V)
            h = state[0] if isinstance(state, tuple) else state    # (L, B, H)
            return self.head(h[-1])                                # pooling 'last'

    twin = Twin()
    with torch.no_grad():
        twin.rnn.load_state_dict(rnn_src.state_dict(format="torch"))   # torch tensors
        twin.head.weight.copy_(torch.from_numpy(np.array(head_src.weight.value)))
        twin.head.bias.copy_(torch.from_numpy(np.array(head_src.bias.value)))
        if twin.embedding is not None:
            twin.embedding.weight.copy_(torch.from_numpy(np.array(parts.embedding.weight.value)))
    return twin.eval()


def _torch_engines(model) -> dict:
    try:
        import torch
    except ImportError:
        return {}
    twin = _torch_module(model)

    def run(autocast):
        def forward(inputs):
            x = torch.from_numpy(np.ascontiguousarray(inputs))
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                        enabled=autocast):
                return twin(x).float().numpy()
        return forward
    from fastrnn.bench.peers import torch_bf16_runs
    engines = {"torch float32": run(False)}
    if torch_bf16_runs(type(twin.rnn).__name__.lower()):   # LSTM: needs AVX512-BF16
        engines["torch bf16 autocast"] = run(True)
    return engines


def _ort_engines(model) -> dict:
    """The model exported to ONNX, in ONNX Runtime as is and after its quantize_dynamic."""
    if not all(_importable(m) for m in ("onnx", "onnxruntime")):
        return {}
    from fastrnn.bench.peers import ort_quantize_dynamic, ort_session
    exported = fastrnn.onnx.export(model)
    quantized, int8_lstm = ort_quantize_dynamic(exported)
    engines = {}
    for name, graph in (("ort float32", exported),
                        ("ort int8" + ("" if int8_lstm else " (LSTM kept float32)"), quantized)):
        session = ort_session(graph, 1)
        feed = session.get_inputs()[0]
        ids = feed.type == "tensor(int64)"

        def forward(inputs, s=session, n=feed.name, ids=ids):
            return s.run(None, {n: inputs.astype(np.int64) if ids else inputs})[0]
        engines[name] = forward
    return engines


def _meets(metric: str, value: float, base: float) -> bool:
    direction, bound, kind = TARGETS[metric]
    slack = bound * abs(base) if kind == "rel" else bound
    return value >= base - slack if direction == "higher" else value <= base + slack


def evaluate_task(task: Task, log=print) -> dict:
    """Every engine's score on the task, and whether it meets the target vs float32."""
    engines = {**_fastrnn_engines(task.model), **_torch_engines(task.model),
               **_ort_engines(task.model)}
    scores, seconds = {}, {}
    for name, forward in engines.items():
        start = time.perf_counter()
        scores[name] = task.score(forward(task.inputs))
        seconds[name] = time.perf_counter() - start
    base = scores["fastrnn float32"]
    rows = {name: {"score": s, "delta": s - base, "meets_target": _meets(task.metric, s, base),
                   "seconds": seconds[name]} for name, s in scores.items()}
    log(f"  {task.name}: " + ", ".join(f"{n} {s:.4f}" for n, s in scores.items()))
    return {"task": task.name, "metric": task.metric, "info": task.info, "engines": rows}


# --------------------------------------------------------------------------- bench shapes

def bench_shape_errors(shapes, cells=("rnn", "lstm", "gru"), log=print) -> list:
    """max |y - y32| / max |y32| on ``fastrnn bench``'s problems, per precision and engine."""
    from fastrnn import bench
    from fastrnn.bench.measure import max_rel_error
    peers = {"fastrnn": bench.FastrnnPeer("ops")}
    for name in ("torch", "onnxruntime"):
        if bench.available_entries([name]):
            peers[name] = bench.PEER_FACTORIES[name]()
    out = []
    for cell in cells:
        for shape in shapes:
            full = bench.Case.of(cell, shape, "forward", 1)
            problem = bench.make_problem(full)
            reference = peers["fastrnn"].make(full, problem).check()[0]
            row = {"cell": cell, "shape": shape}
            for precision in ("bf16", "int8"):
                case = dataclasses.replace(full, precision=precision)
                for name in bench.case_entries(peers, precision):
                    runner = peers[name].make(case, problem)
                    if runner is None:
                        continue
                    key = f"{name} {precision}"
                    if runner.note:          # ORT's float32 GRU / RNN: not an int8 error
                        row[key] = None
                        continue
                    row[key] = max_rel_error(runner.check()[0], reference)
            out.append(row)
            log(f"  {cell} {shape}: " + ", ".join(
                f"{k} {v:.1e}" for k, v in row.items() if isinstance(v, float)))
    return out


# --------------------------------------------------------------------------- report

def _fmt(metric, value):
    return f"{100 * value:.2f}%" if metric == "accuracy" else f"{value:.4f}"


def format_tables(results: list, errors: list, machine: str) -> str:
    engines = list(dict.fromkeys(n for r in results for n in r["engines"]))
    lines = [f"Accuracy on the same trained weights ({machine}); "
             "✓ = within the target of fastrnn float32 (bpc +0.02, accuracy −0.5 points, "
             "RMSE +5 %).", "",
             "| task (metric) | " + " | ".join(engines) + " |",
             "|---|" + "---:|" * len(engines)]
    for r in results:
        cells = []
        for name in engines:
            row = r["engines"].get(name)
            cells.append("–" if row is None else
                         _fmt(r["metric"], row["score"]) + (" ✓" if row["meets_target"] else " ✗"))
        lines.append(f"| {r['task']} ({r['metric']}) | " + " | ".join(cells) + " |")
    lines += ["", "Trained: " + "; ".join(
        f"{r['task']} " + ", ".join(f"{k} {v}" for k, v in r["info"].items()) for r in results)
        + "."]
    if errors:
        cols = [k for k in ("fastrnn bf16", "torch bf16", "fastrnn int8", "onnxruntime int8")
                if any(k in e for e in errors)]
        lines += ["", "Output error on the bench shapes, max |y − y_float32| ÷ max |y_float32| "
                  "(same weights and inputs; – : ORT has no int8 GRU/RNN)", "",
                  "| case | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        for e in errors:
            lines.append(f"| {e['cell'].upper()} {e['shape']} | " + " | ".join(
                "–" if e.get(k) is None else f"{e[k]:.1e}" for k in cols) + " |")
    return "\n".join(lines)


def _machine() -> str:
    from fastrnn.bench.report import _cpu_name
    return f"{_cpu_name()}, fastrnn ISA {fastrnn._core.get_isa()}, 1 thread"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models: a smoke test")
    parser.add_argument("--tasks", default=",".join(TASKS),
                        help="comma-separated of " + ", ".join(TASKS))
    parser.add_argument("--shapes", default=None,
                        help="bench shapes for the output errors (default: all; --quick: "
                             "tiny,step; 'none' to skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        parser.error(f"--tasks: unknown {bad}; choose from {', '.join(TASKS)}")
    from fastrnn.bench.grid import SHAPES
    shapes = (args.shapes or ("tiny,step" if args.quick else ",".join(SHAPES))).split(",")
    shapes = [] if shapes == ["none"] else shapes
    bad = [s for s in shapes if s not in SHAPES]
    if bad:
        parser.error(f"--shapes: unknown {bad}; choose from {', '.join(SHAPES)}")
    fastrnn.set_num_threads(1)
    results, skipped = [], {}
    for name in tasks:
        need = _TASK_NEEDS.get(name)
        if need and not _importable(need):
            skipped[name] = f"{need} is not installed"
            print(f"  {name}: skipped ({skipped[name]})")
            continue
        start = time.perf_counter()
        task = TASKS[name](args.quick, args.seed)
        task.info["train_seconds"] = round(time.perf_counter() - start, 1)
        results.append(evaluate_task(task))
    errors = bench_shape_errors(shapes) if shapes else []
    machine = _machine()
    print()
    print(format_tables(results, errors, machine))
    out = {"machine": machine, "quick": args.quick, "seed": args.seed, "tasks": results,
           "bench_shape_errors": errors, "skipped": skipped}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


def _importable(module: str) -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):      # a parent package missing, or a blocked module
        return False


if __name__ == "__main__":
    main(sys.argv[1:])
