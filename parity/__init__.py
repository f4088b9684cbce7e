"""indexer-parity: numerical parity for the DeepSeek-V3.2 indexer kernel (paged MQA logits).

The package is layered; each layer imports only those below it (checked by import-linter, see
``[tool.importlinter]`` in pyproject.toml):

    faces       cli, pytest_plugin, selftest, matrix, __main__
    run         parity.run: one cell, the matrix in child processes, shards, devices
    contract    parity.contract, parity.perf, parity.reports (independent of each other)
    answers     parity.judge (how an output is judged), parity.backends (who answers)
    kernels     parity.kernels: our Triton kernels
    problem     parity.problem: cases, grids, cache layouts, the float64 reference

What a backend author needs is importable from here: ``from parity import SimpleBackend,
IndexerInputs``. Importing ``parity`` loads no torch (the pytest controller relies on it); the names
are resolved on first use. Modules that used to sit at the top (``parity.cases``, ``parity.checks``,
...) keep importing under their old names, so backend files written against earlier releases load.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# Public names and where they live.
_PUBLIC = {
    "Backend": "parity.backends.base",
    "SimpleBackend": "parity.backends.base",
    "PATHS": "parity.backends.base",
    "load_backend": "parity.backends.base",
    "register": "parity.backends.base",
    "registered_names": "parity.backends.base",
    "IndexerCase": "parity.problem.cases",
    "IndexerInputs": "parity.problem.cases",
    "build_inputs": "parity.problem.cases",
    "reference_logits": "parity.problem.reference",
    "run_cell": "parity.run.harness",
}

# The top-level modules of releases before the subpackages, and their homes now.
MOVED = {
    "cases": "problem", "grids": "problem", "layouts": "problem", "reference": "problem",
    "refcache": "problem",
    "checks": "judge", "topk": "judge", "buffers": "judge",
    "harness": "run", "runner": "run", "shards": "run", "devices": "run", "device_names": "run",
    "strategies": "contract", "contract": "contract", "graphs": "contract",
    "bench": "perf", "roofline": "perf", "tune": "perf",
    "report": "reports", "render": "reports", "html_report": "reports",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'parity' has no attribute {name!r}")


class _Alias(importlib.abc.Loader):
    """Loads an old module name as the module object of its new home (one object, two names)."""

    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module):
        pass


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        head, _, tail = fullname.partition(".")
        # parity.contract is both a package now and an old module name: the package wins.
        if head != "parity" or tail not in MOVED or tail == MOVED[tail]:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(f"parity.{MOVED[tail]}.{tail}"))


if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedFinder())
