"""The four-warpgroup program of ``paged_mqa_logits_sm90_wg4`` at next_n 2 with its warpgroups coupled: one share
of the schedule a multiprocessor, its tiles dealt to the four compute warpgroups in turn, one q a sequence that
all four read. The same calls, formula and writes as that program. Not in any GPU's config: a candidate form,
chosen by name (``triton:sm90-wg4c``) until a GPU run says whether it is faster (docs/h200-coupled-q.md).

Why: the program it comes from runs four independent shares a multiprocessor, each with its own q. At
B128-n2-ctx8192 on the H200 its four shares copy about 8.4 MB of q from L2 into shared memory at the start
of a call, where DeepGEMM's one q a multiprocessor copies a quarter of that, and the q buffers take 128 of the
198.5 KB of shared memory it uses, holding the key slots to two a warpgroup. Here the q buffers take 32 KB
and each warpgroup has ``NUM_STAGES`` slots (4: 165 KB in all). DeepGEMM's kernel deals its key blocks to its
math warpgroups in turn in the same way; a Gluon form of that layout was built before with the weights read
from shared memory every tile and ran level with the independent shares (docs/h200-gap-probes.md section 8).
Here the weights stay in registers for a sequence, as in the program it comes from.

The program: 4 compute warpgroups and 4 load warps (Triton packs the four one-warp partitions into one
warpgroup: 20 warps, 96 registers at launch; 112 for the compute warps and 32 for the load warps after
``setmaxnreg``). The share's tiles are numbered across its segments; warpgroup ``W`` computes the tiles
numbered ``W`` mod 4 and load warp ``W`` copies them into that warpgroup's slots, reading their block ids 32
at a time, one per lane. Load warp 0 also copies each sequence's q and weights into one of two q buffers (the
second sequence's right after its first tile, as in ``paged_mqa_logits_sm90_ws._load_partition``). A q buffer
goes back once all four warpgroups have arrived, each once per sequence with tiles in the share, including a
sequence where it computes none: each waits for every q so that no arrival counts towards the wrong phase.
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier

from parity.kernels.paged_mqa_logits_sm90 import (_cta_barrier, _ctx_of, _share, _share_segment,
                                                  _wait_for_previous_kernel)
from parity.kernels.paged_mqa_logits_sm90_wg4 import COMPUTE_REGS, LOAD_REGS, _pair_operands, _pair_tile
from parity.kernels.paged_mqa_logits_sm90_ws import _block_ids, _copy_tile, _issue_next_q, _issue_q, _tile_block

WGS = gl.constexpr(4)  # compute warpgroups, each taking every fourth tile of the share


@gluon.jit
def _turn(c0, n, W: gl.constexpr):
    """Of a segment of ``n`` tiles whose first is the share's ``c0``-th: the first tile warpgroup ``W`` computes
    (the tiles numbered ``W`` mod 4 in the share) and how many of the segment's it computes."""
    j0 = (W - c0 % WGS + WGS) % WGS
    return j0, gl.maximum(n - j0 + WGS - 1, 0) // WGS


@gluon.jit
def _loads(W: gl.constexpr, q_desc, w_desc, k_desc, s_desc, ctx_ptr, table_ptr, q_bufs, w_bufs, k_bufs, s_bufs,
           full, empty, q_full, q_empty, stride_tb, table_cols, max_model_len, n_tiles, tiles_per_seq, batch,
           sched_ptr, NEXT_N: gl.constexpr, H: gl.constexpr, D: gl.constexpr, BS: gl.constexpr,
           BLOCK_T: gl.constexpr, NUM_STAGES: gl.constexpr):
    """Load warp ``W``: the keys and scales of warpgroup ``W``'s tiles; load warp 0 the q and weights too."""
    STEP: gl.constexpr = WGS * BLOCK_T  # tokens from one of this warp's tiles to its next
    lo, hi, b0, first, n_segments = _share(sched_ptr, ctx_ptr, batch, n_tiles, tiles_per_seq, max_model_len, BLOCK_T,
                                           True, True, 1)
    ctx_next = _ctx_of(ctx_ptr, b0, 0, n_segments)
    c0 = 0  # the share's tiles before this segment
    c = 0  # tiles this warp issued
    q_n = 0  # sequences whose q was issued (load warp 0)
    q_used = 0  # segments with tiles begun
    for seg in range(0, n_segments):
        b, ctx, end, t_lo, t_hi, n, first = _share_segment(ctx_next, first, lo, hi, b0, seg, tiles_per_seq,
                                                            max_model_len, BLOCK_T, True)
        ctx_next = _ctx_of(ctx_ptr, b0, seg + 1, n_segments)  # read a segment before it is needed
        if n > 0:
            j0, count = _turn(c0, n, W)
            table_row = table_ptr + b * stride_tb
            t_w = t_lo + j0 * BLOCK_T  # this warp's first token in the segment
            ids = _block_ids(table_row, t_w, t_hi, table_cols, BS, STEP)
            ids_next = _block_ids(table_row, t_w + 32 * STEP, t_hi, table_cols, BS, STEP)
            ahead = False
            if W == 0:
                if q_n == q_used:  # not issued ahead
                    _issue_q(q_desc, w_desc, q_bufs, w_bufs, q_full, q_empty, b, q_n, NEXT_N, H, D, 0)
                    q_n += 1
                ahead = q_used == 0  # the first segment with tiles issues the next one's q after its first tile
                if ahead and count == 0:
                    q_n = _issue_next_q(q_desc, w_desc, q_bufs, w_bufs, q_full, q_empty, ctx_next, first, lo, hi,
                                        b0, seg, b, q_n, tiles_per_seq, max_model_len, NEXT_N, H, D, BLOCK_T, True, 0)
            q_used += 1
            for i in range(0, count):
                t0 = t_w + i * STEP
                ids, ids_next, blk = _tile_block(ids, ids_next, i, t0, table_row, t_hi, table_cols, BS, STEP)
                _copy_tile(k_desc, s_desc, k_bufs, s_bufs, full, empty, W * NUM_STAGES + c % NUM_STAGES, c, blk, t0,
                           NUM_STAGES, D, BS, BLOCK_T)
                c += 1
                if W == 0:
                    if ahead and i == 0:  # the second q buffer is free: nothing was computed yet
                        q_n = _issue_next_q(q_desc, w_desc, q_bufs, w_bufs, q_full, q_empty, ctx_next, first, lo,
                                            hi, b0, seg, b, q_n, tiles_per_seq, max_model_len, NEXT_N, H, D, BLOCK_T,
                                            True, 0)
            c0 += n


@gluon.jit
def _compute(W: gl.constexpr, ctx_ptr, lens_ptr, out_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full, empty, q_full,
             q_empty, stride_or, max_model_len, n_tiles, tiles_per_seq, batch, sched_ptr, NEXT_N: gl.constexpr,
             H: gl.constexpr, BLOCK_T: gl.constexpr, NUM_STAGES: gl.constexpr, PER_ROW: gl.constexpr):
    """Compute warpgroup ``W``: its tiles of the share, each one m64n128k32 product over both rows, then the
    two rows' epilogues (``paged_mqa_logits_sm90_wg4._compute``)."""
    N: gl.constexpr = 2 * H  # both rows' heads: the product's width
    rows, cols, row1, zero = _pair_operands(H, BLOCK_T)
    lo, hi, b0, first, n_segments = _share(sched_ptr, ctx_ptr, batch, n_tiles, tiles_per_seq, max_model_len, BLOCK_T,
                                           True, True, 4)
    ctx_next = _ctx_of(ctx_ptr, b0, 0, n_segments)
    c0 = 0  # the share's tiles before this segment
    c = 0  # tiles this warpgroup computed
    q_n = 0  # sequences computed
    for seg in range(0, n_segments):
        b, ctx, end, t_lo, t_hi, n, first = _share_segment(ctx_next, first, lo, hi, b0, seg, tiles_per_seq,
                                                            max_model_len, BLOCK_T, True)
        ctx_next = _ctx_of(ctx_ptr, b0, seg + 1, n_segments)
        if n > 0:
            j0, count = _turn(c0, n, W)
            row0 = (b * NEXT_N).to(gl.int32)
            out_b = out_ptr + (b * NEXT_N) * stride_or  # 64-bit: the logits may pass 2 GiB
            if PER_ROW:
                lim0 = gl.load(lens_ptr + row0)
                lim1 = gl.load(lens_ptr + row0 + 1)
            else:  # row i sees t < ctx - NEXT_N + 1 + i
                lim0 = ctx - NEXT_N + 1
                lim1 = lim0 + 1
            qs = q_n % 2
            mbarrier.wait(q_full.index(qs), (q_n // 2) & 1)  # every sequence's, with tiles here or not
            w = w_bufs.index(qs).reshape([N]).load(cols.type.layout)
            for i in range(0, count):
                _pair_tile(k_bufs, s_bufs, full, empty, W * NUM_STAGES + c % NUM_STAGES, (c // NUM_STAGES) & 1,
                           q_bufs.index(qs), zero, w, row1, t_lo + (j0 + i * WGS) * BLOCK_T + rows, lim0, lim1, end,
                           out_b, stride_or)
                c += 1
            _cta_barrier()  # every warp is past its last product (and its weights' read) before q goes back
            mbarrier.arrive(q_empty.index(qs))
            q_n += 1
            c0 += n


@gluon.jit
def paged_mqa_logits_sm90_wg4c_kernel(
    q_desc, w_desc, k_desc, s_desc, ctx_ptr, lens_ptr, table_ptr, out_ptr,
    stride_tb, table_cols, stride_or, max_model_len, n_tiles, tiles_per_seq, batch, sched_ptr,
    NEXT_N: gl.constexpr, H: gl.constexpr, D: gl.constexpr, BS: gl.constexpr, BLOCK_T: gl.constexpr,
    NUM_STAGES: gl.constexpr, PER_ROW: gl.constexpr, PDL: gl.constexpr,
):
    """The arguments of ``paged_mqa_logits_sm90_wg4_kernel``; its shares read from a schedule prepared for the
    grid itself (one a program)."""
    _wait_for_previous_kernel(PDL)
    gl.static_assert(BS % BLOCK_T == 0, "a key tile lies inside one cache block")
    gl.static_assert(NEXT_N == 2, "next_n 2: one m64n128 product a tile over both rows")
    k_bufs = gl.allocate_shared_memory(k_desc.dtype, [WGS * NUM_STAGES, BLOCK_T, D], k_desc.layout)
    s_bufs = gl.allocate_shared_memory(gl.float32, [WGS * NUM_STAGES, 1, BLOCK_T], s_desc.layout)
    q_bufs = gl.allocate_shared_memory(q_desc.dtype, [2, NEXT_N * H, D], q_desc.layout)
    w_bufs = gl.allocate_shared_memory(gl.float32, [2, NEXT_N, H], w_desc.layout)
    full = gl.allocate_shared_memory(gl.int64, [WGS * NUM_STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [WGS * NUM_STAGES, 1], mbarrier.MBarrierLayout())
    q_full = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(WGS * NUM_STAGES):
        mbarrier.init(full.index(s), count=1)
        mbarrier.init(empty.index(s), count=1)
    for s in gl.static_range(2):
        mbarrier.init(q_full.index(s), count=1)
        mbarrier.init(q_empty.index(s), count=WGS)  # every compute warpgroup, once a sequence
    # the partitions' arguments written out: Gluon 3.6 takes no starred tuple here
    gl.warp_specialize([
        (_compute, (0, ctx_ptr, lens_ptr, out_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full, empty, q_full, q_empty,
                    stride_or, max_model_len, n_tiles, tiles_per_seq, batch, sched_ptr, NEXT_N, H, BLOCK_T,
                    NUM_STAGES, PER_ROW)),
        (_compute, (1, ctx_ptr, lens_ptr, out_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full, empty, q_full, q_empty,
                    stride_or, max_model_len, n_tiles, tiles_per_seq, batch, sched_ptr, NEXT_N, H, BLOCK_T,
                    NUM_STAGES, PER_ROW)),
        (_compute, (2, ctx_ptr, lens_ptr, out_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full, empty, q_full, q_empty,
                    stride_or, max_model_len, n_tiles, tiles_per_seq, batch, sched_ptr, NEXT_N, H, BLOCK_T,
                    NUM_STAGES, PER_ROW)),
        (_compute, (3, ctx_ptr, lens_ptr, out_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full, empty, q_full, q_empty,
                    stride_or, max_model_len, n_tiles, tiles_per_seq, batch, sched_ptr, NEXT_N, H, BLOCK_T,
                    NUM_STAGES, PER_ROW)),
        (_loads, (0, q_desc, w_desc, k_desc, s_desc, ctx_ptr, table_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full,
                  empty, q_full, q_empty, stride_tb, table_cols, max_model_len, n_tiles, tiles_per_seq, batch,
                  sched_ptr, NEXT_N, H, D, BS, BLOCK_T, NUM_STAGES)),
        (_loads, (1, q_desc, w_desc, k_desc, s_desc, ctx_ptr, table_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full,
                  empty, q_full, q_empty, stride_tb, table_cols, max_model_len, n_tiles, tiles_per_seq, batch,
                  sched_ptr, NEXT_N, H, D, BS, BLOCK_T, NUM_STAGES)),
        (_loads, (2, q_desc, w_desc, k_desc, s_desc, ctx_ptr, table_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full,
                  empty, q_full, q_empty, stride_tb, table_cols, max_model_len, n_tiles, tiles_per_seq, batch,
                  sched_ptr, NEXT_N, H, D, BS, BLOCK_T, NUM_STAGES)),
        (_loads, (3, q_desc, w_desc, k_desc, s_desc, ctx_ptr, table_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full,
                  empty, q_full, q_empty, stride_tb, table_cols, max_model_len, n_tiles, tiles_per_seq, batch,
                  sched_ptr, NEXT_N, H, D, BS, BLOCK_T, NUM_STAGES)),
    ], [4, 4, 4, 1, 1, 1, 1], [COMPUTE_REGS, COMPUTE_REGS, COMPUTE_REGS, LOAD_REGS, LOAD_REGS, LOAD_REGS, LOAD_REGS])
