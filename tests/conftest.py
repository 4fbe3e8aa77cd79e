"""Test-session set-up shared by all tests.

Without a CUDA GPU, the Triton kernels run in Triton's CPU interpreter. Triton fixes that mode when
it decorates the kernels, i.e. when ``sttr_fast`` is first imported, and pytest imports this file
before any test module, so the switch is made here. With a GPU the kernels are compiled and run
on it, and the same tests exercise them there.

A test that takes a ``seed`` argument draws its random problem from it. By default the seed is
fixed per test (derived from the test's name), so every run checks the same problems. Fuzzing is
opt-in: ``STTR_FUZZ_SEEDS=200 python -m pytest -k triton`` runs each such test on 200 fresh seeds,
each shown in the test's id; ``STTR_SEEDS=1317905344,7`` replays the seeds given.

README's test command runs the suite in two pytest-xdist worker processes (``-n 2``):
every worker must collect the same tests, so the fresh fuzz seeds come from one draw that the
controlling process makes and its workers inherit, and each worker's torch takes its share of the
cores rather than all of them.
"""
import os
import random
import zlib

import numpy
import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

if "PYTEST_XDIST_WORKER" not in os.environ:  # the controlling process: workers inherit the draw
    os.environ["STTR_FUZZ_DRAW"] = str(random.SystemRandom().randrange(2**31))
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

FUZZ_SEEDS = int(os.environ.get("STTR_FUZZ_SEEDS", "0"))
_FUZZ_DRAW = random.Random(int(os.environ["STTR_FUZZ_DRAW"]))
GIVEN_SEEDS = [int(seed) for seed in os.environ.get("STTR_SEEDS", "").split(",") if seed.strip()]


def _parametrizes_seed_itself(metafunc) -> bool:
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        if "seed" in ([name.strip() for name in names.split(",")] if isinstance(names, str) else names):
            return True
    return False


def pytest_generate_tests(metafunc):
    if "seed" not in metafunc.fixturenames or _parametrizes_seed_itself(metafunc):
        return
    if GIVEN_SEEDS:
        seeds = GIVEN_SEEDS
    elif FUZZ_SEEDS > 0:
        seeds = [_FUZZ_DRAW.randrange(2**31) for _ in range(FUZZ_SEEDS)]
    else:
        seeds = [zlib.crc32(f"{metafunc.module.__name__}::{metafunc.function.__name__}".encode())]
    metafunc.parametrize("seed", seeds, ids=[f"seed{seed}" for seed in seeds])


@pytest.fixture(autouse=True)
def fixed_global_generators():
    """Whatever a test draws from the global generators is the same on every run, in any order."""
    torch.manual_seed(0)
    random.seed(0)
    numpy.random.seed(0)
