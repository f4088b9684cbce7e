"""Torch implementations of the three paths, in float32 on any torch device.

They read the cache the way a kernel does (block tables, packed scales, preshuffled tile order)
rather than reusing the float64 reference, so a layout mistake in either shows up as a mismatch.
"""
from __future__ import annotations

import torch

from parity.problem import layouts, mxfp4
from parity.backends.base import SimpleBackend
from parity.problem.cases import IndexerInputs


def dequantized_keys(inputs: IndexerInputs, b: int, cache: torch.Tensor, preshuffled: bool) -> torch.Tensor:
    """``(max_model_len, D)`` float32 keys x scale of sequence b (rows past context_len are zero)."""
    num_blocks, bs, _, width = cache.shape
    ctx = int(inputs.context_lens[b])
    nblk = (ctx + bs - 1) // bs
    blocks = inputs.block_tables[b, :nblk].long()
    if inputs.key_format == "mxfp4":
        return _mxfp4_keys(inputs, cache, blocks, ctx)
    D = width - layouts.SCALE_BYTES
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


def _mxfp4_keys(inputs: IndexerInputs, cache: torch.Tensor, blocks: torch.Tensor, ctx: int) -> torch.Tensor:
    """MXFP4 keys with their group scales applied, read from the block-planar cache as a kernel reads it:
    a block's value bytes, then its scale words."""
    num_blocks, bs, _, width = cache.shape
    half = width - mxfp4.SCALE_WORD_BYTES
    D = 2 * half
    flat = cache.reshape(num_blocks, bs * width)[blocks]
    codes = mxfp4.unpack_nibbles(flat[:, : bs * half].reshape(-1, half))  # (nblk * bs, D)
    words = flat[:, bs * half:].contiguous().view(torch.int32).reshape(-1)
    scales = mxfp4.ue8m0_decode(mxfp4.scale_bytes(words)[:, : D // mxfp4.GROUP])  # (tokens, G)
    values = mxfp4.e2m1_decode(codes).view(-1, D // mxfp4.GROUP, mxfp4.GROUP) * scales[..., None]
    k = torch.zeros(inputs.max_model_len, D, device=cache.device)
    k[:ctx] = values.reshape(-1, D)[:ctx]
    return k


def query(inputs: IndexerInputs) -> torch.Tensor:
    """q ``(B, next_n, H, D)`` in float32 (MXFP4: E2M1 values times their group scales)."""
    if inputs.key_format == "mxfp4":
        return mxfp4.dequantize(inputs.q_fp8, inputs.q_sf, torch.float32)
    return inputs.q_fp8.float()


def head_logits(inputs: IndexerInputs, b: int, preshuffled: bool = False) -> torch.Tensor:
    """``(H, next_n, max_model_len)`` float32 per-head logits of sequence b, -inf where invalid."""
    cache = inputs.kv_cache_preshuffled if preshuffled else inputs.kv_cache
    k = dequantized_keys(inputs, b, cache, preshuffled)
    n = inputs.next_n
    q = query(inputs)[b]  # (n, H, D)
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
                         logits_dtypes=(torch.float32, torch.bfloat16), per_row_lengths=True,
                         key_formats=("fp8", "mxfp4"))
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
