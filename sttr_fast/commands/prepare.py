"""``sttr prepare``: raw NTU RGB+D skeleton folders to the 2s-AGCN arrays ST-TR trains on."""
from __future__ import annotations

import os
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "prepare", help="convert raw NTU RGB+D .skeleton files to training arrays",
        description="Parse every SsssCcccPpppRrrrAaaa.skeleton file, keep the two most active "
                    "bodies, apply 2s-AGCN's pre-normalisation and write, for each benchmark, "
                    "OUT/<benchmark>/{train,val}_data_joint.npy (float32 N x 3 x T x 25 x 2) and "
                    "{train,val}_label.pkl (sample names, 0-based labels): the files 2s-AGCN, MS-G3D "
                    "and ST-TR read. Samples on the official missing-skeleton list are skipped; a "
                    "file that cannot be parsed is reported and left out. An interrupted run "
                    "resumes when started again with the same arguments.")
    parser.add_argument("--dataset", required=True, choices=("ntu60", "ntu120"),
                        help="ntu60 writes xsub and xview, ntu120 writes xsub and xset")
    parser.add_argument("--raw-dir", required=True, action="append", type=Path, metavar="DIR",
                        help="folder of .skeleton files; repeat for NTU-120's two archives")
    parser.add_argument("--out-dir", required=True, type=Path, metavar="DIR")
    parser.add_argument("--benchmark", action="append", dest="benchmarks", metavar="NAME",
                        help="write only this benchmark (repeatable; default: all of the dataset)")
    parser.add_argument("--missing", type=Path, metavar="FILE",
                        help="list of samples to skip instead of the official one; lines that are "
                             "not a sample name (such as a prose header) are ignored")
    parser.add_argument("--max-frames", type=int, default=300, metavar="T",
                        help="frames per sample (default 300); longer sequences are cut and reported")
    parser.add_argument("--no-normalise", dest="normalise", action="store_false",
                        help="write the selected bodies in camera coordinates, without 2s-AGCN's "
                             "pre-normalisation (padding, centring, rotation)")
    parser.add_argument("--workers", type=int, default=_available_cores(), metavar="N",
                        help="worker processes (default: the cores available, here "
                             f"{_available_cores()})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing outputs and discard an unfinished run in OUT")
    parser.set_defaults(run=run)


def _available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run(args) -> int:
    from ..data.ntu_samples import OFFICIAL_SPLIT_SIZES, official_missing_samples, read_missing_list
    from ..data.prepare import PrepareSettings, official_sizes_match, prepare_ntu

    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    missing = (read_missing_list(args.missing) if args.missing
               else official_missing_samples(args.dataset))
    settings = PrepareSettings(
        dataset=args.dataset, raw_dirs=tuple(args.raw_dir), out_dir=args.out_dir, missing=missing,
        benchmarks=tuple(args.benchmarks or ()), max_frames=args.max_frames,
        normalise=args.normalise, workers=args.workers, overwrite=args.overwrite)
    try:
        report = prepare_ntu(settings)
    except KeyboardInterrupt:
        return 130
    print("samples per split:")
    for (benchmark, split), count in report.counts.items():
        print(f"  {benchmark:<6} {split:<5} {count:>7,}")
    if report.official_comparison:
        for benchmark, matches in official_sizes_match(args.dataset, report.counts).items():
            train, val = OFFICIAL_SPLIT_SIZES[(args.dataset, benchmark)]
            verdict = "equal to" if matches else "DIFFERENT from"
            print(f"  {benchmark}: {verdict} the official sizes ({train:,} train, {val:,} val)")
    if report.failures:
        print(f"{len(report.failures)} file(s) could not be parsed and were left out; see "
              f"{args.out_dir / 'prepare.log'}")
        return 1
    return 0
