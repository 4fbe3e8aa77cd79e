"""Fast inference (sttr_fast/inference.py) against the float32 eager model it starts from: S-TR and
T-TR, joints, a batch of 4 clips of 300 frames, on the CPU (where many users run inference) and on
CUDA. ``reference`` is the eager float32 model on the reference backend with an explicit softmax
everywhere, as the authors' code computes it (their speed); the other rows are ``InferenceModel``
variants: BatchNorms folded (and the reference core's SDPA for long sequences), then whole-model
bf16 with channels-last weights, then ``torch.compile`` (its cold compile, outside the timing,
costs tens of seconds: only with ``STTR_BENCH_COMPILE=1``).

On the CPU each variant row also carries ``paired_speed_up``: the median, over 5 pairs, of the
reference's time over the variant's, the two run back to back. A shared machine's speed drifts
between rows measured a minute apart (runs here saw the same row vary by 2x), and a pair sees the
same machine; bench/report.py shows that speed-up for these rows.

    python -m pytest bench/bench_inference.py --benchmark-only --benchmark-json out.json
"""
from unittest.mock import patch

import pytest
import torch

from measure import backend_unavailable, paired_speed_up, record
from modules import COMPILE
from sttr_fast import STTR
from sttr_fast.inference import InferenceModel
from sttr_fast.ops import reference

CLIPS, FRAMES = 4, 300
VARIANTS = {"reference": None, "folded fp32": dict(precision="fp32"),
            "folded bf16": dict(precision="bf16"), "folded bf16 compiled": dict(precision="bf16", compile=True)}
CASES = [(device, stream, variant) for device in ("cpu", "cuda") for stream in ("spatial", "temporal")
         for variant in VARIANTS]


@pytest.mark.parametrize("case", CASES, ids=["-".join(case).replace(" ", "-") for case in CASES])
def bench_inference(benchmark, case):
    device, stream, variant = case
    reason = backend_unavailable("compiled" if "compiled" in variant else "reference", device, COMPILE)
    if reason:
        pytest.skip(reason)
    target = torch.device(device)
    torch.manual_seed(0)
    model = STTR(num_classes=60, stream=stream, backend="reference").eval().to(target)

    def authors_path(inputs):
        # The authors' code computes every attention with an explicit softmax; the reference
        # backend's CPU shortcuts (SDPA for long sequences, blocks for short ones) are part of
        # what is measured against it, not of the baseline.
        with torch.inference_mode(), patch.object(reference, "CPU_SHORTCUTS", False):
            return model(inputs)

    options = VARIANTS[variant]
    fast = None if options is None else InferenceModel(model, target, **options)

    def step(inputs):
        if fast is None:
            return authors_path(inputs)
        with torch.inference_mode():
            return fast(inputs)

    x = torch.randn(CLIPS, 3, FRAMES, 25, 2, generator=torch.Generator().manual_seed(0)).to(target)
    paired = {} if fast is None or device != "cpu" else {"paired_speed_up": paired_speed_up(authors_path, step, x)}
    name = {"spatial": "S-TR", "temporal": "T-TR"}[stream]
    group = f"{name}, joints, N={CLIPS} T={FRAMES}, inference [{device}]"
    record(benchmark, step, [x], target, group, "reference" if options is None else variant, "inference",
           rounds=5, model=name, **paired)

