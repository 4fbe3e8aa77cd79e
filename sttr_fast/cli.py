"""The ``sttr`` command line (also ``python -m sttr_fast``): one subcommand per module in commands/.

One rule for every command: a user error (bad argument, config, or file) prints one line
``sttr <command>: error: …`` and exits 2; an interrupted command exits 130; anything else is an
internal error, exit 1. No traceback unless ``--debug`` is given or ``STTR_DEBUG=1`` is set.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

from . import __version__
from .commands import COMMANDS

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


class _UsageError(Exception):
    """argparse's complaint about the command line, carried to ``main`` instead of exiting."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _UsageError(self.prog, message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sttr", description="Fast ST-TR skeleton action recognition: data, training, kernels.")
    parser.add_argument("--version", action="version", version=f"sttr_fast {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also: STTR_DEBUG=1)")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                        parser_class=_Parser)
    for command in COMMANDS:
        command.add_parser(subcommands)
    for subparser in subcommands.choices.values():
        # SUPPRESS: a subcommand's default must not overwrite `sttr --debug train ...`
        subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                               help="show the traceback of an error (also: STTR_DEBUG=1)")
    return parser


def _one_line(message: str) -> str:
    """``message`` with its line breaks folded, so that an error is one line on the console."""
    return re.sub(r"\s*\n\s*", " ", str(message)).strip()


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.filename}: {error.strerror}"
    return str(error)


def _debugging(args, argv) -> bool:
    if os.environ.get("STTR_DEBUG", "") not in ("", "0"):
        return True
    return bool(getattr(args, "debug", False)) if args is not None else "--debug" in (argv or [])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = None
    try:
        args, extra = parser.parse_known_args(argv)
        # argparse stops filling a trailing positional list once an option follows it, so config
        # overrides given after options arrive here; anything else is an error as usual.
        if extra:
            if getattr(args, "overrides", None) is None or any(
                    arg.startswith("-") or "=" not in arg for arg in extra):
                raise _UsageError(f"sttr {args.command}",
                                  f"unrecognized arguments: {' '.join(extra)}")
            args.overrides = [*args.overrides, *extra]
    except _UsageError as error:
        if _debugging(args, argv):
            raise
        print(f"{error.prog}: error: {_one_line(error)} (see {error.prog} --help)", file=sys.stderr)
        return EXIT_USER_ERROR
    prog = f"sttr {args.command}"
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        if _debugging(args, argv):
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, OSError) as error:
        # Bad input (arguments, configs, files) is reported as one clear line, not a traceback.
        if _debugging(args, argv):
            raise
        print(f"{prog}: error: {_one_line(_describe(error))}", file=sys.stderr)
        # the one exception to one line: a checkpoint/config mismatch, one line per differing key
        for detail in getattr(error, "details", ()):
            print(f"  {detail}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as error:  # a bug: say so in one line; --debug shows where
        if _debugging(args, argv):
            raise
        print(f"{prog}: internal error: {type(error).__name__}: {_one_line(error)} (run again with "
              "--debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
