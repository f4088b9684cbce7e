"""The fused paged MQA logits kernel for NVIDIA Hopper (sm_90a), in Gluon (Triton's explicit-layout dialect):
fp8 e4m3fn keys in the plain paged layout, 64 heads of 128, next_n 1, 2 or 4 (SPEC sections 1-2). The backend
runs it where ``_sm90_unfit`` (parity.backends.triton_kernels) finds nothing against it and the GPU's config
asks for it (its warp-specialized form, ``paged_mqa_logits_sm90_ws``, on the larger calls).

Why a second kernel: in ``paged_mqa_logits.py`` every tile's epilogue waits for that tile's product, since
Triton overlaps a dot with other work only when its result is an accumulator (docs/design.md). Here:

- a tile's products are *units* (one speculative row: 64 tokens x 64 heads, 32 accumulator registers per
  thread; or half of its heads at odd next_n, so that every tile has an even number) and each unit's
  epilogue runs while the next unit's product is on the tensor cores (``warpgroup_mma`` asynchronous, then
  ``warpgroup_mma_wait(1)``). The last unit of a tile is waited for in full: ptxas serializes every product
  of a kernel where one is still in flight at a loop's back edge (docs/h200-kernel-study.md section 10);
- a tile's keys arrive by a bulk tensor copy and its scales by asynchronous copies, both completing one
  mbarrier, ``NUM_STAGES - 1`` tiles ahead; q by bulk copies once a sequence; block ids are read an
  iteration before the copy that needs them;
- the head sum happens in the product's register layout (16 heads in each thread, then two lane shuffles)
  and the logits are stored from it, with no layout conversion through shared memory.

Per tile of ``BLOCK_T`` tokens of sequence b and speculative row i (the portable kernel's formula):

    s[t, h]       = k[t, :] . q[b, i, h, :]            (fp32 accumulation, fp8 tensor cores)
    logits[i, t]  = scale[t] * sum_h w[b, i, h] relu(s[t, h])

Scheduling and what is written are the portable kernel's: each persistent program takes an equal
contiguous run of the batch's ``B x cdiv(max_model_len, BLOCK_T)`` tiles, clipped to each sequence's
length, or with ``BALANCED`` of the tiles the sequences really have (``_schedule``); positions
``t < min(context_len, max_model_len)`` of each row are written, -inf from the row's own limit (the causal
diagonal, or its 2-D length) on.
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait

from parity.kernels.paged_mqa_logits import _known_range, _program_tiles, _seq_tiles  # the schedule, shared

# names that changed after Triton 3.6 (the H200 image's): a barrier of the program's warps, the asynchronous
# copy into shared memory, the bulk tensor copy into shared memory
_cta_barrier = getattr(gl, "thread_barrier", None) or gl.barrier
_copy_async = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared
_copy_bulk = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
SCHEDULE_STRIDE = gl.constexpr(8)  # int32 per program in a precomputed schedule (5 used; 32-byte rows)

# ``PROBE``: 0, the kernel; else a measurement probe that writes wrong logits on purpose, to say what a call's
# time is made of (``SM90_PROBES`` in parity.backends.triton_sm90 names them; parity.perf.kernel_study's
# ``ws-probe-*``): 1 waits for each tile's copies and hands the slot back, no products, no stores; 2 runs
# everything but masks every store off at run time (a mask the compiler cannot fold, so the products and
# epilogues stay); 3 writes each tile's scales as every row's logits, without the products; 4 runs one product a
# tile (unit 0's) and takes its result for every unit's epilogue: half the products and their shared-memory reads.


@gluon.jit
def _wait_for_previous_kernel(PDL: gl.constexpr):
    """Launched early (programmatic dependent launch), a kernel reads and writes nothing before the kernel
    before it has finished."""
    if PDL:
        gl.inline_asm_elementwise("griddepcontrol.wait; // $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _add(a, b):
    return a + b


@gluon.jit
def _share_place(sizes, real, carry, lo, hi):
    """Of one chunk of sequences (tile counts ``sizes``, ``real`` where a sequence is there, ``carry`` tiles
    before the chunk): the tiles of its sequences wholly before the share ``[lo, hi)``, how many those are,
    and how many of its sequences begin before ``hi``."""
    ends = carry + gl.associative_scan(sizes, 0, _add)
    done = real & (ends <= lo)
    return (gl.sum(gl.where(done, sizes, 0), axis=0), gl.sum(done.to(gl.int32), axis=0),
            gl.sum((real & (ends - sizes < hi)).to(gl.int32), axis=0))


@gluon.jit
def _schedule(ctx_ptr, batch, n_tiles, tiles_per_seq, max_model_len, BLOCK_T: gl.constexpr,
              BALANCED: gl.constexpr, num_warps: gl.constexpr):
    """This program's share of the batch's key tiles, numbered sequence after sequence: ``[lo, hi)``, the
    first sequence it touches ``b0``, the number of that sequence's first tile ``first0``, and how many
    sequences it touches. Even (``_program_tiles``): every sequence counts ``tiles_per_seq`` tiles
    (``cdiv(max_model_len, BLOCK_T)``), so that the programs past a short sequence's keys idle. ``BALANCED``:
    every sequence counts the tiles it really has (``_seq_tiles``), from the context lengths in chunks of 128
    (32 in a load warp; any batch size fits the same registers) in two passes: the total, then the share's
    place. Every warp sums and scans the whole chunk itself (4 lengths a lane, the layout repeated over the
    warps): no barrier between warps, where a chunk split over them cost 12 more barriers per program. Each partition
    of a warp-specialized kernel calls this with its own warps: computed once before the split and handed
    to both partitions, the share hung that kernel at batch 1 (H200, stress level, 2026-12-04; the cause
    was not found, the form called per partition passes there)."""
    if BALANCED:
        # 4 lengths a lane; 1 in a load warp, whose 24 registers spilled the kept chunk (below) at 4
        CHUNK: gl.constexpr = 128 if num_warps > 1 else 32
        seqs = gl.arange(0, CHUNK, layout=gl.BlockedLayout([CHUNK // 32], [32], [num_warps], [0]))
        # the first chunk is read once and kept for the second pass: a batch of one chunk costs one read of
        # the lengths before the share is known, not two in a row
        sizes0 = _seq_tiles(gl.load(ctx_ptr + seqs, mask=seqs < batch, other=0), max_model_len, BLOCK_T)
        chunk0 = gl.sum(sizes0, axis=0)  # 32-bit throughout: the host refuses 2**31 tiles or more
        total = chunk0
        for c0 in range(CHUNK, batch, CHUNK):
            ctx = gl.load(ctx_ptr + c0 + seqs, mask=c0 + seqs < batch, other=0)
            total += gl.sum(_seq_tiles(ctx, max_model_len, BLOCK_T), axis=0)
        pid = gl.program_id(0).to(gl.int64)
        lo = pid * total // gl.num_programs(0)
        hi = (pid + 1) * total // gl.num_programs(0)
        # the place of the share: chunk 0 from the lengths kept, the others read again (a branch on the chunk
        # inside the loop broke Triton's compile where the batch is 1, a value it specializes on)
        before, b0, b1 = _share_place(sizes0, seqs < batch, chunk0 * 0, lo, hi)
        carry = chunk0  # the tiles of the chunks before the next
        for c0 in range(CHUNK, batch, CHUNK):
            real = c0 + seqs < batch
            sizes = _seq_tiles(gl.load(ctx_ptr + c0 + seqs, mask=real, other=0), max_model_len, BLOCK_T)
            before_c, b0_c, b1_c = _share_place(sizes, real, carry, lo, hi)
            before += before_c
            b0 += b0_c
            b1 += b1_c
            carry += gl.sum(sizes, axis=0)
    else:
        lo, hi, n_segments = _program_tiles(n_tiles, tiles_per_seq)
        b0 = lo // tiles_per_seq
        before = b0 * tiles_per_seq
        b1 = b0 + n_segments
    return (lo.to(gl.int32), hi.to(gl.int32), b0.to(gl.int32), before.to(gl.int32),
            gl.where(hi > lo, b1 - b0, 0).to(gl.int32))


@gluon.jit
def _share(sched_ptr, ctx_ptr, batch, n_tiles, tiles_per_seq, max_model_len, BLOCK_T: gl.constexpr,
           BALANCED: gl.constexpr, SCHEDULED: gl.constexpr, num_warps: gl.constexpr, VPS: gl.constexpr = 1,
           VP: gl.constexpr = 0):
    """This program's share (``_schedule``'s five values): read from ``sched_ptr`` where ``SCHEDULED`` (written
    by ``paged_mqa_logits_sm90_schedule_kernel`` once per decode step, for a grid of the same size), else
    computed here. A program of ``VPS`` shares (``paged_mqa_logits_sm90_wg4``: one a compute warpgroup at next_n
    2, one a pair at next_n 4) reads its ``VP``-th, row ``program_id * VPS + VP`` of a schedule prepared for
    ``VPS`` x the grid."""
    if SCHEDULED:
        at = sched_ptr + (gl.program_id(0) * VPS + VP) * SCHEDULE_STRIDE
        lo = gl.load(at)
        hi = gl.load(at + 1)
        b0 = gl.load(at + 2)
        first = gl.load(at + 3)
        n_segments = gl.load(at + 4)
    else:
        gl.static_assert(VPS == 1, "several shares a program: read from a prepared schedule only")
        lo, hi, b0, first, n_segments = _schedule(ctx_ptr, batch, n_tiles, tiles_per_seq, max_model_len, BLOCK_T,
                                                  BALANCED, num_warps)
    return lo, hi, b0, first, n_segments


@gluon.jit
def paged_mqa_logits_sm90_schedule_kernel(ctx_ptr, sched_ptr, batch, n_tiles, tiles_per_seq, max_model_len,
                                          BLOCK_T: gl.constexpr, BALANCED: gl.constexpr):
    """Each program's share of a call (``_schedule``), into row ``program_id`` of ``sched_ptr`` (int32,
    ``SCHEDULE_STRIDE`` a row), for the kernels' ``SCHEDULED`` form launched on a grid of the same size. The
    share depends only on the context lengths and the grid: a server computes it once per decode step and every
    layer's call reads it (as DeepGEMM's ``get_paged_mqa_logits_metadata``), where the kernels otherwise read
    every length in every program before their first copy."""
    lo, hi, b0, first, n_segments = _schedule(ctx_ptr, batch, n_tiles, tiles_per_seq, max_model_len, BLOCK_T,
                                              BALANCED, 4)
    at = sched_ptr + gl.program_id(0) * SCHEDULE_STRIDE
    gl.store(at, lo)
    gl.store(at + 1, hi)
    gl.store(at + 2, b0)
    gl.store(at + 3, first)
    gl.store(at + 4, n_segments)


@gluon.jit
def _ctx_of(ctx_ptr, b0, seg, n_segments):
    """The length of the share's sequence ``seg`` (0 past the last)."""
    return gl.load(ctx_ptr + b0 + seg, mask=seg < n_segments, other=0)


@gluon.jit
def _share_segment(ctx, first, lo, hi, b0, seg, tiles_per_seq, max_model_len, BLOCK_T: gl.constexpr,
                   BALANCED: gl.constexpr):
    """Segment ``seg`` of a share from ``_schedule``, from its sequence's length ``ctx`` and the number
    ``first`` of that sequence's first tile: (b, ctx, end, t_lo, t_hi as ``_known_range``, its tile count in
    the share, the next sequence's ``first``)."""
    if BALANCED:
        size = _seq_tiles(ctx, max_model_len, BLOCK_T)
    else:
        size = tiles_per_seq
    b, ctx, end, t_lo, t_hi = _known_range(ctx, b0 + seg, first, size, lo, hi, max_model_len, BLOCK_T)
    return b, ctx, end, t_lo, t_hi, gl.cdiv(t_hi - t_lo, BLOCK_T), first + size


@gluon.jit
def _block_id(table_row, t0, t_hi, table_cols, BS: gl.constexpr):
    """The cache block of token ``t0`` (0 from ``t_hi`` on, where the table may hold anything)."""
    return gl.load(table_row + t0 // BS, mask=(t0 < t_hi) & (t0 // BS < table_cols), other=0)


@gluon.jit
def _issue_tile(k_desc, scale_ptr, blk, t0, bar, k_buf, s_buf, block_floats, scale_base, BS: gl.constexpr,
                ROWS_PER_BLOCK: gl.constexpr, BLOCK_T: gl.constexpr):
    """The copies of the tile at token ``t0`` (inside block ``blk``), done on mbarrier ``bar``: its keys into
    ``k_buf`` by one bulk tensor copy, its fp32 scales into ``s_buf`` by asynchronous copies (``cp.async``)
    whose completion the barrier also waits for (each thread's arrival counted in before the bulk copy's).

    Not read into registers a tile ahead: a value loaded in one iteration and carried into the next is
    moved between registers at the loop's back edge, and that move waits for the load (the largest single
    stall of that form on the H200, Nsight Compute). Not by a bulk copy either: the epilogue reads the
    scales through the generic proxy, and the bulk copy that refills the slot would need a proxy fence."""
    sl: gl.constexpr = gl.BlockedLayout([4], [32], [4], [0])
    offs = gl.arange(0, BLOCK_T, layout=sl)
    _copy_async(s_buf, scale_ptr + blk.to(gl.int64) * block_floats + scale_base + t0 % BS + offs)
    async_copy.mbarrier_arrive(bar)
    mbarrier.expect(bar, BLOCK_T * k_desc.block_type.shape[1])
    _copy_bulk(k_desc, [blk * ROWS_PER_BLOCK + t0 % BS, 0], bar, k_buf)


@gluon.jit
def _unit_sum(acc, w, scale):
    """relu, weights and the head sum of one unit's product: per token (16 or 8 heads in each thread, then
    two lane shuffles), times the token's scale."""
    return gl.sum(gl.maximum(acc, 0.0) * w[None, :], axis=1) * scale


@gluon.jit
def _unit_out(done, u: gl.constexpr, logit, w0, w1, w2, w3, scale, t, causal0, lens_ptr, row0, end, out_b,
              stride_or, HALVES: gl.constexpr, PER_ROW: gl.constexpr, NO_STORES: gl.constexpr):
    """Unit ``u``'s epilogue (units: see ``_tile``): its head sum starts its row's logits or is added to them
    (``logit``), and after the row's last unit the row is stored, -inf from the row's own limit on. Returns
    the row's logits so far."""
    w = w0 if u == 0 else (w1 if u == 1 else (w2 if u == 2 else w3))
    if u % HALVES == 0:
        logit = _unit_sum(done, w, scale)
    else:
        logit += _unit_sum(done, w, scale)
    if u % HALVES == HALVES - 1:  # the row's last unit: store it
        if PER_ROW:
            lim = gl.load(lens_ptr + row0 + u // HALVES)
        else:
            lim = causal0 + u // HALVES
        keep = t < end
        if NO_STORES:  # the probe: end is never negative
            keep = keep & (end < 0)
        gl.store(out_b + (u // HALVES) * stride_or + t, gl.where(t < lim, logit, float("-inf")), mask=keep)
    return logit


@gluon.jit
def _weights(w_ptr, row0, heads, NEXT_N: gl.constexpr, H: gl.constexpr, HALVES: gl.constexpr):
    """Each unit's weights (16 heads per thread, 8 at odd next_n; units: see _tile), held for a segment."""
    HN: gl.constexpr = H // HALVES
    w0 = gl.load(w_ptr + row0 * H + heads)
    w1 = w0
    w2 = w0
    w3 = w0
    if NEXT_N * HALVES > 1:
        w1 = gl.load(w_ptr + row0 * H + HN + heads)
    if NEXT_N * HALVES > 2:
        w2 = gl.load(w_ptr + row0 * H + 2 * HN + heads)
    if NEXT_N * HALVES > 3:
        w3 = gl.load(w_ptr + row0 * H + 3 * HN + heads)
    return w0, w1, w2, w3


@gluon.jit
def _tile(k, s_buf, full, phase, t, q_rows, zero, w0, w1, w2, w3, causal0, lens_ptr, row0, end, out_b, stride_or,
          NEXT_N: gl.constexpr, HALVES: gl.constexpr, PER_ROW: gl.constexpr, empty, RELEASE: gl.constexpr,
          PROBE: gl.constexpr):
    """The units of the key tile ``k`` at tokens ``t``, with its scales ``s_buf``, both in shared memory once
    mbarrier ``full`` completes ``phase``; ``q_rows`` the sequence's q as ``next_n x H`` rows. A unit is one
    speculative row, or half of its heads when ``HALVES`` is 2; each unit's epilogue runs while the next
    unit's product is computed. ``out_b`` points at the sequence's first logits row. ``RELEASE`` (the
    warp-specialized kernel): the slot goes back on mbarrier ``empty`` once every warp is past the tile's
    last product, before the last epilogue. ``PROBE``: see the top of this module.

    Every product is waited for before returning. Carried into the next iteration in flight, the last
    product made ptxas serialize every product of the kernel (C7514: it does not follow the wait groups
    across the loop's back edge), and one flowing out of a branch gets a full wait at the join (C7517)."""
    HN: gl.constexpr = q_rows.type.shape[0] // (NEXT_N * HALVES)  # heads per unit
    mbarrier.wait(full, phase)
    if PROBE == 1 or PROBE == 3:  # the probes without products
        scale = s_buf.reshape([t.shape[0]]).load(t.type.layout)
        if RELEASE:
            _cta_barrier()
            mbarrier.arrive(empty)
        if PROBE == 3:
            for i in gl.static_range(NEXT_N):
                gl.store(out_b + i * stride_or + t, scale, mask=t < end)
    elif PROBE == 4:  # the probe with one product a tile: unit 0's, taken for every unit's epilogue
        acc = warpgroup_mma(k, q_rows.slice(0, HN).permute((1, 0)), zero, use_acc=False, is_async=True)
        scale = s_buf.reshape([t.shape[0]]).load(t.type.layout)
        done = warpgroup_mma_wait(0, deps=(acc,))
        if RELEASE:
            _cta_barrier()
            mbarrier.arrive(empty)
        logit = scale
        for u in gl.static_range(NEXT_N * HALVES):
            logit = _unit_out(done, u, logit, w0, w1, w2, w3, scale, t, causal0, lens_ptr, row0, end, out_b, stride_or,
                              HALVES, PER_ROW, False)
    else:
        acc = warpgroup_mma(k, q_rows.slice(0, HN).permute((1, 0)), zero, use_acc=False, is_async=True)
        scale = s_buf.reshape([t.shape[0]]).load(t.type.layout)
        for u in gl.static_range(NEXT_N * HALVES):
            if u + 1 < NEXT_N * HALVES:  # the next unit: row (u + 1) // HALVES, half (u + 1) % HALVES
                nxt = warpgroup_mma(k, q_rows.slice((u + 1) * HN, HN).permute((1, 0)), zero, use_acc=False,
                                    is_async=True)
                done = warpgroup_mma_wait(1, deps=(acc,))
            else:
                done = warpgroup_mma_wait(0, deps=(acc,))
                if RELEASE:
                    _cta_barrier()  # the compute warps only: each is past its last read of the slot
                    mbarrier.arrive(empty)
                nxt = acc
            logit = _unit_out(done, u, scale if u == 0 else logit, w0, w1, w2, w3, scale, t, causal0, lens_ptr, row0,
                              end, out_b, stride_or, HALVES, PER_ROW, PROBE == 2)
            acc = nxt


@gluon.jit
def paged_mqa_logits_sm90_kernel(
    q_desc, k_desc, scale_ptr, w_ptr, ctx_ptr, lens_ptr, table_ptr, out_ptr,
    stride_tb, table_cols, stride_or, max_model_len, block_floats, scale_base, n_tiles, tiles_per_seq, batch, sched_ptr,
    NEXT_N: gl.constexpr, H: gl.constexpr, D: gl.constexpr, BS: gl.constexpr, BLOCK_T: gl.constexpr,
    NUM_STAGES: gl.constexpr, PER_ROW: gl.constexpr, PDL: gl.constexpr, BALANCED: gl.constexpr,
    PROBE: gl.constexpr, SCHEDULED: gl.constexpr,
):
    _wait_for_previous_kernel(PDL)
    gl.static_assert(BS % BLOCK_T == 0, "a key tile lies inside one cache block")
    gl.static_assert(NUM_STAGES >= 2, "a tile in flight while one is computed")
    HALVES: gl.constexpr = 2 if NEXT_N % 2 == 1 else 1  # units per row: see _tile
    HN: gl.constexpr = H // HALVES  # heads per unit
    gl.static_assert(NEXT_N * HALVES <= 4, "the weights of at most 4 units are held in registers: next_n 1, 2, 4")
    ROWS_PER_BLOCK: gl.constexpr = (BS * (D + 4)) // D  # the cache seen as rows of D bytes (k_desc)
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, HN, 32])
    row_l: gl.constexpr = gl.SliceLayout(1, mma)  # per token
    col_l: gl.constexpr = gl.SliceLayout(0, mma)  # per head

    k_bufs = gl.allocate_shared_memory(k_desc.dtype, [NUM_STAGES, BLOCK_T, D], k_desc.layout)
    s_bufs = gl.allocate_shared_memory(gl.float32, [NUM_STAGES, BLOCK_T], gl.SwizzledSharedLayout(1, 1, 1, [0]))
    q_bufs = gl.allocate_shared_memory(q_desc.dtype, [NEXT_N * H, D], q_desc.layout)  # a row of H per i
    k_bars = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    for s in gl.static_range(NUM_STAGES):
        mbarrier.init(k_bars.index(s), count=1)
    mbarrier.init(q_bar, count=1)

    lo, hi, b0, first, n_segments = _share(sched_ptr, ctx_ptr, batch, n_tiles, tiles_per_seq, max_model_len, BLOCK_T,
                                           BALANCED, SCHEDULED, 4)

    rows = gl.arange(0, BLOCK_T, layout=row_l)
    heads = gl.arange(0, HN, layout=col_l)
    zero = gl.zeros([BLOCK_T, HN], gl.float32, mma)  # the products' input, ignored (use_acc=False)
    issued = 0  # tiles whose copies this program has issued: the slot and the mbarrier phase of the next
    q_phase = 0
    for seg in range(0, n_segments):
        # the length read here, not a segment ahead: carried over the loop it cost a register at next_n 4
        b, ctx, end, t_lo, t_hi, n, first = _share_segment(gl.load(ctx_ptr + b0 + seg), first, lo, hi, b0, seg,
                                                            tiles_per_seq, max_model_len, BLOCK_T, BALANCED)
        if n > 0:
            table_row = table_ptr + b * stride_tb
            row0 = (b * NEXT_N).to(gl.int32)
            out_b = out_ptr + (b * NEXT_N) * stride_or  # 64-bit: the logits may pass 2 GiB
            # q of every row of this sequence (the previous segment's products are all waited for)
            mbarrier.expect(q_bar, NEXT_N * H * D)
            for i in gl.static_range(NEXT_N):
                _copy_bulk(q_desc, [(row0 + i) * H, 0], q_bar, q_bufs.slice(i * H, H))
            for s in gl.static_range(NUM_STAGES - 1):
                if s < n:
                    slot = (issued + s) % NUM_STAGES
                    _issue_tile(k_desc, scale_ptr, _block_id(table_row, t_lo + s * BLOCK_T, t_hi, table_cols, BS),
                                t_lo + s * BLOCK_T, k_bars.index(slot), k_bufs.index(slot), s_bufs.index(slot),
                                block_floats, scale_base, BS, ROWS_PER_BLOCK, BLOCK_T)
            # the block id of the next copy, read an iteration before the copy is issued
            blk_next = _block_id(table_row, t_lo + (NUM_STAGES - 1) * BLOCK_T, t_hi, table_cols, BS)
            w0, w1, w2, w3 = _weights(w_ptr, row0, heads, NEXT_N, H, HALVES)
            causal0 = ctx - NEXT_N + 1  # row i sees t < causal0 + i
            mbarrier.wait(q_bar, q_phase)
            q_phase ^= 1
            for j in range(0, n):
                c = issued + j  # this tile's copy number
                t0 = t_lo + j * BLOCK_T
                # the slot of tile j - 1 is free once every warp is past this barrier (its products were waited
                # for in _tile): refill it with tile j + NUM_STAGES - 1
                _cta_barrier()
                if j + NUM_STAGES - 1 < n:
                    fill = (c + NUM_STAGES - 1) % NUM_STAGES
                    _issue_tile(k_desc, scale_ptr, blk_next, t0 + (NUM_STAGES - 1) * BLOCK_T, k_bars.index(fill),
                                k_bufs.index(fill), s_bufs.index(fill), block_floats, scale_base, BS, ROWS_PER_BLOCK,
                                BLOCK_T)
                blk_next = _block_id(table_row, t0 + NUM_STAGES * BLOCK_T, t_hi, table_cols, BS)
                slot = c % NUM_STAGES
                _tile(k_bufs.index(slot), s_bufs.index(slot), k_bars.index(slot), (c // NUM_STAGES) & 1, t0 + rows,
                      q_bufs, zero, w0, w1, w2, w3, causal0, lens_ptr, row0, end, out_b, stride_or, NEXT_N, HALVES,
                      PER_ROW, None, False, PROBE)
            issued += n
            _cta_barrier()  # every warp is past its last product before q is overwritten
    for s in gl.static_range(NUM_STAGES):
        mbarrier.invalidate(k_bars.index(s))
    mbarrier.invalidate(q_bar)
