"""What lies past a row's valid length: the rule is the consumer's, not the kernel's.

A logits row ``(b, i)`` has ``row_len`` valid positions (SPEC section 1). Whether the columns after
them must hold -inf depends on who reads the row next:

* ``length-bounded`` (the default): the reader takes each row's length and never looks past it.
  vLLM's decode top-k, ``top_k_per_row_decode``, bounds its scan by ``context_len - next_n + i + 1``
  and gives all -1 for a row whose length is <= 0, whatever it holds; SGLang's ``_topk_unfused``
  fills every column outside ``[row_start, row_start + length)`` with -inf before ``torch.topk``.
  What a kernel leaves past the length, in any row, empty rows included, is then don't-care: the
  checks report it (how many values, which rows) and do not fail on it.
* ``unbounded``: the reader ranks the whole row. vLLM's ROCm ``_topk_indices_torch`` (the fallback
  for top-k values other than 2048) runs ``torch.topk`` over the full ``max_model_len`` row and maps
  only -inf to -1; a kernel run with DeepGEMM's ``clean_logits=True`` promises such rows. Then every
  column past the length, in every row, must be -inf, and a finite value there is a ``mask`` finding.

Either way the contract on the valid positions is the same, and so are the guard bands: a write
outside the logical region (row padding, the next row, outside the allocation) is an ``oob`` finding
under both rules. Empty and dummy rows stay in the stress level for what they do catch: crashes,
hangs, out-of-bounds writes and reads past ``context_lens``.
"""
from __future__ import annotations

import torch

LENGTH_BOUNDED, UNBOUNDED = "length-bounded", "unbounded"
CONSUMERS = (LENGTH_BOUNDED, UNBOUNDED)
DEFAULT_CONSUMER = LENGTH_BOUNDED

# Where each rule comes from (read 2026-12-04 in the stored public sources named).
SOURCES = {
    LENGTH_BOUNDED: [
        "vLLM csrc/sampler.cu (00e831b25f76): topKPerRowDecode reads [0, seq_len - next_n + i + 1) of each row; "
        "a row of length <= 0 takes the short-row branch and its top-k slots are all -1",
        "vLLM PR #33568 (merged): clean_logits turned off for DeepSeek-V3.2's indexer because "
        "top_k_per_row_decode 'doesn't read padding values'",
        "SGLang python/sglang/srt/layers/attention/dsa/dsa_topk_backend.py (05b96689d4d1): _topk_unfused "
        "masks columns outside [row_start, row_start + length) with -inf before torch.topk",
    ],
    UNBOUNDED: [
        "vLLM vllm/v1/attention/ops/rocm_aiter_mla_sparse.py, PR #42072 (merged): _topk_indices_decode "
        "keeps _topk_indices_torch for top-k != 2048, torch.topk over the whole max_model_len row with only "
        "-inf mapped to -1",
        "DeepGEMM clean_logits=True (releases that take it, with 1-D context_lens): -inf past each row's length",
    ],
}
MEANING = {
    LENGTH_BOUNDED: "past each row's valid length (every row, empty rows included) is don't-care: reported, "
                    "not a failure",
    UNBOUNDED: "past each row's valid length (every row) must be -inf: a finite value there is a mask finding",
}


def check_consumer(name: str) -> str:
    """``name`` if it is a known rule; else an error naming the argument and the choices."""
    if name not in CONSUMERS:
        raise ValueError(f"consumer must be one of {CONSUMERS}, got {name!r}")
    return name


def read_mask(row_len: torch.Tensor, cols: int, name: str) -> torch.Tensor:
    """``(rows, cols)`` bool: the positions the reader ``name`` looks at in each row of ``row_len`` valid
    positions (the row's first ``row_len`` for a length-bounded reader, every column for an unbounded one)."""
    check_consumer(name)
    lens = row_len.detach().cpu().long().reshape(-1, 1)
    if name == UNBOUNDED:
        return torch.ones(lens.shape[0], cols, dtype=torch.bool)
    return torch.arange(cols)[None, :] < lens


def describe(name: str) -> dict:
    """The report's record of the rule that judged: name, what it means, where it comes from."""
    check_consumer(name)
    return {"rule": name, "meaning": MEANING[name], "sources": list(SOURCES[name])}


def line(record: dict | None) -> str | None:
    """One line for a summary: the rule that judged a report (None for a report that names none)."""
    if not record:
        return None
    return f"consumer rule: {record['rule']}: {record['meaning']}"
