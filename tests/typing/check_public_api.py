"""The public API as a user's code calls it, type-checked by mypy in .ci/run (not a test
module: pytest does not collect it). Fails when the package ships no py.typed marker or
when a public signature's types stop fitting ordinary use."""
from __future__ import annotations

from typing import Iterator, List

import numpy as np

import fastrnn
from fastrnn import LSTM, CheckpointError, LanguageModel, SequenceClassifier, optim
from fastrnn.data import Vocabulary
from fastrnn.generate import generate, iter_generate
from fastrnn.io import load_checkpoint, save_checkpoint
from fastrnn.models import History


class StopAtTwo:
    def on_epoch_end(self, history: History) -> bool:
        return len(history["loss"]) >= 2


def train(text: str, path: str) -> float:
    model = LanguageModel(Vocabulary.from_text(text), hidden=16, seed=0)
    history: History = model.fit(text, epochs=3, verbose=False, checkpoint=path,
                                 callbacks=[StopAtTwo()])
    model.fit(text, epochs=4, resume=path, verbose=False)
    loaded: LanguageModel = LanguageModel.load(path)     # load returns the subclass
    sample: str = generate(loaded, "a", 10)
    pieces: Iterator[str] = iter_generate(loaded, "a", 10, seed=1)
    losses: List[float] = history["loss"]
    return float(losses[-1]) + len(sample) + len(list(pieces))


def layers() -> np.ndarray:
    fastrnn.set_num_threads(1)
    threads: int = fastrnn.get_num_threads()
    lstm = LSTM(3, 4, num_layers=threads)
    y, _ = lstm(np.zeros((5, 2, 3), np.float32))
    opt = optim.Adam(lstm.named_parameters(), lr=1e-3)
    optim.StepLR(opt, step_size=1)
    clf = SequenceClassifier(2, input_size=3)
    clf.fit(np.zeros((4, 5, 3)), np.zeros(4, int), epochs=1, verbose=False)
    return np.asarray(y)


def files(path: str) -> None:
    save_checkpoint(path, {"a": 1}, {"w": np.ones(2)})
    try:
        config, arrays, meta = load_checkpoint(path)
    except CheckpointError as exc:
        print(exc.problem)
