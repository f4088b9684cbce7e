"""Triton kernels of paged MQA logits on the block-paged fp8 key cache (SPEC sections 1-2).

One kernel body serves the three paths: ``STAGE1`` writes per-head logits ``(H, rows, cols)``, otherwise
heads are reduced in registers into ``(rows, cols)``; ``PRESHUFFLE`` only changes where a key byte sits
inside its block. Per tile of ``BLOCK_T`` tokens of sequence b, one dot covers every speculative row i
(column c = i * BLOCK_H + h of q), or ``GROUPS`` = 2 dots of half the rows each where one would need more
accumulator registers than leave room for 3 programs per SM (next_n = 4, 64 heads):

    s[t, c]    = k[t, :] . q[b, i, h, :]              (fp32 accumulation)
    logits[t]  = scale[t] * sum_h w[h] relu(s[t, c])    relu(x * scale) = scale * relu(x) as scale > 0

Scheduling is persistent: the tiles of all sequences form one list, each program takes an equal
contiguous run of it (so no wave is left half empty) and reloads q only when its run crosses into the next
sequence. The list counts ``cdiv(max_model_len, BLOCK_T)`` tiles for every sequence, and a program skips
those past its sequence's length: balanced where contexts fill max_model_len (the benchmark's quick
shapes), not where they are far shorter (a server's call). ``BLOCK_B`` > 0 counts each sequence's real
tiles instead (``_balanced_tiles``). Only Triton features common to NVIDIA and AMD targets are used.

Key tiles are multi-buffered (``NUM_STAGES``): the block id of the next tile is loaded one iteration ahead
and carried by the loop. Loaded inside the iteration that uses it, the block-table read makes the key
load indirect, and Triton's pipeliner then keeps a single tile in flight and waits for it at once
(seen in the TTGIR on Triton 3.6 and 3.9: two buffers and ``async_wait num = 0`` whatever num_stages),
leaving the kernel latency-bound.

With ``FLAT`` (a tile inside one cache block) a key tile is copied as the one contiguous run of bytes it
is in memory and put in (token, d) order in registers; for the preshuffled layout that is a permutation
of 16-byte runs. Gathered row by row instead, the preshuffled tile ran 1.45x slower than the plain one on
an H100 (48 against 33 us at B64-n2-ctx8192); copied flat, both run alike. The backend uses it for the
preshuffled layout only: plain rows are contiguous already, and the pass through registers made the
plain tile slower (41.5 against 33.4 us).
"""
from __future__ import annotations

import triton
import triton.language as tl

# UPCAST: how tiles enter tl.dot. FP8: native fp8 dot. FP16: native fp8 load, fp16 dot (exact: fp16 holds
# every e4m3 value). FP32: for the interpreter. DECODE: the target cannot even load this fp8 flavour
# (e4m3fnuz on NVIDIA), so bytes are decoded to fp16 by bit arithmetic.
UPCAST_FP8, UPCAST_FP16, UPCAST_FP32, UPCAST_DECODE = 0, 1, 2, 3


@triton.jit
def _decode_e4m3(x, EXP_BIAS: tl.constexpr):
    """uint8 e4m3 bytes (exponent bias 7: fn, 8: fnuz) -> fp16, exactly (NaN codes are not inputs)."""
    x = x.to(tl.int32)
    sign = tl.where((x & 0x80) != 0, -1.0, 1.0)
    e = (x >> 3) & 0xF
    m = x & 0x7
    normal = (((e + (15 - EXP_BIAS)) << 10) | (m << 7)).to(tl.int16).to(tl.float16, bitcast=True)
    sub = m.to(tl.float16) * (2.0 ** (-2 - EXP_BIAS))
    return (tl.where(e == 0, sub, normal) * sign).to(tl.float16)


@triton.jit
def _to_dot(x, UPCAST: tl.constexpr, EXP_BIAS: tl.constexpr):
    if UPCAST == 1:
        x = x.to(tl.float16)
    elif UPCAST == 2:
        x = x.to(tl.float32)
    elif UPCAST == 3:
        x = _decode_e4m3(x, EXP_BIAS)
    return x


@triton.jit
def _program_tiles(n_tiles, tiles_per_seq):
    """This program's even share ``[lo, hi)`` of the batch's key tiles (sequence after sequence, each
    ``tiles_per_seq`` tiles), and how many sequences that share touches."""
    pid = tl.program_id(0).to(tl.int64)
    progs = tl.num_programs(0)
    lo = pid * n_tiles // progs
    hi = (pid + 1) * n_tiles // progs
    n_segments = tl.where(hi > lo, (hi - 1) // tiles_per_seq - lo // tiles_per_seq + 1, 0)
    return lo, hi, n_segments


@triton.jit
def _segment(ctx_ptr, lo, hi, seg, tiles_per_seq, max_model_len, BLOCK_T: tl.constexpr):
    """Segment ``seg`` of a program's share: its sequence ``b``, that sequence's length, where its keys
    end (``min(ctx, max_model_len)``) and the token range ``[t_lo, t_hi)`` this program computes."""
    b = lo // tiles_per_seq + seg
    return _seq_range(ctx_ptr, b, b * tiles_per_seq, tiles_per_seq, lo, hi, max_model_len, BLOCK_T)


@triton.jit
def _seq_range(ctx_ptr, b, first, size, lo, hi, max_model_len, BLOCK_T: tl.constexpr):
    """Sequence ``b``, whose tiles are ``[first, first + size)`` of the batch's list, within a share
    ``[lo, hi)``: (b, its length, where its keys end, the token range ``[t_lo, t_hi)`` of the share)."""
    return _known_range(tl.load(ctx_ptr + b), b, first, size, lo, hi, max_model_len, BLOCK_T)


@triton.jit
def _known_range(ctx, b, first, size, lo, hi, max_model_len, BLOCK_T: tl.constexpr):
    """``_seq_range`` of a sequence whose length ``ctx`` was read already."""
    end = tl.minimum(ctx, max_model_len)
    t_lo = ((tl.maximum(lo, first) - first) * BLOCK_T).to(tl.int32)
    t_hi = tl.minimum((tl.minimum(hi, first + size) - first) * BLOCK_T, end).to(tl.int32)
    return b, ctx, end, t_lo, t_hi


@triton.jit
def _seq_tiles(ctx, max_model_len, BLOCK_T: tl.constexpr):
    """How many key tiles a sequence of length ``ctx`` has (none past ``max_model_len``)."""
    return (tl.minimum(ctx, max_model_len) + BLOCK_T - 1) // BLOCK_T


@triton.jit
def _balanced_tiles(ctx_ptr, batch, max_model_len, BLOCK_T: tl.constexpr, BLOCK_B: tl.constexpr):
    """This program's even share ``[lo, hi)`` of the tiles the batch really has (sequence b has
    ``cdiv(min(context_len, max_model_len), BLOCK_T)``, where the even split of ``_program_tiles`` counts
    ``max_model_len`` for every sequence and leaves the programs past each short sequence idle), the first
    sequence it touches and how many; with every sequence's first tile and tile count, for ``_balanced_segment``.
    ``BLOCK_B``: a power of two >= ``batch``."""
    seqs = tl.arange(0, BLOCK_B)
    ctx = tl.load(ctx_ptr + seqs, mask=seqs < batch, other=0).to(tl.int64)
    sizes = _seq_tiles(ctx, max_model_len, BLOCK_T)
    ends = tl.cumsum(sizes, 0)
    total = tl.sum(sizes, 0)
    pid = tl.program_id(0).to(tl.int64)
    progs = tl.num_programs(0)
    lo = pid * total // progs
    hi = (pid + 1) * total // progs
    b0 = tl.sum((ends <= lo).to(tl.int32), 0)  # sequences wholly before the share
    b1 = tl.sum((ends - sizes < hi).to(tl.int32), 0)  # sequences that start before its end
    return lo, hi, tl.where(hi > lo, b1 - b0, 0), b0, ends - sizes, sizes


@triton.jit
def _balanced_segment(ctx_ptr, lo, hi, b0, seg, firsts, sizes, max_model_len, BLOCK_T: tl.constexpr,
                      BLOCK_B: tl.constexpr):
    """Segment ``seg`` of a share from ``_balanced_tiles`` (see ``_seq_range``)."""
    b = b0 + seg
    pick = tl.arange(0, BLOCK_B) == b
    first = tl.sum(tl.where(pick, firsts, 0), 0)
    size = tl.sum(tl.where(pick, sizes, 0), 0)
    return _seq_range(ctx_ptr, b, first, size, lo, hi, max_model_len, BLOCK_T)


@triton.jit
def _tile_blocks(table_row_ptr, t0, table_cols, BS: tl.constexpr, BLOCK_T: tl.constexpr):
    """Cache blocks of the tile starting at token ``t0``: a scalar when one block holds the whole tile.
    Bounded by the table's width, not the context, so that this read need not wait for context_lens."""
    if BS >= BLOCK_T:
        blk = tl.load(table_row_ptr + t0 // BS, mask=t0 // BS < table_cols, other=0)
    else:
        t = t0 + tl.arange(0, BLOCK_T)
        blk = tl.load(table_row_ptr + t // BS, mask=t // BS < table_cols, other=0)
    return blk


@triton.jit
def _unshuffle(k, BLOCK_T: tl.constexpr, D: tl.constexpr):
    """A preshuffled tile in memory order -> (token, d): 16-token groups stored as (d // 16, t % 16, d % 16)."""
    k = tl.permute(tl.reshape(k, (BLOCK_T // 16, D // 16, 16, 16)), (0, 2, 1, 3))
    return tl.reshape(k, (BLOCK_T, D))


@triton.jit
def _key_tile(k_ptr, scale_ptr, k_desc, s_desc, blk, t0, end, block_bytes, scale_base, D: tl.constexpr,
              BS: tl.constexpr, BLOCK_T: tl.constexpr, PRESHUFFLE: tl.constexpr, FLAT: tl.constexpr,
              TMA: tl.constexpr):
    """``(BLOCK_T, D)`` keys and ``(BLOCK_T,)`` fp32 scales of tokens ``t0 + [0, BLOCK_T)`` in blocks ``blk``
    (zeros past ``end``, except with ``TMA``: there rows past ``end`` hold whatever the block holds, and only
    the stores are masked; each output row depends on its own key row alone). Preshuffled blocks hold
    16-token groups stored as (d // 16, t % 16, d % 16).

    ``TMA``: the cache seen as rows of D bytes (``k_desc``, a block is ``BS * (D + 4) / D`` rows) and as rows
    of BS floats (``s_desc``, a block is ``(D + 4) / 4`` rows, its scales the row ``D / 4``); one bulk copy per
    tile, issued by one thread, lands in shared memory in the layout the dot reads."""
    if TMA:
        k = k_desc.load([blk * ((BS * (D + 4)) // D) + t0 % BS, 0])
        if PRESHUFFLE:
            k = _unshuffle(k, BLOCK_T, D)
        scale = tl.reshape(s_desc.load([blk * ((D + 4) // 4) + D // 4, t0 % BS]), (BLOCK_T,))
        return k, scale
    t = t0 + tl.arange(0, BLOCK_T)
    blk = blk.to(tl.int64)
    j = t % BS
    if FLAT:
        i = tl.arange(0, BLOCK_T * D)
        if PRESHUFFLE:
            tok = t0 + (i // (16 * D)) * 16 + (i // 16) % 16
        else:
            tok = t0 + i // D
        k = tl.load(k_ptr + blk * block_bytes + (t0 % BS) * D + i, mask=tok < end, other=0.0)
        if PRESHUFFLE:
            k = _unshuffle(k, BLOCK_T, D)
        else:
            k = tl.reshape(k, (BLOCK_T, D))
    else:
        d = tl.arange(0, D)
        if PRESHUFFLE:
            row = blk * block_bytes + (j // 16) * (16 * D) + (j % 16) * 16
            col = tl.max_contiguous(tl.multiple_of((d // 16) * 256 + d % 16, 16), 16)
        else:
            row = blk * block_bytes + j * D
            col = d
        k = tl.load(k_ptr + row[:, None] + col[None, :], mask=(t < end)[:, None], other=0.0)
    scale = tl.load(scale_ptr + blk * (block_bytes // 4) + scale_base + j, mask=t < end, other=0.0)
    return k, scale


@triton.jit
def _rows_q(q_ptr, w_ptr, row0, g, d, c, NEXT_N: tl.constexpr, H: tl.constexpr, D: tl.constexpr,
            BLOCK_H: tl.constexpr, RD: tl.constexpr, UPCAST: tl.constexpr, EXP_BIAS: tl.constexpr):
    """q of speculative rows ``g * RD + [0, RD)`` as one dot operand ``(D, RD * BLOCK_H)`` (column
    c = row * BLOCK_H + head) and their weights; padded columns get q = 0 and w = 0. q is contiguous
    (B, next_n, H, D), weights (B * next_n, H)."""
    ci, ch = g * RD + c // BLOCK_H, c % BLOCK_H
    cmask = (ci < NEXT_N) & (ch < H)
    q = tl.load(q_ptr + (row0 * H + ci * H + ch)[None, :] * D + d[:, None], mask=cmask[None, :], other=0.0)
    w = tl.load(w_ptr + row0 * H + ci * H + ch, mask=cmask, other=0.0)
    return _to_dot(q, UPCAST, EXP_BIAS), w


@triton.jit
def _row_limit(lens_b, causal0, i, NEXT_N: tl.constexpr, PER_ROW: tl.constexpr):
    """Valid positions of speculative rows ``i``: each row's own length (2-D context_lens), or the
    causal diagonal ``context_len - next_n + 1 + i``."""
    if PER_ROW:
        return tl.load(lens_b + i, mask=i < NEXT_N, other=0)
    return causal0 + i


@triton.jit
def _as_out(v, ptrs):
    """float32 ``v`` in the dtype ``ptrs`` point to. bf16 is rounded to nearest-even here, bit by bit: the
    GPU's own conversion does the same, the Triton interpreter's truncates (a 1-ulp error the bf16
    tolerance does not allow)."""
    out = v
    if ptrs.dtype.element_ty == tl.bfloat16:
        u = v.to(tl.uint32, bitcast=True)
        out = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return out


@triton.jit
def _rows_out(s, w, scale, t, end, causal0, lens_b, out_b, stride_oh, stride_or, g, c, NEXT_N: tl.constexpr,
              H: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_T: tl.constexpr, RD: tl.constexpr,
              STAGE1: tl.constexpr, PER_ROW: tl.constexpr):
    """relu, weights, (fused) head sum and the masked store of one row group's dot ``s`` (stored in the
    output's dtype: float32, or bf16)."""
    if STAGE1:
        ci, ch = g * RD + c // BLOCK_H, c % BLOCK_H
        v = tl.maximum(s * scale[:, None], 0.0) * w[None, :]
        v = tl.where(t[:, None] < _row_limit(lens_b, causal0, ci, NEXT_N, PER_ROW)[None, :], v, float("-inf"))
        ptrs = out_b + ch[None, :].to(tl.int64) * stride_oh + ci[None, :] * stride_or + t[:, None]
        tl.store(ptrs, _as_out(v, ptrs), mask=(t < end)[:, None] & ((ci < NEXT_N) & (ch < H))[None, :])
    else:
        x = tl.reshape(tl.maximum(s, 0.0) * w[None, :], (BLOCK_T, RD, BLOCK_H))
        logit = tl.sum(x, axis=2) * scale[:, None]  # (BLOCK_T, RD)
        i = g * RD + tl.arange(0, RD)
        ptrs = out_b + i[None, :] * stride_or + t[:, None]
        lim = _row_limit(lens_b, causal0, i, NEXT_N, PER_ROW)
        tl.store(ptrs, _as_out(tl.where(t[:, None] < lim[None, :], logit, float("-inf")), ptrs),
                 mask=(t[:, None] < end) & (i[None, :] < NEXT_N))


@triton.jit
def paged_mqa_logits_kernel(
    q_ptr, k_ptr, scale_ptr, k_desc, s_desc, w_ptr, ctx_ptr, lens_ptr, table_ptr, out_ptr,
    stride_tb, table_cols, stride_oh, stride_or, max_model_len, block_bytes, scale_base, n_tiles, tiles_per_seq,
    batch, NEXT_N: tl.constexpr, H: tl.constexpr, BLOCK_H: tl.constexpr, D: tl.constexpr, BS: tl.constexpr,
    BLOCK_T: tl.constexpr, STAGE1: tl.constexpr, PRESHUFFLE: tl.constexpr, FLAT: tl.constexpr,
    UPCAST: tl.constexpr, EXP_BIAS: tl.constexpr, NP: tl.constexpr, NUM_STAGES: tl.constexpr,
    GROUPS: tl.constexpr, PER_ROW: tl.constexpr, TMA: tl.constexpr, PDL: tl.constexpr, BLOCK_B: tl.constexpr,
):
    if PDL:  # launched early (programmatic dependent launch): nothing is read or written before the kernel
        tl.extra.cuda.gdc_wait()  # before it has finished
    # BLOCK_B > 0: shares of the tiles the batch really has (_balanced_tiles); else of B x cdiv(max_model_len)
    if BLOCK_B > 0:
        lo, hi, n_segments, b0, firsts, sizes = _balanced_tiles(ctx_ptr, batch, max_model_len, BLOCK_T, BLOCK_B)
    else:
        lo, hi, n_segments = _program_tiles(n_tiles, tiles_per_seq)
    RD: tl.constexpr = NP // GROUPS  # speculative rows per dot
    d = tl.arange(0, D)
    c = tl.arange(0, RD * BLOCK_H)
    for seg in range(0, n_segments):
        if BLOCK_B > 0:
            b, ctx, end, t_lo, t_hi = _balanced_segment(ctx_ptr, lo, hi, b0, seg, firsts, sizes, max_model_len,
                                                        BLOCK_T, BLOCK_B)
        else:
            b, ctx, end, t_lo, t_hi = _segment(ctx_ptr, lo, hi, seg, tiles_per_seq, max_model_len, BLOCK_T)
        table_row = table_ptr + b * stride_tb
        # the first block id before q: q's copy to shared memory waits for q, and the first key tile would
        # otherwise wait for q and then for this read (see the module docstring for why it is carried)
        blk_next = _tile_blocks(table_row, t_lo, table_cols, BS, BLOCK_T)
        row0 = b * NEXT_N
        q0, w0 = _rows_q(q_ptr, w_ptr, row0, 0, d, c, NEXT_N, H, D, BLOCK_H, RD, UPCAST, EXP_BIAS)
        q1, w1 = q0, w0
        if GROUPS > 1:
            q1, w1 = _rows_q(q_ptr, w_ptr, row0, 1, d, c, NEXT_N, H, D, BLOCK_H, RD, UPCAST, EXP_BIAS)
        out_b = out_ptr + row0 * stride_or
        lens_b = lens_ptr + row0  # per-row lengths (PER_ROW only)
        causal0 = ctx - NEXT_N + 1  # row i sees t < causal0 + i
        for t0 in tl.range(t_lo, t_hi, BLOCK_T, num_stages=NUM_STAGES):
            blk = blk_next
            blk_next = _tile_blocks(table_row, t0 + BLOCK_T, table_cols, BS, BLOCK_T)
            k, scale = _key_tile(k_ptr, scale_ptr, k_desc, s_desc, blk, t0, end, block_bytes, scale_base, D, BS,
                                 BLOCK_T, PRESHUFFLE, FLAT, TMA)
            k = _to_dot(k, UPCAST, EXP_BIAS)
            t = t0 + tl.arange(0, BLOCK_T)
            s = tl.dot(k, q0)  # (BLOCK_T, RD * BLOCK_H)
            _rows_out(s, w0, scale, t, end, causal0, lens_b, out_b, stride_oh, stride_or, 0, c, NEXT_N, H, BLOCK_H,
                      BLOCK_T, RD, STAGE1, PER_ROW)
            if GROUPS > 1:  # the same key tile, the other half of the rows: half the accumulator registers
                s = tl.dot(k, q1)
                _rows_out(s, w1, scale, t, end, causal0, lens_b, out_b, stride_oh, stride_or, 1, c, NEXT_N, H,
                          BLOCK_H, BLOCK_T, RD, STAGE1, PER_ROW)
