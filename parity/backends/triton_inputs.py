"""What each of the project's Triton launches (``triton_portable``, ``triton_fp4``, ``triton_sm90``) passes of the
block table and the lengths, whatever the kernel."""
from __future__ import annotations

import torch

from parity.problem.cases import IndexerInputs


def table_and_lens(inputs: IndexerInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """The block table with unit stride along a row, and the row lengths the kernels read for ``PER_ROW``
    (the 2-D lengths where given, else ``context_lens``, which they then ignore)."""
    table = inputs.block_tables if inputs.block_tables.stride(-1) == 1 else inputs.block_tables.contiguous()
    lens = inputs.context_lens if inputs.context_lens_2d is None else inputs.context_lens_2d.contiguous()
    return table, lens
