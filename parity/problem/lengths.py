"""How many positions of each logits row are valid: the causal rule of SPEC section 1 (row i of sequence b sees
``t <= context_lens[b] - next_n + i``), or 2-D per-row context lengths where the caller gives them."""
from __future__ import annotations

import torch


def signed_row_lengths(context_lens: torch.Tensor, next_n: int) -> torch.Tensor:
    """Per output row ``context_lens[b] - next_n + i + 1`` (the causal rule of SPEC section 1: row (b, i)
    may see ``t <= context_len[b] - next_n + i``), negative where the context is shorter than
    ``next_n - 1 - i`` (a dummy sequence of a captured batch), as a top-k op computes it."""
    i = torch.arange(next_n, device=context_lens.device)
    return (context_lens.view(-1, 1).long() - next_n + i + 1).reshape(-1)


def valid_lengths(context_lens: torch.Tensor, next_n: int) -> torch.Tensor:
    """Per output row, the number of leading valid positions: :func:`signed_row_lengths`, none (0) for a
    row whose count is below 0."""
    return signed_row_lengths(context_lens, next_n).clamp_min(0)


def row_lengths(context_lens: torch.Tensor, next_n: int, context_lens_2d: torch.Tensor | None = None) -> torch.Tensor:
    """Valid positions per output row: the 2-D per-row lengths when given, else the causal diagonal."""
    if context_lens_2d is not None:
        return context_lens_2d.reshape(-1).long()
    return valid_lengths(context_lens, next_n)


def per_row_lengths(lens: list[int], next_n: int, gen: torch.Generator) -> torch.Tensor:
    """(B, next_n) int32: row i of sequence b sees a uniform draw from [0, context_len], the last row
    all of it (how DeepGEMM's test draws 2-D context_lens)."""
    ctx = torch.tensor(lens, dtype=torch.float64).view(-1, 1)
    rows = ((ctx + 1) * torch.rand(len(lens), next_n, generator=gen, dtype=torch.float64)).floor().clamp(max=ctx)
    rows[:, -1] = ctx[:, 0]
    return rows.to(torch.int32)
