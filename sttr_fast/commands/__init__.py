"""Subcommands of ``sttr``: each module has ``add_parser(subparsers)`` setting ``run``."""
from . import bench, convert, ensemble, export, import_checkpoint, predict, prepare, test, train, visualize

COMMANDS = (prepare, convert, train, test, predict, ensemble, import_checkpoint, export, visualize, bench)
