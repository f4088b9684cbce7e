"""The decode top-k consumer (SPEC section 6) and the tie-aware agreement check.

Elementwise closeness is not the contract the model relies on: the indexer's job is to pick the
same tokens. This check compares the selected sets and forgives only swaps at the k-th value.
"""
from __future__ import annotations

import torch

from parity.cases import valid_lengths
from parity.checks import MAX_LISTED, Finding

DEFAULT_TOPK = 2048


def topk_reference(logits: torch.Tensor, context_lens: torch.Tensor, next_n: int, k: int = DEFAULT_TOPK,
                   stride0: int | None = None, stride1: int | None = None) -> torch.Tensor:
    """int64 ``(rows, k)``: per row the k largest logits among its valid positions, ascending index
    order (the op's order is unspecified; sets are what count). Rows with at most k valid positions
    get ``0..len-1`` then -1. Reads ``logits`` through explicit strides (default: the tensor's own),
    as the vLLM op does, so padded and non-contiguous views work."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rows, cols = logits.shape
    s0 = logits.stride(0) if stride0 is None else stride0
    s1 = logits.stride(1) if stride1 is None else stride1
    view = logits.as_strided((rows, cols), (s0, s1), logits.storage_offset())
    valid = valid_lengths(context_lens.cpu(), next_n)
    if valid.numel() != rows:
        raise ValueError(f"logits has {rows} rows; context_lens ({context_lens.numel()}) x next_n ({next_n}) "
                         f"gives {valid.numel()}")
    out = torch.full((rows, k), -1, dtype=torch.int64)
    for r in range(rows):
        L = min(int(valid[r]), cols)
        if L <= k:
            out[r, :L] = torch.arange(L)
        else:
            vals = view[r, :L].detach().double().cpu()
            order = torch.argsort(-vals, stable=True)[:k]  # ties: smallest index first
            out[r] = torch.sort(order).values
    return out


def compare_topk(selected: torch.Tensor, ref_logits: torch.Tensor, context_lens: torch.Tensor, next_n: int,
                 k: int, rtol: float, atol: float) -> Finding:
    """``selected``: a backend's ``(rows, k)`` indices (-1 padding). Sets must equal the reference's,
    except swaps between positions whose reference logits lie within tolerance of the k-th value."""
    ref_sel = topk_reference(ref_logits, context_lens, next_n, k)
    ref_logits = ref_logits.double().cpu()
    rows = ref_sel.shape[0]
    recall, non_tie, tie_swaps, bad_rows = [], {}, 0, []
    for r in range(rows):
        want = set(int(x) for x in ref_sel[r] if x >= 0)
        got = set(int(x) for x in selected[r].cpu() if x >= 0)
        recall.append(len(want & got) / max(len(want), 1))
        if want == got:
            continue
        row = ref_logits[r]
        finite = row[torch.isfinite(row)]
        tol = atol + rtol * float(finite.abs().max()) if finite.numel() else atol
        kth = min(float(row[i]) for i in want) if want else float("-inf")
        swapped = (want - got) | (got - want)
        real = sorted(p for p in swapped
                      if not (0 <= p < row.numel() and torch.isfinite(row[p]) and abs(float(row[p]) - kth) <= tol))
        tie_swaps += len(swapped) - len(real)
        if real or len(got) != len(want):
            bad_rows.append(r)
            non_tie[r] = {"count": len(real), "positions": real[:MAX_LISTED], "kth_value": kth,
                          "selected": len(got), "expected": len(want)}
    ok = not bad_rows
    mean_recall = sum(recall) / max(rows, 1)
    summary = (f"top-{k} sets agree (recall {mean_recall:.4f}, {tie_swaps} tie swaps)" if ok else
               f"top-{k} disagrees beyond ties in {len(bad_rows)} rows (recall {mean_recall:.4f})")
    return Finding("topk", ok, summary, {
        "k": k, "mean_recall": mean_recall, "min_recall": min(recall) if recall else 1.0, "tie_swaps": tie_swaps,
        "rows": bad_rows[:64], "non_tie_per_row": {r: non_tie[r] for r in list(non_tie)[:MAX_LISTED]},
    })
