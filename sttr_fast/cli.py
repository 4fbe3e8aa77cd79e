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
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except ValueError as error:
        # Bad input is reported as one clear line, not a traceback.
        print(f"sttr {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
