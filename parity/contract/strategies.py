"""Logits-buffer strategies a server can use across the 61 indexer layers of a step (SPEC section 3).

Each is called as ``strategy(q_fp8, rows, max_model_len) -> (rows, max_model_len)`` float32 view,
prefilled with -inf (kernels in the vLLM style write only valid positions and rely on it), always on
``q_fp8.device``: on tensor-parallel ranks > 0 the default device is the wrong GPU.
"""
from __future__ import annotations

import functools

import torch

DEFAULT_PAD = 256


def _check(q_fp8: torch.Tensor, rows: int, max_model_len: int, pad: int) -> None:
    if not isinstance(q_fp8, torch.Tensor):
        raise TypeError(f"q_fp8 must be a tensor (its device is where the buffer goes), got {type(q_fp8).__name__}")
    if rows < 1 or max_model_len < 1:
        raise ValueError(f"rows and max_model_len must be >= 1, got rows={rows}, max_model_len={max_model_len}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")


def _new(q_fp8: torch.Tensor, rows: int, max_model_len: int, pad: int) -> torch.Tensor:
    return torch.full((rows, max_model_len + pad), float("-inf"), dtype=torch.float32, device=q_fp8.device)


def exact(q_fp8: torch.Tensor, rows: int, max_model_len: int) -> torch.Tensor:
    """A fresh contiguous ``(rows, max_model_len)`` buffer: a kernel's overshoot lands in the next row."""
    _check(q_fp8, rows, max_model_len, 0)
    return _new(q_fp8, rows, max_model_len, 0)


def padded(q_fp8: torch.Tensor, rows: int, max_model_len: int, pad: int = DEFAULT_PAD) -> torch.Tensor:
    """A fresh buffer with ``pad`` spare columns per row, handed out as a view with ``stride(0) = cols + pad``."""
    _check(q_fp8, rows, max_model_len, pad)
    return _new(q_fp8, rows, max_model_len, pad)[:, :max_model_len]


class FreshPerCall:
    """A new padded buffer on every call: inside a captured graph each capture owns its allocation
    (from the graph's private pool), so every graph keeps a stable pointer of its own."""

    name = "fresh-per-call"

    def __init__(self, pad: int = DEFAULT_PAD):
        self.pad = pad

    def __call__(self, q_fp8, rows, max_model_len):
        return padded(q_fp8, rows, max_model_len, self.pad)


class CachedExactRows:
    """Reuses its buffer only when rows and columns match exactly; reallocates otherwise."""

    name = "cached-exact-rows"

    def __init__(self, pad: int = DEFAULT_PAD):
        self.pad, self.buf = pad, None

    def __call__(self, q_fp8, rows, max_model_len):
        _check(q_fp8, rows, max_model_len, self.pad)
        b = self.buf
        if b is None or b.shape != (rows, max_model_len + self.pad) or b.device != q_fp8.device:
            self.buf = _new(q_fp8, rows, max_model_len, self.pad)
        else:
            b.fill_(float("-inf"))  # the prefill contract holds on every call, not only the first
        return self.buf[:, :max_model_len]


class CachedAtLeastRows:
    """Reuses its buffer whenever it has at least ``rows`` rows and returns exactly ``[:rows]``.
    ``reserve_rows`` allocates the largest batch up front, so the buffer never moves (safe under
    graph capture); without it a larger batch reallocates and graphs captured earlier keep the old
    pointer."""

    name = "cached-at-least-rows"

    def __init__(self, pad: int = DEFAULT_PAD, reserve_rows: int = 0):
        self.pad, self.reserve_rows, self.buf = pad, reserve_rows, None
        self.reallocations = 0

    def __call__(self, q_fp8, rows, max_model_len):
        _check(q_fp8, rows, max_model_len, self.pad)
        b = self.buf
        if b is None or b.shape[0] < rows or b.shape[1] != max_model_len + self.pad or b.device != q_fp8.device:
            self.buf = _new(q_fp8, max(rows, self.reserve_rows), max_model_len, self.pad)
            self.reallocations += b is not None
        view = self.buf[:rows, :max_model_len]
        view.fill_(float("-inf"))
        return view


def _padded_with(pad: int = DEFAULT_PAD):
    if pad == DEFAULT_PAD:
        return padded
    fn = functools.partial(padded, pad=pad)
    fn.name = f"padded(pad={pad})"
    return fn


exact.name, padded.name = "exact", "padded"
STRATEGIES = {
    "exact": lambda: exact,
    "padded": _padded_with,
    "fresh-per-call": FreshPerCall,
    "cached-exact-rows": CachedExactRows,
    "cached-at-least-rows": CachedAtLeastRows,
}


def make_strategy(name: str, **options):
    if name not in STRATEGIES:
        raise ValueError(f"buffer strategy must be one of {sorted(STRATEGIES)}, got {name!r}")
    return STRATEGIES[name](**options)
