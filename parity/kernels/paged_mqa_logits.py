"""Triton kernels of paged MQA logits on the block-paged fp8 key cache (SPEC sections 1-2).

One kernel body serves the three paths: ``STAGE1`` writes per-head logits ``(H, rows, cols)``, otherwise
heads are reduced in registers into ``(rows, cols)``; ``PRESHUFFLE`` only changes where a key byte sits
inside its block. Per tile of ``BLOCK_T`` tokens of sequence b and speculative row i:

    s[t, h]    = k[t, :] . q[b, i, h, :]              (fp32 accumulation)
    logits[t]  = scale[t] * sum_h w[h] relu(s[t, h])    relu(x * scale) = scale * relu(x) as scale > 0

Scheduling is balanced and persistent: the tiles of all sequences form one list, each program takes an
equal contiguous run of it (so no wave is left half empty) and reloads q only when its run crosses into
the next sequence. Only Triton features common to NVIDIA and AMD targets are used.
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
def _key_tile(k_ptr, scale_ptr, table_row_ptr, t, end, block_bytes, scale_base,
              D: tl.constexpr, BS: tl.constexpr, BLOCK_T: tl.constexpr, PRESHUFFLE: tl.constexpr,
              PS_3D: tl.constexpr):
    """``(BLOCK_T, D)`` keys and ``(BLOCK_T,)`` fp32 scales of tokens ``t`` (zeros past ``end``)."""
    in_ctx = t < end
    blk = tl.load(table_row_ptr + t // BS, mask=in_ctx, other=0).to(tl.int64)
    j = t % BS
    if PRESHUFFLE and PS_3D:
        # tiles of 16 tokens x 16 bytes stored contiguously (SPEC section 2): load (t, d // 16, 16) so each
        # 16-byte run is one vector, then merge the last two dims back into d.
        c = tl.arange(0, D // 16)
        e = tl.arange(0, 16)
        row = blk * block_bytes + (j // 16) * (16 * D) + (j % 16) * 16
        offs = row[:, None, None] + (c * 256)[None, :, None] + e[None, None, :]
        k = tl.load(k_ptr + offs, mask=in_ctx[:, None, None], other=0.0)
        k = tl.reshape(k, (BLOCK_T, D))
    elif PRESHUFFLE:
        # the same bytes as a 2-D gather: runs of 16 contiguous bytes, so the copy can go straight to
        # shared memory like the plain layout's
        d = tl.arange(0, D)
        col = tl.max_contiguous(tl.multiple_of((d // 16) * 256 + d % 16, 16), 16)
        offs = (blk * block_bytes + (j // 16) * (16 * D) + (j % 16) * 16)[:, None] + col[None, :]
        k = tl.load(k_ptr + offs, mask=in_ctx[:, None], other=0.0)
    else:
        d = tl.arange(0, D)
        offs = (blk * block_bytes + j * D)[:, None] + d[None, :]
        k = tl.load(k_ptr + offs, mask=in_ctx[:, None], other=0.0)
    scale = tl.load(scale_ptr + blk * (block_bytes // 4) + scale_base + j, mask=in_ctx, other=0.0)
    return k, scale


@triton.jit
def _load_q(q_ptr, w_ptr, h, d, H: tl.constexpr, D: tl.constexpr, HEADS_ON_M: tl.constexpr,
            UPCAST: tl.constexpr, EXP_BIAS: tl.constexpr):
    """One speculative row's queries as the dot operand (``(D, BLOCK_H)``, or ``(BLOCK_H, D)`` with heads on
    M) and its weights ``(BLOCK_H,)``; padded heads get q = 0 and w = 0."""
    hmask = h < H
    if HEADS_ON_M:
        q = tl.load(q_ptr + h[:, None] * D + d[None, :], mask=hmask[:, None], other=0.0)
    else:
        q = tl.load(q_ptr + h[None, :] * D + d[:, None], mask=hmask[None, :], other=0.0)
    w = tl.load(w_ptr + h, mask=hmask, other=0.0)
    return _to_dot(q, UPCAST, EXP_BIAS), w


@triton.jit
def _row(k, q, w, scale, t, end, causal_end, out_row_ptr, stride_oh, h,
         H: tl.constexpr, STAGE1: tl.constexpr, HEADS_ON_M: tl.constexpr):
    """Dot, relu, weights and (fused) head sum of one speculative row; masked store into its output row."""
    valid = t < causal_end
    store = t < end
    if HEADS_ON_M:
        s = tl.dot(q, tl.trans(k))  # (BLOCK_H, BLOCK_T)
        if STAGE1:
            v = tl.maximum(s * scale[None, :], 0.0) * w[:, None]
            v = tl.where(valid[None, :], v, float("-inf"))
            ptrs = out_row_ptr + h[:, None].to(tl.int64) * stride_oh + t[None, :]
            tl.store(ptrs, v, mask=store[None, :] & (h[:, None] < H))
        else:
            logit = tl.sum(tl.maximum(s, 0.0) * w[:, None], axis=0) * scale
            tl.store(out_row_ptr + t, tl.where(valid, logit, float("-inf")), mask=store)
    else:
        s = tl.dot(k, q)  # (BLOCK_T, BLOCK_H): the head sum runs along N, mostly inside a thread
        if STAGE1:
            v = tl.maximum(s * scale[:, None], 0.0) * w[None, :]
            v = tl.where(valid[:, None], v, float("-inf"))
            ptrs = out_row_ptr + h[None, :].to(tl.int64) * stride_oh + t[:, None]
            tl.store(ptrs, v, mask=store[:, None] & (h[None, :] < H))
        else:
            logit = tl.sum(tl.maximum(s, 0.0) * w[None, :], axis=1) * scale
            tl.store(out_row_ptr + t, tl.where(valid, logit, float("-inf")), mask=store)


@triton.jit
def paged_mqa_logits_kernel(
    q_ptr, k_ptr, scale_ptr, w_ptr, ctx_ptr, table_ptr, out_ptr,
    stride_tb, stride_oh, stride_or, max_model_len, block_bytes, scale_base, n_tiles, tiles_per_seq,
    NEXT_N: tl.constexpr, H: tl.constexpr, BLOCK_H: tl.constexpr, D: tl.constexpr, BS: tl.constexpr,
    BLOCK_T: tl.constexpr, STAGE1: tl.constexpr, PRESHUFFLE: tl.constexpr, HEADS_ON_M: tl.constexpr,
    UPCAST: tl.constexpr, EXP_BIAS: tl.constexpr, SINGLE_DOT: tl.constexpr, NP: tl.constexpr,
    PS_3D: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    progs = tl.num_programs(0)
    lo = pid * n_tiles // progs
    hi = (pid + 1) * n_tiles // progs
    n_segments = tl.where(hi > lo, (hi - 1) // tiles_per_seq - lo // tiles_per_seq + 1, 0)
    h = tl.arange(0, BLOCK_H)
    d = tl.arange(0, D)
    for seg in range(0, n_segments):
        b = lo // tiles_per_seq + seg
        first = b * tiles_per_seq
        ctx = tl.load(ctx_ptr + b)
        end = tl.minimum(ctx, max_model_len)
        t_lo = ((tl.maximum(lo, first) - first) * BLOCK_T).to(tl.int32)
        t_hi = tl.minimum((tl.minimum(hi, first + tiles_per_seq) - first) * BLOCK_T, end).to(tl.int32)
        # q is contiguous (B, next_n, H, D); weights contiguous (B * next_n, H)
        row0 = b * NEXT_N
        q_b = q_ptr + row0 * (H * D)
        w_b = w_ptr + row0 * H
        if SINGLE_DOT:
            # all speculative rows in one dot: column c = i * BLOCK_H + h
            c = tl.arange(0, NP * BLOCK_H)
            ci, ch = c // BLOCK_H, c % BLOCK_H
            cmask = (ci < NEXT_N) & (ch < H)
            qa = tl.load(q_b + (ci * H + ch)[None, :] * D + d[:, None], mask=cmask[None, :], other=0.0)
            qa = _to_dot(qa, UPCAST, EXP_BIAS)
            wa = tl.load(w_b + ci * H + ch, mask=cmask, other=0.0)
            i_np = tl.arange(0, NP)
        q0, w0 = _load_q(q_b, w_b, h, d, H, D, HEADS_ON_M, UPCAST, EXP_BIAS)
        q1, w1 = q0, w0
        q2, w2 = q0, w0
        q3, w3 = q0, w0
        if NEXT_N > 1:
            q1, w1 = _load_q(q_b + H * D, w_b + H, h, d, H, D, HEADS_ON_M, UPCAST, EXP_BIAS)
        if NEXT_N > 2:
            q2, w2 = _load_q(q_b + 2 * H * D, w_b + 2 * H, h, d, H, D, HEADS_ON_M, UPCAST, EXP_BIAS)
        if NEXT_N > 3:
            q3, w3 = _load_q(q_b + 3 * H * D, w_b + 3 * H, h, d, H, D, HEADS_ON_M, UPCAST, EXP_BIAS)
        out_b = out_ptr + row0 * stride_or
        table_row = table_ptr + b * stride_tb
        causal0 = ctx - NEXT_N + 1  # row i sees t < causal0 + i
        for t0 in range(t_lo, t_hi, BLOCK_T):
            t = t0 + tl.arange(0, BLOCK_T)
            k, scale = _key_tile(k_ptr, scale_ptr, table_row, t, end, block_bytes, scale_base, D, BS, BLOCK_T,
                                 PRESHUFFLE, PS_3D)
            k = _to_dot(k, UPCAST, EXP_BIAS)
            if SINGLE_DOT:
                s = tl.dot(k, qa)  # (BLOCK_T, NP * BLOCK_H)
                x = tl.reshape(tl.maximum(s, 0.0) * wa[None, :], (BLOCK_T, NP, BLOCK_H))
                logit = tl.sum(x, axis=2) * scale[:, None]  # (BLOCK_T, NP)
                valid = t[:, None] < causal0 + i_np[None, :]
                ptrs = out_b + i_np[None, :] * stride_or + t[:, None]
                tl.store(ptrs, tl.where(valid, logit, float("-inf")),
                         mask=(t[:, None] < end) & (i_np[None, :] < NEXT_N))
            else:
                _row(k, q0, w0, scale, t, end, causal0, out_b, stride_oh, h, H, STAGE1, HEADS_ON_M)
                if NEXT_N > 1:
                    _row(k, q1, w1, scale, t, end, causal0 + 1, out_b + stride_or, stride_oh, h, H, STAGE1,
                         HEADS_ON_M)
                if NEXT_N > 2:
                    _row(k, q2, w2, scale, t, end, causal0 + 2, out_b + 2 * stride_or, stride_oh, h, H, STAGE1,
                         HEADS_ON_M)
                if NEXT_N > 3:
                    _row(k, q3, w3, scale, t, end, causal0 + 3, out_b + 3 * stride_or, stride_oh, h, H, STAGE1,
                         HEADS_ON_M)
