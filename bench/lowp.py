"""Reduced precision: fastrnn bf16 / int8 against PyTorch bf16 autocast and ONNX Runtime
``quantize_dynamic``, on the same weights: speed and output error.

    python bench/lowp.py                                  # lstm, gru; medium and B=1; 1 thread
    python bench/lowp.py --cells lstm --shapes medium --threads 2 --repeats 9

Every entry runs the same float32 weights (a fastrnn layer with PyTorch's init, copied into
``torch.nn.<Cell>`` and exported to ONNX) on the same input, single sequence forward in
inference mode. Time: the median wall time of ``--repeats`` runs after one warm-up, entries
sampled round-robin. Error: max |y - y_float32| against fastrnn's float32 output (PyTorch's
float32 output agrees with it to ~1e-6). ONNX Runtime's ``quantize_dynamic`` quantizes LSTM
only (``DynamicQuantizeLSTM``); for GRU and RNN its "int8" file keeps the float32 operator,
marked so in the table. Peers that are not installed are skipped.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import fastrnn
from fastrnn import nn

SHAPES = {"medium": (64, 100, 256, 256), "b1": (1, 100, 256, 256), "small": (16, 50, 64, 64)}
CLASSES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


def _torch_entries(layer, cell, x, threads):
    try:
        import torch
    except ImportError:
        return {}
    torch.set_num_threads(threads)
    module = getattr(torch.nn, cell.upper())(layer.input_size, layer.hidden_size)
    module.load_state_dict(layer.state_dict(format="torch"))
    module.eval()
    tx = torch.from_numpy(x)

    def f32():
        with torch.inference_mode():
            return module(tx)[0].numpy()

    def bf16():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return module(tx)[0].float().numpy()
    return {"torch float32": f32, "torch bf16 autocast": bf16}


def _ort_entries(layer, cell, x, threads):
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        from fastrnn.bench.peers import ort_quantize_dynamic, ort_session
    except ImportError:
        return {}
    exported = fastrnn.onnx.export(layer)
    quantized, int8 = ort_quantize_dynamic(exported)
    entries = {}
    for name, graph in (("ort float32", exported),
                        ("ort int8" if int8 else "ort int8 (kept float32)", quantized)):
        session = ort_session(graph, threads)
        feed = {session.get_inputs()[0].name: x}
        entries[name] = (lambda s=session, f=feed: s.run(None, f)[0])
    return entries


def _fastrnn_entries(layer, x):
    low = fastrnn.quantize_dynamic(layer)            # copies; then a bf16 copy of the layer
    bf16 = fastrnn.quantize_dynamic(layer)
    bf16.load_state_dict({k: v for k, v in layer.state_dict().items()})
    bf16.to("bfloat16")

    def run(module):
        with fastrnn.no_grad():
            return module(x)[0]
    return {"fastrnn float32": lambda: run(layer), "fastrnn bf16": lambda: run(bf16),
            "fastrnn int8": lambda: run(low)}


def bench_case(cell, shape, threads, repeats):
    B, T, I, H = SHAPES[shape]
    layer = CLASSES[cell](I, H, seed=0)
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    fastrnn.set_num_threads(threads)
    entries = {**_fastrnn_entries(layer, x), **_torch_entries(layer, cell, x, threads),
               **_ort_entries(layer, cell, x, threads)}
    reference = entries["fastrnn float32"]()
    errors = {name: float(np.abs(f() - reference).max()) for name, f in entries.items()}
    times = {name: [] for name in entries}
    for _ in range(repeats):
        for name, f in entries.items():
            start = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), errors[name]) for name in entries}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="lstm,gru")
    parser.add_argument("--shapes", default="medium,b1")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"ISA {fastrnn._core.get_isa()}, {args.threads} thread(s), median of "
          f"{args.repeats}; shapes (B, T, I, H): "
          + ", ".join(f"{s} {SHAPES[s]}" for s in args.shapes.split(",")))
    print("\n| cell | shape | entry | ms | vs fastrnn f32 | max abs error vs float32 |")
    print("|---|---|---|---:|---:|---:|")
    for cell in args.cells.split(","):
        for shape in args.shapes.split(","):
            results = bench_case(cell, shape, args.threads, args.repeats)
            base = results["fastrnn float32"][0]
            for name, (seconds, error) in results.items():
                print(f"| {cell} | {shape} | {name} | {seconds * 1e3:.2f} | "
                      f"{base / seconds:.2f}x | {error:.1e} |")


if __name__ == "__main__":
    main()
