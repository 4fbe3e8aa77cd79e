"""``sttr import-checkpoint``: convert an authors' ST-TR checkpoint to sttr_fast's format."""
from __future__ import annotations

from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "import-checkpoint", help="convert an official ST-TR checkpoint",
        description="Read a checkpoint of the authors' ST-TR code (bare state_dict, or under a "
                    "'model'/'state_dict' key, DataParallel prefixes allowed), check that it loads "
                    "strictly into sttr_fast.STTR, and write it as {'config', 'model'}.")
    parser.add_argument("source", help="the authors' .pt file")
    parser.add_argument("destination", help="where to write the sttr_fast checkpoint")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..checkpoint import (CheckpointError, load_official_checkpoint, official_model_config,
                              read_state_dict, save_atomic)

    if Path(args.destination).resolve() == Path(args.source).resolve():
        raise ValueError(f"the destination {args.destination} is the source; writing there would "
                         "replace the authors' checkpoint")
    state = read_state_dict(args.source, "official checkpoint")
    if any(key.startswith(("stem.", "units.")) for key in state):
        raise CheckpointError(f"{args.source} is already in sttr_fast's layout; sttr test reads it "
                              "as it is")
    try:
        config = official_model_config(state)
    except CheckpointError as error:
        raise CheckpointError(f"{args.source} is not a checkpoint of the authors' ST-TR code: "
                              f"{error}") from error
    model = load_official_checkpoint(state)  # the strict load happens before anything is written
    save_atomic({"format": "sttr_fast", "config": config, "model": model.state_dict()},
                args.destination)
    print(f"wrote {args.destination}: " + ", ".join(f"{k}={v}" for k, v in config.items()))
    return 0
