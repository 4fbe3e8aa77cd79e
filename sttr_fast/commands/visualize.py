"""``sttr visualize``: one sample's skeleton, the predicted actions and the model's attention, as
pictures (sttr_fast/visualize.py draws them)."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "visualize", help="draw a sample, the predicted actions and the attention maps",
        description="Run a checkpoint on one sample of the inputs (prepared as sttr predict "
                    "prepares it) and draw into --out: the skeleton over time (skeleton.gif, "
                    "skeleton_strip.png), the top-5 actions (prediction.png), and per attention "
                    "unit its maps: S-TR's joint-to-joint attention per head, as a joints x joints map and "
                    "as lines on the skeleton (ssa_unit<i>.png); T-TR's frame-to-frame attention "
                    "of one joint (tsa_unit<i>.png).")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="raw .skeleton files or folders of them, 2s-AGCN .npy arrays, pyskl "
                             ".pkl annotations or CTR-GCN .npz archives")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of sttr train or "
                                                            "sttr import-checkpoint")
    parser.add_argument("--sample", type=int, default=0,
                        help="which sample, 0-based, counted over the inputs in order (default 0)")
    parser.add_argument("--out", required=True, help="the folder for the pictures")
    parser.add_argument("--joint", type=int,
                        help="the joint of the temporal maps, 1-based in the order of the model's "
                             "skeleton graph (default: the right hand or wrist where the graph has "
                             "one, else its centre; NTU RGB+D: 12)")
    parser.add_argument("--class-names", help="a text file with one action name per line")
    parser.add_argument("--labels", help="2s-AGCN label file (names, labels) for .npy inputs")
    parser.add_argument("--split", help="pyskl split to read (default: <data.benchmark>_val)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the pictures of an earlier run in --out")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..visualize import top_classes, visualize

    seen, names, files = visualize(args.checkpoint, args.inputs, args.out, args.sample, args.joint,
                                   args.labels, args.split, args.class_names, args.overwrite,
                                   args.device)
    top = ", ".join(f"{names[index]} {100 * probability:.1f} %"
                    for index, probability in top_classes(seen))
    print(f"{seen.sample}: {top}")
    print(f"wrote {len(files)} pictures to {args.out}: {', '.join(path.name for path in files)}")
    return 0
