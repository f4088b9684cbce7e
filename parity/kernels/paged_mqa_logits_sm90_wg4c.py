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
second sequence's right after its first tile, as every load warp of that form does). A q buffer goes back
once all four warpgroups have arrived, each once per sequence with tiles in the share, including a sequence
where it computes none: each waits for every q so that no arrival counts towards the wrong phase. The
partitions are the four-warpgroup program's compute warpgroup (``_compute``) and the warp-specialized form's
load warp (``_load_partition``), each at turn ``W`` of 4 (``TURN``, ``TURNS``).
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier

from parity.kernels.paged_mqa_logits_sm90 import _wait_for_previous_kernel
from parity.kernels.paged_mqa_logits_sm90_wg4 import COMPUTE_REGS, LOAD_REGS, _compute
from parity.kernels.paged_mqa_logits_sm90_ws import _load_partition

WGS = gl.constexpr(4)  # compute warpgroups, each taking every fourth tile of the share


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
        (_compute, (0, 0, ctx_ptr, lens_ptr, out_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full, empty, q_full, q_empty,
                    stride_or, max_model_len, n_tiles, tiles_per_seq, batch, sched_ptr, NEXT_N, 1, H, BLOCK_T,
                    NUM_STAGES, PER_ROW, 0, WGS)),
        (_compute, (0, 0, ctx_ptr, lens_ptr, out_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full, empty, q_full, q_empty,
                    stride_or, max_model_len, n_tiles, tiles_per_seq, batch, sched_ptr, NEXT_N, 1, H, BLOCK_T,
                    NUM_STAGES, PER_ROW, 1, WGS)),
        (_compute, (0, 0, ctx_ptr, lens_ptr, out_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full, empty, q_full, q_empty,
                    stride_or, max_model_len, n_tiles, tiles_per_seq, batch, sched_ptr, NEXT_N, 1, H, BLOCK_T,
                    NUM_STAGES, PER_ROW, 2, WGS)),
        (_compute, (0, 0, ctx_ptr, lens_ptr, out_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full, empty, q_full, q_empty,
                    stride_or, max_model_len, n_tiles, tiles_per_seq, batch, sched_ptr, NEXT_N, 1, H, BLOCK_T,
                    NUM_STAGES, PER_ROW, 3, WGS)),
        (_load_partition, (q_desc, w_desc, k_desc, s_desc, ctx_ptr, table_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full,
                           empty, q_full, q_empty, stride_tb, table_cols, max_model_len, n_tiles, tiles_per_seq,
                           batch, sched_ptr, NEXT_N, H, D, BS, BLOCK_T, NUM_STAGES, True, True, 1, 0, 0, WGS)),
        (_load_partition, (q_desc, w_desc, k_desc, s_desc, ctx_ptr, table_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full,
                           empty, q_full, q_empty, stride_tb, table_cols, max_model_len, n_tiles, tiles_per_seq,
                           batch, sched_ptr, NEXT_N, H, D, BS, BLOCK_T, NUM_STAGES, True, True, 1, 0, 1, WGS)),
        (_load_partition, (q_desc, w_desc, k_desc, s_desc, ctx_ptr, table_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full,
                           empty, q_full, q_empty, stride_tb, table_cols, max_model_len, n_tiles, tiles_per_seq,
                           batch, sched_ptr, NEXT_N, H, D, BS, BLOCK_T, NUM_STAGES, True, True, 1, 0, 2, WGS)),
        (_load_partition, (q_desc, w_desc, k_desc, s_desc, ctx_ptr, table_ptr, q_bufs, w_bufs, k_bufs, s_bufs, full,
                           empty, q_full, q_empty, stride_tb, table_cols, max_model_len, n_tiles, tiles_per_seq,
                           batch, sched_ptr, NEXT_N, H, D, BS, BLOCK_T, NUM_STAGES, True, True, 1, 0, 3, WGS)),
    ], [4, 4, 4, 1, 1, 1, 1], [COMPUTE_REGS, COMPUTE_REGS, COMPUTE_REGS, LOAD_REGS, LOAD_REGS, LOAD_REGS, LOAD_REGS])
