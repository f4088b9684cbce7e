"""aiter's FlyDSL FP4 indexer kernel (ROCm/aiter #4028, ``aiter.ops.flydsl``) as the ``fused`` path of MXFP4
cells (``--backend aiter:fp4``). It issues CDNA4's scaled-MFMA FP4 instructions, so it runs on gfx950
(MI355X) only: elsewhere every cell skips with "needs gfx950".

Two releases of the call are known (others are refused with the parameters found)::

    flydsl_pa_mqa_logits_fp4(q_fp4, q_scale, kv_cache, kv_scale, block_tables, weights, context_lens,
                             max_seq_len, *, weight_scale=1.0, next_n=1, block_k=256, kv_block_size=64,
                             num_warps=4, parallel_unit_num=512, out=None, cta_info=None, total_ctas=None,
                             stream=None)
    flydsl_pa_mqa_logits_fp4_decode(q_fp4, q_scale, kv_cache, kv_scale, block_tables, weights,
                                    context_lens, max_seq_len, *, next_n_max, cu_seq_q=None, ...)

The first takes q ``(B, next_n, H, D/2)``, the second ``(B * next_n, H, D/2)``. Its layouts are not the
suite's block-planar cache; the adapter writes them from the kernel's addressing (``K_TILES = D / 128``,
four 32-element chunks per tile):

* ``kv_cache`` uint8 ``(num_blocks, K_TILES, 4, block_size, 16)``: the 16 bytes of token t's chunk c of
  tile kt (packed elements ``kt * 128 + c * 32 ...``, low nibble first);
* ``kv_scale`` uint8 ``(num_blocks, K_TILES, 4, block_size)``: token t's UE8M0 byte of chunk c at
  ``(t % 16) * (block_size / 16) + t // 16``, so that one dword holds the four 16-token tiles' scales a
  warp reads at once (the layout #4028 fixed in its cache writer);
* ``q_scale`` uint8 ``(..., K_TILES, 4, 16, QS_PAD)``, ``QS_PAD = ceil(H / 64) * 4``: head
  ``16 * mi + m``'s byte of chunk c at ``[kt, c, m, mi]``;
* ``weights`` bf16 (the suite's FP4 weights are bf16-representable: nothing is lost), ``context_lens``
  int32 ``(B,)`` with the causal rule, ``out`` float32 ``(B * next_n, max_seq_len)`` honouring
  ``stride(0)``: the harness's own guarded view, so aiter's stores are judged directly.

What the kernel takes: H a multiple of 16 up to 128, D a multiple of 128, ``kv_block_size`` 64 (its packed
scale load assumes four 16-token tiles of one block per warp), float32 logits.
"""
from __future__ import annotations

import importlib
import inspect
import math
import types

import torch

from parity.problem import mxfp4
from parity.problem.cases import IndexerInputs

CALLS = ("flydsl_pa_mqa_logits_fp4", "flydsl_pa_mqa_logits_fp4_decode")
CHUNK = 32  # elements of one MFMA K chunk (16 bytes), one UE8M0 scale
TILE_K = 128  # elements of one scaled-MFMA K step
BLOCK_K = 256  # tokens per chunk of work (the wrappers' default)
PARALLEL_UNITS = 512  # the first wrapper's default target of programs


def to_kv_layout(inputs: IndexerInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """The suite's MXFP4 cache as aiter's ``kv_cache`` ``(nb, KT, 4, bs, 16)`` and ``kv_scale`` ``(nb, KT, 4, bs)``."""
    values, words = mxfp4.split_kv_cache(inputs.kv_cache)  # (nb, bs, D/2), (nb, bs)
    nb, bs, half = values.shape
    kt = 2 * half // TILE_K
    kv = values.reshape(nb, bs, kt, 4, 16).permute(0, 2, 3, 1, 4).contiguous()
    exps = mxfp4.scale_bytes(words)[..., : 4 * kt].reshape(nb, bs, kt, 4).permute(0, 2, 3, 1)  # (nb, kt, 4, bs)
    t = torch.arange(bs, device=values.device)
    slot = (t % 16) * (bs // 16) + t // 16
    kvs = torch.empty_like(exps)
    kvs[..., slot] = exps
    return kv, kvs.contiguous()


def to_q_scale(inputs: IndexerInputs) -> torch.Tensor:
    """q's scale words as aiter's ``q_scale`` ``(B, next_n, KT, 4, 16, QS_PAD)`` (padding heads: 1.0)."""
    B, n, H = inputs.q_sf.shape
    kt = inputs.head_dim // TILE_K
    pad = math.ceil(H / 16 / 4) * 4
    exps = mxfp4.scale_bytes(inputs.q_sf)[..., : 4 * kt].reshape(B, n, H, kt, 4)
    full = torch.full((B, n, pad * 16, kt, 4), mxfp4.UE8M0_ONE, dtype=torch.uint8, device=exps.device)
    full[:, :, :H] = exps
    # head h = 16 * mi + m -> [kt, c, m, mi]
    return full.view(B, n, pad, 16, kt, 4).permute(0, 1, 4, 5, 3, 2).contiguous()


def find_call(module: types.ModuleType) -> tuple[str, object] | tuple[None, None]:
    for name in CALLS:
        fn = getattr(module, name, None)
        if callable(fn):
            return name, fn
    return None, None


def _is_gfx950(device: torch.device) -> bool:
    if device.type != "cuda" or not getattr(torch.version, "hip", None):
        return False
    return getattr(torch.cuda.get_device_properties(device), "gcnArchName", "").startswith("gfx950")


class AiterFp4Backend:
    name = "aiter-fp4"
    paths = ("fused",)
    device_types = ("cuda",)
    fp8_flavours = ()
    key_formats = ("mxfp4",)
    logits_dtypes = (torch.float32,)
    per_row_lengths = False  # context_lens (B,): the causal rule only

    def __init__(self, module: types.ModuleType | None = None, reason: str | None = None,
                 on_gfx950: bool | None = None):
        self.module, self.reason, self.on_gfx950 = module, reason, on_gfx950
        self.call_name, self.fn = (None, None) if module is None else find_call(module)
        if module is not None and reason is None:
            if self.fn is None:
                where = getattr(module, "__name__", "aiter.ops.flydsl")
                self.reason = f"{where} has none of {', '.join(CALLS)} (#4028)"
            else:
                params = list(inspect.signature(self.fn).parameters)
                known = {"flydsl_pa_mqa_logits_fp4": "next_n", "flydsl_pa_mqa_logits_fp4_decode": "next_n_max"}
                if params[:8] != ["q_fp4", "q_scale", "kv_cache", "kv_scale", "block_tables", "weights",
                                  "context_lens", "max_seq_len"] or known[self.call_name] not in params:
                    self.reason = (f"{self.call_name} has a signature this adapter does not know "
                                   f"(its parameters: {', '.join(params)})")

    def unsupported(self, path: str, inputs: IndexerInputs) -> str | None:
        if self.reason:
            return self.reason
        if path not in self.paths:
            return f"aiter's FP4 kernel has no {path} path"
        if inputs.key_format != "mxfp4":
            return "this adapter calls aiter's FlyDSL FP4 kernel: MXFP4 cells only"
        on = self.on_gfx950 if self.on_gfx950 is not None else _is_gfx950(inputs.device)
        if not on:
            return (f"needs gfx950: aiter's pa_mqa_logits_fp4 issues CDNA4's scaled-MFMA FP4 instructions (MI355X); "
                    f"the inputs are on {inputs.device.type}")
        if inputs.context_lens_2d is not None:
            return "aiter's FP4 kernel takes context_lens (B,) and applies the causal rule: no per-row lengths"
        if inputs.logits_dtype != torch.float32:
            return "aiter's FP4 kernel writes float32 logits only"
        if inputs.heads % 16 or inputs.heads > 128:
            return f"aiter's FP4 kernel takes heads a multiple of 16 up to 128, got {inputs.heads}"
        if inputs.head_dim % TILE_K:
            return f"aiter's FP4 kernel takes head_dim a multiple of {TILE_K}, got {inputs.head_dim}"
        if inputs.block_size != 64:
            return ("aiter's FP4 kernel takes kv_block_size 64 (four 16-token tiles per scale dword), got "
                    f"{inputs.block_size}")
        return None

    def _arguments(self, inputs: IndexerInputs, out: torch.Tensor) -> tuple[tuple, dict]:
        B, n = inputs.batch, inputs.next_n
        kv, kvs = to_kv_layout(inputs)
        q, qs = inputs.q_fp8.contiguous(), to_q_scale(inputs)
        kwargs = {"kv_block_size": inputs.block_size, "block_k": BLOCK_K, "out": out}
        if self.call_name == "flydsl_pa_mqa_logits_fp4_decode":
            q, qs = q.view(B * n, *q.shape[2:]), qs.view(B * n, *qs.shape[2:])
            kwargs["next_n_max"] = n
        else:  # programs are a multiple of next_n and at least one per row of a sequence
            kwargs["next_n"] = n
            kwargs["parallel_unit_num"] = max(PARALLEL_UNITS - PARALLEL_UNITS % n, B * n)
        args = (q, qs, kv, kvs, inputs.block_tables.contiguous(), inputs.weights.to(torch.bfloat16).contiguous(),
                inputs.context_lens.to(torch.int32).contiguous(), int(inputs.max_model_len))
        return args, kwargs

    def run(self, path: str, inputs: IndexerInputs, out: torch.Tensor) -> None:
        args, kwargs = self._arguments(inputs, out)
        returned = self.fn(*args, **kwargs)
        if returned is not None and returned.data_ptr() != out.data_ptr():  # a copy, not our buffer
            out.copy_(returned)

    def describe(self) -> dict:
        info = {"name": self.name, "guarded_stores": True, "call": self.call_name,
                "layouts": "kv_cache (nb, K_TILES, 4, bs, 16), kv_scale (nb, K_TILES, 4, bs) token-interleaved, "
                           "q_scale (..., K_TILES, 4, 16, QS_PAD), bf16 weights: converted by the adapter"}
        if self.module is not None:
            info["origin"] = getattr(self.module, "__file__", None)
        if self.reason:
            info["unavailable"] = self.reason
        return info


def make_backend(module: types.ModuleType | None = None, on_gfx950: bool | None = None) -> AiterFp4Backend:
    """``module`` stands in for ``aiter.ops.flydsl`` (tests); by default it is imported, and an import failure
    becomes the reason every cell is skipped."""
    if module is not None:
        return AiterFp4Backend(module, on_gfx950=on_gfx950)
    try:
        return AiterFp4Backend(importlib.import_module("aiter.ops.flydsl"), on_gfx950=on_gfx950)
    except Exception as exc:  # ImportError, or aiter's own RuntimeError off ROCm
        return AiterFp4Backend(None, f"aiter.ops.flydsl not importable: {type(exc).__name__}: {exc}")
