"""``sttr predict``: the actions of new recordings, by name, from one or more checkpoints."""
from __future__ import annotations

import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict", help="predict the actions of new recordings",
        description="Run trained checkpoints on recordings and print each sample's most likely "
                    "actions by name. Inputs: raw NTU .skeleton files or folders of them, 2s-AGCN "
                    "arrays (*_data_joint.npy; --labels for names and labels), pyskl annotation "
                    "pickles (--split) or CTR-GCN .npz archives. Each input goes through the "
                    "preparation the checkpoint's own training data went through (its stored "
                    "config). Several --checkpoint options fuse their streams (summed logits, or "
                    "probabilities with --softmax). Files that cannot be read are reported and "
                    "skipped; the rest are predicted (exit code 1 when any was skipped).")
    parser.add_argument("inputs", nargs="+", metavar="INPUT")
    parser.add_argument("--checkpoint", action="append", required=True,
                        help="a checkpoint of sttr train or sttr import-checkpoint (repeat to fuse)")
    parser.add_argument("--top-k", type=int, default=5, help="actions per sample (default 5)")
    parser.add_argument("--softmax", action="store_true",
                        help="fuse checkpoints by adding probabilities instead of logits")
    parser.add_argument("--class-names", help="a text file with one action name per line")
    parser.add_argument("--labels", help="2s-AGCN label file (names, labels) for .npy inputs")
    parser.add_argument("--split", help="pyskl split to read (default: <data.benchmark>_val)")
    parser.add_argument("--out", help="also write the predictions to FILE.csv or FILE.json")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="auto: bf16 on CUDA and on CPUs with native bf16, else fp32")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model (pays off for many samples)")
    parser.set_defaults(run=run)


def run(args) -> int:
    import torch

    from ..predict import (InputError, accuracy, class_names, find_sources, load_predictor, predict,
                           write_csv, write_json)

    if args.top_k < 1:
        raise InputError(f"--top-k must be at least 1, got {args.top_k}")
    out = Path(args.out) if args.out else None
    if out is not None:
        if out.suffix not in (".csv", ".json"):
            raise InputError(f"--out {out}: expected a .csv or .json file name")
        if out.exists() and not args.overwrite:
            raise InputError(f"--out {out} exists; pass --overwrite to replace it or choose another name")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA GPU is available on this machine")
    sources, problems = find_sources(args.inputs, args.labels, args.split)
    for problem in problems:
        print(f"sttr predict: skipped {problem}", file=sys.stderr)
    predictors = [load_predictor(path, device, args.precision, args.compile) for path in args.checkpoint]
    names = class_names(predictors, args.class_names)
    skipped = list(problems)

    def report(line: str) -> None:
        skipped.append(line)
        print(f"sttr predict: {line}", file=sys.stderr)

    predictions = predict(predictors, sources, args.softmax, on_problem=report)
    if not predictions:
        raise InputError("no input could be predicted (see the lines above)")
    shown = min(args.top_k, 3)
    for prediction in predictions:
        top = ", ".join(f"{names[index]} {100 * probability:.1f} %"
                        for index, probability in prediction.top(shown))
        print(f"{prediction.name}: {top}")
    precision = predictors[0].model.precision
    print(f"{len(predictions)} samples predicted by {len(predictors)} checkpoint(s) on {device} "
          f"({precision})")
    scored = accuracy(predictions)
    if scored is not None:
        print(f"top-1 against the labels the inputs carry: {scored[0]:.2f} % of {scored[1]}")
    if out is not None:
        (write_csv if out.suffix == ".csv" else write_json)(out, predictions, names, args.top_k)
        print(f"wrote {out}")
    return 1 if skipped else 0

