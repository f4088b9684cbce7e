"""The fused paged MQA logits kernel for NVIDIA Hopper at next_n 2 and 4, as one program per multiprocessor of
four compute warpgroups (Gluon): the same calls, formula and writes as ``paged_mqa_logits_sm90_ws`` at those
next_n with 64 heads of 128, with one m64n128k32 product per key tile over two speculative rows where that form
runs one m64n64k32 per row.

Why: the warp-specialized form runs 4 programs of 8 warps per multiprocessor at next_n 2 (its load warp padded
to a warpgroup), 64 registers each at launch, and ptxas refuses a product of 64 accumulators per thread under 90
(C7602). Its two products read each key tile from shared memory twice; a probe with one product a tile ran
4-8 % under DeepGEMM where the whole kernel ran 2-5 % over it (docs/h200-gap-probes.md section 11). At next_n
4 it runs 2 programs per multiprocessor, one compute warpgroup each, four products a tile one after the other.
Here one program of 20 warps takes the multiprocessor: 96 registers at launch, 112 for the compute warps, 32
for the load warps after ``setmaxnreg``.

At next_n 2 each of the four compute warpgroups and its own load warp (Triton packs the four one-warp
partitions into one warpgroup) is the warp-specialized form's program, renamed: share ``VP`` of the program's
``VPS`` (the split by real tile counts, prepared for ``VPS`` x the grid; the load warp is that form's
``_load_partition``), its own key slots, q and weight buffers and mbarriers. At next_n 4 the program takes two
shares, each a load warp and two compute warpgroups that read the same key slots: one computes rows 0 and 1 of
each tile, the other rows 2 and 3, and a slot goes back once both have arrived. Per tile: wait for the slot, one
product of the key tile against the two rows' q (``[2 x 64 heads, 128]``), wait for it, hand the slot back, then
relu, the weights (both rows', held in registers: 32 per thread) and the head sums of each row through masks the
compiler folds, and the two rows' stores, -inf from each row's own limit on.
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, warpgroup_mma, warpgroup_mma_wait

from parity.kernels.paged_mqa_logits_sm90 import (_cta_barrier, _ctx_of, _share, _share_segment,
                                                  _wait_for_previous_kernel)
from parity.kernels.paged_mqa_logits_sm90_ws import _load_partition

VPS = gl.constexpr(4)  # compute warpgroups per program; shares of the schedule at next_n 2
LAUNCH_REGS = 96  # registers per thread at launch: 20 warps on a multiprocessor of 65536
COMPUTE_REGS = gl.constexpr(112)  # after setmaxnreg; 120 with the load warps at 24 ran 14-24 % slower (H200)
LOAD_REGS = gl.constexpr(32)


def shares(next_n: int) -> int:
    """Shares of the schedule a program takes: one a compute warpgroup at next_n 2, one a pair at next_n 4."""
    if next_n not in (2, 4):
        raise ValueError(f"next_n must be 2 or 4 for the four-warpgroup program, got {next_n}")
    return VPS.value if next_n == 2 else VPS.value // 2


@gluon.jit
def _pair_operands(H: gl.constexpr, BLOCK_T: gl.constexpr):
    """In the layout of a ``[BLOCK_T, 2 x H]`` product over two rows (m64n128k32 instructions of one warpgroup):
    its token and column indices, the mask of the second row's columns (one per register, which the compiler
    folds), and the product's input, ignored (``use_acc=False``)."""
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 2 * H, 32])
    rows = gl.arange(0, BLOCK_T, layout=gl.SliceLayout(1, mma))
    cols = gl.arange(0, 2 * H, layout=gl.SliceLayout(0, mma))
    return rows, cols, cols[None, :] >= H, gl.zeros([BLOCK_T, 2 * H], gl.float32, mma)


@gluon.jit
def _pair_tile(k_bufs, s_bufs, full, empty, slot, phase, q_rows, zero, w, row1, t, lim0, lim1, end, out_b, stride_or):
    """One key tile of two speculative rows: once key slot ``slot`` completes ``phase``, one product of its keys
    against both rows' q (``q_rows``, ``[2 x H, D]``), the slot handed back once every compute warp is past it,
    then relu, the weights ``w`` and each row's head sum (``row1`` marks the second row's columns), times the
    tokens' scales, and the two rows' stores at tokens ``t``: -inf from each row's limit on, nothing from
    ``end``."""
    mbarrier.wait(full.index(slot), phase)
    acc = warpgroup_mma(k_bufs.index(slot), q_rows.permute((1, 0)), zero, use_acc=False, is_async=True)
    scale = s_bufs.index(slot).reshape([t.shape[0]]).load(t.type.layout)
    done = warpgroup_mma_wait(0, deps=(acc,))
    _cta_barrier()  # the compute warps only: each is past its product's reads of the slot
    mbarrier.arrive(empty.index(slot))
    x = gl.maximum(done, 0.0) * w[None, :]
    l0 = gl.sum(gl.where(row1, 0.0, x), axis=1) * scale
    l1 = gl.sum(gl.where(row1, x, 0.0), axis=1) * scale
    keep = t < end
    gl.store(out_b + t, gl.where(t < lim0, l0, float("-inf")), mask=keep)
    gl.store(out_b + stride_or + t, gl.where(t < lim1, l1, float("-inf")), mask=keep)


@gluon.jit
def _compute(VP: gl.constexpr, ROW0: gl.constexpr, ctx_ptr, lens_ptr, out_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full,
             empty, q_full, q_empty, stride_or, max_model_len, n_tiles, tiles_per_seq, batch, sched_ptr,
             NEXT_N: gl.constexpr, SHARES: gl.constexpr, H: gl.constexpr, BLOCK_T: gl.constexpr,
             NUM_STAGES: gl.constexpr, PER_ROW: gl.constexpr):
    """A compute warpgroup of share ``VP`` (of the program's ``SHARES``): each tile of the share as one product
    over the speculative rows ``ROW0`` and ``ROW0 + 1``, then their epilogues."""
    N: gl.constexpr = 2 * H  # both rows' heads: the product's width
    rows, cols, row1, zero = _pair_operands(H, BLOCK_T)
    lo, hi, b0, first, n_segments = _share(sched_ptr, ctx_ptr, batch, n_tiles, tiles_per_seq, max_model_len, BLOCK_T,
                                           True, True, 4, SHARES, VP)
    ctx_next = _ctx_of(ctx_ptr, b0, 0, n_segments)
    c = 0  # tiles computed
    q_n = 0  # sequences computed
    for seg in range(0, n_segments):
        b, ctx, end, t_lo, t_hi, n, first = _share_segment(ctx_next, first, lo, hi, b0, seg, tiles_per_seq,
                                                            max_model_len, BLOCK_T, True)
        ctx_next = _ctx_of(ctx_ptr, b0, seg + 1, n_segments)
        if n > 0:
            row0 = (b * NEXT_N + ROW0).to(gl.int32)
            out_b = out_ptr + (b * NEXT_N + ROW0) * stride_or  # 64-bit: the logits may pass 2 GiB
            if PER_ROW:
                lim0 = gl.load(lens_ptr + row0)
                lim1 = gl.load(lens_ptr + row0 + 1)
            else:  # row i sees t < ctx - NEXT_N + 1 + i
                lim0 = ctx - NEXT_N + 1 + ROW0
                lim1 = lim0 + 1
            qs = VP * 2 + q_n % 2
            mbarrier.wait(q_full.index(qs), (q_n // 2) & 1)
            w = w_bufs.index(qs).reshape([NEXT_N * H]).slice(ROW0 * H, N).load(cols.type.layout)
            q_rows = q_bufs.index(qs).slice(ROW0 * H, N)
            for j in range(0, n):
                _pair_tile(k_bufs, s_bufs, full, empty, VP * NUM_STAGES + c % NUM_STAGES, (c // NUM_STAGES) & 1,
                           q_rows, zero, w, row1, t_lo + j * BLOCK_T + rows, lim0, lim1, end, out_b, stride_or)
                c += 1
            _cta_barrier()  # every warp is past its last product before the q buffer goes back
            mbarrier.arrive(q_empty.index(qs))
            q_n += 1


@gluon.jit
def _loads(VP: gl.constexpr, q_desc, w_desc, k_desc, s_desc, ctx_ptr, table_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full,
           empty, q_full, q_empty, stride_tb, table_cols, max_model_len, n_tiles, tiles_per_seq, batch, sched_ptr,
           NEXT_N: gl.constexpr, SHARES: gl.constexpr, H: gl.constexpr, D: gl.constexpr, BS: gl.constexpr,
           BLOCK_T: gl.constexpr, NUM_STAGES: gl.constexpr):
    """Load warp ``VP``: the warp-specialized form's, for share ``VP`` of ``SHARES``; idle past the last share
    (at next_n 4 two of the four, where Triton would pad two one-warp partitions to a warpgroup anyway)."""
    if VP < SHARES:
        _load_partition(q_desc, w_desc, k_desc, s_desc, ctx_ptr, table_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full,
                        empty, q_full, q_empty, stride_tb, table_cols, max_model_len, n_tiles, tiles_per_seq, batch,
                        sched_ptr, NEXT_N, H, D, BS, BLOCK_T, NUM_STAGES, True, True, SHARES, VP)


@gluon.jit
def paged_mqa_logits_sm90_wg4_kernel(
    q_desc, w_desc, k_desc, s_desc, ctx_ptr, lens_ptr, table_ptr, out_ptr,
    stride_tb, table_cols, stride_or, max_model_len, n_tiles, tiles_per_seq, batch, sched_ptr,
    NEXT_N: gl.constexpr, H: gl.constexpr, D: gl.constexpr, BS: gl.constexpr, BLOCK_T: gl.constexpr,
    NUM_STAGES: gl.constexpr, PER_ROW: gl.constexpr, PDL: gl.constexpr,
):
    """The shares are read from ``sched_ptr``, always prepared (``TritonBackend.run`` prepares it for these
    calls): computed in each partition, they spilled the load warps' 32 registers (48 bytes under Triton 3.6,
    348 under 3.9)."""
    _wait_for_previous_kernel(PDL)
    gl.static_assert(BS % BLOCK_T == 0, "a key tile lies inside one cache block")
    gl.static_assert(NEXT_N == 2 or NEXT_N == 4, "next_n 2 or 4")
    P: gl.constexpr = VPS if NEXT_N == 2 else VPS // 2  # shares (``shares`` for the host): 2 warpgroups each at n4
    WGS: gl.constexpr = VPS // P  # compute warpgroups of a share: each releases its slots and q buffers
    k_bufs = gl.allocate_shared_memory(k_desc.dtype, [P * NUM_STAGES, BLOCK_T, D], k_desc.layout)
    s_bufs = gl.allocate_shared_memory(gl.float32, [P * NUM_STAGES, 1, BLOCK_T], s_desc.layout)
    q_bufs = gl.allocate_shared_memory(q_desc.dtype, [P * 2, NEXT_N * H, D], q_desc.layout)
    w_bufs = gl.allocate_shared_memory(gl.float32, [P * 2, NEXT_N, H], w_desc.layout)
    full = gl.allocate_shared_memory(gl.int64, [P * NUM_STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [P * NUM_STAGES, 1], mbarrier.MBarrierLayout())
    q_full = gl.allocate_shared_memory(gl.int64, [P * 2, 1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [P * 2, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(P * NUM_STAGES):
        mbarrier.init(full.index(s), count=1)
        mbarrier.init(empty.index(s), count=WGS)
    for s in gl.static_range(P * 2):
        mbarrier.init(q_full.index(s), count=1)
        mbarrier.init(q_empty.index(s), count=WGS)
    # compute warpgroup w takes share V<w>, rows R<w> and R<w> + 1: at next_n 2 share w, at next_n 4 share w // 2
    # and rows 2 * (w % 2); load warp w loads share w, where the program has one
    V0: gl.constexpr = 0
    R0: gl.constexpr = 0
    V1: gl.constexpr = 1 if NEXT_N == 2 else 0
    R1: gl.constexpr = 0 if NEXT_N == 2 else 2
    V2: gl.constexpr = 2 if NEXT_N == 2 else 1
    R2: gl.constexpr = 0
    V3: gl.constexpr = 3 if NEXT_N == 2 else 1
    R3: gl.constexpr = 0 if NEXT_N == 2 else 2
    # the partitions' arguments written out: Gluon 3.6 takes no starred tuple here, and a concatenated one loses
    # its constexprs
    gl.warp_specialize([
        (_compute, (V0, R0, ctx_ptr, lens_ptr, out_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full, empty, q_full,
                    q_empty, stride_or, max_model_len, n_tiles, tiles_per_seq, batch, sched_ptr, NEXT_N, P, H, BLOCK_T,
                    NUM_STAGES, PER_ROW)),
        (_compute, (V1, R1, ctx_ptr, lens_ptr, out_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full, empty, q_full,
                    q_empty, stride_or, max_model_len, n_tiles, tiles_per_seq, batch, sched_ptr, NEXT_N, P, H, BLOCK_T,
                    NUM_STAGES, PER_ROW)),
        (_compute, (V2, R2, ctx_ptr, lens_ptr, out_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full, empty, q_full,
                    q_empty, stride_or, max_model_len, n_tiles, tiles_per_seq, batch, sched_ptr, NEXT_N, P, H, BLOCK_T,
                    NUM_STAGES, PER_ROW)),
        (_compute, (V3, R3, ctx_ptr, lens_ptr, out_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full, empty, q_full,
                    q_empty, stride_or, max_model_len, n_tiles, tiles_per_seq, batch, sched_ptr, NEXT_N, P, H, BLOCK_T,
                    NUM_STAGES, PER_ROW)),
        (_loads, (0, q_desc, w_desc, k_desc, s_desc, ctx_ptr, table_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full,
                   empty, q_full, q_empty, stride_tb, table_cols, max_model_len, n_tiles, tiles_per_seq, batch,
                   sched_ptr, NEXT_N, P, H, D, BS, BLOCK_T, NUM_STAGES)),
        (_loads, (1, q_desc, w_desc, k_desc, s_desc, ctx_ptr, table_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full,
                   empty, q_full, q_empty, stride_tb, table_cols, max_model_len, n_tiles, tiles_per_seq, batch,
                   sched_ptr, NEXT_N, P, H, D, BS, BLOCK_T, NUM_STAGES)),
        (_loads, (2, q_desc, w_desc, k_desc, s_desc, ctx_ptr, table_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full,
                   empty, q_full, q_empty, stride_tb, table_cols, max_model_len, n_tiles, tiles_per_seq, batch,
                   sched_ptr, NEXT_N, P, H, D, BS, BLOCK_T, NUM_STAGES)),
        (_loads, (3, q_desc, w_desc, k_desc, s_desc, ctx_ptr, table_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full,
                   empty, q_full, q_empty, stride_tb, table_cols, max_model_len, n_tiles, tiles_per_seq, batch,
                   sched_ptr, NEXT_N, P, H, D, BS, BLOCK_T, NUM_STAGES)),
    ], [4, 4, 4, 1, 1, 1, 1], [COMPUTE_REGS, COMPUTE_REGS, COMPUTE_REGS, LOAD_REGS, LOAD_REGS, LOAD_REGS, LOAD_REGS])
