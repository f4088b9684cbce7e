"""The float64 reference of a case, computed once and kept on disk for every process that needs it.

The reference is the CPU's work in a parity cell (on a GPU the kernel takes microseconds, the
float64 logits of a full-level case a sizeable fraction of a second), and it depends on the case
alone: xdist workers, the CLI's per-backend and per-GPU child processes, and the next run on the
same machine all share it.

A file is keyed by the case's fields and by the code that computes it (the sources of
reference.py, cases.py, layouts.py, mxfp4.py, the compute function, and the torch version): a change to
any of them starts a new directory, and directories of other versions untouched for an hour are
removed. Files are written to a temporary name and renamed, so a reader never sees half a file;
any failure of the cache falls back to computing. ``PARITY_CACHE_DIR`` sets the directory
(default ``$XDG_CACHE_HOME/indexer-parity`` or ``~/.cache/indexer-parity``); ``off`` disables it.
The full level takes about 420 MB, the quick level 8 MB.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from parity.problem import cases, layouts, mxfp4, reference

ENV = "PARITY_CACHE_DIR"
STALE_S = 3600  # another version's directory untouched this long is removed


def cache_root() -> Path | None:
    raw = os.environ.get(ENV)
    if raw == "off":
        return None
    if raw:
        return Path(raw)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "indexer-parity"


def code_version(compute: Callable) -> str:
    h = hashlib.sha256(torch.__version__.encode())
    for mod in (reference, cases, layouts, mxfp4):
        h.update(Path(mod.__file__).read_bytes())
    h.update(inspect.getsource(compute).encode())
    return h.hexdigest()[:16]


def case_key(case) -> str:
    return hashlib.sha256(json.dumps(asdict(case), sort_keys=True).encode()).hexdigest()[:24]


_versions: dict[Callable, str] = {}


def _prune(root: Path, keep: Path) -> None:
    for other in root.glob("ref-*"):
        try:
            if other != keep and time.time() - other.stat().st_mtime > STALE_S:
                shutil.rmtree(other, ignore_errors=True)
        except OSError:
            pass


def cached(case, compute: Callable[[object], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``compute(case)`` (a dict of tensors), from the disk cache when another process or run made it."""
    root = cache_root()
    if root is None:
        return compute(case)
    if compute not in _versions:
        _versions[compute] = code_version(compute)
    folder = root / f"ref-{_versions[compute]}"
    path = folder / f"{case_key(case)}.pt"
    try:
        got = torch.load(path, weights_only=True)
        if isinstance(got, dict) and all(isinstance(v, torch.Tensor) for v in got.values()):
            return got
    except Exception:  # absent, or unreadable (another torch, a full disk): compute it again
        pass
    value = compute(case)
    try:
        fresh = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pt")
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(value, fh)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        if fresh:
            _prune(root, folder)
    except OSError:  # a read-only or full cache costs a recomputation next time, never a cell
        pass
    return value
