"""Torch implementations of the three paths, in float32 on any torch device.

They read the cache the way a kernel does (block tables, packed scales, preshuffled tile order)
rather than reusing the float64 reference, so a layout mistake in either shows up as a mismatch.
Sequences are computed in groups (:func:`seq_groups`): one batched gather and one batched product per
group instead of a dozen small operations per sequence, which is what makes the embedded model's
decode (128 sequences a call, every layer, every step) run at the speed of the kernels it stands for.
"""
from __future__ import annotations

import torch

from parity.problem import layouts, mxfp4
from parity.backends.base import SimpleBackend
from parity.problem.cases import IndexerInputs

GROUP_BYTES = 1 << 27  # float32 temporaries of one group of sequences: 128 MiB at most (one sequence may exceed it)


def seq_groups(inputs: IndexerInputs, budget: int = GROUP_BYTES) -> list[slice]:
    """Consecutive runs of sequences whose per-head logits and keys fit ``budget`` bytes together."""
    T = inputs.max_model_len
    per_seq = 4 * T * (inputs.heads * inputs.next_n * 2 + inputs.head_dim)
    g = max(1, budget // per_seq)
    return [slice(s, min(s + g, inputs.batch)) for s in range(0, inputs.batch, g)]


def dequantized_keys(inputs: IndexerInputs, seqs: slice, cache: torch.Tensor, preshuffled: bool) -> torch.Tensor:
    """``(G, max_model_len, D)`` float32 keys x scale of the sequences ``seqs`` (zero past each context_len)."""
    num_blocks, bs, _, width = cache.shape
    T = inputs.max_model_len
    ctx = inputs.context_lens[seqs].to(cache.device).long()  # (G,)
    nblk = max(1, (int(ctx.max()) + bs - 1) // bs) if ctx.numel() else 1
    used = torch.arange(nblk, device=cache.device)[None, :] * bs < ctx[:, None]
    # Entries past a sequence's last block are never read: they may hold anything.
    blocks = torch.where(used, inputs.block_tables[seqs, :nblk].to(cache.device).long(), 0)
    flat = cache.reshape(num_blocks, bs * width)[blocks]  # (G, nblk, bytes)
    G = flat.shape[0]
    if inputs.key_format == "mxfp4":
        keys = _mxfp4_keys(flat, bs, width).reshape(G, nblk * bs, -1)
    else:
        D = width - layouts.SCALE_BYTES
        key_bytes = flat[..., : bs * D]
        if preshuffled:
            key_bytes = key_bytes[..., layouts.preshuffle_offsets(bs, D, cache.device).reshape(-1)]
        keys = key_bytes.contiguous().view(inputs.q_fp8.dtype).float().reshape(G, nblk * bs, D)
        scales = flat[..., bs * D:].contiguous().view(torch.float32).reshape(G, nblk * bs)
        keys = keys * scales[..., None]
    W = min(nblk * bs, T)
    k = torch.zeros(G, T, keys.shape[-1], device=cache.device)
    valid = torch.arange(W, device=cache.device)[None, :] < ctx[:, None]
    k[:, :W] = torch.where(valid[..., None], keys[:, :W], 0.0)
    return k


def _mxfp4_keys(flat: torch.Tensor, bs: int, width: int) -> torch.Tensor:
    """MXFP4 keys with their group scales applied, read from the block-planar cache as a kernel reads it:
    a block's value bytes, then its scale words. ``flat`` is ``(..., bs * width)``; returns ``(tokens, D)``."""
    half = width - mxfp4.SCALE_WORD_BYTES
    D = 2 * half
    codes = mxfp4.unpack_nibbles(flat[..., : bs * half].reshape(-1, half))  # (tokens, D)
    words = flat[..., bs * half:].contiguous().view(torch.int32).reshape(-1)
    scales = mxfp4.ue8m0_decode(mxfp4.scale_bytes(words)[:, : D // mxfp4.GROUP])  # (tokens, G)
    return (mxfp4.e2m1_decode(codes).view(-1, D // mxfp4.GROUP, mxfp4.GROUP) * scales[..., None]).reshape(-1, D)


def query(inputs: IndexerInputs) -> torch.Tensor:
    """q ``(B, next_n, H, D)`` in float32 (MXFP4: E2M1 values times their group scales)."""
    if inputs.key_format == "mxfp4":
        return mxfp4.dequantize(inputs.q_fp8, inputs.q_sf, torch.float32)
    return inputs.q_fp8.float()


def batch_head_logits(inputs: IndexerInputs, seqs: slice, preshuffled: bool = False) -> torch.Tensor:
    """``(G, H, next_n, max_model_len)`` float32 per-head logits of the sequences ``seqs``, -inf where invalid."""
    cache = inputs.kv_cache_preshuffled if preshuffled else inputs.kv_cache
    k = dequantized_keys(inputs, seqs, cache, preshuffled)
    n = inputs.next_n
    q = query(inputs)[seqs].to(k.device)  # (G, n, H, D)
    G = q.shape[0]
    rows = slice(seqs.start * n, seqs.start * n + G * n)
    w = inputs.weights[rows].float().to(k.device).view(G, n, -1)  # (G, n, H)
    score = torch.einsum("gnhd,gtd->ghnt", q, k).clamp_min(0) * w.permute(0, 2, 1)[..., None]
    L = inputs.row_lens[rows].to(k.device).view(G, 1, n, 1)
    t = torch.arange(inputs.max_model_len, device=k.device)
    return score.masked_fill(t >= L, float("-inf"))


def head_logits(inputs: IndexerInputs, b: int, preshuffled: bool = False) -> torch.Tensor:
    """``(H, next_n, max_model_len)`` float32 per-head logits of sequence b, -inf where invalid."""
    return batch_head_logits(inputs, slice(b, b + 1), preshuffled)[0]


def store_rows(out: torch.Tensor, path: str, seqs: slice, next_n: int, logits: torch.Tensor,
               valid: torch.Tensor | None = None) -> None:
    """Writes the logits of ``seqs`` (``(G, H, next_n, T)`` for stage1, ``(G, next_n, T)`` otherwise) into
    their rows of ``out``; with ``valid`` (each output row's length) only each row's first ``valid`` columns."""
    T = logits.shape[-1]
    rows = slice(seqs.start * next_n, seqs.start * next_n + logits.shape[0] * next_n)
    if path == "stage1":
        vals, dst = logits.transpose(0, 1).reshape(logits.shape[1], -1, T), out[:, rows]
    else:
        vals, dst = logits.reshape(-1, T), out[rows]
    W = dst.shape[-1]
    vals = vals[..., :W].to(dst.device)
    if valid is not None:
        keep = torch.arange(W, device=dst.device)[None, :] < valid[rows].to(dst.device)[:, None]
        vals = torch.where(keep, vals.to(dst.dtype), dst)
    dst.copy_(vals)


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
        valid = None if self.clean_logits else inputs.row_lens
        for seqs in seq_groups(inputs):
            h = batch_head_logits(inputs, seqs, preshuffled=(path == "preshuffle"))
            store_rows(out, path, seqs, inputs.next_n, h if path == "stage1" else h.sum(1), valid)


def make_backend(clean_logits: bool = True) -> TorchBackend:
    return TorchBackend(clean_logits)
