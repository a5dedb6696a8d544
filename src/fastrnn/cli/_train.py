"""``fastrnn train``: a character-level language model from a text file, with checkpoints
that survive Ctrl-C and continue with ``--resume``."""
from __future__ import annotations

import argparse
import importlib.util
import os

import numpy as np

from . import _args
from ._common import UsageError, explicit_flags

DEFAULT_TIME_BUDGET = 60.0
INTERRUPTED = 130
# what --resume takes from the checkpoint unless given again on the command line
RESUMED = ("text_file", "holdout", "seq_len", "batch", "lr", "clip", "epochs", "time_budget",
           "checkpoint_every", "validate_every", "patience", "output", "precision")

DESCRIPTION = """\
Train a character-level language model on TEXT_FILE (the embedded pydoc_data corpus when
none is given) and save it as a checkpoint that `fastrnn sample` reads.

Training stops after --epochs passes over the text, or after --time-budget seconds (60 s
when neither is given), or on Ctrl-C: then the checkpoint is saved at the next step and
`fastrnn train --resume CHECKPOINT` continues exactly where it stopped (same weights as an
uninterrupted run). The checkpoint is also written every --checkpoint-every seconds.
"""


def add_parser(commands, parents) -> None:
    p = commands.add_parser("train", parents=parents, allow_abbrev=False,
                            help="train a character-level language model",
                            description=DESCRIPTION,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text_file", nargs="?", default=None, metavar="TEXT_FILE",
                   help="UTF-8 text to learn (default: the embedded pydoc_data corpus)")
    run = p.add_argument_group("how long")
    run.add_argument("--epochs", type=_args.positive_int, default=None,
                     help="passes over the text (default: %(default)s, i.e. until the time "
                          "budget)")
    run.add_argument("--time-budget", type=_args.positive_float, default=None,
                     metavar="SECONDS",
                     help=f"stop after this many seconds (default: %(default)s, i.e. "
                          f"{DEFAULT_TIME_BUDGET:g} s without --epochs, no limit with it)")
    run.add_argument("--patience", type=_args.positive_int, default=None, metavar="EPOCHS",
                     help="stop when the held-out loss has not improved for this many "
                          "epochs (default: %(default)s)")
    model = p.add_argument_group("model (ignored with --resume: the checkpoint's)")
    model.add_argument("--cell", choices=["rnn", "lstm", "gru"], default="lstm",
                       help="recurrent cell (default: %(default)s)")
    model.add_argument("--hidden", type=_args.positive_int, default=128,
                       help="hidden units per layer (default: %(default)s)")
    model.add_argument("--layers", type=_args.positive_int, default=1,
                       help="recurrent layers (default: %(default)s)")
    model.add_argument("--embed", type=_args.positive_int, default=64,
                       help="embedding size (default: %(default)s)")
    model.add_argument("--dropout", type=_args.fraction, default=0.0,
                       help="dropout probability between layers and before the output "
                            "layer (default: %(default)s)")
    model.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                       help="floating-point type of the weights (default: %(default)s)")
    model.add_argument("--seed", type=int, default=0,
                       help="seed of the initial weights and dropout (default: %(default)s)")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--seq-len", type=_args.positive_int, default=64,
                     help="truncated-BPTT window in characters (default: %(default)s)")
    opt.add_argument("--batch", type=_args.positive_int, default=32,
                     help="parallel streams per step (default: %(default)s)")
    opt.add_argument("--lr", type=_args.positive_float, default=2e-3,
                     help="Adam learning rate (default: %(default)s)")
    opt.add_argument("--clip", type=_args.clip, default=5.0, metavar="NORM",
                     help="max global gradient norm; 0 or 'none' disables clipping "
                          "(default: %(default)s)")
    opt.add_argument("--precision", choices=["float32", "bf16"], default=None,
                     help="precision of the recurrent layers' products while training: bf16 "
                          "runs them on bf16 operands (float32 accumulation, backward, "
                          "weights and optimizer; no loss scaling needed) (default: "
                          "%(default)s, i.e. float32)")
    opt.add_argument("--holdout", type=_args.fraction, default=0.05,
                     help="fraction of the text held out at its end to measure the loss on "
                          "unseen text; 0 holds out nothing (default: %(default)s)")
    opt.add_argument("--validate-every", type=_args.positive_int, default=None,
                     metavar="STEPS", help="also measure the held-out loss every this many "
                                           "steps (default: %(default)s, once per epoch)")
    out = p.add_argument_group("output")
    out.add_argument("--output", "-o", default="fastrnn-model.ckpt", metavar="CHECKPOINT",
                     help="where to save the model; its folder is created "
                          "(default: %(default)s; with --resume: the resumed file)")
    out.add_argument("--checkpoint-every", type=_args.positive_float, default=300.0,
                     metavar="SECONDS",
                     help="also save the checkpoint this often (default: %(default)s)")
    out.add_argument("--resume", default=None, metavar="CHECKPOINT",
                     help="continue the run saved in CHECKPOINT (its model, optimizer, data "
                          "position and options; flags given again override the options) "
                          "(default: %(default)s, a new run)")
    out.add_argument("--plot", action="store_true",
                     help="save the loss curves as a PNG beside the checkpoint (needs "
                          "matplotlib)")
    par = p.add_argument_group("data-parallel training over MPI")
    par.add_argument("--distributed", action="store_true",
                     help="run as `mpiexec -n N fastrnn train --distributed ...`; --batch is "
                          "the global batch, split over the ranks (no --resume)")
    par.add_argument("--distributed-timeout", type=_args.positive_float, default=None,
                     metavar="SECONDS",
                     help="how long a collective may wait for the other ranks before the "
                          "job is aborted (default: %(default)s, i.e. "
                          "$FASTRNN_DISTRIBUTED_TIMEOUT or 120)")
    p.set_defaults(run=train)


# -- the command ------------------------------------------------------------------------

def train(args) -> int:
    """Train a character-level language model and save it as a checkpoint."""
    from ..models._training import graceful_stop
    with graceful_stop():      # from here on, Ctrl-C stops at a step and saves
        parallel = _parallel(args)
        model = _resumed_model(args) if args.resume else None
        _check_output(args)
        text, source = _read_text(args.text_file)
        train_text, held_out = _split(text, args.holdout)
        if model is None:
            model = _new_model(args, text)
        else:
            _check_vocabulary(model, text, source)
        if args.precision == "bf16" and model.dtype != np.float32:
            raise UsageError(f"--precision bf16 needs float32 weights, got {model.dtype} "
                             "(--dtype, or the resumed checkpoint's)")
        if parallel is None or parallel.is_root:
            _announce(args, model, source, train_text, held_out, parallel)
        history = model.fit(
            train_text, epochs=args.epochs, seq_len=args.seq_len, batch_size=args.batch,
            lr=args.lr, clip=args.clip, time_budget=_time_budget(args),
            validation_data=held_out or None, verbose=not args.quiet,
            checkpoint=args.output, checkpoint_every=args.checkpoint_every,
            resume=args.resume, patience=args.patience, validate_every=args.validate_every,
            checkpoint_meta={"cli": _stored_args(args)}, distributed=parallel or False,
            precision=args.precision)
    if parallel is not None and not parallel.is_root:
        return 0 if history["stop_reason"] != "diverged" else 1   # rank 0 reports
    return _report(args, model, history, held_out, parallel)


def _parallel(args):
    """A DataParallel for ``--distributed`` (run under mpiexec), else None."""
    if not args.distributed:
        return None
    if args.resume:
        raise UsageError("--resume does not work with --distributed; resume on one process")
    from ..distributed import DataParallel
    try:
        return DataParallel(timeout=args.distributed_timeout)
    except ImportError as exc:
        raise UsageError(str(exc)) from None


def _time_budget(args):
    if args.time_budget is None and args.epochs is None:
        return DEFAULT_TIME_BUDGET
    return args.time_budget


def _stored_args(args) -> dict:
    stored = {key: getattr(args, key) for key in RESUMED}
    if stored["text_file"] is not None:
        stored["text_file"] = os.path.abspath(stored["text_file"])
    return stored


def _resumed_model(args):
    """The checkpoint's model; the options it was trained with fill the flags not given."""
    from ..io import load_checkpoint
    from ..models import LanguageModel
    _, _, meta = load_checkpoint(args.resume)
    stored = ((meta.get("training") or {}).get("user") or {}).get("cli")
    if stored is None:
        raise UsageError(f"--resume {args.resume}: not a checkpoint saved by fastrnn train "
                         "(it has no training state)")
    given = explicit_flags(args)
    for key in RESUMED:
        if key not in given and key in stored:
            setattr(args, key, stored[key])
    if "output" not in given:
        args.output = args.resume
    return LanguageModel.load(args.resume)


def _check_output(args) -> None:
    from ..models._training import check_output_path
    try:
        check_output_path(args.output, "--output")
    except OSError as exc:
        raise UsageError(str(exc)) from None
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--plot needs matplotlib: pip install matplotlib")


def _read_text(path) -> tuple:
    """``(text, description)`` of the training file, or the embedded default corpus."""
    from ..data import default_corpus
    if path is None:
        return default_corpus(), "the embedded default corpus (pydoc_data.topics)"
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise UsageError(f"cannot read TEXT_FILE {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"TEXT_FILE {path} is not UTF-8 text ({exc.reason} at byte "
                         f"{exc.start})") from None
    if not text:
        raise UsageError(f"TEXT_FILE {path} is empty")
    return text, path


def _split(text: str, holdout: float) -> tuple:
    """Training text and the held-out tail (``holdout`` of the characters, at least 2;
    none for ``holdout == 0``)."""
    n_held = 0 if holdout == 0 else max(2, int(len(text) * holdout))
    if len(text) - n_held < 2:
        raise UsageError(f"the text has {len(text)} characters: too short to train on "
                         f"with --holdout {holdout}")
    return text[:len(text) - n_held], text[len(text) - n_held:]


def _new_model(args, text: str):
    from ..data import Vocabulary
    from ..models import LanguageModel
    return LanguageModel(Vocabulary.from_text(text), embed=args.embed, hidden=args.hidden,
                         layers=args.layers, cell=args.cell, dropout=args.dropout,
                         dtype=args.dtype, seed=args.seed)


def _check_vocabulary(model, text: str, source: str) -> None:
    missing = sorted(set(text) - set(model.vocab.symbols))
    if missing:
        raise UsageError(f"{source} has characters the resumed model does not know: "
                         f"{''.join(missing[:20])!r}")


def _ranks(parallel) -> str:
    return "" if parallel is None else f" on {parallel.size} ranks"


def _announce(args, model, source, train_text, held_out, parallel) -> None:
    if args.quiet:
        return
    c = model.config
    verb = f"resuming {args.resume}" if args.resume else "training"
    precision = ", bf16 products" if args.precision == "bf16" else ""
    print(f"{verb} on {source}{_ranks(parallel)}: {len(train_text):,} characters ({len(held_out):,} held "
          f"out), {len(model.vocab)} distinct; {c['cell'].upper()} {c['layers']}x"
          f"{c['hidden']}, {model.num_parameters():,} parameters{precision}", flush=True)


# -- after training ---------------------------------------------------------------------

def _report(args, model, history, held_out, parallel) -> int:
    import sys
    reason = history["stop_reason"]
    if reason == "interrupted":
        print(f"fastrnn train: interrupted after {len(history['step_loss'])} steps; saved "
              f"{args.output} (continue with: fastrnn train --resume {args.output})",
              file=sys.stderr)
        return INTERRUPTED
    if reason == "diverged":
        return 1          # the library's warning said why and what was kept
    steps, seconds = len(history["step_loss"]), history["seconds"]
    if reason == "early_stopping":
        print(history["message"])
    print(f"trained {steps} steps ({len(history['loss'])} epoch(s)) in {seconds:.1f} s"
          f"{_ranks(parallel)}: {history['units'] / max(seconds, 1e-9):,.0f} chars/s")
    if steps:
        print(f"final training loss {np.mean(history['step_loss'][-20:]):.4f} "
              "(mean of the last 20 steps, nats/char)")
    if held_out:
        held = model.evaluate(held_out, batch_size=min(8, len(held_out) // 2))
        print(f"held-out tail ({len(held_out):,} chars): loss {held['loss']:.4f}, "
              f"{held['bpc']:.3f} bits per character")
    print(f"saved {args.output}")
    if args.plot:
        print(f"saved {_plot(history, args.output)}")
    return 0


def _plot(history, checkpoint: str) -> str:
    """The loss curves as ``<checkpoint without its suffix>.png``; returns the path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    path = os.path.splitext(checkpoint)[0] + ".png"
    steps = np.arange(1, len(history["step_loss"]) + 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, history["step_loss"], lw=0.6, alpha=0.4, label="training (per step)")
    if len(steps) >= 20:
        smooth = np.convolve(history["step_loss"], np.ones(20) / 20, mode="valid")
        ax.plot(steps[19:], smooth, label="training (mean of 20 steps)")
    val = history.get("validation") or []
    if val:
        ax.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", label="held out")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per character)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
