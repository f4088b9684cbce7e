"""Triton kernel of paged MQA logits on the MXFP4 key cache (SPEC section 10, :mod:`parity.problem.mxfp4`).

The schedule, the row groups and the epilogue are those of the fp8 kernel (``paged_mqa_logits``); only
the operands differ. A GPU without FP4 matrix units (the H200) gets the values dequantized in registers:
each packed byte gives two E2M1 codes, decoded by bit arithmetic and multiplied by their group's UE8M0
scale, then handed to ``tl.dot`` in bf16 (``UPCAST`` 1; fp32 under the interpreter, ``UPCAST`` 2).

    s[t, c] = sum_j klo[t, j] qlo[j, c] + khi[t, j] qhi[j, c]     (two dots of K = D/2, fp32 accumulation)

``lo``/``hi`` are the low and high nibbles of byte j, i.e. elements 2j and 2j + 1: the same permutation of
d on both operands, so nothing is interleaved in registers. Byte j belongs to scale group j // 16.

Exactness: an E2M1 value has at most two significant bits and a UE8M0 scale is a power of two, so every
scaled operand is exact in bf16 for scale bytes 2..252 (the bf16 normal range), and every product of two
of them is exact in fp32; the only roundings are those of the fp32 sums (docs/fp4.md).
There is no per-token scale: the epilogue multiplies by 1.
"""
from __future__ import annotations

import triton
import triton.language as tl

from parity.kernels.paged_mqa_logits import _program_tiles, _rows_out, _segment, _tile_blocks

UPCAST_BF16, UPCAST_FP32 = 1, 2


@triton.jit
def _e2m1(code):
    """int32 E2M1 codes (0..15) -> float32 values, exactly: magnitude code 0b0em with e > 0 is
    2**(e - 1) * (1 + m / 2), with e == 0 it is m / 2; bit 3 is the sign."""
    e = (code >> 1) & 3
    m = code & 1
    normal = (((e + 126) << 23) | (m << 22)).to(tl.float32, bitcast=True)
    v = tl.where(e == 0, m.to(tl.float32) * 0.5, normal)
    return tl.where(((code >> 3) & 1) == 1, -v, v)


@triton.jit
def _ue8m0(e):
    """int32 UE8M0 bytes -> float32 2**(e - 127) (2**-127 is the subnormal 1 << 22)."""
    return tl.where(e == 0, 1 << 22, e << 23).to(tl.float32, bitcast=True)


@triton.jit
def _dequant(packed, words_shift, UPCAST: tl.constexpr):
    """Packed bytes (any 2-D shape) and the matching scale exponents -> (low, high) nibble values times their
    scale, in the dot's dtype."""
    b = packed.to(tl.int32)
    sc = _ue8m0(words_shift)
    lo = _e2m1(b & 15) * sc
    hi = _e2m1((b >> 4) & 15) * sc
    if UPCAST == 1:
        lo = lo.to(tl.bfloat16)
        hi = hi.to(tl.bfloat16)
    return lo, hi


@triton.jit
def _rows_q_fp4(q_ptr, qsf_ptr, w_ptr, row0, g, j, c, NEXT_N: tl.constexpr, H: tl.constexpr, HALF: tl.constexpr,
                BLOCK_H: tl.constexpr, RD: tl.constexpr, UPCAST: tl.constexpr):
    """q of speculative rows ``g * RD + [0, RD)`` as two dot operands ``(D/2, RD * BLOCK_H)`` (low and high
    nibbles, column c = row * BLOCK_H + head) and their weights; padded columns get q = 0 and w = 0. q is
    contiguous (B, next_n, H, D/2) bytes, q_sf (B, next_n, H) int32 words."""
    ci, ch = g * RD + c // BLOCK_H, c % BLOCK_H
    cmask = (ci < NEXT_N) & (ch < H)
    head = row0 * H + ci * H + ch
    qb = tl.load(q_ptr + head[None, :].to(tl.int64) * HALF + j[:, None], mask=cmask[None, :], other=0)
    words = tl.load(qsf_ptr + head, mask=cmask, other=0)
    e = (words[None, :] >> ((j // 16) * 8)[:, None]) & 0xFF
    lo, hi = _dequant(qb, e, UPCAST)
    w = tl.load(w_ptr + head, mask=cmask, other=0.0)
    return lo, hi, w


@triton.jit
def _key_tile_fp4(k_ptr, ksf_ptr, blk, t0, end, block_bytes, scale_base, j, HALF: tl.constexpr, BS: tl.constexpr,
                  BLOCK_T: tl.constexpr, UPCAST: tl.constexpr):
    """Low and high nibble operands ``(BLOCK_T, D/2)`` of tokens ``t0 + [0, BLOCK_T)`` in blocks ``blk``, their
    group scales applied (zeros past ``end``). A block holds its value bytes token-major, then one int32 scale
    word per token at int32 index ``block * block_bytes / 4 + scale_base + token``."""
    t = t0 + tl.arange(0, BLOCK_T)
    blk = blk.to(tl.int64)
    tok = t % BS
    kb = tl.load(k_ptr + (blk * block_bytes + tok * HALF)[:, None] + j[None, :], mask=(t < end)[:, None], other=0)
    words = tl.load(ksf_ptr + blk * (block_bytes // 4) + scale_base + tok, mask=t < end, other=0)
    e = (words[:, None] >> ((j // 16) * 8)[None, :]) & 0xFF
    return _dequant(kb, e, UPCAST)


@triton.jit
def _dot2(klo, khi, qlo, qhi, UPCAST: tl.constexpr):
    if UPCAST == 2:  # fp32 operands: IEEE products (a GPU would otherwise use tf32)
        s = tl.dot(klo, qlo, input_precision="ieee")
        s = tl.dot(khi, qhi, s, input_precision="ieee")
    else:
        s = tl.dot(klo, qlo)
        s = tl.dot(khi, qhi, s)
    return s


@triton.jit
def paged_mqa_logits_fp4_kernel(
    q_ptr, qsf_ptr, k_ptr, ksf_ptr, w_ptr, ctx_ptr, lens_ptr, table_ptr, out_ptr,
    stride_tb, table_cols, stride_oh, stride_or, max_model_len, block_bytes, scale_base, n_tiles, tiles_per_seq,
    NEXT_N: tl.constexpr, H: tl.constexpr, BLOCK_H: tl.constexpr, D: tl.constexpr, BS: tl.constexpr,
    BLOCK_T: tl.constexpr, STAGE1: tl.constexpr, UPCAST: tl.constexpr, NP: tl.constexpr,
    NUM_STAGES: tl.constexpr, GROUPS: tl.constexpr, PER_ROW: tl.constexpr,
):
    lo, hi, n_segments = _program_tiles(n_tiles, tiles_per_seq)
    RD: tl.constexpr = NP // GROUPS  # speculative rows per dot
    HALF: tl.constexpr = D // 2
    j = tl.arange(0, HALF)
    c = tl.arange(0, RD * BLOCK_H)
    ones = tl.full((BLOCK_T,), 1.0, tl.float32)  # no per-token scale: the group scales are in the operands
    for seg in range(0, n_segments):
        b, ctx, end, t_lo, t_hi = _segment(ctx_ptr, lo, hi, seg, tiles_per_seq, max_model_len, BLOCK_T)
        table_row = table_ptr + b * stride_tb
        blk_next = _tile_blocks(table_row, t_lo, table_cols, BS, BLOCK_T)
        row0 = b * NEXT_N
        qlo0, qhi0, w0 = _rows_q_fp4(q_ptr, qsf_ptr, w_ptr, row0, 0, j, c, NEXT_N, H, HALF, BLOCK_H, RD, UPCAST)
        qlo1, qhi1, w1 = qlo0, qhi0, w0
        if GROUPS > 1:
            qlo1, qhi1, w1 = _rows_q_fp4(q_ptr, qsf_ptr, w_ptr, row0, 1, j, c, NEXT_N, H, HALF, BLOCK_H, RD, UPCAST)
        out_b = out_ptr + row0 * stride_or
        lens_b = lens_ptr + row0
        causal0 = ctx - NEXT_N + 1
        for t0 in tl.range(t_lo, t_hi, BLOCK_T, num_stages=NUM_STAGES):
            blk = blk_next
            blk_next = _tile_blocks(table_row, t0 + BLOCK_T, table_cols, BS, BLOCK_T)
            klo, khi = _key_tile_fp4(k_ptr, ksf_ptr, blk, t0, end, block_bytes, scale_base, j, HALF, BS, BLOCK_T,
                                     UPCAST)
            t = t0 + tl.arange(0, BLOCK_T)
            s = _dot2(klo, khi, qlo0, qhi0, UPCAST)
            _rows_out(s, w0, ones, t, end, causal0, lens_b, out_b, stride_oh, stride_or, 0, c, NEXT_N, H, BLOCK_H,
                      BLOCK_T, RD, STAGE1, PER_ROW)
            if GROUPS > 1:
                s = _dot2(klo, khi, qlo1, qhi1, UPCAST)
                _rows_out(s, w1, ones, t, end, causal0, lens_b, out_b, stride_oh, stride_or, 1, c, NEXT_N, H,
                          BLOCK_H, BLOCK_T, RD, STAGE1, PER_ROW)
