"""Planted faults of the MXFP4 format: the torch paths with one FP4 reading or addressing bug apiece, so
that ``python -m parity selftest`` proves the FP4 cells and the derived tolerance catch each class (the
nibble order, the scale word's byte order, the block-planar scale layout, aiter #4028's int32 row offset,
and the smallest scale error there is: one UE8M0 step on one group of one key)."""
from __future__ import annotations

from dataclasses import replace

import torch

from parity.problem import mxfp4
from parity.backends.faults import _Fault
from parity.backends.torch_ref import seq_groups


class _Fp4Fault(_Fault):
    def __init__(self, name: str, paths=("stage1", "fused")):
        super().__init__(name, paths=paths)
        self.key_formats = ("mxfp4",)

    @staticmethod
    def cache_parts(inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the cache's ``(num_blocks, block_size * D/2)`` value bytes and ``(num_blocks, block_size)``
        scale words, to be changed and put back with :meth:`with_cache`."""
        values, words = mxfp4.split_kv_cache(inputs.kv_cache)
        return values.reshape(values.shape[0], -1).clone(), words.clone()

    @staticmethod
    def with_cache(inputs, values: torch.Tensor, words: torch.Tensor):
        nb, bs = words.shape
        cache = mxfp4.pack_kv_cache(values.reshape(nb * bs, -1), words.reshape(-1), bs)
        return replace(inputs, kv_cache=cache.to(inputs.kv_cache.device))


def _swap_nibbles(b: torch.Tensor) -> torch.Tensor:
    return ((b & 0xF) << 4) | (b >> 4)


class NibblesSwapped(_Fp4Fault):
    """Reads the key cache with element 2j from the high nibble of byte j and 2j + 1 from the low one, the
    reverse of the order its writer used; q is read right. (Swapped on both operands alike, the pairs trade
    places in q and k at once and the dot is unchanged: the bug that matters is a reader and a writer
    that disagree.)"""

    def __init__(self):
        super().__init__("fp4_nibbles_swapped")

    def transform(self, path, inputs):
        values, words = self.cache_parts(inputs)
        return self.with_cache(inputs, _swap_nibbles(values), words)


class ScaleFromNeighbourGroup(_Fp4Fault):
    """Takes the scale of key group g from byte g + 1 of the word (a byte index off by one; past byte 3 it
    wraps to byte 0). At head_dim 64 the second group then reads the word's 1.0 padding."""

    def __init__(self):
        super().__init__("fp4_scale_neighbour_group")

    def transform(self, path, inputs):
        values, words = self.cache_parts(inputs)
        shifted = mxfp4.scale_words(mxfp4.scale_bytes(words).roll(-1, dims=-1))
        return self.with_cache(inputs, values, shifted)


class ScalesTokenInterleaved(_Fp4Fault):
    """Reads the ``(block_size, 1, D/2 + 4)`` view literally: each token's values followed by its scale word
    (the layout of a block_size 1 cache) instead of the block's values, then its words."""

    def __init__(self):
        super().__init__("fp4_scales_token_interleaved")

    def transform(self, path, inputs):
        nb, bs, _, width = inputs.kv_cache.shape
        half = width - mxfp4.SCALE_WORD_BYTES
        per_token = inputs.kv_cache.reshape(nb, bs, width)  # the wrong reading of the packed block
        values = per_token[..., :half].reshape(nb, -1)
        words = per_token[..., half:].contiguous().view(torch.int32).reshape(nb, bs)
        return self.with_cache(inputs, values, words)


class RowOffsetWraps(_Fp4Fault):
    """Stores logit (row, col) at byte ``(row * stride(0) + col) * element_size`` from the output's start
    computed in ``bits``-bit arithmetic (aiter #4028's FP4 kernel: ``row * stride_out`` in int32, which
    dropped rows once the logits passed 2 GiB). Past the wrap a row's stores land back at the start of the
    buffer. The CPU proxy wraps at 2**15 bytes."""

    def __init__(self, bits: int = 15):
        super().__init__("fp4_row_offset_wraps", paths=("fused",))
        self.bits = bits

    def run(self, path, inputs, out):
        n, cols = inputs.next_n, out.shape[1]
        flat = torch.empty(0, dtype=out.dtype, device=out.device).set_(out.untyped_storage())
        size = out.element_size()
        col = torch.arange(cols, device=out.device)
        for seqs in seq_groups(inputs):
            logits = self.batch_logits(path, inputs, seqs).reshape(-1, cols)  # (G * next_n, cols)
            for j in range(logits.shape[0]):
                r = seqs.start * n + j
                byte = ((r * out.stride(0) + col) * size) % (1 << self.bits)
                flat[out.storage_offset() + byte // size] = logits[j].to(out.dtype)


class OneGroupScaleOff(_Fp4Fault):
    """The smallest scale error there is: one UE8M0 step (x2) on group 0 of one key, the token at position
    ``COLUMN`` of every sequence. Only that column of each row moves, by that group's share of the dot."""

    COLUMN = 7

    def __init__(self):
        super().__init__("fp4_one_group_scale_off")

    def transform(self, path, inputs):
        bs, j = inputs.block_size, self.COLUMN % inputs.block_size
        values, words = self.cache_parts(inputs)
        reach = (inputs.context_lens > self.COLUMN).to(inputs.block_tables.device)  # sequences holding that token
        # The block holding that token, once each (a block two sequences shared would still move one step).
        for blk in inputs.block_tables[reach, self.COLUMN // bs].unique().tolist():
            exps = mxfp4.scale_bytes(words[blk, j:j + 1])
            exps[0, 0] += 1
            words[blk, j] = mxfp4.scale_words(exps)[0]
        return self.with_cache(inputs, values, words)


FAULTS = {cls().name.split(":", 1)[1]: cls for cls in
          (NibblesSwapped, ScaleFromNeighbourGroup, ScalesTokenInterleaved, RowOffsetWraps, OneGroupScaleOff)}


def make_backend(fault: str = "fp4_nibbles_swapped"):
    if fault not in FAULTS:
        raise ValueError(f"fault must be one of {sorted(FAULTS)}, got {fault!r}")
    return FAULTS[fault]()
