"""``sttr test``: evaluate a checkpoint on the validation split; write scores and a confusion plot."""
from __future__ import annotations

import csv
import json
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "test", help="evaluate a checkpoint",
        description="Top-1/top-5 and per-class accuracy of a checkpoint (a training checkpoint, "
                    "one from `sttr import-checkpoint`, or the authors' own) on the config's "
                    "validation split; writes scores.pkl (sample name -> logits, the 2s-AGCN/ST-TR "
                    "layout that `sttr ensemble` fuses), per_class_accuracy.csv, "
                    "confusion_matrix.png and test_metrics.json. Without --config, the config "
                    "stored in a checkpoint of sttr train is used (overrides apply to it).")
    parser.add_argument("--config", help="YAML config (default: the one stored in the checkpoint); "
                                         "its model settings must match the checkpoint's")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--work-dir", help="output folder (default: the checkpoint's folder)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--fast", action="store_true",
                        help="evaluate through sttr_fast.inference (BatchNorms folded, bf16 where "
                             "native): faster, logits within 2e-2 of the float32 model's")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..train import distributed
    from ..checkpoint import load_strictly
    from ..train.checkpoints import check_fits, read_checkpoint, require_training_config
    from ..train.config import load_config
    from ..train.data import build_dataset
    from ..inference import InferenceModel
    from ..train.engine import build_model, evaluate
    from ..train.records import plot_confusion
    from ..train.scores import write_scores

    checkpoint = read_checkpoint(args.checkpoint)
    if args.config:
        config = load_config(args.config, args.overrides)
        check_fits(checkpoint, config, f"--config {args.config}",
                   "; leave out --config to use the checkpoint's own")
    else:
        config = load_config(None, args.overrides, values=require_training_config(checkpoint),
                             values_source=f"the config stored in {checkpoint.path}")
        check_fits(checkpoint, config, "these overrides")
    context = distributed.start(config.train.device)
    try:
        dataset = build_dataset(config, "val")
        model = build_model(config)
        load_strictly(model, checkpoint.state, f"checkpoint {checkpoint.path}")
        if args.fast:
            model = InferenceModel(model, context.device)
        result = evaluate(model.to(context.device), dataset, config, context,
                          progress=not args.no_progress)
        if context.is_main:
            out = Path(args.work_dir) if args.work_dir else Path(args.checkpoint).parent
            out.mkdir(parents=True, exist_ok=True)
            names = [dataset.sample_name(i) for i in range(len(dataset))]
            write_scores(out / "scores.pkl", names, result["logits"])
            class_names = getattr(dataset, "class_names", None)
            with open(out / "per_class_accuracy.csv", "w", newline="", encoding="utf-8") as file:
                writer = csv.writer(file)
                writer.writerow(["class", "name", "samples", "top1"])
                totals = result["confusion"].sum(dim=1)
                for index, accuracy in enumerate(result["per_class"].tolist()):
                    name = class_names[index] if class_names is not None else ""
                    writer.writerow([index, name, int(totals[index]), f"{accuracy:.2f}"])
            plot_confusion(result["confusion"], out / "confusion_matrix.png",
                           list(class_names) if class_names is not None else None)
            summary = {"checkpoint": str(args.checkpoint), "samples": result["samples"],
                       "top1": result["top1"], "top5": result["top5"], "loss": result["loss"]}
            (out / "test_metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
            print(f"{result['samples']} samples: top-1 {result['top1']:.2f}%, "
                  f"top-5 {result['top5']:.2f}%; scores, per-class accuracy and confusion matrix "
                  f"in {out}")
    finally:
        distributed.stop(context)
    return 0
