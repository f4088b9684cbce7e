"""The fused paged MQA logits kernel for NVIDIA Hopper at next_n 2, as one program per multiprocessor of four
compute warpgroups (Gluon): the same calls, formula and writes as ``paged_mqa_logits_sm90_ws`` at next_n 2 with 64
heads of 128, with one m64n128k32 product per key tile over both speculative rows where that form runs two
m64n64k32.

Why: the warp-specialized form runs 4 programs of 8 warps per multiprocessor (its load warp padded to a
warpgroup), 64 registers each at launch, and ptxas refuses a product of 64 accumulators per thread under 90
(C7602). Its two products read each key tile from shared memory twice; a probe with one product a tile ran
4-8 % under DeepGEMM where the whole kernel ran 2-5 % over it (docs/h200-gap-probes.md section 11). Here one
program of 20 warps takes the multiprocessor: 96 registers at launch, 112 for the compute warps, 32 for the
load warps after ``setmaxnreg``.

Each of the four compute warpgroups and its own load warp (Triton packs the four one-warp partitions into one
warpgroup) is the warp-specialized form's program, renamed: share ``VP`` of the program's ``VPS`` (the split
by real tile counts, prepared for ``VPS`` x the grid; the load warp is that form's ``_load_partition``),
its own key slots, q and weight buffers and mbarriers. Per tile: wait for the slot, one product of the key tile
against both rows' q (``[2 x 64 heads, 128]``), wait for it, hand the slot back, then relu, the weights (both
rows', held in registers: 32 per thread) and the head sums of each row through masks the compiler folds, and
the two rows' stores, -inf from each row's own limit on.
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, warpgroup_mma, warpgroup_mma_wait

from parity.kernels.paged_mqa_logits_sm90 import (_cta_barrier, _ctx_of, _share, _share_segment,
                                                  _wait_for_previous_kernel)
from parity.kernels.paged_mqa_logits_sm90_ws import _load_partition

VPS = gl.constexpr(4)  # compute warpgroups (shares of the schedule) per program
LAUNCH_REGS = 96  # registers per thread at launch: 20 warps on a multiprocessor of 65536
COMPUTE_REGS = gl.constexpr(112)  # after setmaxnreg; 120 with the load warps at 24 ran 14-24 % slower (H200)
LOAD_REGS = gl.constexpr(32)


@gluon.jit
def _compute(VP: gl.constexpr, ctx_ptr, lens_ptr, out_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full, empty, q_full,
             q_empty, stride_or, max_model_len, n_tiles, tiles_per_seq, batch, sched_ptr, H: gl.constexpr,
             BLOCK_T: gl.constexpr, NUM_STAGES: gl.constexpr, PER_ROW: gl.constexpr):
    """Compute warpgroup ``VP``: each tile of its share as one product over both rows, then their epilogues."""
    N: gl.constexpr = 2 * H  # both rows' heads: the product's width
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, N, 32])
    rows = gl.arange(0, BLOCK_T, layout=gl.SliceLayout(1, mma))
    cols = gl.arange(0, N, layout=gl.SliceLayout(0, mma))
    row1 = cols[None, :] >= H  # the columns of row 1; a mask per register, which the compiler folds
    zero = gl.zeros([BLOCK_T, N], gl.float32, mma)  # the product's input, ignored (use_acc=False)
    lo, hi, b0, first, n_segments = _share(sched_ptr, ctx_ptr, batch, n_tiles, tiles_per_seq, max_model_len, BLOCK_T,
                                           True, True, 4, VPS, VP)
    ctx_next = _ctx_of(ctx_ptr, b0, 0, n_segments)
    c = 0  # tiles computed
    q_n = 0  # sequences computed
    for seg in range(0, n_segments):
        b, ctx, end, t_lo, t_hi, n, first = _share_segment(ctx_next, first, lo, hi, b0, seg, tiles_per_seq,
                                                            max_model_len, BLOCK_T, True)
        ctx_next = _ctx_of(ctx_ptr, b0, seg + 1, n_segments)
        if n > 0:
            row0 = (b * 2).to(gl.int32)
            out_b = out_ptr + (b * 2) * stride_or  # 64-bit: the logits may pass 2 GiB
            if PER_ROW:
                lim0 = gl.load(lens_ptr + row0)
                lim1 = gl.load(lens_ptr + row0 + 1)
            else:  # row i sees t < ctx - 1 + i
                lim0 = ctx - 1
                lim1 = ctx
            qs = VP * 2 + q_n % 2
            mbarrier.wait(q_full.index(qs), (q_n // 2) & 1)
            w = w_bufs.index(qs).reshape([N]).load(cols.type.layout)
            q_rows = q_bufs.index(qs)
            for j in range(0, n):
                slot = VP * NUM_STAGES + c % NUM_STAGES
                t = t_lo + j * BLOCK_T + rows
                mbarrier.wait(full.index(slot), (c // NUM_STAGES) & 1)
                acc = warpgroup_mma(k_bufs.index(slot), q_rows.permute((1, 0)), zero, use_acc=False, is_async=True)
                scale = s_bufs.index(slot).reshape([BLOCK_T]).load(rows.type.layout)
                done = warpgroup_mma_wait(0, deps=(acc,))
                _cta_barrier()  # the compute warps only: each is past its product's reads of the slot
                mbarrier.arrive(empty.index(slot))
                x = gl.maximum(done, 0.0) * w[None, :]
                l0 = gl.sum(gl.where(row1, 0.0, x), axis=1) * scale
                l1 = gl.sum(gl.where(row1, x, 0.0), axis=1) * scale
                keep = t < end
                gl.store(out_b + t, gl.where(t < lim0, l0, float("-inf")), mask=keep)
                gl.store(out_b + stride_or + t, gl.where(t < lim1, l1, float("-inf")), mask=keep)
                c += 1
            _cta_barrier()  # every warp is past its last product before the q buffer goes back
            mbarrier.arrive(q_empty.index(qs))
            q_n += 1


@gluon.jit
def paged_mqa_logits_sm90_wg4_kernel(
    q_desc, w_desc, k_desc, s_desc, ctx_ptr, lens_ptr, table_ptr, out_ptr,
    stride_tb, table_cols, stride_or, max_model_len, n_tiles, tiles_per_seq, batch, sched_ptr,
    H: gl.constexpr, D: gl.constexpr, BS: gl.constexpr, BLOCK_T: gl.constexpr, NUM_STAGES: gl.constexpr,
    PER_ROW: gl.constexpr, PDL: gl.constexpr,
):
    """The shares are read from ``sched_ptr``, always prepared (``TritonBackend.run`` prepares it for these
    calls): computed in each partition, they spilled the load warps' 32 registers (48 bytes under Triton 3.6,
    348 under 3.9)."""
    _wait_for_previous_kernel(PDL)
    gl.static_assert(BS % BLOCK_T == 0, "a key tile lies inside one cache block")
    k_bufs = gl.allocate_shared_memory(k_desc.dtype, [VPS * NUM_STAGES, BLOCK_T, D], k_desc.layout)
    s_bufs = gl.allocate_shared_memory(gl.float32, [VPS * NUM_STAGES, 1, BLOCK_T], s_desc.layout)
    q_bufs = gl.allocate_shared_memory(q_desc.dtype, [VPS * 2, 2 * H, D], q_desc.layout)
    w_bufs = gl.allocate_shared_memory(gl.float32, [VPS * 2, 2, H], w_desc.layout)
    full = gl.allocate_shared_memory(gl.int64, [VPS * NUM_STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [VPS * NUM_STAGES, 1], mbarrier.MBarrierLayout())
    q_full = gl.allocate_shared_memory(gl.int64, [VPS * 2, 1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [VPS * 2, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(VPS * NUM_STAGES):
        mbarrier.init(full.index(s), count=1)
        mbarrier.init(empty.index(s), count=1)
    for s in gl.static_range(VPS * 2):
        mbarrier.init(q_full.index(s), count=1)
        mbarrier.init(q_empty.index(s), count=1)
    # the partitions' arguments written out: Gluon 3.6 takes no starred tuple here, and a concatenated one loses
    # its constexprs
    gl.warp_specialize([
        (_compute, (0, ctx_ptr, lens_ptr, out_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full, empty, q_full, q_empty,
                    stride_or, max_model_len, n_tiles, tiles_per_seq, batch, sched_ptr, H, BLOCK_T, NUM_STAGES,
                    PER_ROW)),
        (_compute, (1, ctx_ptr, lens_ptr, out_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full, empty, q_full, q_empty,
                    stride_or, max_model_len, n_tiles, tiles_per_seq, batch, sched_ptr, H, BLOCK_T, NUM_STAGES,
                    PER_ROW)),
        (_compute, (2, ctx_ptr, lens_ptr, out_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full, empty, q_full, q_empty,
                    stride_or, max_model_len, n_tiles, tiles_per_seq, batch, sched_ptr, H, BLOCK_T, NUM_STAGES,
                    PER_ROW)),
        (_compute, (3, ctx_ptr, lens_ptr, out_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full, empty, q_full, q_empty,
                    stride_or, max_model_len, n_tiles, tiles_per_seq, batch, sched_ptr, H, BLOCK_T, NUM_STAGES,
                    PER_ROW)),
        (_load_partition, (q_desc, w_desc, k_desc, s_desc, ctx_ptr, table_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full,
                           empty, q_full, q_empty, stride_tb, table_cols, max_model_len, n_tiles, tiles_per_seq,
                           batch, sched_ptr, 2, H, D, BS, BLOCK_T, NUM_STAGES, True, True, VPS, 0)),
        (_load_partition, (q_desc, w_desc, k_desc, s_desc, ctx_ptr, table_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full,
                           empty, q_full, q_empty, stride_tb, table_cols, max_model_len, n_tiles, tiles_per_seq,
                           batch, sched_ptr, 2, H, D, BS, BLOCK_T, NUM_STAGES, True, True, VPS, 1)),
        (_load_partition, (q_desc, w_desc, k_desc, s_desc, ctx_ptr, table_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full,
                           empty, q_full, q_empty, stride_tb, table_cols, max_model_len, n_tiles, tiles_per_seq,
                           batch, sched_ptr, 2, H, D, BS, BLOCK_T, NUM_STAGES, True, True, VPS, 2)),
        (_load_partition, (q_desc, w_desc, k_desc, s_desc, ctx_ptr, table_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full,
                           empty, q_full, q_empty, stride_tb, table_cols, max_model_len, n_tiles, tiles_per_seq,
                           batch, sched_ptr, 2, H, D, BS, BLOCK_T, NUM_STAGES, True, True, VPS, 3)),
    ], [4, 4, 4, 1, 1, 1, 1], [COMPUTE_REGS, COMPUTE_REGS, COMPUTE_REGS, LOAD_REGS, LOAD_REGS, LOAD_REGS, LOAD_REGS])
