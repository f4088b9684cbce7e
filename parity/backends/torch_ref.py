"""Torch implementations of the three paths, in float32 on any torch device.

They read the cache the way a kernel does (block tables, packed scales, preshuffled tile order)
rather than reusing the float64 reference, so a layout mistake in either shows up as a mismatch.
"""
from __future__ import annotations

import torch

from parity.problem import layouts
from parity.backends.base import SimpleBackend
from parity.problem.cases import IndexerInputs


def dequantized_keys(inputs: IndexerInputs, b: int, cache: torch.Tensor, preshuffled: bool) -> torch.Tensor:
    """``(max_model_len, D)`` float32 keys x scale of sequence b (rows past context_len are zero)."""
    num_blocks, bs, _, width = cache.shape
    D = width - layouts.SCALE_BYTES
    ctx = int(inputs.context_lens[b])
    nblk = (ctx + bs - 1) // bs
    blocks = inputs.block_tables[b, :nblk].long()
    flat = cache.reshape(num_blocks, bs * width)[blocks]  # (nblk, bytes)
    key_bytes = flat[:, : bs * D]
    if preshuffled:
        offs = layouts.preshuffle_offsets(bs, D, cache.device).reshape(-1)
        key_bytes = key_bytes[:, offs]
    keys = key_bytes.contiguous().view(inputs.q_fp8.dtype).float().reshape(nblk * bs, D)
    scales = flat[:, bs * D :].contiguous().view(torch.float32).reshape(nblk * bs)
    k = torch.zeros(inputs.max_model_len, D, device=cache.device)
    k[:ctx] = keys[:ctx] * scales[:ctx, None]
    return k


def head_logits(inputs: IndexerInputs, b: int, preshuffled: bool = False) -> torch.Tensor:
    """``(H, next_n, max_model_len)`` float32 per-head logits of sequence b, -inf where invalid."""
    cache = inputs.kv_cache_preshuffled if preshuffled else inputs.kv_cache
    k = dequantized_keys(inputs, b, cache, preshuffled)
    n = inputs.next_n
    q = inputs.q_fp8[b].float()  # (n, H, D)
    w = inputs.weights[b * n : (b + 1) * n].float()  # (n, H)
    score = torch.einsum("nhd,td->hnt", q, k).clamp_min(0) * w.T[:, :, None]
    L = inputs.row_lens[b * n : (b + 1) * n].to(score.device)  # (n,)
    t = torch.arange(inputs.max_model_len, device=score.device)
    return score.masked_fill(t[None, None, :] >= L[None, :, None], float("-inf"))


class TorchBackend(SimpleBackend):
    """``clean_logits=False`` writes only the valid positions of each row and relies on the caller's
    -inf prefill, as vLLM-style kernels do (DeepGEMM's ``clean_logits`` flag chooses)."""

    def __init__(self, clean_logits: bool = True):
        name = "torch" if clean_logits else "torch-unclean"
        super().__init__(name=name, info={"torch": torch.__version__, "clean_logits": clean_logits},
                         logits_dtypes=(torch.float32, torch.bfloat16), per_row_lengths=True)
        self.clean_logits = clean_logits

    def run(self, path: str, inputs: IndexerInputs, out: torch.Tensor) -> None:
        n = inputs.next_n
        valid = inputs.row_lens.tolist()
        for b in range(inputs.batch):
            h = head_logits(inputs, b, preshuffled=(path == "preshuffle"))
            h = h if path == "stage1" else h.sum(0)
            for i in range(n):
                width = out.shape[-1] if self.clean_logits else valid[b * n + i]
                out[..., b * n + i, :width].copy_(h[..., i, :width])


def make_backend(clean_logits: bool = True) -> TorchBackend:
    return TorchBackend(clean_logits)
