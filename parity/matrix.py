"""The parity matrix as a pytest test: every backend x path x buffer x case x device against the
float64 reference. The plugin (:mod:`parity.pytest_plugin`) parametrizes it and collects this module
for ``pytest -m parity`` from any directory; ``pytest --pyargs parity.matrix`` runs it as well.

One reference (parity.problem.reference), one grid (the plugin's pytest_generate_tests), one comparison
(parity.run.harness.run_cell: mask, values, out-of-bounds, top-k, determinism).

Each cell records where it ran as test properties (``--junitxml`` writes them): ``device`` (the
worker's device for the cell), ``worker_current`` (the device current in the worker between
cells), ``ran_on_current`` (the device current at each launch: where a
Triton kernel runs) and ``ran_on_output`` (the device of the output it wrote)."""
import os

import pytest

from parity.run import devices
from parity.run.harness import run_cell


@pytest.mark.parity
def test_parity(parity_cell, parity_backend, parity_repeats, parity_consumer, request):
    spec, path, buffer, case, device = parity_cell
    dev = devices.worker_device(device)
    pinned = devices.current_device(dev)  # the worker's own GPU between cells (plugin: pytest_configure)
    backend = devices.OnDevice(parity_backend(spec), dev)
    with devices.current(dev):
        result = run_cell(backend, path, buffer, case, devices.placement(dev), backend_name=spec,
                            repeats=parity_repeats, consumer=parity_consumer)
    ran_on = backend.ran_on()
    request.node.user_properties += [("device", dev), ("worker", os.environ.get("PYTEST_XDIST_WORKER", "")),
                                     ("worker_current", pinned),
                                     ("ran_on_current", ",".join(ran_on["current"])),
                                     ("ran_on_output", ",".join(ran_on["output"]))]
    if result["status"] == "skip":
        pytest.skip(result["reason"])
    failed = [f"{f['check']}: {f['summary']}" for f in result["findings"] if not f["ok"]]
    assert not failed, "\n".join(failed)
