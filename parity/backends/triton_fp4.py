"""The launch of the FP4 (MXFP4) kernel, ``parity.kernels.paged_mqa_logits_fp4``, for the Triton backend
(``triton_kernels.TritonBackend``). The fp8 kernel's config gives its tile, warps and key stages; it takes no
TMA, PDL or register cap. bf16 operands on a GPU (exact, see the kernel module), fp32 under the interpreter
or when ``upcast='fp32'``."""
from __future__ import annotations

import torch
import triton

from parity.backends.triton_inputs import table_and_lens
from parity.problem import layouts, mxfp4
from parity.problem.cases import IndexerInputs


def fp4_launch(path: str, inputs: IndexerInputs, out: torch.Tensor, o: dict, interpreted: bool, grid_of):
    """(kernel, grid, positional arguments, constexprs, key) of one call with config ``o`` (the backend's
    options merged in); ``grid_of(o, key, n_tiles)`` is the backend's count of programs."""
    if path == "preshuffle":
        raise ValueError("the MXFP4 cache has no preshuffled layout here (paths: stage1, fused)")
    B, n, H = inputs.q_fp8.shape[:3]
    D, cols = inputs.head_dim, inputs.max_model_len
    cache = inputs.kv_cache
    layouts.check_kv_cache(cache)
    bs = cache.shape[1]
    flat = cache.contiguous().view(-1)
    table, lens = table_and_lens(inputs)
    tiles_per_seq = triton.cdiv(cols, o["block_t"])
    n_tiles = B * tiles_per_seq
    stage1 = path == "stage1"
    np2, block_h = triton.next_power_of_2(n), max(16, triton.next_power_of_2(H))
    fp32 = interpreted or o["upcast"] == "fp32"
    consts = dict(
        NEXT_N=n, H=H, BLOCK_H=block_h, D=D, BS=bs, BLOCK_T=o["block_t"], STAGE1=stage1,
        UPCAST=2 if fp32 else 1, NP=np2, NUM_STAGES=o["num_stages"],
        GROUPS=2 if np2 > 1 and np2 * block_h > o["max_dot_n"] else 1,
        PER_ROW=inputs.context_lens_2d is not None, num_warps=o["num_warps"], num_stages=o["num_stages"])
    key = (str(inputs.device), "mxfp4", *consts.items())
    args = (inputs.q_fp8.contiguous(), inputs.q_sf.contiguous(), flat, flat.view(torch.int32),
            inputs.weights.contiguous(), inputs.context_lens, lens, table, out, table.stride(0), table.shape[1],
            out.stride(0) if stage1 else 0, out.stride(-2), cols, mxfp4.block_bytes(bs, D), bs * (D // 2) // 4,
            n_tiles, tiles_per_seq)
    from parity.kernels.paged_mqa_logits_fp4 import paged_mqa_logits_fp4_kernel

    return paged_mqa_logits_fp4_kernel, (grid_of(o, key, n_tiles),), args, consts, key
