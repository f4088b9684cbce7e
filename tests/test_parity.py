"""The parity matrix: every backend x path x buffer x case x device against the float64 reference.

One reference (parity.reference), one grid (conftest.pytest_generate_tests), one comparison
(parity.harness.run_cell: mask, values, out-of-bounds, top-k, determinism)."""
import pytest

from conftest import worker_device
from parity.harness import run_cell


@pytest.mark.parity
def test_parity(parity_cell, parity_backend):
    spec, path, buffer, case, device = parity_cell
    result = run_cell(parity_backend(spec), path, buffer, case, worker_device(device), backend_name=spec)
    if result["status"] == "skip":
        pytest.skip(result["reason"])
    failed = [f"{f['check']}: {f['summary']}" for f in result["findings"] if not f["ok"]]
    assert not failed, "\n".join(failed)
