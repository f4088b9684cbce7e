"""aiter (AMD's kernel library) as a backend, taken from the build the user has: an installed
``amd-aiter`` package or a source tree (``aiter_path`` / ``$PARITY_AITER_PATH``, a directory holding
``aiter/``). Nothing of aiter is vendored here.

* ROCm (``import aiter`` works): the build's wrapper modules are imported and called as users call them.
* Elsewhere (NVIDIA, CPU) the ``aiter`` package cannot import, but its Triton kernels are plain Triton:
  the build's wrapper file is executed with its ``aiter.*`` imports answered by its own kernel files
  and by recorded stand-ins for ROCm-bound helpers (:mod:`.shims`), then called, so the launch
  configuration (grid, ChunkK, SplitKV, strides) is the build's. On the CPU this needs
  ``TRITON_INTERPRET=1`` before Triton is imported; :func:`make_backend` sets it when no GPU is visible.
  Gluon kernels are AMD-only: reported as not runnable on this device.

The build's files are found by what they define (:mod:`.discovery`); how its wrapper is called and
watched is :mod:`.launch`; the argument mapping per variant is :mod:`.backend`.
"""
from __future__ import annotations

import os

import torch

from parity.backends.aiter.backend import VARIANTS, AiterBackend, per_token_view, ragged_view
from parity.backends.aiter.discovery import ENV_PATH, FUSED, STAGE1, AiterBuild, find_build, scan
from parity.backends.aiter.shims import NOT_RUNNABLE

_BACKENDS: dict[tuple[str, str], AiterBackend] = {}  # one per (build root, variant): kernels load once


def make_backend(aiter_path: str | None = None, variant: str = "paged") -> AiterBackend:
    """The aiter build at ``aiter_path`` (or ``$PARITY_AITER_PATH``, or the installed package)."""
    if not torch.cuda.is_available():
        # Triton decides at decoration time whether to interpret; without a GPU it is the only way.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    build = find_build(aiter_path)
    key = (str(build.root), variant)
    if key not in _BACKENDS:
        _BACKENDS[key] = AiterBackend(build, variant)
    return _BACKENDS[key]


def make_ragged_backend(aiter_path: str | None = None) -> AiterBackend:
    """``--backend parity.backends.aiter:make_ragged_backend``: the build's ``*_ragged_k`` wrappers."""
    return make_backend(aiter_path, "ragged")


def make_varctx_backend(aiter_path: str | None = None) -> AiterBackend:
    """``--backend parity.backends.aiter:make_varctx_backend``: fused with the build's VarCtx schedule."""
    return make_backend(aiter_path, "varctx")


def make_sglang_backend(aiter_path: str | None = None) -> AiterBackend:
    """``--backend aiter:sglang``: the wrapper called as SGLang's indexer calls it on ROCm (:mod:`.callers`)."""
    return make_backend(aiter_path, "sglang")


def make_atom_backend(aiter_path: str | None = None) -> AiterBackend:
    """``--backend aiter:atom``: the wrapper called as ATOM's vLLM plugin calls it (:mod:`.callers`)."""
    return make_backend(aiter_path, "atom")


__all__ = ["AiterBackend", "AiterBuild", "ENV_PATH", "FUSED", "NOT_RUNNABLE", "STAGE1", "VARIANTS", "find_build",
           "make_atom_backend", "make_backend", "make_ragged_backend", "make_sglang_backend", "make_varctx_backend",
           "per_token_view", "ragged_view", "scan"]
