"""GPU: the spatial attention core (SSA) — our Triton kernels against their peers, same shapes, same run.

Peers, timing and the lower bound are described in ``bench/attention_peers.py``. Every frame and
head is one V x V problem; the kernels pad it to 32 x 32 tiles.

    python -m pytest bench/bench_spatial_attention.py --benchmark-json results.json

Without a CUDA GPU every benchmark is skipped.
"""
from __future__ import annotations

import pytest

from attention_peers import BATCH, HEADS, JOINTS, case_id, cases, requires_gpu, time_core

pytestmark = requires_gpu

# The SSA layers' distinct (T, dk per head, dv per head), joints; joints+bones doubles head dims.
LAYERS = {"unit3": (300, 4, 16), "unit4-5": (150, 4, 16), "unit6": (150, 8, 32), "unit7-8": (75, 8, 32)}
CASES = cases(LAYERS)


def exp_counts(t: int) -> tuple[int, int]:
    problems = BATCH * t * HEADS
    return problems * JOINTS * JOINTS, problems * 32 * 32


@pytest.mark.parametrize("case", CASES, ids=[case_id(case) for case in CASES])
def bench_spatial_attention(benchmark, device_rates, summary, case):
    time_core(benchmark, device_rates, summary, "spatial", case, LAYERS[case[0]], exp_counts)
