"""Subcommands of ``sttr``: each module has ``add_parser(subparsers)`` setting ``run``."""
from . import bench, ensemble, export, import_checkpoint, prepare, test, train

COMMANDS = (prepare, train, test, ensemble, import_checkpoint, export, bench)
