"""Planted-fault backends: the torch paths with one known bug each (SPEC section 4). They exist to
prove that every check catches what it is meant to catch (``python -m parity selftest``)."""
from __future__ import annotations

import math
import os
import time
from dataclasses import replace

import torch

from parity.problem import layouts
from parity.backends.base import SimpleBackend
from parity.backends.torch_ref import head_logits
from parity.problem.cases import IndexerInputs

CHUNK = 256  # columns one program stores at once in the buggy kernel


class _Fault(SimpleBackend):
    def __init__(self, name: str, paths=("stage1", "fused", "preshuffle")):
        super().__init__(name=f"fault:{name}", paths=tuple(paths), logits_dtypes=(torch.float32, torch.bfloat16),
                         per_row_lengths=True)

    def logits(self, path: str, inputs: IndexerInputs, b: int) -> torch.Tensor:
        h = head_logits(inputs, b, preshuffled=(path == "preshuffle"))
        return h if path == "stage1" else h.sum(0)

    def run(self, path, inputs, out):
        n = inputs.next_n
        for b in range(inputs.batch):
            sl = (slice(None), slice(b * n, (b + 1) * n)) if path == "stage1" else (slice(b * n, (b + 1) * n),)
            out[sl].copy_(self.logits(path, inputs, b))


class UnmaskedChunkStore(_Fault):
    """Stores whole 256-column chunks with no upper-bound mask, rows scheduled in reverse order so a
    row's tail lands after the next row was written (as a racing GPU program's would)."""

    def __init__(self):
        super().__init__("unmasked_chunk_store", paths=("fused", "preshuffle"))

    def run(self, path, inputs, out):
        super().run(path, inputs, out)
        rows, cols = out.shape
        ctx = inputs.context_lens.cpu().long().repeat_interleave(inputs.next_n)
        for r in reversed(range(rows)):
            end = math.ceil(int(ctx[r]) / CHUNK) * CHUNK
            if end <= cols:
                continue
            # The tail past the row end: the raw store ignores the view's bounds.
            tail = torch.as_strided(out, (end - cols,), (out.stride(1),), out.storage_offset() + r * out.stride(0) + cols)
            tail.fill_(0.0)


class CausalOffByOne(_Fault):
    """Row i of a sequence sees one position too many: ``t <= context_len - next_n + i + 1``."""

    def __init__(self):
        super().__init__("causal_off_by_one")

    def logits(self, path, inputs, b):
        n = inputs.next_n
        shifted = inputs.context_lens.clone()
        shifted[b] = min(int(shifted[b]) + 1, inputs.max_model_len)
        return super().logits(path, replace(inputs, context_lens=shifted), b)


class CausalShortByOne(_Fault):
    """Row i of a sequence sees one position too few: ``t <= context_len - next_n + i - 1``. Its last
    valid logit is -inf, which any reader sees (unlike one position too many, which only a reader
    that ranks past the row's length does)."""

    def __init__(self):
        super().__init__("causal_short_by_one")

    def logits(self, path, inputs, b):
        shorter = inputs.context_lens.clone()
        shorter[b] = max(int(shorter[b]) - 1, 0)
        return super().logits(path, replace(inputs, context_lens=shorter), b)


class IgnoresStride0(_Fault):
    """Writes as if the output were contiguous, whatever its ``stride(0)``."""

    def __init__(self):
        super().__init__("ignores_stride0")

    def run(self, path, inputs, out):
        shape = out.shape
        strides = []
        acc = 1
        for d in reversed(shape):
            strides.insert(0, acc)
            acc *= d
        dense = torch.as_strided(out, shape, strides, out.storage_offset())
        super().run(path, inputs, dense)


class ScalesInterleaved(_Fault):
    """Reads each token's key and scale as if bytes were interleaved per token (old block_size 1 layout)."""

    def __init__(self):
        super().__init__("scales_interleaved")

    def logits(self, path, inputs, b):
        nb, bs, _, width = inputs.kv_cache.shape
        D = width - layouts.SCALE_BYTES
        per_token = inputs.kv_cache.reshape(nb, bs, width)  # the wrong reading of the packed block
        keys = per_token[..., :D].contiguous()
        scales = per_token[..., D:].contiguous().view(torch.float32).reshape(nb, bs)
        bad = layouts.pack_kv_cache(keys.reshape(-1, D).view(inputs.q_fp8.dtype), scales.reshape(-1), bs)
        return super().logits(path, replace(inputs, kv_cache=bad), b)


class WrongPreshuffleOffsets(_Fault):
    """Reads the preshuffled cache with token and byte swapped inside each 16x16 tile."""

    def __init__(self):
        super().__init__("wrong_preshuffle_offsets", paths=("preshuffle",))

    def logits(self, path, inputs, b):
        nb, bs, _, width = inputs.kv_cache_preshuffled.shape
        D = width - layouts.SCALE_BYTES
        flat = inputs.kv_cache_preshuffled.reshape(nb, bs * width)
        t = torch.arange(bs).view(-1, 1)
        d = torch.arange(D).view(1, -1)
        wrong = (t // 16) * 16 * D + (d // 16) * 256 + (d % 16) * 16 + (t % 16)
        plain = flat.clone()
        plain[:, : bs * D] = flat[:, wrong.reshape(-1)]
        # Hand the mis-read bytes to the correct preshuffle reader.
        mis = layouts.preshuffle_kv_cache(plain.view_as(inputs.kv_cache_preshuffled))
        return super().logits(path, replace(inputs, kv_cache_preshuffled=mis), b)


class DropsOneHead(_Fault):
    """Sums 63 of 64 heads (a loop bound off by one): every value of a row is off by that head's
    share, a whole-row value error that writes nothing out of bounds."""

    def __init__(self):
        super().__init__("drops_one_head")

    def logits(self, path, inputs, b):
        h = head_logits(inputs, b, preshuffled=(path == "preshuffle"))
        if path == "stage1":
            h[-1] = torch.where(torch.isfinite(h[-1]), torch.zeros_like(h[-1]), h[-1])
            return h
        return h[:-1].sum(0)


class Fp8FlavourMisread(_Fault):
    """Decodes e4m3fnuz key bytes as e4m3fn (the NVIDIA type on an AMD-quantized cache). The same
    bits read as e4m3fn are worth twice as much (exponent bias 7 instead of 8), so every key doubles:
    a whole-row value error that writes nothing out of bounds. Modelled by doubling the per-token
    scales, which multiply the dot product exactly as the keys do."""

    def __init__(self):
        super().__init__("fp8_flavour_misread")
        self.fp8_flavours = ("e4m3fnuz",)

    def logits(self, path, inputs, b):
        key = "kv_cache_preshuffled" if path == "preshuffle" else "kv_cache"
        cache = getattr(inputs, key)
        nb, bs, _, width = cache.shape
        flat = cache.reshape(nb, bs * width).clone()
        scales = flat[:, bs * (width - layouts.SCALE_BYTES):].contiguous().view(torch.float32) * 2
        flat[:, bs * (width - layouts.SCALE_BYTES):] = scales.view(torch.uint8)
        return super().logits(path, replace(inputs, **{key: flat.view_as(cache)}), b)


class RacyWrite(_Fault):
    """Two programs race to store a position with partial sums rounded differently: which one wins
    changes from call to call (a one-ulp difference, inside any value tolerance)."""

    def __init__(self):
        super().__init__("racy_write")
        self.calls = 0

    def run(self, path, inputs, out):
        super().run(path, inputs, out)
        self.calls += 1
        g = torch.Generator().manual_seed(self.calls)
        lose = torch.rand(out.shape, generator=g) < 0.05
        lose &= torch.isfinite(out.cpu())
        bumped = torch.nextafter(out.cpu(), torch.tensor(float("inf")))
        out.copy_(torch.where(lose, bumped, out.cpu()).to(out.device))


class Raises(_Fault):
    """A backend that crashes with a Python exception."""

    def __init__(self):
        super().__init__("raises")

    def run(self, path, inputs, out):
        raise RuntimeError("planted: kernel launch failed")


class Aborts(_Fault):
    """A backend that kills its process (as a GPU memory fault does)."""

    def __init__(self):
        super().__init__("aborts")

    def run(self, path, inputs, out):
        os.abort()


class Hangs(_Fault):
    """A backend that never returns."""

    def __init__(self):
        super().__init__("hangs")

    def run(self, path, inputs, out):
        while True:
            time.sleep(1)


FAULTS = {cls().name.split(":", 1)[1]: cls for cls in
          (UnmaskedChunkStore, CausalOffByOne, CausalShortByOne, IgnoresStride0, ScalesInterleaved, WrongPreshuffleOffsets, DropsOneHead,
           Fp8FlavourMisread, RacyWrite,
           Raises, Aborts, Hangs)}


def make_backend(fault: str = "unmasked_chunk_store"):
    if fault not in FAULTS:
        raise ValueError(f"fault must be one of {sorted(FAULTS)}, got {fault!r}")
    return FAULTS[fault]()

