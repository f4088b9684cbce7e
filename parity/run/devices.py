"""Which GPU a process uses, and keeping it current while a cell runs.

A Triton kernel launches on the *current* CUDA device (``torch.cuda.current_device()``), whatever
device its tensors live on; torch ops follow their tensors. A worker that holds its inputs on
``cuda:1`` while ``cuda:0`` is current therefore opens a second context on GPU 0 and time-slices it
with the worker that owns GPU 0. So each process is pinned to its GPU before CUDA starts, and every
cell runs inside ``current(device)``; :class:`OnDevice` records, at each launch, which device was
current and where the output lived, so a report says where a cell really ran.

``PARITY_FAKE_GPUS=N`` stands in N GPUs on a machine without one, for the tests of this plumbing
(tests/test_scale.py): ``cuda:i`` names one of them, its tensors live on the CPU, and "current" is
this module's record, set exactly where ``torch.cuda.set_device``/``torch.cuda.device`` would be.
"""
from __future__ import annotations

import contextlib
import os

import torch

from parity.run.device_names import worker_index  # noqa: F401  (torch-free, re-exported)

FAKE_ENV = "PARITY_FAKE_GPUS"
_fake_current = 0


def _fake_count() -> int:
    raw = os.environ.get(FAKE_ENV, "")
    if not raw:
        return 0
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{FAKE_ENV} must be a positive number of stand-in GPUs, got {raw!r}")
    return int(raw)


def gpu_count() -> int:
    """GPUs visible to this process (stand-ins under ``PARITY_FAKE_GPUS``)."""
    if fake := _fake_count():
        return fake
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


THREADS_ENV = "PARITY_CPU_THREADS"
# A cell's CPU work is many small tensors: past 8 threads torch's thread pool spins more than it
# computes, and it takes cores from the compile pool that runs beside it (the inputs built for the
# precompile took 8.8 s with 16 threads, 1.3 s with 8). The full level in one process on a 16-core
# H100 host: 35.8-39.4 s with 16 threads, 30.6-30.9 s with 8 (pool and torch alike); torch at 4, 2 and
# 1 threads 24.8, 27.4-29.6, 31.4 s against 23.8-25.7 s at 8 on another host; on a 64-core host 42.5 s
# with a thread per core, 28.6 s with 16, 28.0 s with 8.
MAX_CPU_THREADS = 8


def cpu_threads(share: int = 1) -> int:
    """CPU threads for one of ``share`` processes that run cells on this host (torch's intra-op threads
    and the Triton compile pool): the host's cores divided between them, at most ``MAX_CPU_THREADS``;
    ``$PARITY_CPU_THREADS`` sets it."""
    raw = os.environ.get(THREADS_ENV, "")
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise ValueError(f"{THREADS_ENV} must be a positive number of threads, got {raw!r}")
        return int(raw)
    return max(1, min(MAX_CPU_THREADS, (os.cpu_count() or 1) // max(1, share)))


def _index(device: str) -> int | None:
    dev = torch.device(device)
    return None if dev.type != "cuda" else (dev.index or 0)


def worker_device(kind: str) -> str:
    """Under xdist each worker takes its own GPU: gw0 -> cuda:0, gw1 -> cuda:1, ... (modulo the
    count); an explicit index (``cuda:1``) and ``cpu`` are kept as given."""
    n = gpu_count()
    if kind != "cuda" or not n:
        return kind
    return f"cuda:{worker_index() % n}"


def pin(device: str) -> None:
    """Make ``device`` this process's current GPU, before anything opens a CUDA context elsewhere."""
    global _fake_current
    idx = _index(device)
    if idx is None:
        return
    if _fake_count():
        _fake_current = idx
    elif torch.cuda.is_available():
        torch.cuda.set_device(idx)


@contextlib.contextmanager
def current(device: str):
    """``device`` is the current GPU inside the block (a no-op for ``cpu``)."""
    global _fake_current
    idx = _index(device)
    if idx is None:
        yield
    elif _fake_count():
        before, _fake_current = _fake_current, idx
        try:
            yield
        finally:
            _fake_current = before
    else:
        with torch.cuda.device(idx):
            yield


def current_device(device: str) -> str:
    """The device current now for ``device``'s kind: what a Triton launch would use."""
    if _index(device) is None:
        return torch.device(device).type
    if _fake_count():
        return f"cuda:{_fake_current}"
    return f"cuda:{torch.cuda.current_device()}"


def placement(device: str) -> str:
    """Where the tensors of a cell on ``device`` live: the device itself, the CPU for a stand-in GPU."""
    return "cpu" if _index(device) is not None and _fake_count() else device


class OnDevice:
    """``backend`` with every ``run`` made while ``device`` is current, and each launch recorded:
    the device current at the call and the device of the output it wrote."""

    def __init__(self, backend, device: str):
        self._backend, self.device, self.launches = backend, device, []

    def __getattr__(self, name):  # name, paths, unsupported, describe ... of the wrapped backend
        return getattr(self._backend, name)

    def run(self, path, inputs, out):
        with current(self.device):
            self.launches.append((current_device(self.device), str(out.device)))
            return self._backend.run(path, inputs, out)

    def ran_on(self) -> dict:
        """``{"current": [...], "output": [...]}``: the distinct devices of this cell's launches."""
        return {"current": sorted({c for c, _ in self.launches}), "output": sorted({o for _, o in self.launches})}
