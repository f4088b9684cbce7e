"""Planted faults of the bug classes this kernel has had in the wild (the stress level), one each:
torch paths with one bug apiece, so that ``python -m parity selftest`` proves the stress cases and
checks catch every class, and point at the place."""
from __future__ import annotations

import math
from dataclasses import replace

import torch

from parity.backends.faults import CHUNK, _Fault
from parity.backends.torch_ref import head_logits, seq_groups


class WritesDummyRows(_Fault):
    """A row with no valid position (a context_len 0 or 1 sequence padding a captured batch) gets
    the logit of position 0 anyway, read through the sequence's first block-table entry, as a
    schedule that assumes every row has work would."""

    def __init__(self):
        super().__init__("writes_dummy_rows")

    def run(self, path, inputs, out):
        super().run(path, inputs, out)
        empty = torch.nonzero(inputs.row_lens == 0).flatten().tolist()
        if not empty:
            return
        some = replace(inputs, context_lens=torch.full_like(inputs.context_lens, inputs.next_n), context_lens_2d=None)
        for r in empty:
            b = r // inputs.next_n
            h = head_logits(some, b, preshuffled=(path == "preshuffle"))[..., inputs.next_n - 1, 0]
            out[..., r, 0] = h if path == "stage1" else h.sum()


class DummyRowOverrun(_Fault):
    """A row with no valid position is scheduled as if it held ``max_model_len`` positions and stored
    in whole 256-column chunks with no upper bound (a schedule that gives every row of a captured
    batch the same work): junk over the row and past its end, into its padding, the next row or past
    the allocation. The junk inside an empty row is don't-care for a length-bounded reader; the
    stores past its end are out-of-bounds writes under any rule."""

    def __init__(self):
        super().__init__("dummy_row_overrun", paths=("fused", "preshuffle"))

    def run(self, path, inputs, out):
        super().run(path, inputs, out)
        rows, cols = out.shape
        end = math.ceil(cols / CHUNK) * CHUNK
        for r in torch.nonzero(inputs.row_lens == 0).flatten().tolist():
            # The raw store ignores the view's bounds; the junk is far from any logit (a 0.0 can pass as one
            # where the heads' terms cancel).
            torch.as_strided(out, (end,), (out.stride(1),), out.storage_offset() + r * out.stride(0)).fill_(1.0e4)


class OffsetWraps(_Fault):
    """Computes a block's byte offset ``block_id * block_bytes`` in ``bits``-bit arithmetic, so that
    blocks past ``2**bits`` bytes are read from the wrapped offset (aiter's varctx path: int32 at
    block index >= 254201 for 8448-byte blocks). The CPU proxy wraps at 2**20 bytes."""

    def __init__(self, bits: int = 20):
        super().__init__("offset_wraps")
        self.bits = bits

    def transform(self, path, inputs):
        key = "kv_cache_preshuffled" if path == "preshuffle" else "kv_cache"
        cache = getattr(inputs, key)
        nb, bs, _, width = cache.shape
        block = bs * width
        start = (torch.arange(nb, device=cache.device) * block) % (1 << self.bits)
        wrapped = cache.reshape(-1)[start[:, None] + torch.arange(block, device=cache.device)]
        return replace(inputs, **{key: wrapped.view_as(cache)})


class BatchStrideOver64(_Fault):
    """Sequences past the 64th read the block-table row 64 earlier (a per-batch stride that only
    holds for the first 64: aiter's regression tests for batch > 64)."""

    def __init__(self):
        super().__init__("batch_stride_over_64")

    def transform(self, path, inputs):
        tables = inputs.block_tables.clone()
        tables[64:] = inputs.block_tables[:-64]
        return replace(inputs, block_tables=tables)


class BlockTableCap(_Fault):
    """Reads at most ``cap`` block-table entries; later tokens re-read the last entry it kept (an
    off-by-one in a block-table buffer sized below max_model_len: vLLM #46074, above ~325K tokens).
    The CPU proxy caps at 32 blocks."""

    def __init__(self, cap: int = 32):
        super().__init__("block_table_cap")
        self.cap = cap

    def transform(self, path, inputs):
        tables = inputs.block_tables.clone()
        if tables.shape[1] > self.cap:
            tables[:, self.cap:] = tables[:, self.cap - 1:self.cap]
        return replace(inputs, block_tables=tables)


class IgnoresRowLengths(_Fault):
    """Applies the causal diagonal whatever the per-row lengths (2-D context_lens) say."""

    def __init__(self):
        super().__init__("ignores_row_lengths")

    def transform(self, path, inputs):
        return replace(inputs, context_lens_2d=None)


class Bf16WritesFp32(_Fault):
    """Stores float32 logits through a bf16 output pointer (an output dtype it ignores): each row's
    stores run twice the row's bytes, over the next row or past the allocation, and the values read
    back as garbage."""

    def __init__(self):
        super().__init__("bf16_writes_fp32", paths=("fused", "preshuffle"))

    def run(self, path, inputs, out):
        if out.dtype != torch.bfloat16:
            return super().run(path, inputs, out)
        as_fp32 = torch.empty(0, dtype=torch.float32, device=out.device).set_(out.untyped_storage())
        n = inputs.next_n
        for seqs in seq_groups(inputs):
            rows = self.batch_logits(path, inputs, seqs).float().reshape(-1, inputs.max_model_len)
            for j in range(rows.shape[0]):
                start = out.storage_offset() + (seqs.start * n + j) * out.stride(0)
                if start % 2:
                    raise RuntimeError("planted fault needs 4-byte aligned rows")
                as_fp32[start // 2: start // 2 + rows.shape[-1]] = rows[j]


class RareRace(_Fault):
    """A racing store that loses one call in seven: two runs agree, twenty do not."""

    def __init__(self):
        super().__init__("rare_race")
        self.calls = 0

    def run(self, path, inputs, out):
        super().run(path, inputs, out)
        self.calls += 1
        if self.calls % 7 == 0:
            row0 = out[0, 0] if out.dim() == 3 else out[0]  # a view: the store lands in out
            finite = torch.nonzero(torch.isfinite(row0)).flatten()
            if finite.numel():
                c = int(finite[0])
                row0[c] = torch.nextafter(row0[c], torch.tensor(float("inf"), dtype=out.dtype, device=out.device))


class DropsTieGroup(_Fault):
    """Breaks a near-tied group at the k-th place by pushing it down: every logit within 1e-5
    (relative) of the row's k-th largest loses a quarter of its value, so the group leaves the top-k.
    (Swapping tied members for the next positions is what any kernel may do; the value check sees
    the group's wrong logits, and the top-k check forgives only the swaps within the tie band.)"""

    def __init__(self):
        super().__init__("drops_tie_group", paths=("fused", "preshuffle"))

    def batch_logits(self, path, inputs, seqs):
        h = super().batch_logits(path, inputs, seqs)  # (G, next_n, T)
        k = min(inputs.case.topk if inputs.case is not None else 64, h.shape[-1])
        finite = torch.isfinite(h)
        kth = torch.topk(h, k, dim=-1).values[..., -1:]  # -inf where a row has fewer than k finite
        group = finite & ((h - kth).abs() <= 1e-5 * kth.abs())
        hit = (finite.sum(-1, keepdim=True) > k) & (group.sum(-1, keepdim=True) > 1)
        return torch.where(group & hit, h - 0.25 * kth.abs(), h)


class OddNextNReadsNextQ(_Fault):
    """With an odd next_n the last speculative row reads q one row further on (the next sequence's
    first row; zeros past the batch): an out-of-bounds read that only odd next_n reaches."""

    def __init__(self):
        super().__init__("odd_next_n_reads_next_q")

    def transform(self, path, inputs):
        n = inputs.next_n
        if n % 2 == 0:
            return inputs
        q = inputs.q_fp8.clone()  # the last row of sequence b reads row 0 of sequence b + 1 (zeros past the batch)
        q[:-1, n - 1] = inputs.q_fp8[1:, 0]
        q[-1, n - 1] = torch.zeros_like(q[-1, n - 1])
        return replace(inputs, q_fp8=q)


FAULTS = {cls().name.split(":", 1)[1]: cls for cls in
          (WritesDummyRows, DummyRowOverrun, OffsetWraps, BatchStrideOver64, BlockTableCap, IgnoresRowLengths, Bf16WritesFp32,
           RareRace, DropsTieGroup, OddNextNReadsNextQ)}


def make_backend(fault: str = "writes_dummy_rows"):
    if fault not in FAULTS:
        raise ValueError(f"fault must be one of {sorted(FAULTS)}, got {fault!r}")
    return FAULTS[fault]()

