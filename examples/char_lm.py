"""Character-level language model on the embedded corpus, trained for a fixed time.

The corpus is :func:`fastrnn.data.default_corpus` -- the help pages of the Python
language reference that ship with CPython (~465k characters, offline everywhere). An LSTM
:class:`fastrnn.models.LanguageModel` trains by stateful truncated BPTT for
``--time-budget`` seconds on all but the last 5 %; the script then prints bits per
character on that held-out tail, the training throughput, and a sample at temperature 0.8.

    python examples/char_lm.py [--time-budget 60] [--hidden 128] [--seed 0] [--quick]
"""
from __future__ import annotations

from fastrnn.data import Vocabulary, default_corpus
from fastrnn.models import LanguageModel

import _common   # examples/ is on sys.path when a script there runs


def main(argv=None) -> dict:
    p = _common.parser(__doc__)
    p.add_argument("--time-budget", type=float, default=60.0, help="training seconds")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--cell", default="lstm", choices=["rnn", "lstm", "gru"])
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--prime", default="The ")
    args = p.parse_args(argv)
    started = _common.start(args)

    text = default_corpus()
    vocab = Vocabulary.from_text(text)
    split = int(0.95 * len(text))
    train, held_out = text[:split], text[split:]
    if args.quick:
        args.time_budget, args.hidden, held_out = 1.0, 32, held_out[:2000]

    model = LanguageModel(vocab, hidden=args.hidden, layers=args.layers, cell=args.cell,
                          seed=args.seed)
    history = model.fit(train, epochs=None, time_budget=args.time_budget,
                        seq_len=args.seq_len, batch_size=args.batch, lr=args.lr,
                        verbose=args.verbose)
    sample = model.generate(args.prime, length=300 if not args.quick else 50,
                            temperature=args.temperature, seed=args.seed)
    print(f"\n-- sample (temperature {args.temperature}) --\n{sample}")
    metrics = _common.report("character-level language model", {
        "corpus_chars": len(text), "vocab_size": len(vocab),
        "trained_chars": history["units"], "train_seconds": round(history["seconds"], 1),
        "chars_per_second": round(history["units"] / history["seconds"]),
        "held_out_chars": len(held_out), "held_out_bpc": model.evaluate(held_out)["bpc"]},
        started)
    return dict(metrics, sample=sample)


if __name__ == "__main__":
    main()
