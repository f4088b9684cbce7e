"""The launch of the project's Gluon kernels for Hopper (``parity.kernels.paged_mqa_logits_sm90``, its
warp-specialized form ``paged_mqa_logits_sm90_ws`` and that form's four-warpgroup program at next_n 2 and 4,
``paged_mqa_logits_sm90_wg4``) for ``parity.backends.triton_kernels``: which form a call runs, its descriptors, constexprs and grid, and the
schedule a server prepares once per decode step. Which calls take these kernels at all is the backend's
``_sm90_unfit``."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from parity.backends.triton_inputs import table_and_lens
from parity.problem import layouts
from parity.problem.cases import IndexerInputs

# measurement probes of the sm90 kernels (PROBE 1-4 there), for parity.perf.kernel_study: wrong logits
SM90_PROBES = ("reads", "no-stores", "no-products", "one-product")


def sm90_ws_programs_per_sm(next_n: int, o: dict) -> int:
    """Programs per multiprocessor of the warp-specialized form under config ``o``: ``sm90_ws_ctas_per_sm``
    (``ctas_per_sm`` where None) at next_n <= 2; at next_n 4 ``ctas_per_sm``, at most 2 (each program's two q
    buffers of four rows and its key slots take 93 KB of shared memory; 2 programs leave its compute warps
    232 registers, where 3 spilled 220 bytes)."""
    if next_n > 2:
        return min(o["ctas_per_sm"], 2)
    return o["sm90_ws_ctas_per_sm"] or o["ctas_per_sm"]


def sm90_ws_stages(next_n: int, o: dict) -> int:
    """Key slots per program of the warp-specialized form: ``sm90_ws_stages`` (``num_stages`` where None) at
    next_n <= 2, ``num_stages`` at next_n 4."""
    if next_n > 2:
        return o["num_stages"]
    return o["sm90_ws_stages"] or o["num_stages"]


def sm90_warp_specialized(next_n: int, n_tiles: int, o: dict, sms: int) -> bool:
    """Whether a call the sm90 kernel takes runs in its warp-specialized form
    (``parity.kernels.paged_mqa_logits_sm90_ws``): at least ``sm90_ws_min_tiles`` tiles per program (with
    fewer its longer start cost more than it saved on the H200: B8-n2-ctx8192, 2.6 tiles per program)."""
    return n_tiles >= o["sm90_ws_min_tiles"] * sm90_ws_programs_per_sm(next_n, o) * sms


def sm90_form(next_n: int, n_tiles: int, o: dict, sms: int, batch: int) -> str | None:
    """Which form of the sm90 kernel runs a call of ``batch`` sequences it takes (``_sm90_unfit``) under config
    ``o``: 'ws', the warp-specialized one (``sm90_warp_specialized``, any next_n), or at next_n 2 and 4 'wg4',
    its four-warpgroup program (``sm90_wg4``, with ``balanced``, no probe and at least ``sm90_wg4_min_batch``
    sequences), else 'single', the single-partition one up to next_n ``sm90_max_next_n``, else None: the
    portable kernel. ``n_tiles`` counts ``max_model_len`` for every sequence: with a server's (163840) a small
    batch passes the warp-specialized form's bar whatever its real lengths, hence the batch bar of the
    four-warpgroup program, whose start costs more."""
    if sm90_warp_specialized(next_n, n_tiles, o, sms):
        wg4 = (o.get("sm90_wg4") and next_n in (2, 4) and o["balanced"] and not o.get("probe")
               and batch >= o.get("sm90_wg4_min_batch", 0))
        return "wg4" if wg4 else "ws"
    return "single" if next_n <= o["sm90_max_next_n"] else None


def shares_per_program(form: str, next_n: int) -> int:
    """Shares of the schedule a program of ``form`` takes at ``next_n``."""
    from parity.kernels.paged_mqa_logits_sm90_wg4 import shares

    return shares(next_n) if form == "wg4" else 1


@dataclass
class Prepared:
    """A call of ``TritonBackend.prepare``: its path and inputs, and where an sm90 kernel runs it, each
    program's share (int32 rows, ``SCHEDULE_STRIDE`` each; ``shares_per_program`` rows a program) for a grid
    of ``programs``, and the compile key of the unprepared launch that chose that grid (whose record of what
    fits a later ``prepare`` reads); else None, 0 and None."""
    path: str
    inputs: IndexerInputs
    schedule: torch.Tensor | None = None
    programs: int = 0
    key: tuple | None = None
    # the launch ``run_prepared`` planned, kept where ``launch_reusable``: (the buffer's key, (kernel, grid, args,
    # constexprs)); launched again while ``out`` is the same buffer
    launch: tuple | None = field(default=None, repr=False, compare=False)


def launch_reusable(inputs: IndexerInputs, path: str) -> bool:
    """Whether a planned launch stays right for later calls on these inputs: no tensor the plan hands the kernel
    is a copy of one of them (``sm90_launch`` copies a tensor that is not contiguous, and weights that are not
    16-byte aligned), so values written into them later are the values the kernel reads."""
    cache = inputs.kv_cache_preshuffled if path == "preshuffle" else inputs.kv_cache
    lens_2d = inputs.context_lens_2d
    return (cache is not None and cache.is_contiguous() and inputs.q_fp8.is_contiguous()
            and inputs.weights.is_contiguous() and inputs.weights.data_ptr() % 16 == 0
            and inputs.block_tables.stride(-1) == 1 and (lens_2d is None or lens_2d.is_contiguous()))


def buffer_key(out: torch.Tensor) -> tuple:
    """What a planned launch depends on in its output buffer: where it is and its geometry. The kept launch holds
    the buffer among its arguments, so while it is kept no other tensor can be given that address."""
    return out.data_ptr(), tuple(out.shape), tuple(out.stride()), out.dtype, str(out.device)


def _sm90_consts(inputs: IndexerInputs, cache: torch.Tensor, o: dict, form: str, scheduled: bool):
    """What a launch of ``form`` under config ``o`` compiles for and how its grid is chosen, without its
    descriptors: (constexprs, compile key, the batch's tiles, the config its grid is chosen from)."""
    from parity.kernels import paged_mqa_logits_sm90_wg4 as sm90_wg4
    from parity.kernels import paged_mqa_logits_sm90_ws as sm90_ws

    B, n, H, D = inputs.q_fp8.shape
    bs, block_t = cache.shape[1], o["block_t"]
    n_tiles = B * -(-inputs.max_model_len // block_t)
    consts = dict(NEXT_N=n, H=H, D=D, BS=bs, BLOCK_T=block_t, NUM_STAGES=o["num_stages"],
                  PER_ROW=inputs.context_lens_2d is not None, PDL=bool(o["pdl"]), BALANCED=bool(o["balanced"]),
                  PROBE=SM90_PROBES.index(o["probe"]) + 1 if o["probe"] else 0, SCHEDULED=scheduled, num_warps=4)
    if consts["PDL"]:
        consts["launch_pdl"] = True
    if form in ("ws", "wg4"):
        per_sm = sm90_ws_programs_per_sm(n, o) if form == "ws" else 1
        consts["maxnreg"] = sm90_ws.launch_maxnreg(per_sm) if form == "ws" else sm90_wg4.LAUNCH_REGS
        consts["NUM_STAGES"] = sm90_ws_stages(n, o)
        key = (str(inputs.device), f"sm90_{form}", *consts.items(), per_sm)
        if form != "ws":  # the split by real tile counts and a prepared schedule are its own; no probes
            consts = {k: v for k, v in consts.items() if k not in ("BALANCED", "PROBE", "SCHEDULED")}
        return consts, key, n_tiles, {**o, "ctas_per_sm": per_sm}
    if o["maxnreg"]:
        consts["maxnreg"] = o["maxnreg"]
    return consts, (str(inputs.device), "sm90", *consts.items(), o["ctas_per_sm"]), n_tiles, o


def sm90_grid(inputs: IndexerInputs, cache: torch.Tensor, o: dict, form: str, grid_of) -> tuple[int, tuple]:
    """(programs, compile key) of the unprepared launch of ``form`` (``sm90_launch``), without building its
    descriptors: what ``TritonBackend.prepare`` pins."""
    _, key, n_tiles, grid_o = _sm90_consts(inputs, cache, o, form, False)
    return grid_of(grid_o, key, n_tiles), key


def sm90_launch(inputs: IndexerInputs, out: torch.Tensor, cache: torch.Tensor, o: dict, form: str,
                prepared: Prepared | None, grid_of):
    """The Hopper kernel's (kernel, grid, args, constexprs, compile key) in ``form`` (``sm90_form``) under
    config ``o``: descriptors of the cache as rows of D key bytes and of q as rows of D bytes for its bulk
    copies; ``num_stages`` key tiles buffered, ``ctas_per_sm`` programs per multiprocessor (the ws form: its
    own, ``sm90_ws_programs_per_sm`` and ``sm90_ws_stages``; the wg4 form one a multiprocessor, its slots the ws
    form's: 2 a share at next_n 2 on the H200, ``num_stages`` at next_n 4); the fused path into float32 or bf16
    rows. The grid: ``grid_of(config, key, n_tiles)``, or with ``prepared`` its pinned grid and schedule
    (``SCHEDULED``); ``TritonBackend.prepare`` pins the grid without it (``sm90_grid``)."""
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor

    from parity.kernels import paged_mqa_logits_sm90 as sm90
    from parity.kernels import paged_mqa_logits_sm90_wg4 as sm90_wg4
    from parity.kernels import paged_mqa_logits_sm90_ws as sm90_ws

    B, n, H, D = inputs.q_fp8.shape
    cols, bs, block_t = inputs.max_model_len, cache.shape[1], o["block_t"]
    scheduled = prepared is not None and prepared.schedule is not None
    consts, key, n_tiles, grid_o = _sm90_consts(inputs, cache, o, form, scheduled)
    flat = cache.contiguous().view(-1)
    rows = flat.view(torch.float8_e4m3fn).view(-1, D)
    q_rows = inputs.q_fp8.contiguous().view(-1, D)
    tile = gl.NVMMASharedLayout.get_default_for([block_t, D], gl.float8e4nv)
    k_desc = GluonDescriptor(rows, list(rows.shape), [D, 1], [block_t, D], tile)
    q_desc = GluonDescriptor(q_rows, list(q_rows.shape), [D, 1], [H, D],
                             gl.NVMMASharedLayout.get_default_for([H, D], gl.float8e4nv))
    tiles_per_seq = -(-cols // block_t)
    table, lens = table_and_lens(inputs)
    schedule = prepared.schedule if scheduled else inputs.context_lens  # a pointer either way
    grid = prepared.programs if scheduled else grid_of(grid_o, key, n_tiles)
    if form in ("ws", "wg4"):
        f32 = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=2)
        srows = flat.view(torch.float32).view(-1, bs)  # the cache as rows of block_size floats
        s_desc = GluonDescriptor(srows, list(srows.shape), [bs, 1], [1, block_t], f32)
        weights = inputs.weights.contiguous()
        if weights.data_ptr() % 16:  # bulk copies read from 16-byte aligned addresses
            weights = weights.clone()
        w_desc = GluonDescriptor(weights, list(weights.shape), [H, 1], [n, H], f32)
        args = (q_desc, w_desc, k_desc, s_desc, inputs.context_lens, lens, table, out, table.stride(0),
                table.shape[1], out.stride(-2), cols, n_tiles, tiles_per_seq, B, schedule)
        kernel = {"ws": sm90_ws.paged_mqa_logits_sm90_ws_kernel, "wg4": sm90_wg4.paged_mqa_logits_sm90_wg4_kernel}[form]
        return kernel, (grid,), args, consts, key
    args = (q_desc, k_desc, flat.view(torch.float32), inputs.weights.contiguous(), inputs.context_lens, lens,
            table, out, table.stride(0), table.shape[1], out.stride(-2), cols, layouts.block_bytes(bs, D) // 4,
            bs * D // 4, n_tiles, tiles_per_seq, B, schedule)
    return sm90.paged_mqa_logits_sm90_kernel, (grid,), args, consts, key


def schedule_once(inputs: IndexerInputs, block_t: int, balanced: bool, programs: int) -> torch.Tensor:
    """Each of ``programs`` programs' share of a call (``paged_mqa_logits_sm90_schedule_kernel``: the code the
    kernels run themselves, so a prepared call's logits are the same bit for bit), as int32 rows of
    ``SCHEDULE_STRIDE`` for the kernels' ``SCHEDULED`` form on a grid of that size."""
    from parity.kernels.paged_mqa_logits_sm90 import SCHEDULE_STRIDE, paged_mqa_logits_sm90_schedule_kernel

    schedule = torch.zeros((programs, SCHEDULE_STRIDE.value), dtype=torch.int32, device=inputs.device)
    tiles_per_seq = -(-inputs.max_model_len // block_t)
    paged_mqa_logits_sm90_schedule_kernel[(programs,)](
        inputs.context_lens, schedule, inputs.batch, inputs.batch * tiles_per_seq, tiles_per_seq,
        inputs.max_model_len, BLOCK_T=block_t, BALANCED=balanced, num_warps=4)
    return schedule
