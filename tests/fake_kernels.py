"""What the fake third-party kernels of the adapter tests compute: paged MQA logits in plain torch,
written from SPEC section 1 (not the reference under test, so that a fake agrees with it only when
the adapter hands it the right arguments)."""
import torch

from parity.problem import layouts


def paged_logits(q, kv_cache, weights, block_table, row_lens, max_len, masked=True):
    """Row r sees positions < row_lens[r] (-inf past them when ``masked``; unmasked, the kernel's
    own values run on, as DeepGEMM's do without clean_logits)."""
    keys, scales = layouts.split_kv_cache(kv_cache, q.dtype)
    B, n, H, D = q.shape
    bs = kv_cache.shape[1]
    t = torch.arange(max_len)
    blocks = block_table.long()[:, (t // bs).clamp(max=block_table.shape[1] - 1)]
    k = keys.float()[blocks, t % bs] * scales[blocks, t % bs][..., None]  # (B, T, D)
    s = torch.einsum("bnhd,btd->bnht", q.float(), k).relu()
    out = (s * weights.view(B, n, H, 1)).sum(2).reshape(B * n, max_len)
    return out.masked_fill(t[None, :] >= row_lens.view(-1, 1).long(), float("-inf")) if masked else out
