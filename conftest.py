"""pytest plugin of the parity suite: options, the device of each xdist worker, and the matrix
backend x path x buffer x case x device that ``pytest -m parity`` runs."""
from __future__ import annotations

import functools
import os

import pytest
import torch

# Triton decides at decoration time whether to interpret; with no GPU the interpreter is the only
# way a Triton kernel runs at all.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from parity.backends import PATHS, load_backend  # noqa: E402
from parity.buffers import BUFFER_KINDS  # noqa: E402
from parity.cases import cases_for_level  # noqa: E402


def pytest_addoption(parser):
    g = parser.getgroup("parity")
    g.addoption("--backend", action="append", default=None,
                help="backend to check: registered name, pkg.mod:factory or file.py[:factory] (repeatable)")
    g.addoption("--device", action="append", default=None, help="cpu, cuda, cuda:1 ... (repeatable; default: all)")
    g.addoption("--parity-level", choices=("quick", "full"), default="quick")
    g.addoption("--aiter-path", default=None, help="aiter source tree or install dir for the aiter backend")


def pytest_configure(config):
    # xdist workers share the machine's cores: torch's default of one thread per core in every
    # worker oversubscribes them, and its spinning threads then cost more than they compute.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def worker_device(kind: str) -> str:
    """Under xdist each worker takes its own GPU (gw0 -> cuda:0, gw1 -> cuda:1, ...)."""
    if kind != "cuda" or not torch.cuda.is_available():
        return kind
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return f"cuda:{int(worker[2:] or 0) % torch.cuda.device_count()}"


def default_backends() -> list[str]:
    # Our own kernels always; third-party builds only when asked for (--backend aiter ...), since
    # a known-buggy build is expected to fail and has its own expectation tests.
    return ["torch", "triton"]


def pytest_generate_tests(metafunc):
    if "parity_cell" not in metafunc.fixturenames:
        return
    cfg = metafunc.config
    backends = cfg.getoption("--backend") or default_backends()
    devices = cfg.getoption("--device") or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    cases = cases_for_level(cfg.getoption("--parity-level"))
    params, ids = [], []
    for dev in devices:
        for backend in backends:
            for path in PATHS:
                for buf in BUFFER_KINDS:
                    for case in cases:
                        params.append((backend, path, buf, case, dev))
                        suffix = f"-{dev}" if len(devices) > 1 else ""
                        ids.append(f"{backend}-{path}-{buf}-{case.id}{suffix}")
    metafunc.parametrize("parity_cell", params, ids=ids)


@functools.lru_cache(maxsize=None)
def _backend(spec: str, aiter_path: str | None):
    opts = {"aiter_path": aiter_path} if spec == "aiter" and aiter_path else {}
    return load_backend(spec, **opts)


@pytest.fixture
def parity_backend(request):
    """Loads a backend by spec; a backend that cannot load skips (default list) or fails (asked for)."""

    def get(spec: str):
        try:
            return _backend(spec, request.config.getoption("--aiter-path"))
        except Exception as exc:
            msg = f"backend {spec!r} unavailable: {type(exc).__name__}: {exc}"
            if request.config.getoption("--backend"):
                pytest.fail(msg)
            pytest.skip(msg)

    return get
