"""The one interface every backend implements, and how backends are found by name.

A backend offers some of the three paths and writes into an output view the caller allocated:

* ``stage1``: ``out`` is ``(H, B * next_n, max_model_len)``; per-head logits (weight and relu applied).
* ``fused`` / ``preshuffle``: ``out`` is ``(B * next_n, max_model_len)``; ``preshuffle`` reads
  ``inputs.kv_cache_preshuffled``.

``out`` has dtype ``inputs.logits_dtype`` (float32, or bfloat16 where the backend lists it in
``logits_dtypes``). Row (b, i) has ``inputs.row_lens[b * next_n + i]`` valid positions: the causal
diagonal, or ``inputs.context_lens_2d[b, i]`` for a backend with ``per_row_lengths``. What a backend
leaves past a row's valid length, in any row (a dummy sequence of context_len 0 or 1 padding a captured
batch included), is judged by the consumer rule (:mod:`parity.judge.consumers`): don't-care for a
length-bounded reader, -inf required for an unbounded one. Writes outside the rows are out of bounds
under either rule.

``out`` may be padded (``stride(-2) > max_model_len``) and arrives filled with -inf in its logical
region. A backend must honour its strides and must not write outside it.

A backend takes the number formats it lists in ``key_formats``: ``fp8`` (q and keys e4m3, one float32
scale per token), and ``mxfp4`` where it reads E2M1 values with UE8M0 group scales
(``inputs.key_format == "mxfp4"``: ``inputs.q_fp8`` holds packed E2M1 bytes, ``inputs.q_sf`` their
scale words, ``kv_cache`` the MXFP4 cache of :mod:`parity.problem.mxfp4`). A backend that lists none is
handed fp8 inputs only.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import torch

from parity.problem.cases import IndexerInputs

PATHS = ("stage1", "fused", "preshuffle")


@runtime_checkable
class Backend(Protocol):
    name: str
    paths: tuple[str, ...]  # subset of PATHS
    device_types: tuple[str, ...]  # e.g. ("cpu", "cuda")
    fp8_flavours: tuple[str, ...]  # subset of ("e4m3fn", "e4m3fnuz")
    key_formats: tuple[str, ...]  # subset of ("fp8", "mxfp4"); absent: ("fp8",)

    def unsupported(self, path: str, inputs: IndexerInputs) -> str | None:
        """None when this backend can run ``path`` on ``inputs``; else the reason it cannot."""

    def run(self, path: str, inputs: IndexerInputs, out: torch.Tensor) -> None:
        """Compute ``path`` on ``inputs`` into ``out`` (see module docstring)."""

    def describe(self) -> dict:
        """Versions and origin (package path, source tree, build) for the report."""


@dataclass
class SimpleBackend:
    """Convenience base: fill in the attributes and implement ``run``; the checks are generic."""

    name: str
    paths: tuple[str, ...] = PATHS
    device_types: tuple[str, ...] = ("cpu", "cuda")
    fp8_flavours: tuple[str, ...] = ("e4m3fn", "e4m3fnuz")
    info: dict = field(default_factory=dict)
    logits_dtypes: tuple[torch.dtype, ...] = (torch.float32,)  # what ``out`` may be
    per_row_lengths: bool = False  # reads ``inputs.context_lens_2d`` (each row's own valid length)
    key_formats: tuple[str, ...] = ("fp8",)  # number formats of q and the cache it reads

    def unsupported(self, path: str, inputs: IndexerInputs) -> str | None:
        if path not in self.paths:
            return f"{self.name} has no {path} path"
        if inputs.logits_dtype not in self.logits_dtypes:
            return f"{self.name} does not write {inputs.logits_dtype} logits"
        if inputs.context_lens_2d is not None and not self.per_row_lengths:
            return f"{self.name} takes no per-row context lengths (2-D context_lens)"
        if inputs.device.type not in self.device_types:
            return f"{self.name} does not run on {inputs.device.type}"
        if inputs.key_format not in self.key_formats:
            return f"{self.name} does not take {inputs.key_format} inputs"
        if inputs.key_format == "mxfp4":
            if path == "preshuffle":
                return ("no preshuffled MXFP4 layout of this cache is published (DeepGEMM and FlashInfer read the "
                        "plain block-planar cache; aiter's FlyDSL kernel its own split layout)")
            return None
        flavour = {torch.float8_e4m3fn: "e4m3fn", torch.float8_e4m3fnuz: "e4m3fnuz"}[inputs.q_fp8.dtype]
        if flavour not in self.fp8_flavours:
            return f"{self.name} does not take fp8 {flavour}"
        if path == "preshuffle" and inputs.kv_cache_preshuffled is None:
            return "preshuffle needs block_size and head_dim multiples of 16"
        return None

    def run(self, path: str, inputs: IndexerInputs, out: torch.Tensor) -> None:  # pragma: no cover
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, **self.info}


# name -> factory(**options) -> Backend. Modules register on import (see parity.backends.__init__).
_REGISTRY: dict[str, Callable[..., Backend]] = {}


def register(name: str, factory: Callable[..., Backend]) -> None:
    _REGISTRY[name] = factory


def registered_names() -> list[str]:
    return sorted(_REGISTRY)


def load_backend(spec: str, **options) -> Backend:
    """``spec`` is a registered name (``torch``), ``pkg.module:factory``, or ``path/to/file.py[:factory]``
    (factory defaults to ``make_backend``). Options are passed to the factory."""
    if spec in _REGISTRY:
        backend = _REGISTRY[spec](**options)
    else:
        target, _, attr = spec.partition(":")
        attr = attr or "make_backend"
        if target.endswith(".py"):
            path = Path(target).resolve()
            if not path.is_file():
                raise ValueError(f"--backend {spec!r}: no such file {path}")
            mod_name = f"parity_user_backend_{path.stem}"
            spec_ = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(spec_)
            sys.modules[mod_name] = module
            spec_.loader.exec_module(module)
        elif ":" in spec or "." in target:
            module = importlib.import_module(target)
        else:
            raise ValueError(
                f"--backend {spec!r} is not a registered backend ({', '.join(registered_names())}), "
                "a 'package.module:factory' or a 'file.py[:factory]'"
            )
        if not hasattr(module, attr):
            raise ValueError(f"--backend {spec!r}: {target} has no attribute {attr!r}")
        backend = getattr(module, attr)(**options)
    missing = [a for a in ("name", "paths", "run", "unsupported") if not hasattr(backend, a)]
    if missing:
        raise TypeError(f"backend {spec!r} lacks {missing}; see parity.backends.base.Backend")
    bad = [p for p in backend.paths if p not in PATHS]
    if bad:
        raise ValueError(f"backend {spec!r} declares unknown paths {bad}; paths must be among {PATHS}")
    return backend
