"""Fast inference (sttr_fast/inference.py) against the float32 eager model it starts from: S-TR and
T-TR, joints, a batch of 4 clips of 300 frames, on the CPU (where many users run inference) and on
CUDA. ``reference`` is the eager float32 model on the reference backend with an explicit softmax
everywhere, as the authors' code computes it (their speed); the other rows are ``InferenceModel``
variants: BatchNorms folded (and the reference core's SDPA for long sequences), then whole-model
bf16 with channels-last weights, then ``torch.compile`` (its cold compile, outside the timing,
costs tens of seconds: only with ``STTR_BENCH_COMPILE=1``).

    python -m pytest bench/bench_inference.py --benchmark-only --benchmark-json out.json
"""
from unittest.mock import patch

import pytest
import torch

from measure import backend_unavailable, record
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
    model = STTR(num_classes=60, stream=stream, backend="reference").eval()
    options = VARIANTS[variant]
    if options is None:
        model.to(target)

        def run(inputs):
            # The authors' code computes every attention with an explicit softmax; the reference
            # backend's CPU shortcuts (SDPA for long sequences, blocks for short ones) are part of
            # what is measured against it, not of the baseline.
            with patch.object(reference, "CPU_SHORTCUTS", False):
                return model(inputs)
    else:
        run = InferenceModel(model, target, **options)
    x = torch.randn(CLIPS, 3, FRAMES, 25, 2, generator=torch.Generator().manual_seed(0)).to(target)

    def step(inputs):
        with torch.inference_mode():
            return run(inputs)

    name = {"spatial": "S-TR", "temporal": "T-TR"}[stream]
    group = f"{name}, joints, N={CLIPS} T={FRAMES}, inference [{device}]"
    record(benchmark, step, [x], target, group, "reference" if options is None else variant, "inference",
           rounds=5, model=name)
