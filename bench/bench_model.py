"""The whole network: S-TR and T-TR, joints and joints+bones, a training step (forward, loss,
backward, SGD update) and inference, per backend (bench/modules.py), with the peak memory of each.

On CUDA: N = 16 clips of 300 frames, 2 persons, bf16 autocast (ST-TR's recipe trains 16 per step).
On the CPU: N = 2 clips of 32 frames, float32 and bf16 autocast; ``compiled`` there needs
``STTR_BENCH_COMPILE=1`` (a cold compile of the model takes 30-90 s on a 2-core machine).

    python -m pytest bench/bench_model.py --benchmark-only --benchmark-json out.json
"""
import pytest
import torch

from modules import BACKENDS, MODES, PRECISIONS, run_module_case
from sttr_fast import STTR

NUM_CLASSES = 60
# device: (clips N, frames T)
SHAPES = {"cuda": (16, 300), "cpu": (2, 32)}
CASES = [(device, stream, streams, precision, mode, backend)
         for device in SHAPES for stream in ("spatial", "temporal") for streams in (1, 2)
         for precision in PRECISIONS[device] for mode in MODES for backend in BACKENDS]


def _id(case) -> str:
    device, stream, streams, precision, mode, backend = case
    name = {"spatial": "S-TR", "temporal": "T-TR"}[stream]
    return f"{device}-{name}-{'joints+bones' if streams == 2 else 'joints'}-{precision}-{mode}-{backend}".replace(" ", "-")


@pytest.mark.parametrize("case", CASES, ids=[_id(case) for case in CASES])
def bench_model(benchmark, case):
    device, stream, streams, precision, mode, backend = case
    clips, frames = SHAPES[device]
    modality = "joints+bones" if streams == 2 else "joints"
    name = {"spatial": "S-TR", "temporal": "T-TR"}[stream]
    step = "training step" if mode == "training" else "inference"
    group = f"{name}, {modality}, N={clips} T={frames}, {precision}, {step} [{device}]"

    def build(attention_backend):
        return STTR(num_classes=NUM_CLASSES, stream=stream, in_channels=3 * streams,
                    base_channels=64 * streams, backend=attention_backend)

    def make_input(target, generator):
        return torch.randn(clips, 3 * streams, frames, 25, 2, device=target, generator=generator)

    run_module_case(benchmark, "model", group, device, precision, mode, backend, build, make_input,
                    model=name, stream=modality, num_classes=NUM_CLASSES)
