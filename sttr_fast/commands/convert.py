"""``sttr convert``: 2-D pose estimators' outputs (Kinetics-Skeleton, OpenPose, MMPose, MediaPipe)
to the 2s-AGCN arrays that ``sttr train``, ``test`` and ``predict`` read."""
from __future__ import annotations

import sys
from pathlib import Path

from .prepare import _available_cores


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert pose estimator outputs (Kinetics, OpenPose, MMPose, MediaPipe) "
                        "to training arrays",
        description="Read 2-D skeletons and write OUT/<split>_data_joint.npy (float32 N x 3 x T x V "
                    "x M: x, y divided by the frame size minus 0.5, and the detection score) and "
                    "OUT/<split>_label.pkl (sample names, 0-based labels), joints in the source's "
                    "order. People are followed across frames (Kinetics: ranked per frame, as "
                    "ST-GCN does) and the M most confident kept. Inputs that cannot be read are "
                    "reported and left out (exit code 1). docs/data.md section 9 describes every "
                    "format.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="kinetics: .json files or folders of them; openpose: a folder of "
                             "per-frame .json files per recording, or a folder of such folders; "
                             "mmpose: .json files or folders; mediapipe: .csv/.json files or folders")
    parser.add_argument("--from", dest="source_format", required=True,
                        choices=("kinetics", "openpose", "mmpose", "mediapipe"))
    parser.add_argument("--out", required=True, type=Path, metavar="DIR")
    parser.add_argument("--split", default="train",
                        help="the output's name: DIR/<split>_data_joint.npy (default train)")
    parser.add_argument("--label", type=int, metavar="N", help="every input is of class N (0-based)")
    parser.add_argument("--labels", type=Path, metavar="FILE",
                        help="a CSV of name,label lines (the name of an input file or folder, with "
                             "or without its extension); kinetics: its label JSON")
    parser.add_argument("--frame-size", type=float, nargs=2, metavar=("WIDTH", "HEIGHT"),
                        help="the video's size in pixels, required for openpose and mmpose (1 1 "
                             "when their coordinates are already divided by it)")
    parser.add_argument("--max-frames", type=int, default=300, metavar="T",
                        help="frames per sample (default 300, a multiple of 4); longer recordings "
                             "are cut and reported, shorter ones padded with zeros")
    parser.add_argument("--num-person", type=int, default=2, metavar="M",
                        help="people kept per sample (default 2)")
    parser.add_argument("--match-distance", type=float, default=0.1, metavar="D",
                        help="tracking: the largest mean joint distance, in frame widths/heights, "
                             "at which a person continues a track (default 0.1)")
    parser.add_argument("--workers", type=int, default=_available_cores(), metavar="N",
                        help=f"worker processes (default: the cores available, here "
                             f"{_available_cores()})")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..data.convert import ConvertSettings, convert_poses

    settings = ConvertSettings(
        source_format=args.source_format, inputs=tuple(args.inputs), out_dir=args.out,
        split=args.split, label=args.label, labels=args.labels,
        frame_size=tuple(args.frame_size) if args.frame_size else None,
        max_frames=args.max_frames, num_person=args.num_person,
        match_distance=args.match_distance, workers=args.workers, overwrite=args.overwrite)
    report = convert_poses(settings, on_problem=lambda line: print(f"sttr convert: {line}",
                                                                     file=sys.stderr))
    print(f"wrote {settings.data_path} ({report.written} x 3 x {settings.max_frames} x "
          f"{report.num_joints} x {settings.num_person}) and {settings.label_path}")
    if report.without_skeleton:
        print(f"{len(report.without_skeleton)} video(s) without skeleton (has_skeleton false in "
              f"{settings.labels}) left out")
    if report.layout is not None:
        print(f"skeleton: {report.layout} ({report.num_joints} joints); train with "
              f"model.graph={report.layout} model.num_classes={report.label_count} (or more)")
    else:
        print(f"skeleton: {report.num_joints} joints, no built-in graph preset; describe it in "
              "model.graph as {num_joints, edges, center}")
    if report.skipped:
        print(f"{len(report.skipped)} input(s) could not be converted and were left out (see the "
              "lines above)")
        return 1
    return 0
