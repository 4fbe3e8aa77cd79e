"""``sttr train``: train S-TR or T-TR from a YAML config (single process or under torchrun)."""
from __future__ import annotations

import shlex
import sys


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a model from a config",
        description="Train from a YAML config (see configs/) with dotted overrides, e.g. "
                    "`sttr train --config configs/demo.yaml optim.lr=0.05 train.epochs=3`. "
                    "Multi-GPU / multi-node: `torchrun --nproc-per-node N -m sttr_fast train ...`. "
                    "A work dir that holds a run is never replaced without --resume or "
                    "--overwrite, and only one sttr train uses a work dir at a time.")
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--work-dir", help="where logs, metrics, plots and checkpoints go "
                                           "(default work_dirs/<config name>)")
    parser.add_argument("--epochs", type=int, help="shorthand for train.epochs=N")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue from the work dir's last.pt")
    again.add_argument("--overwrite", action="store_true",
                       help="delete the run already in the work dir (its checkpoints, metrics, "
                            "logs, plots, TensorBoard scalars and test outputs) and start afresh")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. optim.lr=0.05 data.batch_size=8")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..cli import EXIT_INTERRUPTED
    from ..train.engine import TrainingDiverged, TrainingInterrupted, train

    if args.epochs is not None and args.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {args.epochs}")
    overrides = list(args.overrides) + ([f"train.epochs={args.epochs}"] if args.epochs else [])
    try:
        train(args.config, args.work_dir, overrides, resume=args.resume,
              progress=not args.no_progress, overwrite=args.overwrite)
    except TrainingDiverged as error:
        print(f"sttr train: stopped: {error}", file=sys.stderr)
        return 1
    except TrainingInterrupted as stop:
        if stop.epochs_saved == 0:
            print(f"sttr train: interrupted before the first epoch was complete; nothing to "
                  f"resume in {stop.work_dir}", file=sys.stderr)
        else:
            command = ["sttr", "train", "--config", args.config, "--work-dir", str(stop.work_dir),
                       "--resume", *overrides]
            print(f"sttr train: interrupted; {stop.work_dir / 'last.pt'} holds {stop.epochs_saved} "
                  f"of {stop.epochs} epochs. Resume with: {shlex.join(command)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
