"""The temporal attention core (TSA): every joint's frames attend to each other; one L x L problem
per joint trajectory and head. Our fused backends against their peers, same shapes, same run (cases,
peers and the bound: bench/attention_peers.py; timing and memory: bench/measure.py).

    python -m pytest bench/bench_temporal_attention.py --benchmark-only --benchmark-json out.json
"""
import pytest

from attention_peers import cases, run_case

CASES = cases("temporal")


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def bench_temporal_attention(benchmark, device_rates, case):
    run_case(benchmark, case, device_rates)
