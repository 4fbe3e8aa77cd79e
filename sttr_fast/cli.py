"""The ``sttr`` command line (also ``python -m sttr_fast``): one subcommand per module in commands/."""
from __future__ import annotations

import argparse
import sys

from . import __version__
from .commands import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sttr", description="Fast ST-TR skeleton action recognition: data, training, kernels.")
    parser.add_argument("--version", action="version", version=f"sttr_fast {__version__}")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subcommands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops filling a trailing positional list once an option follows it, so config
    # overrides given after options arrive here; anything else is an error as usual.
    if extra:
        if getattr(args, "overrides", None) is None or any(
                arg.startswith("-") or "=" not in arg for arg in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        return args.run(args) or 0
    except ValueError as error:
        # Bad input is reported as one clear line, not a traceback.
        print(f"sttr {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
