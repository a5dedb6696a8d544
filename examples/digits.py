"""Sequential digits: classify 8x8 handwritten digits read one row at a time.

scikit-learn's ``load_digits`` (1797 images, shipped with the package) becomes sequences of
8 time steps with 8 features each (pixel rows scaled to [0, 1]); a GRU reads them and its
last state is classified (many-to-one :class:`fastrnn.models.SequenceClassifier`). A
stratified 75/25 split; the test accuracy is printed (>= 97 % with the defaults).

    pip install scikit-learn
    python examples/digits.py [--epochs 40] [--hidden 128] [--seed 0] [--quick]
"""
from __future__ import annotations

import numpy as np

from fastrnn.models import SequenceClassifier

import _common   # examples/ is on sys.path when a script there runs


def main(argv=None) -> dict:
    p = _common.parser(__doc__)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--cell", default="gru", choices=["rnn", "lstm", "gru"])
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args(argv)
    started = _common.start(args)

    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)              # (N, 8 rows, 8 columns)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.25, stratify=digits.target, random_state=args.seed)
    if args.quick:
        x_train, y_train, args.epochs, args.hidden = x_train[:200], y_train[:200], 1, 16

    model = SequenceClassifier(num_classes=10, input_size=8, hidden=args.hidden,
                               cell=args.cell, seed=args.seed)
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch, lr=args.lr,
              seed=args.seed, verbose=args.verbose)
    result = model.evaluate(x_test, y_test)
    return _common.report("sequential digits", {
        "train_samples": len(x_train), "test_samples": len(x_test),
        "test_accuracy": result["accuracy"], "test_loss": result["loss"]}, started)


if __name__ == "__main__":
    main()
