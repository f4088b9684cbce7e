"""Triton kernels of paged MQA logits on the block-paged fp8 key cache (SPEC sections 1-2).

One kernel body serves the three paths: ``STAGE1`` writes per-head logits ``(H, rows, cols)``, otherwise
heads are reduced in registers into ``(rows, cols)``; ``PRESHUFFLE`` only changes where a key byte sits
inside its block. A program owns one sequence and a span of its tokens, loads that sequence's queries
once and walks the span in tiles of ``BLOCK_T`` tokens:

    s[t, h]    = k[t, :] . q[b, i, h, :]            one dot per speculative row i, tokens on M
    logits[t]  = scale[t] * sum_h w[h] relu(s[t, h])  relu(x * scale) = scale * relu(x) since scale > 0

Tokens sit on the M side of the dot so that the head reduction runs along N, mostly inside a thread.
Only Triton language features common to NVIDIA and AMD targets are used.
"""
from __future__ import annotations

import triton
import triton.language as tl

# UPCAST: how tiles enter tl.dot. fp8 where the target has an fp8 dot for this flavour; fp16 holds every
# e4m3fn/e4m3fnuz value exactly; fp32 for the interpreter (numpy has no fp8 matmul).
UPCAST_NONE, UPCAST_FP16, UPCAST_FP32 = 0, 1, 2


@triton.jit
def _key_tile(k_ptr, scale_ptr, table_row_ptr, t, end, block_bytes, scale_base,
              D: tl.constexpr, BS: tl.constexpr, PRESHUFFLE: tl.constexpr):
    """``(BLOCK_T, D)`` fp8 keys and ``(BLOCK_T,)`` fp32 scales of tokens ``t`` (zeros past ``end``)."""
    in_ctx = t < end
    blk = tl.load(table_row_ptr + t // BS, mask=in_ctx, other=0).to(tl.int64)
    j = t % BS
    d = tl.arange(0, D)
    if PRESHUFFLE:
        # 16 tokens x 16 bytes tiles stored contiguously (SPEC section 2)
        row_off = (j // 16) * (16 * D) + (j % 16) * 16
        col_off = (d // 16) * 256 + d % 16
        col_off = tl.max_contiguous(tl.multiple_of(col_off, 16), 16)
    else:
        row_off = j * D
        col_off = d
    offs = blk[:, None] * block_bytes + row_off[:, None] + col_off[None, :]
    k = tl.load(k_ptr + offs, mask=in_ctx[:, None], other=0.0)
    scale = tl.load(scale_ptr + blk * (block_bytes // 4) + scale_base + j, mask=in_ctx, other=0.0)
    return k, scale


@triton.jit
def _load_qt(q_ptr, w_ptr, h, d, H: tl.constexpr, D: tl.constexpr, UPCAST: tl.constexpr):
    """``q^T`` of one speculative row as ``(D, BLOCK_H)`` and its weights ``(BLOCK_H,)`` (0 for padded heads)."""
    hmask = h < H
    qt = tl.load(q_ptr + h[None, :] * D + d[:, None], mask=hmask[None, :], other=0.0)
    if UPCAST == 1:
        qt = qt.to(tl.float16)
    elif UPCAST == 2:
        qt = qt.to(tl.float32)
    w = tl.load(w_ptr + h, mask=hmask, other=0.0)
    return qt, w


@triton.jit
def _row(k, qt, w, scale, t, end, causal_end, out_row_ptr, stride_oh, h,
         H: tl.constexpr, STAGE1: tl.constexpr):
    """Dot, relu, weights and (fused) head sum of one speculative row; masked store into its output row."""
    s = tl.dot(k, qt)  # (BLOCK_T, BLOCK_H) fp32
    valid = t < causal_end
    store = t < end
    if STAGE1:
        v = tl.maximum(s * scale[:, None], 0.0) * w[None, :]
        v = tl.where(valid[:, None], v, float("-inf"))
        ptrs = out_row_ptr + h[None, :].to(tl.int64) * stride_oh + t[:, None]
        tl.store(ptrs, v, mask=store[:, None] & (h[None, :] < H))
    else:
        logit = tl.sum(tl.maximum(s, 0.0) * w[None, :], axis=1) * scale
        logit = tl.where(valid, logit, float("-inf"))
        tl.store(out_row_ptr + t, logit, mask=store)


@triton.jit
def paged_mqa_logits_kernel(
    q_ptr, k_ptr, scale_ptr, w_ptr, ctx_ptr, table_ptr, out_ptr,
    stride_tb, stride_oh, stride_or, max_model_len, block_bytes, scale_base,
    NEXT_N: tl.constexpr, H: tl.constexpr, BLOCK_H: tl.constexpr, D: tl.constexpr, BS: tl.constexpr,
    BLOCK_T: tl.constexpr, SPAN: tl.constexpr, STAGE1: tl.constexpr, PRESHUFFLE: tl.constexpr,
    UPCAST: tl.constexpr,
):
    b = tl.program_id(1)
    ctx = tl.load(ctx_ptr + b)
    end = tl.minimum(ctx, max_model_len)
    span_lo = tl.program_id(0) * SPAN
    span_hi = tl.minimum(span_lo + SPAN, end)
    h = tl.arange(0, BLOCK_H)
    d = tl.arange(0, D)
    # q is contiguous (B, next_n, H, D); weights contiguous (B * next_n, H)
    row0 = b * NEXT_N
    q_b = q_ptr + row0.to(tl.int64) * (H * D)
    w_b = w_ptr + row0 * H
    qt0, w0 = _load_qt(q_b, w_b, h, d, H, D, UPCAST)
    qt1, w1 = qt0, w0
    qt2, w2 = qt0, w0
    qt3, w3 = qt0, w0
    if NEXT_N > 1:
        qt1, w1 = _load_qt(q_b + H * D, w_b + H, h, d, H, D, UPCAST)
    if NEXT_N > 2:
        qt2, w2 = _load_qt(q_b + 2 * H * D, w_b + 2 * H, h, d, H, D, UPCAST)
    if NEXT_N > 3:
        qt3, w3 = _load_qt(q_b + 3 * H * D, w_b + 3 * H, h, d, H, D, UPCAST)
    out_b = out_ptr + row0.to(tl.int64) * stride_or
    table_row = table_ptr + b.to(tl.int64) * stride_tb
    causal0 = ctx - NEXT_N + 1  # row i sees t < causal0 + i
    for t0 in range(span_lo, span_hi, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        k, scale = _key_tile(k_ptr, scale_ptr, table_row, t, end, block_bytes, scale_base, D, BS, PRESHUFFLE)
        if UPCAST == 1:
            k = k.to(tl.float16)
        elif UPCAST == 2:
            k = k.to(tl.float32)
        _row(k, qt0, w0, scale, t, end, causal0, out_b, stride_oh, h, H, STAGE1)
        if NEXT_N > 1:
            _row(k, qt1, w1, scale, t, end, causal0 + 1, out_b + stride_or, stride_oh, h, H, STAGE1)
        if NEXT_N > 2:
            _row(k, qt2, w2, scale, t, end, causal0 + 2, out_b + 2 * stride_or, stride_oh, h, H, STAGE1)
        if NEXT_N > 3:
            _row(k, qt3, w3, scale, t, end, causal0 + 3, out_b + 3 * stride_or, stride_oh, h, H, STAGE1)
