"""A second floor for the benchmark: a kernel that only reads what paged MQA logits must read (every key
byte and scale of every sequence, block by block through the block table) and writes one int per
program. No dot, no logits: its time is what the memory system and a launch cost for this access
pattern, so ``x read`` in the benchmark separates the kernel's own overhead from the floor's.

Scheduling and pipelining are the logits kernel's (balanced persistent runs, the next block id carried
one iteration ahead); the byte sum only keeps the loads alive.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def gather_read_kernel(cache_ptr, table_ptr, out_ptr, n_blocks, blocks_per_seq, stride_tb, block_bytes,
                       KEY_BYTES: tl.constexpr, SCALE_BYTES: tl.constexpr, NUM_STAGES: tl.constexpr):
    pid = tl.program_id(0)
    progs = tl.num_programs(0)
    lo = pid * n_blocks // progs
    hi = (pid + 1) * n_blocks // progs
    k = tl.arange(0, KEY_BYTES)
    s = tl.arange(0, SCALE_BYTES)
    acc = tl.zeros((KEY_BYTES,), tl.int32)
    acc_s = tl.zeros((SCALE_BYTES,), tl.int32)
    blk_next = tl.load(table_ptr + (lo // blocks_per_seq) * stride_tb + lo % blocks_per_seq, mask=lo < hi, other=0)
    for i in tl.range(lo, hi, num_stages=NUM_STAGES):
        base = cache_ptr + blk_next.to(tl.int64) * block_bytes
        nxt = i + 1
        blk_next = tl.load(table_ptr + (nxt // blocks_per_seq) * stride_tb + nxt % blocks_per_seq,
                           mask=nxt < hi, other=0)
        acc += tl.load(base + k).to(tl.int32)
        acc_s += tl.load(base + KEY_BYTES + s).to(tl.int32)
    tl.store(out_ptr + pid, tl.sum(acc, axis=0) + tl.sum(acc_s, axis=0))


@triton.jit
def gather_read_tma_kernel(k_desc, s_desc, table_ptr, out_ptr, n_blocks, blocks_per_seq, stride_tb,
                           BS: tl.constexpr, D: tl.constexpr, NUM_STAGES: tl.constexpr):
    """The same reads as ``gather_read_kernel`` by the bulk tensor copy engine, as the logits kernel's
    ``TMA`` option makes them: a block's keys as BS rows of D bytes (read as D / 4 int32 words), its scales
    as one row of BS words; ``NUM_STAGES`` copies deep; the words summed (wrapping)."""
    pid = tl.program_id(0)
    progs = tl.num_programs(0)
    lo = pid * n_blocks // progs
    hi = (pid + 1) * n_blocks // progs
    acc = tl.zeros((BS, D // 4), tl.int32)
    acc_s = tl.zeros((1, BS), tl.int32)
    blk_next = tl.load(table_ptr + (lo // blocks_per_seq) * stride_tb + lo % blocks_per_seq, mask=lo < hi, other=0)
    for i in tl.range(lo, hi, num_stages=NUM_STAGES):
        blk = blk_next
        nxt = i + 1
        blk_next = tl.load(table_ptr + (nxt // blocks_per_seq) * stride_tb + nxt % blocks_per_seq,
                           mask=nxt < hi, other=0)
        acc += k_desc.load([blk * ((BS * (D + 4)) // D), 0])
        acc_s += s_desc.load([blk * ((D + 4) // 4) + D // 4, 0])
    tl.store(out_ptr + pid, tl.sum(tl.sum(acc, axis=1), axis=0) + tl.sum(tl.sum(acc_s, axis=1), axis=0))


def tma_ok(cache) -> bool:
    """Whether ``gather_read(tma=True)`` can copy this cache's blocks: power-of-two block_size (>= 4) and
    head_dim (16 to 256), a block a whole number of rows of head_dim bytes."""
    _, bs, _, width = cache.shape
    D = width - 4
    pow2 = lambda x: x > 0 and x & (x - 1) == 0  # noqa: E731
    return pow2(bs) and 4 <= bs <= 256 and pow2(D) and 16 <= D <= 256 and (bs * width) % D == 0


def gather_read(cache, block_tables, out, programs: int, num_stages: int = 3, tma: bool = False) -> None:
    """Launch over ``cache`` ``(num_blocks, block_size, 1, D + 4)`` uint8-viewable and ``block_tables``
    ``(B, blocks_per_seq)``, every entry used; ``out`` int32 with at least ``programs`` elements, each
    program's sum of the bytes it read (``tma``: of the int32 words, wrapping)."""
    import torch

    num_blocks, bs, _, width = cache.shape
    key_bytes, scale_bytes = bs * (width - 4), bs * 4
    if key_bytes & (key_bytes - 1) or scale_bytes & (scale_bytes - 1):
        raise ValueError(f"gather_read needs power-of-two key and scale bytes per block, got {key_bytes}, "
                         f"{scale_bytes} (block_size {bs}, head_dim {width - 4})")
    if out.dtype != torch.int32 or out.numel() < programs:
        raise ValueError(f"out must be int32 with >= {programs} elements, got {out.dtype} {out.numel()}")
    n_blocks = block_tables.numel()
    if tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        if not tma_ok(cache):
            raise ValueError(f"gather_read(tma=True) needs power-of-two block_size (4-256) and head_dim (16-256) "
                             f"and a block of whole head_dim rows, got block_size {bs}, head_dim {width - 4}")
        D = width - 4
        words = cache.view(torch.int32).view(-1)
        rows, srows = words.view(-1, D // 4), words.view(-1, bs)
        k_desc = TensorDescriptor(rows, list(rows.shape), [D // 4, 1], [bs, D // 4])
        s_desc = TensorDescriptor(srows, list(srows.shape), [bs, 1], [1, bs])
        gather_read_tma_kernel[(min(programs, n_blocks),)](
            k_desc, s_desc, block_tables, out, n_blocks, block_tables.shape[1], block_tables.stride(0), BS=bs, D=D,
            NUM_STAGES=num_stages)
        return
    gather_read_kernel[(min(programs, n_blocks),)](
        cache.view(torch.uint8), block_tables, out, n_blocks, block_tables.shape[1], block_tables.stride(0),
        bs * width, KEY_BYTES=key_bytes, SCALE_BYTES=scale_bytes, NUM_STAGES=num_stages)


@triton.jit
def empty_kernel(out_ptr):
    """What a launch costs with nothing to do (one store per program keeps it from being elided)."""
    tl.store(out_ptr + tl.program_id(0), 0)
