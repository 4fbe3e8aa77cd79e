"""``sttr export``: a checkpoint as an ONNX model or a ``torch.export`` program (sttr_fast/export.py)."""
from __future__ import annotations

import time


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="export a checkpoint to ONNX or a torch.export program",
        description="Write a checkpoint's model (eval mode, the reference attention path) as an "
                    "ONNX file for onnxruntime and other ONNX runtimes (needs the [export] "
                    "extra: onnx, onnxscript, onnxruntime), or as a torch.export program (.pt2) "
                    "that torch.export.load runs without sttr_fast. Input 'skeletons' (N, C, T, "
                    "V, M) float32 with any batch N and any T divisible by 4 from 8 on; output "
                    "'logits' (N, classes). An existing --out is kept unless --overwrite is given.")
    parser.add_argument("--checkpoint", required=True,
                        help="a checkpoint of sttr train or sttr import-checkpoint, or the authors'")
    parser.add_argument("--format", required=True, choices=("onnx", "torch-export"))
    parser.add_argument("--out", required=True, help="the file to write: .onnx or .pt2")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..export import (check_output, export_onnx, export_program, model_from_checkpoint,
                          require_onnx, save_program)

    # Everything that can be refused is refused before the export's tens of seconds.
    out = check_output(args.out, args.format, args.overwrite)
    if args.format == "onnx":
        require_onnx()
    model = model_from_checkpoint(args.checkpoint)
    start = time.perf_counter()
    program = export_program(model)
    if args.format == "onnx":
        export_onnx(program, out, args.overwrite)
    else:
        save_program(program, out, args.overwrite)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {args.format}) in "
          f"{time.perf_counter() - start:.0f} s: input 'skeletons' (N, {model.in_channels}, T, "
          f"{model.num_point}, {model.num_person}) with T a multiple of 4 from 8 on, output "
          f"'logits' (N, {model.num_classes})")
    return 0
