"""Fixtures and hooks every benchmark in bench/ shares (bench/measure.py says how rows are measured)."""
import functools

import pytest

from measure import environment


@pytest.fixture(scope="session")
def device_rates():
    """This GPU's measured copy bandwidth and exp rate, measured on first use."""
    from attention_peers import measure_device_rates

    return functools.cache(measure_device_rates)


def pytest_benchmark_update_machine_info(config, machine_info):
    # bench/report.py reads these: a time means something only beside its device and versions.
    machine_info["sttr_environment"] = environment()
