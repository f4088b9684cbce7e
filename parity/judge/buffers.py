"""Output buffers handed to a kernel: exact or padded, inside a guarded allocation.

The guarded allocation is one flat float32 storage::

    [guard before][row 0: cols | pad][row 1: cols | pad] ... [row N-1: cols | pad][guard after]

Guards and pads are filled with a NaN payload no kernel produces, the logical region with -inf
(the caller's prefill contract, as ``torch.full(..., -inf)``). After the call, any guard or pad
element that no longer holds the payload was written by the kernel: the out-of-bounds check reads
exactly where. The storage has the logits' dtype (float32, or bfloat16 for kernels that write
bf16 logits), so guard bands are measured in the elements the kernel stores.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

DEFAULT_PAD = 256
# Quiet NaNs with a payload; arithmetic NaNs a kernel produces (and float32 NaNs rounded to bf16)
# carry other bits. dtype -> (integer view, bits).
SENTINELS = {torch.float32: (torch.int32, 0x7FC0DEAD), torch.bfloat16: (torch.int16, 0x7FDB)}
SENTINEL_BITS = SENTINELS[torch.float32][1]
BUFFER_KINDS = ("exact", "padded")


def _sentinel(t: torch.Tensor) -> tuple:
    if t.dtype not in SENTINELS:
        raise ValueError(f"t must be one of the logits' dtypes {sorted(map(str, SENTINELS))}, got {t.dtype}")
    return SENTINELS[t.dtype]


def sentinel_mask(t: torch.Tensor) -> torch.Tensor:
    """True where ``t`` (float32 or bfloat16) still holds the sentinel bit pattern."""
    as_int, bits = _sentinel(t)
    return t.contiguous().view(as_int) == bits


def fill_sentinel(t: torch.Tensor) -> None:
    as_int, bits = _sentinel(t)
    t.view(as_int).fill_(bits)


@dataclass
class GuardedBuffer:
    storage: torch.Tensor  # flat, in the logits' dtype, guards included
    view: torch.Tensor  # what the kernel receives: (*lead, rows, cols)
    guard: int  # elements before the first row and after the last
    pitch: int  # elements from one row to the next (cols + pad)
    cols: int

    @property
    def flat_rows(self) -> int:
        return math.prod(self.view.shape[:-1])

    @property
    def pad(self) -> int:
        return self.pitch - self.cols


def guarded_buffer(lead_shape: tuple[int, ...], cols: int, kind: str, device, pad: int = DEFAULT_PAD,
                   guard: int | None = None, dtype: torch.dtype = torch.float32) -> GuardedBuffer:
    """A ``(*lead_shape, cols)`` view with row pitch ``cols`` (exact) or ``cols + pad`` (padded)."""
    if dtype not in SENTINELS:
        raise ValueError(f"logits dtype must be one of {list(SENTINELS)}, got {dtype}")
    if kind not in BUFFER_KINDS:
        raise ValueError(f"buffer kind must be one of {BUFFER_KINDS}, got {kind!r}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    pitch = cols + (pad if kind == "padded" else 0)
    # Wide enough that an overshoot of a whole 256-column chunk (or a whole row) stays inside it.
    guard = guard if guard is not None else max(1024, 2 * pitch)
    n = math.prod(lead_shape)
    storage = torch.empty(guard + n * pitch + guard, dtype=dtype, device=device)
    fill_sentinel(storage)
    strides = []
    acc = pitch
    for d in reversed(lead_shape):
        strides.insert(0, acc)
        acc *= d
    view = storage.as_strided((*lead_shape, cols), (*strides, 1), storage_offset=guard)
    view.fill_(float("-inf"))
    return GuardedBuffer(storage=storage, view=view, guard=guard, pitch=pitch, cols=cols)
