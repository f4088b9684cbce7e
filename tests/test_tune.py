"""The tuning sweep's own sanity check runs every config it names through the suite's mask and value
checks (the Triton interpreter without a GPU)."""
import pytest

pytest.importorskip("triton")
from parity import tune  # noqa: E402
from parity.bench import Shape  # noqa: E402


def test_sweep_check_passes_every_config_through_the_suite_checks():
    lines = tune.check("cpu", Shape(2, 3, 200, heads=8)).splitlines()
    assert len(lines) == 5
    for line in lines:
        assert "mask matches" in line and "values within" in line, line
