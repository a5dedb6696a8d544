"""The fastrnn command: train, sample, check and bench.

``main(argv)`` parses the command line (argparse: a bad flag exits with status 2 and names
the flag), sets up logging (library messages from the ``fastrnn`` logger go to stderr;
``--quiet`` hides the progress bar, ``--verbose`` adds debug messages and tracebacks) and
runs the command. Exit statuses: 0 success, 1 a failed run (a diverged training, a failed
``check``), 2 a usage mistake (a flag, a missing, unreadable or corrupted file), 130
Ctrl-C, 141 a closed output pipe. No user mistake prints a traceback.

Each command lives in its own module: ``_train``, ``_sample``, ``_check``; ``fastrnn
bench`` is :mod:`fastrnn.bench`.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from . import _check, _sample, _train
from ._common import UsageError, find_explicit

__all__ = ["main", "build_parser"]

DESCRIPTION = """\
Fast recurrent neural networks on the CPU. Train a character-level language model on a
text file, sample text from it, check the C kernels against the NumPy reference, or time
fastrnn against other libraries. `fastrnn COMMAND --help` describes each command."""


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_mutually_exclusive_group()
    group.add_argument("--quiet", "-q", action="store_true",
                       help="no progress bar or preamble; results, warnings and errors only")
    group.add_argument("--verbose", "-v", action="store_true",
                       help="also debug messages, and a traceback for errors")
    return common


def _add_bench(commands) -> None:
    from .. import bench  # imports no peer library until it runs
    p = commands.add_parser("bench", help="time fastrnn against PyTorch, ONNX Runtime and "
                            "JAX side by side", description="Time fastrnn against PyTorch, "
                            "ONNX Runtime and JAX on this machine (see bench/README.md).")
    bench.add_arguments(p)
    p.set_defaults(run=bench.run, quiet=False, verbose=False)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    parser = argparse.ArgumentParser(prog="fastrnn", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"fastrnn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parents = [_common_options()]
    _train.add_parser(commands, parents)
    _sample.add_parser(commands, parents)
    _check.add_parser(commands, parents)
    _add_bench(commands)
    return parser


class _TqdmHandler(logging.Handler):
    """Log lines written around tqdm's bar (tqdm.write), ``fastrnn: warning: ...``."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        try:
            tqdm.write(f"fastrnn: {level}{record.getMessage()}", file=sys.stderr)
        except Exception:   # pragma: no cover - logging must never raise
            self.handleError(record)


def _setup_logging(args) -> None:
    logger = logging.getLogger("fastrnn")
    logger.handlers[:] = [_TqdmHandler()]
    logger.propagate = False
    logger.setLevel(logging.DEBUG if args.verbose else logging.WARNING)


def _subparser(parser, command):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command]
    raise LookupError(command)   # pragma: no cover


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status
    (argparse exits with 2 itself for a bad flag)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args._explicit = find_explicit(_subparser(parser, args.command), argv)
    _setup_logging(args)
    error = _run(args)
    if isinstance(error, int):
        return error
    if args.verbose:
        raise error
    parser.exit(2, f"fastrnn {args.command}: error: {_message(error)}\n")


def _run(args):
    """The command's exit status, or the user-mistake exception to report."""
    from ..io import CheckpointError
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"fastrnn {args.command}: interrupted", file=sys.stderr)
        return 130
    except (UsageError, CheckpointError, OSError, ValueError, TypeError, KeyError) as exc:
        return exc


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
