"""Forecasting: next month's atmospheric CO2 at Mauna Loa, against the persistence baseline.

statsmodels ships the weekly Mauna Loa CO2 record (1958-2001); it is averaged to months
(missing weeks interpolated), 526 values. The model reads the last ``--window`` monthly
changes and predicts the next one (a many-to-one :class:`fastrnn.models.SequenceRegressor`
over sliding windows, normalised with training statistics); the forecast is the last value
plus that change. The split is chronological: the last 20 % of months are the test set.
The test RMSE is printed next to persistence (next month = this month) and the seasonal
naive forecast (next month = the same month a year before), both of which it must beat.

    pip install statsmodels
    python examples/forecast.py [--window 24] [--epochs 150] [--seed 0] [--quick]
"""
from __future__ import annotations

import numpy as np

from fastrnn.models import SequenceRegressor

import _common   # examples/ is on sys.path when a script there runs


def monthly_co2() -> np.ndarray:
    import statsmodels.api as sm
    weekly = sm.datasets.co2.load_pandas().data["co2"]
    return weekly.resample("MS").mean().interpolate().to_numpy()


def windows(series: np.ndarray, width: int, targets: range):
    """Inputs ``series[t - width:t]`` and targets ``series[t]`` for each ``t`` in targets."""
    x = np.stack([series[t - width:t] for t in targets])
    return x[:, :, None].astype(np.float32), series[list(targets)].astype(np.float32)


def rmse(error) -> float:
    return float(np.sqrt(np.mean(np.square(error))))


def main(argv=None) -> dict:
    p = _common.parser(__doc__)
    p.add_argument("--window", type=int, default=24, help="months of history per forecast")
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    args = p.parse_args(argv)
    started = _common.start(args)

    level = monthly_co2()
    change = np.diff(level)                        # change[t] = level[t + 1] - level[t]
    split = int(0.8 * len(change))                 # changes before it are training data
    mean, std = change[:split].mean(), change[:split].std()
    scaled = (change - mean) / std
    x_train, y_train = windows(scaled, args.window, range(args.window, split))
    x_test, y_test = windows(scaled, args.window, range(split, len(change)))
    if args.quick:
        args.epochs, args.hidden = 2, 8

    model = SequenceRegressor(input_size=1, hidden=args.hidden, seed=args.seed)
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=32, lr=args.lr,
              seed=args.seed, verbose=args.verbose)
    predicted = model.predict(x_test)[:, 0] * std + mean        # next month's change
    t = np.arange(split, len(change))              # forecast level[t + 1] from level[..t]
    actual = level[t + 1]
    return _common.report("monthly CO2 forecast (ppm, test = last 20 % of months)", {
        "train_windows": len(x_train), "test_months": len(t),
        "model_rmse": rmse(level[t] + predicted - actual),
        "persistence_rmse": rmse(level[t] - actual),
        "seasonal_naive_rmse": rmse(level[t + 1 - 12] - actual),
        "model_mae": float(np.mean(np.abs(level[t] + predicted - actual))),
        "persistence_mae": float(np.mean(np.abs(level[t] - actual)))}, started)


if __name__ == "__main__":
    main()
