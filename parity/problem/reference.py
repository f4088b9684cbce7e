"""The float64 reference of paged MQA logits, written from the math of SPEC section 1:

    logits[b*next_n + i, t] = sum_h weights[row, h] * relu(q[b, i, h] . k[t] * scale[t])
    valid iff t <= context_len[b] - next_n + i (or t < context_lens_2d[b, i] when per-row lengths
    are given);  every other column is -inf, and a row with no valid position is all -inf.

For MXFP4 inputs q and k are the dequantized values (E2M1 x their group's UE8M0 scale, exact in
float64) and scale[t] is 1: the group scales sit inside the dot product.
"""
from __future__ import annotations

import torch

from parity.problem import layouts, mxfp4
from parity.problem.cases import IndexerInputs


def gather_keys(inp: IndexerInputs, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dequantized-exactly keys ``(context_len, D)`` and scales ``(context_len,)`` of sequence ``b`` in float64
    (for MXFP4 the keys carry their group scales and the per-token scales are 1)."""
    n = int(inp.context_lens[b])
    bs = inp.block_size
    if n == 0:
        return torch.zeros(0, inp.head_dim, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    blocks = inp.block_tables[b, : (n + bs - 1) // bs].cpu().long()
    if inp.key_format == "mxfp4":
        values, words = mxfp4.split_kv_cache(inp.kv_cache.cpu())
        k = mxfp4.dequantize(values[blocks], words[blocks]).reshape(-1, inp.head_dim)[:n]
        return k, torch.ones(n, dtype=torch.float64)
    keys, scales = layouts.split_kv_cache(inp.kv_cache.cpu(), inp.q_fp8.dtype)
    k = keys[blocks].reshape(-1, inp.head_dim)[:n].double()
    s = scales[blocks].reshape(-1)[:n].double()
    return k, s


def query(inp: IndexerInputs) -> torch.Tensor:
    """q ``(B, next_n, H, D)`` in float64, dequantized exactly."""
    if inp.key_format == "mxfp4":
        return mxfp4.dequantize(inp.q_fp8.cpu(), inp.q_sf.cpu())
    return inp.q_fp8.cpu().double()


def reference_head_logits(inp: IndexerInputs, magnitude: bool = False) -> torch.Tensor:
    """Per-head logits ``(H, B * next_n, max_model_len)`` float64 (what stage1 writes), -inf where invalid.

    ``magnitude=True`` returns instead ``|w| * (|q| . |k|) * scale`` (0 where invalid): the size of
    the terms a kernel sums, which is what its rounding error scales with (for a row whose logits
    cancel, or that has a single valid position, the logit itself is a poor scale)."""
    B, n, H = inp.q_fp8.shape[:3]
    out = torch.full((H, B * n, inp.max_model_len), 0.0 if magnitude else float("-inf"), dtype=torch.float64)
    q = query(inp)
    w = inp.weights.cpu().double()
    valid = inp.row_lens.cpu()
    for b in range(B):
        k, s = gather_keys(inp, b)
        for i in range(n):
            row = b * n + i
            L = int(valid[row])
            if magnitude:
                out[:, row, :L] = w[row].abs().view(H, 1) * (q[b, i].abs() @ k[:L].abs().T) * s[:L]
                continue
            score = (q[b, i] @ k[:L].T) * s[:L]  # (H, L)
            out[:, row, :L] = w[row].view(H, 1) * score.clamp_min(0)
    return out


def reference_logits(inp: IndexerInputs) -> torch.Tensor:
    """Logits ``(B * next_n, max_model_len)`` float64, -inf where invalid."""
    return reference_head_logits(inp).sum(dim=0)

