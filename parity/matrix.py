"""The parity matrix as a pytest test: every backend x path x buffer x case x device against the
float64 reference. The plugin (:mod:`parity.pytest_plugin`) parametrizes it and collects this module
for ``pytest -m parity`` from any directory; ``pytest --pyargs parity.matrix`` runs it as well.

One reference (parity.reference), one grid (the plugin's pytest_generate_tests), one comparison
(parity.harness.run_cell: mask, values, out-of-bounds, top-k, determinism)."""
import pytest

from parity.harness import run_cell
from parity.pytest_plugin import worker_device


@pytest.mark.parity
def test_parity(parity_cell, parity_backend, parity_repeats):
    spec, path, buffer, case, device = parity_cell
    result = run_cell(parity_backend(spec), path, buffer, case, worker_device(device), backend_name=spec,
                      repeats=parity_repeats)
    if result["status"] == "skip":
        pytest.skip(result["reason"])
    failed = [f"{f['check']}: {f['summary']}" for f in result["findings"] if not f["ok"]]
    assert not failed, "\n".join(failed)
