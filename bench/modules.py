"""What the unit and whole-model benchmarks share: backends, precisions and one measured step.

Per backend (``triton``, ``cuda``, ``reference``, and ``compiled``: ``torch.compile`` of the module
on the reference backend), a training step (forward, backward and, for the whole model, an SGD
update) and inference (eval mode, no autograd). Precision: on CUDA bf16 autocast (how ST-TR trains
fast); on the CPU float32 and bf16 autocast. Timing and memory: bench/measure.py.
"""
from __future__ import annotations

import os

import pytest
import torch

from measure import backend_unavailable, record

BACKENDS = ("triton", "cuda", "reference", "compiled")
MODES = ("training", "inference")
PRECISIONS = {"cuda": ("bf16 autocast",), "cpu": ("fp32", "bf16 autocast")}
COMPILE = os.environ.get("STTR_BENCH_COMPILE") == "1"


def run_module_case(benchmark, suite: str, group: str, device: str, precision: str, mode: str,
                    implementation: str, build, make_input, compile_included: bool = COMPILE,
                    **extra) -> None:
    """``build(backend)`` makes the module (on the CPU), ``make_input(device, generator)`` its input;
    a training step on a model with a classifier (``extra['num_classes']``) adds a loss and SGD."""
    reason = backend_unavailable(implementation, device, compile_included)
    if reason:
        pytest.skip(reason)
    target = torch.device(device)
    torch.manual_seed(0)
    module = build("reference" if implementation == "compiled" else implementation).to(target)
    module.train(mode == "training")
    run = torch.compile(module) if implementation == "compiled" else module
    generator = torch.Generator(target).manual_seed(0)
    x = make_input(target, generator)
    num_classes = extra.get("num_classes")
    labels = (torch.randint(0, num_classes, (x.shape[0],), device=target, generator=generator)
              if num_classes else None)
    optimizer = (torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9, nesterov=True)
                 if labels is not None and mode == "training" else None)
    autocast = precision == "bf16 autocast"

    def step(inputs):
        with torch.autocast(target.type, dtype=torch.bfloat16, enabled=autocast):
            if mode == "inference":
                with torch.no_grad():
                    return run(inputs)
            out = run(inputs)
            loss = (torch.nn.functional.cross_entropy(out.float(), labels) if labels is not None
                    else out.float().square().mean())
        loss.backward()
        if optimizer is not None:
            optimizer.step()
        module.zero_grad(set_to_none=True)

    # A whole CPU training step takes a second or more: fewer rounds keep the CPU subset short.
    rounds = 3 if suite == "model" else 5
    record(benchmark, step, [x], target, group, implementation, suite, rounds=rounds, mode=mode,
           precision=precision, **extra)
