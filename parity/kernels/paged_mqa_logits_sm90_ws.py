"""The fused paged MQA logits kernel for NVIDIA Hopper, warp-specialized (Gluon): the same calls, formula and
writes as ``paged_mqa_logits_sm90`` (fp8 e4m3fn keys in the plain paged layout, 64 heads of 128, next_n 1, 2
or 4; the backend gives it the calls with enough tiles per program, ``sm90_warp_specialized``), with the
copies taken off the compute warps.

Why: in the single-partition kernel the four compute warps also read the block table, issue the copies and
meet at four barriers per tile (one before each refill, three that Triton's shared-memory analysis puts
around the mbarrier operations), and they stall at each new sequence of their share for its length, its
weights and its q, one read after the other. Here each program is

- a *load* warp: q and the weights of each sequence (two buffers, so the next sequence's are loaded while
  this one is computed), then every tile's keys and scales by bulk tensor copies into the next free slot.
  Block ids are read 32 tiles at a time, one per lane, the next 32 while these are copied. The second
  sequence's q is issued right after the first tile, while every program copies its first q: issued at the
  switch, halfway through the call, it had left L2 under the keys streaming through and was read from DRAM
  again (1.4 MB more DRAM reads than DeepGEMM at B128-n2-ctx8192 on the H200, none with it; `_load_partition`);
- a *compute* warpgroup: waits for a slot, runs its products and epilogues in the single-partition
  kernel's ``_tile``, which hands the slot back once its four warps are past the last product (one
  barrier of the four warps, one mbarrier arrival), and reads the next sequence's length a sequence ahead.

Triton pads the load warp to a warpgroup (three idle warps) and splits the registers with ``setmaxnreg``:
launched at 80 per thread (3 programs per multiprocessor), the compute warps get 136 and the load warps 24;
at 64 (4 programs, the H200's config at next_n <= 2, with 2 key slots so that 4 fit in shared memory), 104
and 24; at next_n 4, launched at 128 (2 programs: its q buffers take 64 KB of shared memory), 232 and 24.
The schedule is the single-partition kernel's (``_share``): computed by each partition with its own warps, or
read from a schedule prepared once per decode step (``SCHEDULED``).
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier

from parity.kernels.paged_mqa_logits_sm90 import (_block_id, _copy_bulk, _ctx_of, _share, _share_segment, _tile,
                                                  _wait_for_previous_kernel)

LOAD_REGS = gl.constexpr(24)  # registers per thread of the load warpgroup (setmaxnreg's floor)


def launch_maxnreg(ctas_per_sm: int) -> int:
    """The registers per thread at launch that fit ``ctas_per_sm`` programs of 8 warps (the compute warpgroup,
    and the load warp padded to a warpgroup) on a multiprocessor of 65536 registers."""
    return min(128, 65536 // (256 * ctas_per_sm) // 8 * 8)


@gluon.jit
def _block_ids(table_row, t0, t_hi, table_cols, BS: gl.constexpr, STEP: gl.constexpr):
    """The cache blocks of 32 tiles ``STEP`` tokens apart from token ``t0`` on, one per lane of the load warp."""
    tiles = gl.arange(0, 32, layout=gl.BlockedLayout([1], [32], [1], [0]))
    return _block_id(table_row, t0 + tiles * STEP, t_hi, table_cols, BS)


@gluon.jit
def _tile_block(ids, ids_next, i, t0, table_row, t_hi, table_cols, BS: gl.constexpr, STEP: gl.constexpr):
    """The cache block of a load warp's ``i``-th tile of a segment (at token ``t0``, its tiles ``STEP`` tokens
    apart), lane ``i`` mod 32 of the ids held: every 32 tiles the next 32 read ahead take over and the 32 after
    those are read. Returns the ids held and read ahead, and the block."""
    if i % 32 == 0:
        if i > 0:
            ids = ids_next
            ids_next = _block_ids(table_row, t0 + 32 * STEP, t_hi, table_cols, BS, STEP)
    lanes = gl.arange(0, 32, layout=gl.BlockedLayout([1], [32], [1], [0]))
    return ids, ids_next, gl.sum(gl.where(lanes == i % 32, ids, 0), axis=0)


@gluon.jit
def _copy_tile(k_desc, s_desc, k_bufs, s_bufs, full, empty, slot, c, blk, t0, NUM_STAGES: gl.constexpr,
               D: gl.constexpr, BS: gl.constexpr, BLOCK_T: gl.constexpr):
    """The copies of the load warp's ``c``-th tile (at token ``t0``, in cache block ``blk``) into key slot
    ``slot`` once its compute warps have handed it back."""
    ROWS_PER_BLOCK: gl.constexpr = (BS * (D + 4)) // D  # the cache as rows of D key bytes (k_desc)
    SROWS_PER_BLOCK: gl.constexpr = (D + 4) // 4  # the cache as rows of BS floats (s_desc); scales: row D / 4
    mbarrier.wait(empty.index(slot), ((c // NUM_STAGES) & 1) ^ 1)
    mbarrier.expect(full.index(slot), BLOCK_T * (D + 4))
    _copy_bulk(k_desc, [blk * ROWS_PER_BLOCK + t0 % BS, 0], full.index(slot), k_bufs.index(slot))
    _copy_bulk(s_desc, [blk * SROWS_PER_BLOCK + D // 4, t0 % BS], full.index(slot), s_bufs.index(slot))


@gluon.jit
def _issue_q(q_desc, w_desc, q_bufs, w_bufs, q_full, q_empty, b, q_n, NEXT_N: gl.constexpr, H: gl.constexpr,
             D: gl.constexpr, VP: gl.constexpr):
    """The copies of sequence ``b``'s q and weights, the ``q_n``-th of share ``VP``, into its next q buffer once
    its compute warps have handed it back."""
    row0 = (b * NEXT_N).to(gl.int32)
    qs = VP * 2 + q_n % 2
    mbarrier.wait(q_empty.index(qs), ((q_n // 2) & 1) ^ 1)
    mbarrier.expect(q_full.index(qs), NEXT_N * H * (D + 4))
    _copy_bulk(w_desc, [row0, 0], q_full.index(qs), w_bufs.index(qs))
    for i in gl.static_range(NEXT_N):
        _copy_bulk(q_desc, [(row0 + i) * H, 0], q_full.index(qs), q_bufs.index(qs).slice(i * H, H))


@gluon.jit
def _issue_next_q(q_desc, w_desc, q_bufs, w_bufs, q_full, q_empty, ctx_next, first, lo, hi, b0, seg, b, q_n,
                  tiles_per_seq, max_model_len, NEXT_N: gl.constexpr, H: gl.constexpr, D: gl.constexpr,
                  BLOCK_T: gl.constexpr, BALANCED: gl.constexpr, VP: gl.constexpr):
    """Sequence ``b + 1``'s q and weights, the ``q_n``-th of share ``VP``, issued where its segment ``seg + 1``
    (length ``ctx_next``, first tile ``first``) has tiles in the share. Returns the count of q issued."""
    n1 = _share_segment(ctx_next, first, lo, hi, b0, seg + 1, tiles_per_seq, max_model_len, BLOCK_T, BALANCED)[5]
    if n1 > 0:
        _issue_q(q_desc, w_desc, q_bufs, w_bufs, q_full, q_empty, b + 1, q_n, NEXT_N, H, D, VP)
        q_n += 1
    return q_n


@gluon.jit
def _load_partition(q_desc, w_desc, k_desc, s_desc, ctx_ptr, table_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full,
                    empty, q_full, q_empty, stride_tb, table_cols, max_model_len, n_tiles, tiles_per_seq, batch,
                    sched_ptr, NEXT_N: gl.constexpr, H: gl.constexpr, D: gl.constexpr, BS: gl.constexpr,
                    BLOCK_T: gl.constexpr, NUM_STAGES: gl.constexpr, BALANCED: gl.constexpr,
                    SCHEDULED: gl.constexpr, VPS: gl.constexpr = 1, VP: gl.constexpr = 0):
    """The load warp: q and weights a sequence, keys and scales a tile (the module's docstring). Of a program
    of ``VPS`` shares (``paged_mqa_logits_sm90_wg4``), the ``VP``-th, into its own slots and q buffers. The
    compute warps take the q buffers in the order of the segments with tiles, whichever iteration issued them."""
    lo, hi, b0, first, n_segments = _share(sched_ptr, ctx_ptr, batch, n_tiles, tiles_per_seq, max_model_len, BLOCK_T,
                                           BALANCED, SCHEDULED, 1, VPS, VP)
    ctx_next = _ctx_of(ctx_ptr, b0, 0, n_segments)
    c = 0  # tiles issued
    q_n = 0  # sequences whose q was issued
    q_used = 0  # segments with tiles begun
    for seg in range(0, n_segments):
        b, ctx, end, t_lo, t_hi, n, first = _share_segment(ctx_next, first, lo, hi, b0, seg, tiles_per_seq,
                                                            max_model_len, BLOCK_T, BALANCED)
        ctx_next = _ctx_of(ctx_ptr, b0, seg + 1, n_segments)  # read a segment before it is needed
        if n > 0:
            table_row = table_ptr + b * stride_tb
            ids = _block_ids(table_row, t_lo, t_hi, table_cols, BS, BLOCK_T)
            ids_next = _block_ids(table_row, t_lo + 32 * BLOCK_T, t_hi, table_cols, BS, BLOCK_T)
            if q_n == q_used:  # not issued ahead
                _issue_q(q_desc, w_desc, q_bufs, w_bufs, q_full, q_empty, b, q_n, NEXT_N, H, D, VP)
                q_n += 1
            ahead = q_used == 0  # the first segment with tiles issues the next one's q after its first tile
            q_used += 1
            for j in range(0, n):
                t0 = t_lo + j * BLOCK_T
                ids, ids_next, blk = _tile_block(ids, ids_next, j, t0, table_row, t_hi, table_cols, BS, BLOCK_T)
                _copy_tile(k_desc, s_desc, k_bufs, s_bufs, full, empty, VP * NUM_STAGES + c % NUM_STAGES, c, blk, t0,
                           NUM_STAGES, D, BS, BLOCK_T)
                c += 1
                if ahead and j == 0:  # its second buffer is free: nothing was computed yet
                    q_n = _issue_next_q(q_desc, w_desc, q_bufs, w_bufs, q_full, q_empty, ctx_next, first, lo, hi, b0,
                                        seg, b, q_n, tiles_per_seq, max_model_len, NEXT_N, H, D, BLOCK_T, BALANCED, VP)


@gluon.jit
def _weights(w_buf, heads, UNITS: gl.constexpr):
    """Each unit's weights from a sequence's ``[next_n, H]`` in shared memory (units: see ``_tile``), held in
    registers for the sequence."""
    HN: gl.constexpr = heads.shape[0]
    flat = w_buf.reshape([UNITS * HN])
    w0 = flat.slice(0, HN).load(heads.type.layout)
    w1 = w0
    w2 = w0
    w3 = w0
    if UNITS > 1:
        w1 = flat.slice(HN, HN).load(heads.type.layout)
    if UNITS > 2:
        w2 = flat.slice(2 * HN, HN).load(heads.type.layout)
    if UNITS > 3:
        w3 = flat.slice(3 * HN, HN).load(heads.type.layout)
    return w0, w1, w2, w3


@gluon.jit
def _compute_partition(ctx_ptr, lens_ptr, out_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full, empty, q_full, q_empty,
                       stride_or, max_model_len, n_tiles, tiles_per_seq, batch, sched_ptr, NEXT_N: gl.constexpr,
                       H: gl.constexpr, BLOCK_T: gl.constexpr, NUM_STAGES: gl.constexpr, PER_ROW: gl.constexpr,
                       BALANCED: gl.constexpr, PROBE: gl.constexpr, SCHEDULED: gl.constexpr):
    HALVES: gl.constexpr = 2 if NEXT_N % 2 == 1 else 1  # units per row: every tile has an even number
    HN: gl.constexpr = H // HALVES
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, HN, 32])
    rows = gl.arange(0, BLOCK_T, layout=gl.SliceLayout(1, mma))
    heads = gl.arange(0, HN, layout=gl.SliceLayout(0, mma))
    zero = gl.zeros([BLOCK_T, HN], gl.float32, mma)  # the products' input, ignored (use_acc=False)
    lo, hi, b0, first, n_segments = _share(sched_ptr, ctx_ptr, batch, n_tiles, tiles_per_seq, max_model_len, BLOCK_T,
                                           BALANCED, SCHEDULED, 4)
    ctx_next = _ctx_of(ctx_ptr, b0, 0, n_segments)
    c = 0  # tiles computed
    q_n = 0  # sequences computed
    for seg in range(0, n_segments):
        b, ctx, end, t_lo, t_hi, n, first = _share_segment(ctx_next, first, lo, hi, b0, seg, tiles_per_seq,
                                                            max_model_len, BLOCK_T, BALANCED)
        ctx_next = _ctx_of(ctx_ptr, b0, seg + 1, n_segments)  # read a segment before it is needed
        if n > 0:
            row0 = (b * NEXT_N).to(gl.int32)
            out_b = out_ptr + (b * NEXT_N) * stride_or  # 64-bit: the logits may pass 2 GiB
            causal0 = ctx - NEXT_N + 1  # row i sees t < causal0 + i
            qs = q_n % 2
            mbarrier.wait(q_full.index(qs), (q_n // 2) & 1)
            w0, w1, w2, w3 = _weights(w_bufs.index(qs), heads, NEXT_N * HALVES)
            for j in range(0, n):
                slot = c % NUM_STAGES
                _tile(k_bufs.index(slot), s_bufs.index(slot), full.index(slot), (c // NUM_STAGES) & 1,
                      t_lo + j * BLOCK_T + rows, q_bufs.index(qs), zero, w0, w1, w2, w3, causal0, lens_ptr, row0,
                      end, out_b, stride_or, NEXT_N, HALVES, PER_ROW, empty.index(slot), True, PROBE)
                c += 1
            mbarrier.arrive(q_empty.index(qs))  # every warp passed the last tile's barrier after its products
            q_n += 1


@gluon.jit
def paged_mqa_logits_sm90_ws_kernel(
    q_desc, w_desc, k_desc, s_desc, ctx_ptr, lens_ptr, table_ptr, out_ptr,
    stride_tb, table_cols, stride_or, max_model_len, n_tiles, tiles_per_seq, batch, sched_ptr,
    NEXT_N: gl.constexpr, H: gl.constexpr, D: gl.constexpr, BS: gl.constexpr, BLOCK_T: gl.constexpr,
    NUM_STAGES: gl.constexpr, PER_ROW: gl.constexpr, PDL: gl.constexpr, BALANCED: gl.constexpr,
    PROBE: gl.constexpr, SCHEDULED: gl.constexpr,
):
    _wait_for_previous_kernel(PDL)
    gl.static_assert(BS % BLOCK_T == 0, "a key tile lies inside one cache block")
    gl.static_assert(NEXT_N * (2 if NEXT_N % 2 == 1 else 1) <= 4, "next_n 1, 2 or 4")
    k_bufs = gl.allocate_shared_memory(k_desc.dtype, [NUM_STAGES, BLOCK_T, D], k_desc.layout)
    s_bufs = gl.allocate_shared_memory(gl.float32, [NUM_STAGES, 1, BLOCK_T], s_desc.layout)
    q_bufs = gl.allocate_shared_memory(q_desc.dtype, [2, NEXT_N * H, D], q_desc.layout)
    w_bufs = gl.allocate_shared_memory(gl.float32, [2, NEXT_N, H], w_desc.layout)
    full = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    q_full = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(NUM_STAGES):
        mbarrier.init(full.index(s), count=1)
        mbarrier.init(empty.index(s), count=1)
    for s in gl.static_range(2):
        mbarrier.init(q_full.index(s), count=1)
        mbarrier.init(q_empty.index(s), count=1)
    gl.warp_specialize([
        (_compute_partition, (ctx_ptr, lens_ptr, out_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full, empty, q_full,
                              q_empty, stride_or, max_model_len, n_tiles, tiles_per_seq, batch, sched_ptr, NEXT_N, H,
                              BLOCK_T, NUM_STAGES, PER_ROW, BALANCED, PROBE, SCHEDULED)),
        (_load_partition, (q_desc, w_desc, k_desc, s_desc, ctx_ptr, table_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full,
                           empty, q_full, q_empty, stride_tb, table_cols, max_model_len, n_tiles, tiles_per_seq, batch,
                           sched_ptr, NEXT_N, H, D, BS, BLOCK_T, NUM_STAGES, BALANCED, SCHEDULED)),
    ], [1], [LOAD_REGS])
