"""DeepGEMM's paged MQA logits (``deep_gemm.fp8_paged_mqa_logits`` with the schedule from
``deep_gemm.get_paged_mqa_logits_metadata``) as the ``fused`` path, when ``deep_gemm`` imports on
an NVIDIA GPU (sm90 / sm100). Otherwise every cell is skipped with the reason.

The documented call (DeepGEMM's csrc/apis/attention.hpp and tests)::

    schedule_meta = get_paged_mqa_logits_metadata(context_lens, block_kv, num_sms)
    logits = fp8_paged_mqa_logits(q, kv_cache, weights, context_lens, block_table,
                                  schedule_meta, max_context_len, clean_logits)

``q`` ``(B, next_n, H, D)`` e4m3fn, ``kv_cache`` ``(num_blocks, block_kv, 1, D + 4)`` uint8 in the
layout of SPEC section 1, ``weights`` ``(B * next_n, H)`` fp32. Releases differ in ``context_lens``:
older ones take ``(B,)`` and apply the causal rule themselves, newer ones require ``(B, next_n)``
holding each row's own valid length (``context_len - next_n + i + 1``). The newest name the function
``fp8_fp4_paged_mqa_logits`` and take ``q`` as ``(values, scales or None)``.

DeepGEMM allocates its output itself (with its own aligned row stride), so the ``out`` view only
receives a copy: the value and mask checks judge DeepGEMM, the out-of-bounds checks judge the copy.
"""
from __future__ import annotations

import importlib
import types

import torch

from parity.cases import IndexerInputs, valid_lengths

BLOCK_KV = (32, 64)  # block sizes get_paged_mqa_logits_metadata accepts (64 on sm90)


class DeepGemmBackend:
    name = "deepgemm"
    paths = ("fused",)
    device_types = ("cuda",)
    fp8_flavours = ("e4m3fn",)

    def __init__(self, module: types.ModuleType | None = None, reason: str | None = None):
        self.dg, self.reason = module, reason
        self.logits_fn, self.fp4_api = None, False
        if module is not None:
            if callable(getattr(module, "fp8_paged_mqa_logits", None)):
                self.logits_fn = module.fp8_paged_mqa_logits
            elif callable(getattr(module, "fp8_fp4_paged_mqa_logits", None)):
                self.logits_fn, self.fp4_api = module.fp8_fp4_paged_mqa_logits, True
            if self.logits_fn is None or not callable(getattr(module, "get_paged_mqa_logits_metadata", None)):
                self.reason = (f"deep_gemm at {getattr(module, '__file__', '?')} has no fp8_paged_mqa_logits / "
                               "get_paged_mqa_logits_metadata")
        self.context_lens_2d: bool | None = None  # learnt on the first call

    def unsupported(self, path: str, inputs: IndexerInputs) -> str | None:
        if self.reason:
            return self.reason
        if path not in self.paths:
            return f"DeepGEMM has no {path} path (its fused kernel reduces heads in registers)"
        if inputs.device.type != "cuda" or getattr(torch.version, "hip", None):
            return f"DeepGEMM runs on NVIDIA GPUs only, not on {inputs.device.type}"
        if inputs.q_fp8.dtype != torch.float8_e4m3fn:
            return "DeepGEMM takes fp8 e4m3fn only (e4m3fnuz is an AMD format)"
        if inputs.block_size not in BLOCK_KV:
            return f"DeepGEMM's paged kernel takes block_kv in {BLOCK_KV}, got block_size {inputs.block_size}"
        return None

    def _num_sms(self, device: torch.device) -> int:
        if callable(getattr(self.dg, "get_num_sms", None)):
            return int(self.dg.get_num_sms())
        return torch.cuda.get_device_properties(device).multi_processor_count

    def _context_lens(self, inputs: IndexerInputs, two_d: bool) -> torch.Tensor:
        if not two_d:
            return inputs.context_lens.contiguous()
        return valid_lengths(inputs.context_lens, inputs.next_n).to(torch.int32).view(-1, inputs.next_n).contiguous()

    def _schedule(self, inputs: IndexerInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Metadata for this batch; tries the 2-D context_lens of newer releases first, then 1-D."""
        order = [self.context_lens_2d] if self.context_lens_2d is not None else [True, False]
        sms = self._num_sms(inputs.device)
        last = None
        for two_d in order:
            lens = self._context_lens(inputs, two_d)
            try:
                meta = self.dg.get_paged_mqa_logits_metadata(lens, inputs.block_size, sms)
            except (RuntimeError, TypeError, ValueError) as exc:
                last = exc
                continue
            self.context_lens_2d = two_d
            return lens, meta
        raise RuntimeError(f"get_paged_mqa_logits_metadata rejected both 2-D and 1-D context_lens: {last}")

    def run(self, path: str, inputs: IndexerInputs, out: torch.Tensor) -> None:
        lens, meta = self._schedule(inputs)
        q = (inputs.q_fp8, None) if self.fp4_api else inputs.q_fp8
        logits = self.logits_fn(q, inputs.kv_cache, inputs.weights, lens, inputs.block_tables, meta,
                                inputs.max_model_len, True)
        if tuple(logits.shape) != tuple(out.shape):
            raise ValueError(f"deep_gemm returned logits of shape {tuple(logits.shape)}; expected "
                             f"{tuple(out.shape)} (B * next_n, max_model_len)")
        out.copy_(logits)

    def describe(self) -> dict:
        info = {"name": self.name}
        if self.dg is not None:
            info.update(origin=getattr(self.dg, "__file__", None), version=getattr(self.dg, "__version__", None),
                        function=getattr(self.logits_fn, "__name__", None), q_as_tuple=self.fp4_api,
                        context_lens_2d=self.context_lens_2d,
                        output="allocated by DeepGEMM, copied into the harness's view")
        if self.reason:
            info["unavailable"] = self.reason
        return info


def make_backend(module: types.ModuleType | None = None) -> DeepGemmBackend:
    """``module`` stands in for ``deep_gemm`` (tests); by default it is imported, and an import failure
    becomes the reason every cell is skipped."""
    if module is not None:
        return DeepGemmBackend(module)
    try:
        return DeepGemmBackend(importlib.import_module("deep_gemm"))
    except Exception as exc:  # ImportError, or a CUDA/JIT failure at import
        return DeepGemmBackend(None, f"deep_gemm not importable: {type(exc).__name__}: {exc}")
