"""ST-TR's two self-attention units as the network runs them: SSA (input BatchNorm, qkv projection,
the spatial core, output projection, residual, BN, ReLU) and TSA likewise along time, per backend,
training step and inference (bench/modules.py), with the peak memory of each.

Shapes: unit 4 of the network (128 channels for joints, 256 for joints+bones; docs/network.md §6)
at T = 150 on N' = 64 sequences-batches (32 clips x 2 persons) on CUDA; on the CPU a small subset
(joints, N' = 4, T = 32 for SSA and 75 for TSA) where ``compiled`` runs by default.

    python -m pytest bench/bench_units.py --benchmark-only --benchmark-json out.json
"""
import pytest
import torch

from modules import BACKENDS, COMPILE, MODES, PRECISIONS, run_module_case
from sttr_fast import SpatialSelfAttention, TemporalSelfAttention

JOINTS = 25
# device: (N', T of SSA, T of TSA, streams)
SHAPES = {"cuda": (64, 150, 150, (1, 2)), "cpu": (4, 32, 75, (1,))}
UNITS = {"SSA": lambda channels, backend: SpatialSelfAttention(channels, channels, backend=backend),
         "TSA": lambda channels, backend: TemporalSelfAttention(channels, backend=backend)}


def _cases():
    found = []
    for device, (_, _, _, streams_list) in SHAPES.items():
        for unit in UNITS:
            for streams in streams_list:
                for precision in PRECISIONS[device]:
                    for mode in MODES:
                        found += [(device, unit, streams, precision, mode, backend) for backend in BACKENDS]
    return found


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=["-".join(map(str, case)).replace(" ", "-") for case in CASES])
def bench_unit(benchmark, case):
    device, unit, streams, precision, mode, backend = case
    batch, ssa_frames, tsa_frames, _ = SHAPES[device]
    frames = ssa_frames if unit == "SSA" else tsa_frames
    channels = 128 * streams
    stream = "joints+bones" if streams == 2 else "joints"
    group = f"{unit} unit, {stream}, C={channels} T={frames} N'={batch}, {precision}, {mode} [{device}]"

    def make_input(target, generator):
        return torch.randn(batch, channels, frames, JOINTS, device=target, generator=generator)

    run_module_case(benchmark, "unit", group, device, precision, mode, backend,
                    lambda b: UNITS[unit](channels, b), make_input,
                    compile_included=device == "cpu" or COMPILE, unit=unit, stream=stream)
