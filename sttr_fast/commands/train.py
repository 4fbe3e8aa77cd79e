"""``sttr train``: train S-TR or T-TR from a YAML config (single process or under torchrun)."""
from __future__ import annotations

import sys


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a model from a config",
        description="Train from a YAML config (see configs/) with dotted overrides, e.g. "
                    "`sttr train --config configs/demo.yaml optim.lr=0.05 train.epochs=3`. "
                    "Multi-GPU / multi-node: `torchrun --nproc-per-node N -m sttr_fast train ...`.")
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--work-dir", help="where logs, metrics, plots and checkpoints go "
                                           "(default work_dirs/<config name>)")
    parser.add_argument("--epochs", type=int, help="shorthand for train.epochs=N")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the work dir's last.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. optim.lr=0.05 data.batch_size=8")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..train.engine import TrainingDiverged, train

    overrides = list(args.overrides) + ([f"train.epochs={args.epochs}"] if args.epochs else [])
    try:
        train(args.config, args.work_dir, overrides, resume=args.resume,
              progress=not args.no_progress)
    except TrainingDiverged as error:
        print(f"sttr train: stopped: {error}", file=sys.stderr)
        return 1
    return 0
