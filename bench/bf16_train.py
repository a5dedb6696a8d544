"""Mixed-precision (bf16) training of `fastrnn train`'s default model against float32.

The default of `fastrnn train` (as bench/train_speed.py builds it): a character LSTM
language model (embedding 64, one LSTM layer of 128, linear to the vocabulary), stateful
truncated BPTT over windows of 64 characters in 32 parallel streams, Adam (lr 2e-3),
global gradient-norm clipping at 5, on the embedded default corpus less its last 5 %
(held out, as `fastrnn train --holdout 0.05`).

Two models from the same seed train in this process: one in float32, one in bf16
(`fit(precision="bf16")`'s setting: the LSTM's products on bf16 operands, float32
backward, weights and Adam). Round r trains each for `--steps` optimizer steps on the same
windows (the starting one alternates); the report gives the median characters per second
over the rounds and the ratio bf16 / float32, then the held-out bits per character of both
after the same number of steps (evaluated in float32, and the bf16 model also in bf16).

A second table times the LSTM layer alone on one window ((T, B, I) = (64, 32, 64), H =
128 or --hidden): the training forward, and forward + backward, float32 against bf16 --
the part that mixed precision changes (the backward stays float32, so it bounds the whole
step's gain).

    python bench/bf16_train.py                      # 1 thread, 5 rounds of 30 steps
    python bench/bf16_train.py --rounds 3 --steps 20 --threads 1,2
    python bench/bf16_train.py --hidden 512        # a wider LSTM than the default
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import fastrnn
from fastrnn import optim
from fastrnn.data import Vocabulary, batchify, default_corpus
from fastrnn.models import LanguageModel
from fastrnn.models._training import fit_precision, layers_in_precision

from train_speed import BATCH, CLIP, EMBED, HIDDEN, LR, SEQ_LEN, windows  # the same model

HOLDOUT = 0.05
PRECISIONS = ("float32", "bf16")


class Trainer:
    """The work of ``LanguageModel.fit``'s steps (models/_training.py) in one precision,
    without its progress bar, checkpoints and finiteness checks; the model carries its
    state (and its position in the windows) from one call to the next."""

    def __init__(self, vocab, precision: str, hidden: int):
        self.model = LanguageModel(vocab, embed=EMBED, hidden=hidden, seed=0)
        if precision == "bf16":
            self.model.to("bfloat16")           # float32 Parameters, bf16 LSTM products
        self.optimizer = self.model._make_optimizer(None, LR)
        self.model.train()
        self.model._start_epoch()
        self.steps = 0

    def run(self, batches):
        model, optimizer = self.model, self.optimizer
        for batch in batches:
            optimizer.zero_grad()
            model._forward_backward(batch)
            optim.clip_grad_norm_(model, CLIP)
            optimizer.step()
        self.steps += len(batches)


def chars_per_second(trainer, batches) -> float:
    start = time.perf_counter()
    trainer.run(batches)
    return len(batches) * SEQ_LEN * BATCH / (time.perf_counter() - start)


def held_out_bpc(model, held_out: str, precision: str) -> float:
    """Bits per character on the held-out tail (as `fastrnn train` reports it), the LSTM's
    products in ``precision`` ('float32' or 'bf16'; the model's own restored after)."""
    with layers_in_precision(model, fit_precision(model, precision)):
        return model.evaluate(held_out, batch_size=8)["bpc"]


def measure_training(threads: int, rounds: int, steps: int, hidden: int) -> dict:
    fastrnn.set_num_threads(threads)
    text = default_corpus()
    split = len(text) - max(2, int(len(text) * HOLDOUT))
    train_text, held_out = text[:split], text[split:]
    vocab = Vocabulary.from_text(text)
    streams = batchify(vocab.encode(train_text), BATCH)
    batches = windows(streams, 3 + rounds * steps)
    trainers = {p: Trainer(vocab, p, hidden) for p in PRECISIONS}
    for trainer in trainers.values():                 # warm-up: the same 3 windows
        trainer.run(batches[:3])
    rates = {p: [] for p in PRECISIONS}
    for r in range(rounds):
        chunk = batches[3 + r * steps:3 + (r + 1) * steps]
        for p in PRECISIONS[r % 2:] + PRECISIONS[:r % 2]:
            rates[p].append(chars_per_second(trainers[p], chunk))
    result = {"rate": {p: statistics.median(v) for p, v in rates.items()},
              "spread": {p: (min(v), max(v)) for p, v in rates.items()},
              "steps": trainers["float32"].steps}
    assert trainers["bf16"].steps == result["steps"]
    result["bpc"] = {p: held_out_bpc(trainers[p].model, held_out, "float32")
                     for p in PRECISIONS}
    result["bpc_bf16_eval"] = held_out_bpc(trainers["bf16"].model, held_out, "bf16")
    return result


def measure_layer(threads: int, repeats: int, hidden: int) -> dict:
    """Median seconds of the LSTM layer's training forward and forward + backward on one
    window, per precision (interleaved)."""
    fastrnn.set_num_threads(threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((SEQ_LEN, BATCH, EMBED)).astype(np.float32)
    dy = rng.standard_normal((SEQ_LEN, BATCH, hidden)).astype(np.float32)
    layers = {p: fastrnn.nn.LSTM(EMBED, hidden, seed=0,
                                 dtype="bfloat16" if p == "bf16" else "float32")
              for p in PRECISIONS}
    times = {(p, part): [] for p in PRECISIONS for part in ("forward", "forward+backward")}
    for r in range(repeats + 2):                      # the first two: warm-up
        for p in PRECISIONS[r % 2:] + PRECISIONS[:r % 2]:
            layer = layers[p]
            layer.weight_hh_l0[0, 0] = layer.weight_hh_l0[0, 0]   # a new version: repack,
            start = time.perf_counter()                           # as after an optimizer step
            layer(x)
            middle = time.perf_counter()
            layer.backward(dy)
            end = time.perf_counter()
            if r >= 2:
                times[p, "forward"].append(middle - start)
                times[p, "forward+backward"].append(end - start)
    return {key: statistics.median(v) for key, v in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1", help="comma-separated thread counts")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per round")
    parser.add_argument("--layer-repeats", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=HIDDEN,
                        help="LSTM units (default: %(default)s, fastrnn train's)")
    args = parser.parse_args(argv)
    print(f"ISA level {fastrnn._core.get_isa()}, LSTM {args.hidden}")
    print("| threads | float32 chars/s | bf16 chars/s | bf16 / float32 | steps each | "
          "held-out bpc float32 | bpc bf16 (float32 eval) | bpc bf16 (bf16 eval) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for threads in (int(t) for t in args.threads.split(",")):
        m = measure_training(threads, args.rounds, args.steps, args.hidden)
        rate, bpc = m["rate"], m["bpc"]
        print(f"| {threads} | {rate['float32']:,.0f} | {rate['bf16']:,.0f} | "
              f"{rate['bf16'] / rate['float32']:.2f} | {m['steps']} | {bpc['float32']:.4f} | "
              f"{bpc['bf16']:.4f} | {m['bpc_bf16_eval']:.4f} |", flush=True)
        spread = ", ".join(f"{p} {lo:,.0f}-{hi:,.0f}" for p, (lo, hi) in m["spread"].items())
        print(f"  (chars/s range over the rounds: {spread})")
    print()
    print("| threads | LSTM layer, one window | float32 ms | bf16 ms | float32 / bf16 |")
    print("|---:|---|---:|---:|---:|")
    for threads in (int(t) for t in args.threads.split(",")):
        t = measure_layer(threads, args.layer_repeats, args.hidden)
        for part in ("forward", "forward+backward"):
            f32, low = t["float32", part], t["bf16", part]
            print(f"| {threads} | training {part} | {f32 * 1e3:.2f} | {low * 1e3:.2f} | "
                  f"{f32 / low:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
