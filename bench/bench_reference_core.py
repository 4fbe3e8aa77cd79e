"""CPU: the reference attention core without DropAttention (eval), explicit softmax vs SDPA.

Measures the choice made in ``reference._prefer_sdpa``. Run:
    python -m pytest bench/bench_reference_core.py --benchmark-only --benchmark-group-by=group
The two paths of one layer run side by side in one process; compare their ratio, not absolute times.
"""
import pytest
import torch

from sttr_fast.ops import reference

BATCH = 4  # N = 4 samples x M = 2 persons
# ST-TR layers, joints (docs/network.md §6, §7): (name, kind, T, dkh, dvh); 8 heads, V = 25
LAYERS = [
    ("ssa-unit3", "spatial", 300, 4, 16),
    ("ssa-unit4", "spatial", 150, 4, 16),
    ("ssa-unit7", "spatial", 75, 8, 32),
    ("tsa-unit3", "temporal", 150, 4, 16),
    ("tsa-unit7", "temporal", 75, 8, 32),
]


@pytest.mark.parametrize("path", ["explicit", "sdpa"])
@pytest.mark.parametrize("layer", LAYERS, ids=[layer[0] for layer in LAYERS])
def bench_eval_core(benchmark, layer, path):
    name, kind, frames, dkh, dvh = layer
    heads = 8
    dk, dv = heads * dkh, heads * dvh
    qkv = torch.randn(2 * BATCH, 2 * dk + dv, frames, 25, generator=torch.Generator().manual_seed(0))
    core = getattr(reference, f"{kind}_attention")
    benchmark.group = name
    benchmark.extra_info.update(threads=torch.get_num_threads(), torch=torch.__version__)
    with torch.no_grad():
        out = benchmark.pedantic(core, args=(qkv, heads, dk, dv),
                                 kwargs=dict(key_mask=None, use_sdpa=path == "sdpa"),
                                 rounds=15, warmup_rounds=2)
    assert torch.isfinite(out).all()
