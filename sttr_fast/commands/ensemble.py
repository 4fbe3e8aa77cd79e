"""``sttr ensemble``: fuse the scores of several streams (S-TR + T-TR = ST-TR, joint/bone 2s/4s)."""
from __future__ import annotations

from pathlib import Path


def add_parser(subparsers) -> None:
    from ..train.scores import PRESET_WEIGHTS

    parser = subparsers.add_parser(
        "ensemble", help="fuse stream scores",
        description="Add the streams' scores per sample (raw logits, as the authors' ensemble "
                    "script; --softmax adds probabilities instead, as the paper says) with optional "
                    "weights, and report top-1/top-5 against a label file.")
    parser.add_argument("scores", nargs="+", help="score files written by `sttr test`")
    parser.add_argument("--labels", required=True, help="label file: pickle of (names, labels)")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--weights", type=float, nargs="+", help="one weight per score file")
    weights.add_argument("--preset", choices=sorted(PRESET_WEIGHTS),
                         help="st-tr: S-TR + T-TR; 2s: joint + bone; "
                              "4s: joint, bone, joint motion, bone motion (0.6, 0.6, 0.4, 0.4)")
    parser.add_argument("--softmax", action="store_true", help="fuse softmax probabilities")
    parser.add_argument("--out", help="also write the fused scores to this file")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..train.scores import PRESET_WEIGHTS, fuse, write_scores

    weights = args.weights
    if args.out and any(Path(args.out).resolve() == Path(path).resolve() for path in args.scores):
        raise ValueError(f"--out {args.out} is one of the score files; writing the fusion there "
                         "would replace it")
    if args.preset:
        weights = PRESET_WEIGHTS[args.preset]
        if len(weights) != len(args.scores):
            raise ValueError(f"--preset {args.preset} fuses {len(weights)} streams, "
                             f"got {len(args.scores)} score files")
    result = fuse(args.scores, args.labels, weights, softmax=args.softmax)
    used = weights or [1.0] * len(args.scores)
    for path, weight in zip(args.scores, used):
        print(f"  {weight:g} x {path}")
    print(f"fused {len(args.scores)} streams on {result['samples']} samples: "
          f"top-1 {result['top1']:.2f}%, top-5 {result['top5']:.2f}%")
    if args.out:
        write_scores(Path(args.out), result["names"], result["logits"])
    return 0
