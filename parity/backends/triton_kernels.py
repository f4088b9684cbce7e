"""The project's own Triton kernels as a backend: paths stage1, fused and preshuffle on any Triton target
(NVIDIA, AMD) and on the CPU through the Triton interpreter (``TRITON_INTERPRET=1``)."""
from __future__ import annotations

import math
import os

import torch

from parity import layouts
from parity.backends.base import PATHS, SimpleBackend
from parity.cases import IndexerInputs

# Triton picks interpreter or compiler when a kernel is decorated, i.e. when this module is imported.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

UPCASTS = {"fp8": 0, "fp16": 1, "fp32": 2}


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


def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


class TritonBackend(SimpleBackend):
    """Options (for tuning): ``block_t`` tokens per tile, ``span`` tokens per program (0: chosen from the
    shape), ``num_warps``, ``num_stages``, ``upcast`` ('auto', 'fp8', 'fp16', 'fp32')."""

    def __init__(self, block_t: int = 64, span: int = 0, num_warps: int = 4, num_stages: int = 3,
                 upcast: str = "auto"):
        import triton

        super().__init__(name="triton", info={"triton": triton.__version__, "interpreted": INTERPRETED})
        if block_t < 16 or block_t & (block_t - 1):
            raise ValueError(f"block_t must be a power of two >= 16, got {block_t}")
        if span and (span < block_t or span % block_t):
            raise ValueError(f"span must be 0 or a multiple of block_t ({block_t}), got {span}")
        if upcast != "auto" and upcast not in UPCASTS:
            raise ValueError(f"upcast must be 'auto' or one of {sorted(UPCASTS)}, got {upcast!r}")
        self.block_t, self.span, self.num_warps, self.num_stages, self.upcast = (
            block_t, span, num_warps, num_stages, upcast)
        self.info.update(block_t=block_t, span=span, num_warps=num_warps, num_stages=num_stages, upcast=upcast)

    def unsupported(self, path: str, inputs: IndexerInputs) -> str | None:
        if inputs.device.type == "cpu" and not INTERPRETED:
            return "triton runs on cpu only under TRITON_INTERPRET=1 (set before parity.backends.triton_kernels is imported)"
        return super().unsupported(path, inputs)

    def _upcast(self, inputs: IndexerInputs) -> int:
        if self.upcast != "auto":
            return UPCASTS[self.upcast]
        if INTERPRETED:
            return UPCASTS["fp32"]
        return UPCASTS["fp8"] if _fp8_dot_ok(inputs.device, inputs.q_fp8.dtype) else UPCASTS["fp16"]

    def _span(self, inputs: IndexerInputs) -> int:
        if self.span:
            return self.span
        # Enough programs to fill the chip a few times over; longer spans load q less often.
        tokens = inputs.batch * inputs.max_model_len
        want = max(1, tokens // (4 * _num_sms(inputs.device)))
        span = 1 << max(0, math.ceil(math.log2(want)))
        return max(self.block_t, min(span, 4096))

    def run(self, path: str, inputs: IndexerInputs, out: torch.Tensor) -> None:
        from parity.kernels.paged_mqa_logits import paged_mqa_logits_kernel

        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        B, n, H, D = inputs.q_fp8.shape
        rows, cols = B * n, inputs.max_model_len
        want = (H, rows, cols) if path == "stage1" else (rows, cols)
        if tuple(out.shape) != want or out.dtype != torch.float32 or out.stride(-1) != 1:
            raise ValueError(f"out must be float32 {want} with stride(-1) == 1, got {out.dtype} "
                             f"{tuple(out.shape)} strides {out.stride()}")
        cache = inputs.kv_cache_preshuffled if path == "preshuffle" else inputs.kv_cache
        if cache is None:
            raise ValueError("preshuffle needs inputs.kv_cache_preshuffled (block_size a multiple of 16)")
        layouts.check_kv_cache(cache)
        bs = cache.shape[1]
        flat = cache.contiguous().view(-1)
        keys = flat.view(inputs.q_fp8.dtype)
        scales = flat.view(torch.float32)  # scales of block p start at float index p*block_bytes/4 + bs*D/4
        table = inputs.block_tables
        if table.stride(-1) != 1:
            table = table.contiguous()
        span = self._span(inputs)
        stage1 = path == "stage1"
        grid = (triton.cdiv(cols, span), B)
        paged_mqa_logits_kernel[grid](
            inputs.q_fp8.contiguous(), keys, scales, inputs.weights.contiguous(), inputs.context_lens, table, out,
            table.stride(0), out.stride(0) if stage1 else 0, out.stride(-2), cols,
            layouts.block_bytes(bs, D), bs * D // 4,
            NEXT_N=n, H=H, BLOCK_H=max(16, triton.next_power_of_2(H)), D=D, BS=bs,
            BLOCK_T=self.block_t, SPAN=span, STAGE1=stage1, PRESHUFFLE=path == "preshuffle",
            UPCAST=self._upcast(inputs), num_warps=self.num_warps, num_stages=self.num_stages,
        )


import triton  # noqa: E402  (after INTERPRETED is read; the kernel module imports it too)


def make_backend(**options) -> TritonBackend:
    return TritonBackend(**options)
