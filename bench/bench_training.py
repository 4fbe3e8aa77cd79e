"""CPU training with ``train.amp=bf16`` against float32: S-TR and T-TR, joints, a batch of 4 clips of
300 frames, one training step as ``sttr train`` runs it on the CPU (the model placed by
``sttr_fast.train.engine.place_model``: channels-last for bf16; the reference backend, forward and
cross-entropy under the autocast, backward, SGD with Nesterov momentum).

The ``bf16 autocast`` row also carries ``paired_speed_up``: the median, over 5 pairs, of the
float32 step's time over the bf16 step's, the two run back to back on copies of one model, each
after an untimed step of its own kind (bench/measure.py ``paired_speed_up``); bench/report.py
shows it. The CPU subset (``-k cpu``)
runs these; there is no CUDA row (ST-TR trains in bf16 on GPUs anyway: bench/bench_model.py).

    python -m pytest bench/bench_training.py --benchmark-only --benchmark-json out.json
"""
import copy

import pytest
import torch

from measure import paired_speed_up, record
from sttr_fast import STTR
from sttr_fast.train.engine import place_model

CLIPS, FRAMES, NUM_CLASSES = 4, 300, 60
PRECISIONS = ("fp32", "bf16 autocast")
CASES = [(stream, precision) for stream in ("spatial", "temporal") for precision in PRECISIONS]


def training_step(model, labels, optimizer, bf16: bool):
    def step(inputs):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(inputs).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


@pytest.mark.parametrize("case", CASES, ids=["cpu-" + "-".join(case).replace(" ", "-") for case in CASES])
def bench_training(benchmark, case):
    stream, precision = case
    torch.manual_seed(0)
    model = STTR(num_classes=NUM_CLASSES, stream=stream, backend="reference").train()
    cpu = torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(CLIPS, 3, FRAMES, 25, 2, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (CLIPS,), generator=generator)

    def step_of(amp: str):
        placed = place_model(copy.deepcopy(model), cpu, amp)
        optimizer = torch.optim.SGD(placed.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        return training_step(placed, labels, optimizer, amp == "bf16")

    step = step_of("bf16" if precision == "bf16 autocast" else "none")
    paired = ({"paired_speed_up": paired_speed_up(step_of("none"), step, x, settle=True)}
              if precision != "fp32" else {})
    name = {"spatial": "S-TR", "temporal": "T-TR"}[stream]
    group = f"{name}, joints, N={CLIPS} T={FRAMES}, training step [cpu]"
    record(benchmark, step, [x], cpu, group, precision, "training", rounds=5, model=name, **paired)
