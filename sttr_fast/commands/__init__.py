"""Subcommands of ``sttr``: each module has ``add_parser(subparsers)`` setting ``run``."""
from . import demo, ensemble, import_checkpoint, prepare, test, train

COMMANDS = (demo, prepare, train, test, ensemble, import_checkpoint)
