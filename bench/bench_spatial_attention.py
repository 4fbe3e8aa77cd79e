"""The spatial attention core (SSA): every frame's V joints attend to each other; one V x V problem
per frame and head. Our fused backends against their peers, same shapes, same run (cases, peers
and the bound: bench/attention_peers.py; timing and memory: bench/measure.py).

    python -m pytest bench/bench_spatial_attention.py --benchmark-only --benchmark-json out.json
"""
import pytest

from attention_peers import cases, run_case

CASES = cases("spatial")


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def bench_spatial_attention(benchmark, device_rates, case):
    run_case(benchmark, case, device_rates)
