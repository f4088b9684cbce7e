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
from parity.backends.torch_ref import batch_head_logits, seq_groups, store_rows
from parity.problem.cases import IndexerInputs

CHUNK = 256  # columns one program stores at once in the buggy kernel


class _Fault(SimpleBackend):
    """The torch paths with one bug. A fault changes what the kernel reads (:meth:`transform`, once per
    call), what it computes from it (:meth:`batch_logits`, a group of sequences at a time) or how it
    stores (:meth:`run`)."""

    def __init__(self, name: str, paths=("stage1", "fused", "preshuffle")):
        super().__init__(name=f"fault:{name}", paths=tuple(paths), logits_dtypes=(torch.float32, torch.bfloat16),
                         per_row_lengths=True)

    def transform(self, path: str, inputs: IndexerInputs) -> IndexerInputs:
        return inputs

    def batch_logits(self, path: str, inputs: IndexerInputs, seqs: slice) -> torch.Tensor:
        """``(G, H, next_n, T)`` for stage1, ``(G, next_n, T)`` otherwise."""
        h = batch_head_logits(inputs, seqs, preshuffled=(path == "preshuffle"))
        return h if path == "stage1" else h.sum(1)

    def run(self, path, inputs, out):
        inputs = self.transform(path, inputs)
        for seqs in seq_groups(inputs):
            store_rows(out, path, seqs, inputs.next_n, self.batch_logits(path, inputs, seqs))


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

    def transform(self, path, inputs):
        return replace(inputs, context_lens=(inputs.context_lens + 1).clamp_max(inputs.max_model_len))


class CausalShortByOne(_Fault):
    """Row i of a sequence sees one position too few: ``t <= context_len - next_n + i - 1``. Its last
    valid logit is -inf, which any reader sees (unlike one position too many, which only a reader
    that ranks past the row's length does)."""

    def __init__(self):
        super().__init__("causal_short_by_one")

    def transform(self, path, inputs):
        return replace(inputs, context_lens=(inputs.context_lens - 1).clamp_min(0))


class _NonFinitePastLength(_Fault):
    """Writes ``FILL`` past each row's valid length, where -inf belongs (a sign lost on the mask value,
    a 0/0 in the masked branch): a reader that ranks the whole row picks those positions first."""

    FILL = float("inf")

    def run(self, path, inputs, out):
        super().run(path, inputs, out)
        lens = inputs.row_lens.to(out.device).long().reshape(-1, 1)
        past = torch.arange(out.shape[-1], device=out.device)[None, :] >= lens
        out.masked_fill_(past.expand_as(out), self.FILL)


class PosInfPastLength(_NonFinitePastLength):
    def __init__(self):
        super().__init__("pos_inf_past_length", paths=("fused", "preshuffle"))


class NanPastLength(_NonFinitePastLength):
    FILL = float("nan")

    def __init__(self):
        super().__init__("nan_past_length", paths=("fused", "preshuffle"))


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

    def transform(self, path, inputs):
        nb, bs, _, width = inputs.kv_cache.shape
        D = width - layouts.SCALE_BYTES
        per_token = inputs.kv_cache.reshape(nb, bs, width)  # the wrong reading of the packed block
        keys = per_token[..., :D].contiguous()
        scales = per_token[..., D:].contiguous().view(torch.float32).reshape(nb, bs)
        bad = layouts.pack_kv_cache(keys.reshape(-1, D).view(inputs.q_fp8.dtype), scales.reshape(-1), bs)
        return replace(inputs, kv_cache=bad)


class WrongPreshuffleOffsets(_Fault):
    """Reads the preshuffled cache with token and byte swapped inside each 16x16 tile."""

    def __init__(self):
        super().__init__("wrong_preshuffle_offsets", paths=("preshuffle",))

    def transform(self, path, inputs):
        nb, bs, _, width = inputs.kv_cache_preshuffled.shape
        D = width - layouts.SCALE_BYTES
        flat = inputs.kv_cache_preshuffled.reshape(nb, bs * width)
        t = torch.arange(bs, device=flat.device).view(-1, 1)
        d = torch.arange(D, device=flat.device).view(1, -1)
        wrong = (t // 16) * 16 * D + (d // 16) * 256 + (d % 16) * 16 + (t % 16)
        plain = flat.clone()
        plain[:, : bs * D] = flat[:, wrong.reshape(-1)]
        # Hand the mis-read bytes to the correct preshuffle reader.
        mis = layouts.preshuffle_kv_cache(plain.view_as(inputs.kv_cache_preshuffled))
        return replace(inputs, kv_cache_preshuffled=mis)


class DropsOneHead(_Fault):
    """Sums 63 of 64 heads (a loop bound off by one): every value of a row is off by that head's
    share, a whole-row value error that writes nothing out of bounds."""

    def __init__(self):
        super().__init__("drops_one_head")

    def batch_logits(self, path, inputs, seqs):
        h = batch_head_logits(inputs, seqs, preshuffled=(path == "preshuffle"))
        if path == "stage1":
            h[:, -1] = torch.where(torch.isfinite(h[:, -1]), torch.zeros_like(h[:, -1]), h[:, -1])
            return h
        return h[:, :-1].sum(1)


class Fp8FlavourMisread(_Fault):
    """Decodes e4m3fnuz key bytes as e4m3fn (the NVIDIA type on an AMD-quantized cache). The same
    bits read as e4m3fn are worth twice as much (exponent bias 7 instead of 8), so every key doubles:
    a whole-row value error that writes nothing out of bounds. Modelled by doubling the per-token
    scales, which multiply the dot product exactly as the keys do."""

    def __init__(self):
        super().__init__("fp8_flavour_misread")
        self.fp8_flavours = ("e4m3fnuz",)

    def transform(self, path, inputs):
        key = "kv_cache_preshuffled" if path == "preshuffle" else "kv_cache"
        cache = getattr(inputs, key)
        nb, bs, _, width = cache.shape
        flat = cache.reshape(nb, bs * width).clone()
        scales = flat[:, bs * (width - layouts.SCALE_BYTES):].contiguous().view(torch.float32) * 2
        flat[:, bs * (width - layouts.SCALE_BYTES):] = scales.view(torch.uint8)
        return replace(inputs, **{key: flat.view_as(cache)})


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
          (UnmaskedChunkStore, CausalOffByOne, CausalShortByOne, PosInfPastLength, NanPastLength, IgnoresStride0, ScalesInterleaved, WrongPreshuffleOffsets, DropsOneHead,
           Fp8FlavourMisread, RacyWrite,
           Raises, Aborts, Hangs)}


def make_backend(fault: str = "unmasked_chunk_store"):
    if fault not in FAULTS:
        raise ValueError(f"fault must be one of {sorted(FAULTS)}, got {fault!r}")
    return FAULTS[fault]()

