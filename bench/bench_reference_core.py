"""CPU: the reference core without DropAttention (eval), its explicit softmax against SDPA, at
ST-TR's layer shapes: the measurement behind ``reference._prefer_sdpa`` (SDPA from
``CPU_SDPA_MIN_LENGTH`` tokens on; q and k zero-padded to v's head dim so that SDPA's flash kernel
takes them).

    python -m pytest bench/bench_reference_core.py --benchmark-only --benchmark-json out.json
"""
import pytest
import torch

from measure import record
from sttr_fast.ops import reference

BATCH = 8  # N = 4 clips x M = 2 persons
# ST-TR layers, joints (docs/network.md §6, §7): (name, kind, T, dk per head, dv per head); 8 heads
LAYERS = [
    ("SSA T=300 4/16", "spatial", 300, 4, 16),
    ("SSA T=75 8/32", "spatial", 75, 8, 32),
    ("TSA L=300 4/16", "temporal", 300, 4, 16),
    ("TSA L=150 4/16", "temporal", 150, 4, 16),
    ("TSA L=75 8/32", "temporal", 75, 8, 32),
]
PATHS = {"reference": False, "reference-sdpa": True}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("layer", LAYERS, ids=[f"cpu-{layer[0]}".replace(" ", "-") for layer in LAYERS])
def bench_eval_core(benchmark, layer, path):
    name, kind, frames, dkh, dvh = layer
    heads = 8
    dk, dv = heads * dkh, heads * dvh
    qkv = torch.randn(BATCH, 2 * dk + dv, 25, frames, generator=torch.Generator().manual_seed(0)).transpose(2, 3)
    core = getattr(reference, f"{kind}_attention")

    def step(inputs):
        with torch.no_grad():
            return core(inputs, heads, dk, dv, key_mask=None, use_sdpa=PATHS[path])

    record(benchmark, step, [qkv], torch.device("cpu"), f"reference core eval, {name}, N'={BATCH}, fp32 [cpu]",
           path, "core", rounds=5)
