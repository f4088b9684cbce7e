"""``--device`` values and xdist worker numbers, judged without importing torch: the xdist controller runs no cell and must not
pay torch's import before it starts its workers (parity.pytest_plugin); the CLI uses the same rules."""
from __future__ import annotations

import os
import re
from typing import Callable


def form_error(value: str) -> str | None:
    """Why ``value`` is not a ``--device`` the suite runs on at all, whatever GPUs there are."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", value):
        return (f"--device {value!r} is not a device the suite runs on: expected cpu, cuda or cuda:N "
                "(HIP GPUs are cuda in torch)")
    return None


def device_error(value: str, count_gpus: Callable[[], int], seen_by: str) -> str | None:
    """Why ``value`` cannot be used as ``--device``, or None. ``count_gpus`` is asked only for a GPU;
    ``seen_by`` names who cannot see one (``torch 2.x``, ``the CUDA driver``)."""
    if (why := form_error(value)) is not None or value == "cpu":
        return why
    gpus = count_gpus()
    if not gpus:
        return f"--device {value!r}: no CUDA/HIP GPU is visible to {seen_by}"
    index = int(value.partition(":")[2] or 0)
    return f"--device {value!r}: only {gpus} GPU(s) visible (cuda:0..cuda:{gpus - 1})" if index >= gpus else None


def worker_index() -> int:
    """This xdist worker's number (gw3 -> 3); 0 outside xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(worker[2:] or 0) if worker.startswith("gw") else 0
