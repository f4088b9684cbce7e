"""The launch of the portable Triton kernel, ``parity.kernels.paged_mqa_logits`` (any Triton target, and the
CPU under the interpreter), for the Triton backend (``triton_kernels.TritonBackend``): how q and the keys are
fed to the dot (``UPCASTS``), whether key tiles come by the bulk tensor copy engine, and the constexprs."""
from __future__ import annotations

import torch
import triton

from parity.backends.triton_inputs import table_and_lens
from parity.problem import layouts
from parity.problem.cases import IndexerInputs

UPCASTS = {"fp8": 0, "fp16": 1, "fp32": 2, "decode": 3}
EXP_BIAS = {torch.float8_e4m3fn: 7, torch.float8_e4m3fnuz: 8}

# The batch sizes whose schedule (``balanced``) a program computes in registers: every context length loaded
# and summed by each program.
MAX_BALANCED_BATCH = 4096

# A program loads q and the weights of each sequence it enters (16 KB at next_n 2, 64 heads): where the
# tiles would give each of ctas_per_sm programs per SM fewer than this many, one program fewer per SM
# runs faster. H100, next_n 2, ctx 8192, benchmark rotation (programs per SM 3 / 2 / 1, us): B4 (1.3 tiles
# per program at 3) 5.94 / 5.54 / 5.90; B8 (2.6) 8.86 / 8.40 / 9.46; B16 (5.2) 12.26 / 12.12 / 14.42.
MIN_TILES_PER_PROGRAM = 4


def ctas_per_sm(o: dict, n_tiles: int, sms: int) -> int:
    """Programs per multiprocessor of config ``o``: ``ctas_per_sm``, one fewer where each would get fewer than
    ``MIN_TILES_PER_PROGRAM`` tiles."""
    per_sm = o["ctas_per_sm"]
    return per_sm - 1 if per_sm > 1 and n_tiles < MIN_TILES_PER_PROGRAM * per_sm * sms else per_sm


def _fp8_dot_ok(device: torch.device, fp8: torch.dtype) -> bool:
    """Whether tl.dot takes this fp8 flavour natively on ``device``."""
    if device.type != "cuda":
        return False
    props = torch.cuda.get_device_properties(device)
    if torch.version.hip:
        arch = getattr(props, "gcnArchName", "")
        return (arch.startswith("gfx94") and fp8 == torch.float8_e4m3fnuz) or (
            arch.startswith("gfx95") and fp8 == torch.float8_e4m3fn)
    return (props.major, props.minor) >= (8, 9) and fp8 == torch.float8_e4m3fn


def upcast_code(asked: str, inputs: IndexerInputs, interpreted: bool) -> int:
    """The kernel's ``UPCAST`` for option ``upcast`` (``asked``: 'auto' or a key of ``UPCASTS``)."""
    no_type = (inputs.q_fp8.dtype == torch.float8_e4m3fnuz and inputs.device.type == "cuda"
               and not torch.version.hip)  # Triton on NVIDIA has no e4m3fnuz type at all
    if asked != "auto":
        code = UPCASTS[asked]
        return UPCASTS["decode"] if no_type and code in (UPCASTS["fp8"], UPCASTS["fp16"]) else code
    if interpreted:
        return UPCASTS["fp32"]
    if _fp8_dot_ok(inputs.device, inputs.q_fp8.dtype):
        return UPCASTS["fp8"]
    # no native fp8 type or load for this flavour on this target: decode the bits
    return UPCASTS["decode"]


def tma_ok(device: torch.device, interpreted: bool, cache: torch.Tensor, block_t: int) -> bool:
    """Whether the bulk tensor copy can fetch this cache's key tiles and scales: NVIDIA compute capability 9.0
    or later (or the interpreter), a tile inside one block, whole rows of D bytes and of block_size floats
    per block (``triton_configs`` describes the two views), 16-byte aligned rows and base."""
    _, bs, _, width = cache.shape
    D = width - layouts.SCALE_BYTES
    if device.type == "cuda":
        if torch.version.hip or torch.cuda.get_device_properties(device).major < 9:
            return False
    elif not interpreted:
        return False
    return (bs % block_t == 0 and (bs * width) % D == 0 and D % 16 == 0 and D <= 256 and bs % 4 == 0
            and block_t <= 256 and cache.data_ptr() % 16 == 0)


def descriptors(keys: torch.Tensor, scales: torch.Tensor, bs: int, D: int, block_t: int):
    """The cache as rows of D key bytes (a tile is BLOCK_T rows) and as rows of block_size scales (a tile's
    scales are BLOCK_T floats of one row)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    rows = keys.view(-1, D)
    srows = scales.view(-1, bs)
    return (TensorDescriptor(rows, list(rows.shape), [D, 1], [block_t, D]),
            TensorDescriptor(srows, list(srows.shape), [bs, 1], [1, block_t]))


def portable_launch(path: str, inputs: IndexerInputs, out: torch.Tensor, cache: torch.Tensor, o: dict, upcast: int,
                    interpreted: bool, sms: int, grid_of):
    """(kernel, grid, positional arguments, constexprs, key) of one call with config ``o`` (the backend's
    options merged in) on ``cache`` (plain or preshuffled); ``grid_of(o, key, n_tiles)`` is the backend's
    count of programs."""
    B, n, H, D = inputs.q_fp8.shape
    cols = inputs.max_model_len
    bs = cache.shape[1]
    fp8 = inputs.q_fp8.dtype
    as_dtype = torch.uint8 if upcast == UPCASTS["decode"] else fp8
    flat = cache.contiguous().view(-1)
    keys = flat.view(as_dtype)
    scales = flat.view(torch.float32)  # scales of block p start at float index p*block_bytes/4 + bs*D/4
    q = inputs.q_fp8.contiguous().view(as_dtype)
    table, lens = table_and_lens(inputs)
    tiles_per_seq = triton.cdiv(cols, o["block_t"])
    n_tiles = B * tiles_per_seq
    stage1 = path == "stage1"
    np2, block_h = triton.next_power_of_2(n), max(16, triton.next_power_of_2(H))
    per_sm = ctas_per_sm(o, n_tiles, sms)
    # bulk copies where they paid on the GPU the config was measured on: enough tiles per program for the
    # deeper ramp, and at most tma_max_next_n rows (with more, two dots per tile bind before the copies)
    tma = (bool(o["tma"]) and n <= o["tma_max_next_n"] and n_tiles >= o["tma_min_tiles"] * per_sm * sms
           and tma_ok(inputs.device, interpreted, cache, o["block_t"]))
    cuda = inputs.device.type == "cuda" and not interpreted and not torch.version.hip
    consts = dict(
        NEXT_N=n, H=H, BLOCK_H=block_h, D=D, BS=bs, BLOCK_T=o["block_t"],
        STAGE1=stage1, PRESHUFFLE=path == "preshuffle", UPCAST=upcast,
        FLAT=o["flat"] and path == "preshuffle" and bs >= o["block_t"],
        EXP_BIAS=EXP_BIAS[fp8], NP=np2, NUM_STAGES=o["num_stages"],
        GROUPS=2 if np2 > 1 and np2 * block_h > o["max_dot_n"] else 1,
        PER_ROW=inputs.context_lens_2d is not None,
        TMA=tma, PDL=bool(o["pdl"]) and cuda,
        BLOCK_B=triton.next_power_of_2(B) if o["balanced"] and B <= MAX_BALANCED_BATCH else 0,
        num_warps=o["num_warps"], num_stages=o["num_stages"])
    if consts["PDL"]:
        consts["launch_pdl"] = True
    # a register cap, so that ctas_per_sm programs fit on a multiprocessor; on the fused path with one dot
    # per tile only: elsewhere 128 spilled (Triton 3.6, sm_90a: stage1 248 bytes, next_n 4 196, preshuffle 20)
    if o["maxnreg"] and cuda and path == "fused" and consts["GROUPS"] == 1:
        consts["maxnreg"] = o["maxnreg"]
    descs = descriptors(keys, scales, bs, D, o["block_t"]) if tma else (None, None)
    key = (str(inputs.device), *consts.items())
    args = (q, keys, scales, *descs, inputs.weights.contiguous(), inputs.context_lens, lens, table, out,
            table.stride(0), table.shape[1], out.stride(0) if stage1 else 0, out.stride(-2), cols,
            layouts.block_bytes(bs, D), bs * D // 4, n_tiles, tiles_per_seq, B)
    from parity.kernels.paged_mqa_logits import paged_mqa_logits_kernel

    return paged_mqa_logits_kernel, (grid_of(o, key, n_tiles),), args, consts, key

