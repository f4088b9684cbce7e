"""``--device`` values, judged without importing torch: the xdist controller runs no cell and must not
pay torch's import before it starts its workers (parity.pytest_plugin); the CLI uses the same rules."""
from __future__ import annotations

import re
from typing import Callable


def device_error(value: str, count_gpus: Callable[[], int], seen_by: str) -> str | None:
    """Why ``value`` cannot be used as ``--device``, or None. ``count_gpus`` is asked only for a GPU;
    ``seen_by`` names who cannot see one (``torch 2.x``, ``the CUDA driver``)."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", value):
        return (f"--device {value!r} is not a device the suite runs on: expected cpu, cuda or cuda:N "
                "(HIP GPUs are cuda in torch)")
    if value == "cpu":
        return None
    gpus = count_gpus()
    if not gpus:
        return f"--device {value!r}: no CUDA/HIP GPU is visible to {seen_by}"
    index = int(value.partition(":")[2] or 0)
    return f"--device {value!r}: only {gpus} GPU(s) visible (cuda:0..cuda:{gpus - 1})" if index >= gpus else None
