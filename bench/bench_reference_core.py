"""CPU: the reference core without DropAttention (inference) on each of its paths, the explicit
softmax, SDPA (q and k zero-padded to v's head dim so that SDPA's flash kernel takes them) and
blocks of sequences whose scores stay in cache, at ST-TR's layer shapes: the measurement behind
``reference.default_path`` (SDPA from ``CPU_SDPA_MIN_LENGTH`` tokens on, blocks below).

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
PATHS = {"reference": "explicit", "reference-sdpa": "sdpa", "reference-blocked": "blocked"}


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# How qkv reaches the core: "module", the projection's (N', C, V, T) output transposed, frames
# unit-stride (training, and evaluation without sttr_fast.inference); "channels-last", channels
# unit-stride, as fast CPU inference (sttr_fast/inference.py) hands it over.
LAYOUTS = ("module", "channels-last")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer", LAYERS, ids=[f"cpu-{layer[0]}".replace(" ", "-") for layer in LAYERS])
def bench_eval_core(benchmark, layer, dtype, layout, path):
    name, kind, frames, dkh, dvh = layer
    heads = 8
    dk, dv = heads * dkh, heads * dvh
    qkv = torch.randn(BATCH, 2 * dk + dv, 25, frames, generator=torch.Generator().manual_seed(0))
    qkv = qkv.to(DTYPES[dtype]).transpose(2, 3)
    if layout == "channels-last":
        qkv = qkv.contiguous(memory_format=torch.channels_last)
    core = getattr(reference, f"{kind}_attention")

    def step(inputs):
        with torch.no_grad():
            return core(inputs, heads, dk, dv, key_mask=None, path=PATHS[path])

    record(benchmark, step, [qkv], torch.device("cpu"), f"reference core eval, {name}, N'={BATCH}, {dtype}, {layout} [cpu]",
           path, "core", rounds=5)
