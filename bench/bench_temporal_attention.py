"""GPU: the temporal attention core (TSA) — our Triton kernels against their peers, and the peak
memory of a whole T-TR training step with each backend.

Peers, timing and the lower bound are described in ``bench/attention_peers.py``. Every joint
trajectory and head is one L x L problem; the kernels pad L to their least-padding tiles.

    python -m pytest bench/bench_temporal_attention.py --benchmark-json results.json

Without a CUDA GPU every benchmark is skipped.
"""
from __future__ import annotations

import pytest
import torch

from attention_peers import (BATCH, HEADS, JOINTS, case_id, cases, median_ms,
                             requires_gpu, time_core)
from sttr_fast import STTR
from sttr_fast.kernels import temporal_attention

pytestmark = requires_gpu

# T-TR's TSA layers (T', dk per head, dv per head), joints; joints+bones doubles head dims. "tsa-300"
# is TSA used from the first layers at the full window.
LAYERS = {"unit3-5": (150, 4, 16), "unit6-8": (75, 8, 32), "tsa-300": (300, 4, 16)}
CASES = cases(LAYERS)
# A T-TR training step: N clips of 300 frames, 2 persons, under bf16 autocast.
STEP_CLIPS = 16


def exp_counts(t: int) -> tuple[int, int]:
    problems = BATCH * JOINTS * HEADS
    padded = min(temporal_attention.padded_scores(c, t) for c in temporal_attention.CONFIGS)
    return problems * t * t, problems * padded


@pytest.mark.parametrize("case", CASES, ids=[case_id(case) for case in CASES])
def bench_temporal_attention(benchmark, device_rates, summary, case):
    time_core(benchmark, device_rates, summary, "temporal", case, LAYERS[case[0]], exp_counts)


@pytest.mark.parametrize("streams", [1, 2], ids=["joints", "joints+bones"])
@pytest.mark.parametrize("backend", ["triton", "reference"])
def bench_t_tr_training_step(benchmark, summary, backend, streams):
    """Forward and backward of T-TR on STEP_CLIPS clips: peak memory above the model's own, and time."""
    torch.manual_seed(0)
    model = STTR(num_classes=60, stream="temporal", in_channels=3 * streams, base_channels=64 * streams,
                 backend=backend).cuda().train()
    x = torch.randn(STEP_CLIPS, 3 * streams, 300, 25, 2, device="cuda")
    labels = torch.randint(0, 60, (STEP_CLIPS,), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), labels)
        loss.backward()
        model.zero_grad(set_to_none=True)

    step()
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - baseline
    median = median_ms(step)
    group = f"T-TR training step {'joints+bones' if streams == 2 else 'joints'} N={STEP_CLIPS} bf16"
    benchmark.group = group
    benchmark.extra_info.update(median_ms=median, peak_step_bytes=peak, device=torch.cuda.get_device_name(),
                                torch=torch.__version__)
    summary.add(f"{group} (peak {peak / 2**30:.2f} GiB)", backend, median)

    def synchronised():
        step()
        torch.cuda.synchronize()
    benchmark.pedantic(synchronised, rounds=5, warmup_rounds=1)
