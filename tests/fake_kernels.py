"""What the fake third-party kernels of the adapter tests compute: paged MQA logits in plain torch,
written from SPEC section 1 (not the reference under test, so that a fake agrees with it only when
the adapter hands it the right arguments)."""
import torch

from parity.backends.base import SimpleBackend
from parity.backends.torch_ref import TorchBackend
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


# E2M1 code -> value, written out from SPEC section 10 (not parity.problem.mxfp4's table, so that a fake and the
# format module agree only when both follow the published facts).
_E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def decode_mxfp4(packed: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """``(..., D/2)`` E2M1 pairs (low nibble first) and ``(...)`` int32 UE8M0 words -> ``(..., D)`` float32."""
    b = packed.contiguous().view(torch.uint8).long()
    codes = torch.stack([b % 16, b // 16], dim=-1).flatten(-2)
    values = torch.tensor(_E2M1)[codes]
    exps = words.contiguous().view(torch.uint8).view(*words.shape, 4).long()  # little-endian bytes
    group = torch.arange(codes.shape[-1]) // 32
    return values * torch.pow(2.0, (exps[..., group] - 127).float())


def paged_logits_fp4(q_packed, q_sf, kv_cache, weights, block_table, row_lens, max_len, masked=True):
    """:func:`paged_logits` for the MXFP4 cache ``(num_blocks, block_size, 1, D/2 + 4)``: per block the value
    bytes, token-major, then one int32 scale word per token."""
    nb, bs, _, width = kv_cache.shape
    half = width - 4
    flat = kv_cache.reshape(nb, bs * width)
    keys = decode_mxfp4(flat[:, : bs * half].reshape(nb, bs, half),
                        flat[:, bs * half:].contiguous().view(torch.int32).reshape(nb, bs))
    q = decode_mxfp4(q_packed, q_sf)
    B, n, H, D = q.shape
    t = torch.arange(max_len)
    blocks = block_table.long()[:, (t // bs).clamp(max=block_table.shape[1] - 1)]
    k = keys[blocks, t % bs]  # (B, T, D)
    s = torch.einsum("bnhd,btd->bnht", q, k).relu()
    out = (s * weights.float().view(B, n, H, 1)).sum(2).reshape(B * n, max_len)
    return out.masked_fill(t[None, :] >= row_lens.view(-1, 1).long(), float("-inf")) if masked else out


class WritesPastLengths(SimpleBackend):
    """A correct backend for every valid position that leaves a finite value in every other position of
    every row, as a kernel that allocates its output with torch.empty and never cleans does; with
    ``per_call`` the value changes from call to call, as such a buffer's leftovers do."""

    def __init__(self, junk: float = 3.0, per_call: bool = False):
        super().__init__(name="writes-past-lengths", paths=("stage1", "fused", "preshuffle"),
                         logits_dtypes=(torch.float32, torch.bfloat16), per_row_lengths=True)
        self.junk, self.per_call, self.calls = junk, per_call, 0

    def run(self, path, inputs, out):
        TorchBackend().run(path, inputs, out)
        self.calls += 1
        lens = inputs.row_lens.to(out.device)
        past = torch.arange(out.shape[-1], device=out.device)[None, :] >= lens[:, None]
        out.masked_fill_(past.expand_as(out), self.junk + (self.calls if self.per_call else 0))
