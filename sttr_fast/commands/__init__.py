"""Subcommands of ``sttr``: each module has ``add_parser(subparsers)`` setting ``run``."""
from . import demo, import_checkpoint

COMMANDS = (demo, import_checkpoint)
