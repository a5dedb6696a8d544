"""Sequence to sequence: written dates to ISO 8601, character by character.

A synthetic data set made with :mod:`datetime`: random days from 1950 to 2049 written in
one of several human formats ("3 March 1998", "Tuesday, March 3, 1998", "03/03/98",
"Mar 3rd, 1998", ...) paired with their ISO form "1998-03-03". An LSTM encoder-decoder
(:class:`fastrnn.models.Seq2Seq`) is trained with teacher forcing and decodes greedily;
the script prints the exact-match accuracy on held-out dates and a few translations.
Two-digit years are read in 1950-2049, and "03/04/98" is month/day (US order).

    python examples/dates.py [--train 20000] [--epochs 5] [--seed 0] [--quick]
"""
from __future__ import annotations

import datetime as dt
import random
import string

from fastrnn.data import Vocabulary
from fastrnn.models import Seq2Seq

import _common   # examples/ is on sys.path when a script there runs


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


FORMATS = [
    lambda d: f"{d.day} {d:%B %Y}",                        # 3 March 1998
    lambda d: f"{d:%A, %B} {d.day}, {d.year}",             # Tuesday, March 3, 1998
    lambda d: f"{d:%m/%d/%y}",                             # 03/03/98
    lambda d: f"{d:%b} {_ordinal(d.day)}, {d.year}",       # Mar 3rd, 1998
    lambda d: f"{d:%d.%m.%Y}",                             # 03.03.1998
    lambda d: f"{d:%a %d %b %Y}".lower(),                  # tue 03 mar 1998
    lambda d: f"the {_ordinal(d.day)} of {d:%B, %Y}",      # the 3rd of March, 1998
    lambda d: f"{d:%B} {d.day} {d:%y}".upper(),            # MARCH 3 98
]


def make_dates(n: int, rng: random.Random):
    """``n`` pairs (written date, ISO date) of random days in 1950-2049."""
    first, days = dt.date(1950, 1, 1).toordinal(), 36524
    pairs = []
    for _ in range(n):
        day = dt.date.fromordinal(first + rng.randrange(days))
        pairs.append((rng.choice(FORMATS)(day), day.isoformat()))
    return [s for s, _ in pairs], [t for _, t in pairs]


def main(argv=None) -> dict:
    p = _common.parser(__doc__)
    p.add_argument("--train", type=int, default=20000, help="training pairs")
    p.add_argument("--test", type=int, default=2000, help="held-out pairs")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args(argv)
    started = _common.start(args)
    if args.quick:
        args.train, args.test, args.epochs, args.hidden = 300, 50, 1, 16

    rng = random.Random(args.seed)
    src_train, tgt_train = make_dates(args.train, rng)
    src_test, tgt_test = make_dates(args.test, rng)
    src_vocab = Vocabulary.from_sequences([string.ascii_letters + string.digits + " ,./"])
    tgt_vocab = Vocabulary.from_sequences(["0123456789-"])

    model = Seq2Seq(src_vocab, tgt_vocab, hidden=args.hidden, seed=args.seed)
    model.fit(src_train, tgt_train, epochs=args.epochs, batch_size=args.batch, lr=args.lr,
              seed=args.seed, verbose=args.verbose)
    result = model.evaluate(src_test, tgt_test)
    for source, guess, truth in zip(src_test[:6], model.predict(src_test[:6]), tgt_test):
        print(f"  {source:>28} -> {guess}  {'ok' if guess == truth else 'want ' + truth}")
    return _common.report("written dates -> ISO 8601", {
        "train_pairs": args.train, "test_pairs": args.test,
        "exact_match": result["exact_match"], "token_accuracy": result["token_accuracy"]},
        started)


if __name__ == "__main__":
    main()
