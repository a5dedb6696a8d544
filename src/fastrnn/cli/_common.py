"""What the commands share: the usage error and which flags were given explicitly."""
from __future__ import annotations


class UsageError(Exception):
    """A problem with the user's input, reported as one line with exit status 2."""


def explicit_flags(args) -> set:
    """The ``dest`` of every option written on the command line (``args._explicit``, set
    by :func:`fastrnn.cli.main`), plus positional arguments that were given."""
    given = set(getattr(args, "_explicit", ()))
    if getattr(args, "text_file", None) is not None:
        given.add("text_file")
    return given


def find_explicit(parser, argv) -> set:
    """Dests of the options of ``parser`` that appear in ``argv`` (``--name``,
    ``--name=value``, ``-o value`` or ``-ovalue``)."""
    options = {opt: action.dest for action in parser._actions for opt in action.option_strings}
    found = set()
    for token in argv:
        if token == "--":
            break
        if not token.startswith("-") or token == "-":
            continue
        name = token.split("=", 1)[0] if token.startswith("--") else token[:2]
        if name in options:
            found.add(options[name])
    return found
