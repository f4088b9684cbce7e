"""vLLM's indexer ops, when ``vllm`` imports on a CUDA device:

* ``fused``: ``vllm.utils.deep_gemm.fp8_paged_mqa_logits`` with ``get_paged_mqa_logits_metadata``
  (vLLM's wrapper around DeepGEMM, the call its DeepSeek-V3.2 indexer makes).
* :meth:`VllmBackend.topk_decode`: the decode top-k consumer
  ``torch.ops._C.top_k_per_row_decode(logits, next_n, seq_lens, topk_indices, num_rows, stride0,
  stride1[, topk_tokens])`` (SPEC section 6). Strides are explicit, so it reads padded views; older
  builds have no ``topk_tokens`` argument and select 2048. Without vLLM installed, the same op can be
  built from a vLLM source tree: ``parity.backends.vllm_topk_ext``.

Anything missing becomes the reason the cells are skipped.
"""
from __future__ import annotations

import importlib
import types

import torch

from parity.backends.deepgemm import DeepGemmBackend
from parity.backends.vllm_topk_ext import decode_topk


class VllmBackend(DeepGemmBackend):
    name = "vllm"

    def __init__(self, deep_gemm_utils=None, c_ops=None, reason: str | None = None):
        super().__init__(deep_gemm_utils, reason)
        if deep_gemm_utils is not None and self.reason:
            self.reason = self.reason.replace("deep_gemm at", "vllm.utils.deep_gemm at")
        self.ops = c_ops
        self.topk_reason = reason or (None if c_ops is not None and hasattr(c_ops, "top_k_per_row_decode")
                                      else "vllm build has no torch.ops._C.top_k_per_row_decode")

    def topk_decode(self, logits: torch.Tensor, context_lens: torch.Tensor, next_n: int, k: int) -> torch.Tensor:
        """int32 ``(rows, k)`` indices chosen by vLLM's op, read through ``logits``' own strides."""
        if self.topk_reason:
            raise RuntimeError(self.topk_reason)
        return decode_topk(self.ops.top_k_per_row_decode, logits, context_lens, next_n, k)

    def describe(self) -> dict:
        info = super().describe()
        info["name"] = self.name
        info["top_k_per_row_decode"] = self.topk_reason or "available"
        if self.vllm_version:
            info["vllm"] = self.vllm_version
        return info

    vllm_version: str | None = None


def make_backend(deep_gemm_utils: types.ModuleType | None = None, c_ops=None) -> VllmBackend:
    """Fakes may be passed for both (tests); by default ``vllm.utils.deep_gemm`` and
    ``torch.ops._C`` are used after importing ``vllm``'s custom ops."""
    if deep_gemm_utils is not None or c_ops is not None:
        return VllmBackend(deep_gemm_utils, c_ops, None if deep_gemm_utils is not None else "no deep_gemm utils given")
    try:
        vllm = importlib.import_module("vllm")
        importlib.import_module("vllm._custom_ops")  # registers torch.ops._C
        utils = importlib.import_module("vllm.utils.deep_gemm")
    except Exception as exc:
        return VllmBackend(None, None, f"vllm not importable: {type(exc).__name__}: {exc}")
    backend = VllmBackend(utils, getattr(torch.ops, "_C", None))
    backend.vllm_version = getattr(vllm, "__version__", None)
    return backend
