"""Loss-curve parity with PyTorch: the same character LSTM language model, the same initial
weights, batches, truncated-BPTT state carrying, gradient clipping and Adam, trained for 20
steps in float64 by ``torch`` and by ``LanguageModel.fit``; the losses agree at every step."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastrnn  # noqa: E402
from fastrnn.data import Vocabulary, batchify, default_corpus  # noqa: E402
from fastrnn.models import LanguageModel  # noqa: E402

STEPS, SEQ_LEN, BATCH, EMBED, HIDDEN, LR, CLIP = 20, 16, 4, 12, 24, 1e-2, 1.0


class TorchLM(torch.nn.Module):
    """Embedding -> LSTM/GRU (time-major) -> Linear, named as fastrnn's ``LanguageModel.net``."""

    def __init__(self, vocab_size, cell, layers):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab_size, EMBED)
        self.rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](EMBED, HIDDEN, layers)
        self.head = torch.nn.Linear(HIDDEN, vocab_size)

    def forward(self, ids, state):
        y, state = self.rnn(self.embedding(ids), state)
        return self.head(y), state


def _detach(state):
    if state is None:
        return None
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def torch_losses(model, streams):
    """Stateful truncated BPTT over ``streams (N, B)`` windows, as LanguageModel.fit does."""
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    data = torch.from_numpy(streams)
    losses, state = [], None
    for start in range(0, streams.shape[0] - 1, SEQ_LEN):
        stop = min(start + SEQ_LEN, streams.shape[0] - 1)
        optimizer.zero_grad()
        logits, state = model(data[start:stop], _detach(state))
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 data[start + 1:stop + 1].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        losses.append(loss.item())
    return np.array(losses)


@pytest.mark.parametrize("cell, layers", [("lstm", 1), ("lstm", 2), ("gru", 1)])
def test_loss_curves_match_pytorch(cell, layers):
    text = default_corpus()[:BATCH * (STEPS * SEQ_LEN + 1)]
    vocab = Vocabulary.from_text(text)
    torch.manual_seed(0)
    reference = TorchLM(len(vocab), cell, layers).double()
    model = LanguageModel(vocab, embed=EMBED, hidden=HIDDEN, layers=layers, cell=cell,
                          dtype=np.float64, seed=1)
    model.load_state_dict({f"net.{k}": v for k, v in reference.state_dict().items()})

    history = model.fit(text, epochs=1, seq_len=SEQ_LEN, batch_size=BATCH, lr=LR, clip=CLIP,
                        verbose=False)
    expected = torch_losses(reference, batchify(vocab.encode(text), BATCH))

    got = np.array(history["step_loss"])
    assert got.shape == expected.shape == (STEPS,)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)
    assert got[-1] < got[0] - 0.5       # and it did learn something
    for name, p in model.named_parameters():   # the weights agree too, after 20 steps
        np.testing.assert_allclose(p.value, reference.state_dict()[name[4:]].numpy(),
                                   rtol=1e-6, atol=1e-9)
