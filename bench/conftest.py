"""Fixtures of the GPU attention-core benchmarks (bench/attention_peers.py)."""
import pytest

from attention_peers import Summary, measure_device_rates


@pytest.fixture(scope="session")
def device_rates():
    return measure_device_rates()


@pytest.fixture(scope="session")
def summary():
    table = Summary()
    yield table
    table.write()
