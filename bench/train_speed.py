"""Training throughput of `fastrnn train`'s default model against PyTorch, same run.

The default of `fastrnn train`: a character LSTM language model (embedding 64, one LSTM
layer of 128, linear to the vocabulary), stateful truncated BPTT over windows of 64
characters in 32 parallel streams, Adam (lr 2e-3), global gradient-norm clipping at 5,
on the embedded default corpus. PyTorch runs the same model, optimizer, clipping and
windows (`nn.Embedding -> nn.LSTM -> nn.Linear`, `clip_grad_norm_`, `torch.optim.Adam`).

Both are timed in this process, interleaved: round r trains each library for `--steps`
optimizer steps (the starting library alternates), and the report gives the median
characters per second over the rounds and the ratio fastrnn / torch, per thread count.

    python bench/train_speed.py                 # 1 and 2 threads, 5 rounds of 30 steps
    python bench/train_speed.py --threads 1 --rounds 3 --steps 20
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

EMBED, HIDDEN, SEQ_LEN, BATCH, LR, CLIP = 64, 128, 64, 32, 2e-3, 5.0


def windows(streams: np.ndarray, steps: int):
    """``steps`` (inputs, targets) windows of (SEQ_LEN, BATCH) ids, wrapping around."""
    starts = range(0, streams.shape[0] - SEQ_LEN - 1, SEQ_LEN)
    out = []
    while len(out) < steps:
        out += [(streams[s:s + SEQ_LEN], streams[s + 1:s + SEQ_LEN + 1]) for s in starts]
    return out[:steps]


class FastrnnTrainer:
    """The work of one step of ``LanguageModel.fit`` (models/_training.py), without its
    progress bar, checkpoints and finiteness checks."""

    def __init__(self, vocab):
        self.model = LanguageModel(vocab, embed=EMBED, hidden=HIDDEN, seed=0)
        self.optimizer = self.model._make_optimizer(None, LR)

    def run(self, batches):
        model, optimizer = self.model, self.optimizer
        model._start_epoch()
        for batch in batches:
            optimizer.zero_grad()
            model._forward_backward(batch)
            optim.clip_grad_norm_(model, CLIP)
            optimizer.step()


class TorchTrainer:
    def __init__(self, vocab_size):
        import torch
        self.torch = torch
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(vocab_size, EMBED)
        self.lstm = torch.nn.LSTM(EMBED, HIDDEN)
        self.head = torch.nn.Linear(HIDDEN, vocab_size)
        self.params = [*self.embed.parameters(), *self.lstm.parameters(),
                       *self.head.parameters()]
        self.optimizer = torch.optim.Adam(self.params, lr=LR)

    def run(self, batches):
        torch, state = self.torch, None
        for inputs, targets in batches:
            x = torch.from_numpy(inputs)
            y = torch.from_numpy(targets)
            self.optimizer.zero_grad()
            out, state = self.lstm(self.embed(x), state)
            state = tuple(s.detach() for s in state)
            logits = self.head(out)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                     y.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, CLIP)
            self.optimizer.step()


def chars_per_second(trainer, batches) -> float:
    start = time.perf_counter()
    trainer.run(batches)
    return len(batches) * SEQ_LEN * BATCH / (time.perf_counter() - start)


def measure(threads: int, rounds: int, steps: int) -> dict:
    import torch
    fastrnn.set_num_threads(threads)
    torch.set_num_threads(threads)
    text = default_corpus()
    vocab = Vocabulary.from_text(text)
    streams = batchify(vocab.encode(text), BATCH)
    batches = windows(streams, steps)
    trainers = {"fastrnn": FastrnnTrainer(vocab), "torch": TorchTrainer(len(vocab))}
    for trainer in trainers.values():                 # warm-up
        trainer.run(batches[:3])
    rates = {name: [] for name in trainers}
    names = list(trainers)
    for r in range(rounds):
        for name in names[r % 2:] + names[:r % 2]:
            rates[name].append(chars_per_second(trainers[name], batches))
    return {name: statistics.median(v) for name, v in rates.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per round")
    args = parser.parse_args(argv)
    print("| threads | fastrnn chars/s | torch chars/s | fastrnn / torch |")
    print("|---:|---:|---:|---:|")
    for threads in (int(t) for t in args.threads.split(",")):
        m = measure(threads, args.rounds, args.steps)
        print(f"| {threads} | {m['fastrnn']:,.0f} | {m['torch']:,.0f} | "
              f"{m['fastrnn'] / m['torch']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
