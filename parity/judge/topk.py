"""The decode top-k consumer (SPEC section 6) and the tie-aware agreement check.

Elementwise closeness is not the contract the model relies on: the indexer's job is to pick the
same tokens. This check compares the selected sets and forgives only swaps at the k-th value.
"""
from __future__ import annotations

import torch

from parity.problem.lengths import row_lengths, signed_row_lengths
from parity.judge.checks import MAX_LISTED, Finding

DEFAULT_TOPK = 2048  # DSv3.2's index_topk


def _strided(logits: torch.Tensor, stride0: int | None, stride1: int | None) -> torch.Tensor:
    """``logits`` re-read through explicit strides, the way an op that takes a pointer and two
    strides sees it; out-of-storage strides are an error, not a read of someone else's memory."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a 2-D (rows, max_model_len) tensor, got {got}")
    rows, cols = logits.shape
    s0 = logits.stride(0) if stride0 is None else int(stride0)
    s1 = logits.stride(1) if stride1 is None else int(stride1)
    if s0 < 0 or s1 < 0:
        raise ValueError(f"stride0/stride1 must be >= 0, got {s0}, {s1}")
    if rows and cols:
        last = logits.storage_offset() + (rows - 1) * s0 + (cols - 1) * s1
        elems = logits.untyped_storage().nbytes() // logits.element_size()
        if last >= elems:
            raise ValueError(f"stride0={s0}, stride1={s1} read element {last} of logits' storage, which holds {elems}")
    return logits.as_strided((rows, cols), (s0, s1), logits.storage_offset())


def topk_reference(logits: torch.Tensor, context_lens: torch.Tensor, next_n: int, k: int = DEFAULT_TOPK,
                   stride0: int | None = None, stride1: int | None = None,
                   context_lens_2d: torch.Tensor | None = None) -> torch.Tensor:
    """int64 ``(rows, k)``: per row the k largest logits among its valid positions, ascending index
    order (the op's order is unspecified; sets are what count). Row ``r`` belongs to sequence
    ``r // next_n`` and sees ``context_lens[b] - next_n + r % next_n + 1`` positions (or its own
    ``context_lens_2d[b, r % next_n]``); a row with none selects nothing. Rows with at
    most k valid positions get ``0..len-1`` then -1, whatever their logits (as the op does). Reads
    ``logits`` through explicit strides (default: the tensor's own), as the vLLM op does, so padded
    and non-contiguous views work."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if next_n < 1:
        raise ValueError(f"next_n must be >= 1, got {next_n}")
    view = _strided(logits, stride0, stride1)
    rows, cols = view.shape
    valid = row_lengths(context_lens.cpu(), next_n, None if context_lens_2d is None else context_lens_2d.cpu())
    if valid.numel() != rows:
        raise ValueError(f"logits has {rows} rows; context_lens ({context_lens.numel()}) x next_n ({next_n}) "
                         f"gives {valid.numel()}")
    values = view.detach().double().cpu()  # one transfer, not one per row
    out = torch.full((rows, k), -1, dtype=torch.int64)
    for r in range(rows):
        L = max(0, min(int(valid[r]), cols))
        if L <= k:
            out[r, :L] = torch.arange(L)
        else:
            # NaN sorts last here, so a NaN logit is never preferred to a number.
            order = torch.argsort(-values[r, :L], stable=True)[:k]  # ties: smallest index first
            out[r] = torch.sort(order).values
    return out


def compare_topk(selected: torch.Tensor, ref_logits: torch.Tensor, context_lens: torch.Tensor, next_n: int,
                 k: int, rtol: float, atol: float, context_lens_2d: torch.Tensor | None = None,
                 magnitude: torch.Tensor | None = None) -> Finding:
    """``selected``: a backend's ``(rows, k)`` indices (-1 padding). Sets must equal the reference's,
    except swaps between positions whose reference logits tie with the k-th value.

    Tie band: each of the two logits in a swap may be off by the value tolerance
    ``atol + rtol * max(rowmax|ref|, magnitude)`` (``check_values``'s; without ``magnitude`` its row max
    alone), so a backend that passes the value check can swap a position with the k-th one when they are
    no further apart than their two tolerances; the band is that sum, and no wider. A row with at most k
    valid positions has no k-th value to tie with: all of them must be selected."""
    rows = ref_logits.shape[0] if ref_logits.dim() == 2 else -1
    if not isinstance(selected, torch.Tensor) or selected.dim() != 2 or selected.shape[0] != rows \
            or selected.shape[1] != k:
        got = tuple(selected.shape) if isinstance(selected, torch.Tensor) else type(selected).__name__
        raise ValueError(f"selected must be ({rows}, {k}) indices with -1 padding, got {got}")
    if magnitude is not None and tuple(magnitude.shape) != tuple(ref_logits.shape):
        raise ValueError(f"magnitude must have ref_logits' shape {tuple(ref_logits.shape)}, "
                         f"got {tuple(magnitude.shape)}")
    ref_sel = topk_reference(ref_logits, context_lens, next_n, k, context_lens_2d=context_lens_2d)
    ref = ref_logits.detach().double().cpu()
    mag = None if magnitude is None else magnitude.detach().double().cpu()
    sel = selected.detach().cpu().long()
    valid = row_lengths(context_lens.cpu(), next_n, None if context_lens_2d is None else context_lens_2d.cpu())
    recall, non_tie, counts, tie_swaps, bad_rows = [], {}, [], 0, []
    for r in range(rows):
        want = set(ref_sel[r][ref_sel[r] >= 0].tolist())
        picked = sel[r][sel[r] >= 0].tolist()
        got = set(picked)
        recall.append(len(want & got) / len(want) if want else float(not got))
        if want == got and len(picked) == len(got):
            counts.append(0)
            continue
        row = ref[r]
        finite = row[torch.isfinite(row)]
        rowmax = float(finite.abs().max()) if finite.numel() else 0.0
        short = int(valid[r]) <= k  # every valid position must be there
        kth_at = min(want, key=lambda i: float(row[i])) if want else None
        kth = float(row[kth_at]) if want else float("-inf")

        def tol(p):  # check_values' bound at position p
            return atol + rtol * (rowmax if mag is None else max(rowmax, float(mag[r, p])))

        def ties(p):  # the k-th value is where membership is implementation-defined
            return (not short and 0 <= p < row.numel() and bool(torch.isfinite(row[p]))
                    and abs(float(row[p]) - kth) <= tol(p) + tol(kth_at))

        added = sorted(p for p in got - want if not ties(p))
        dropped = sorted(p for p in want - got if not ties(p))
        # One swap counts once; a missing or duplicate index is wrong too, even when the one left out ties.
        real = max(len(added), len(dropped), len(want) - len(got), len(picked) - len(got))
        tie_swaps += min(len(got - want) - len(added), len(want - got) - len(dropped))
        counts.append(real)
        if real:
            bad_rows.append(r)
            non_tie[r] = {"count": real, "added": added[:MAX_LISTED], "dropped": dropped[:MAX_LISTED],
                          "kth_value": kth, "selected": len(picked), "expected": len(want)}
    ok = not bad_rows
    mean_recall = sum(recall) / max(rows, 1)
    summary = (f"top-{k} sets agree (recall {mean_recall:.4f}, {tie_swaps} tie swaps)" if ok else
               f"top-{k} disagrees beyond ties in {len(bad_rows)} rows, {sum(counts)} non-tie positions "
               f"(recall {mean_recall:.4f})")
    return Finding("topk", ok, summary, {
        "k": k, "mean_recall": mean_recall, "min_recall": min(recall) if recall else 1.0, "tie_swaps": tie_swaps,
        "rows": bad_rows[:64], "non_tie_counts": counts[:256],
        "non_tie_per_row": {r: non_tie[r] for r in list(non_tie)[:MAX_LISTED]},
    })


# --- the op's own contract, row by row (what vLLM's test does not check) ---------------------------------

INDEX_SENTINEL = -0x5EED  # what a guarded index buffer holds before the call: neither an index nor -1
INDEX_GUARD = 4096  # int32 slots before and after the rows: an op's stray write before row 0 lands here


def guarded_indices(rows: int, k: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(storage, view)``: a ``(rows, k)`` int32 view inside a flat storage with :data:`INDEX_GUARD`
    slots before and after, everything filled with :data:`INDEX_SENTINEL`, so that an unwritten slot
    and a write outside the rows both show."""
    if rows < 0 or k < 1:
        raise ValueError(f"rows must be >= 0 and k >= 1, got rows={rows}, k={k}")
    storage = torch.full((2 * INDEX_GUARD + rows * k,), INDEX_SENTINEL, dtype=torch.int32, device=device)
    return storage, storage[INDEX_GUARD:INDEX_GUARD + rows * k].view(rows, k)


def check_topk_contract(selected: torch.Tensor, context_lens: torch.Tensor, next_n: int, k: int,
                        storage: torch.Tensor | None = None) -> Finding:
    """What a decode top-k op owes each row, whatever the logits: with ``L`` the row's valid count
    (:func:`signed_row_lengths`) and ``n = min(k, max(L, 0))``, slots ``[0, n)`` hold ``n`` distinct
    indices in ``[0, L)`` and slots ``[n, k)`` hold exactly -1. A row with a negative count must leave
    its neighbours alone: an op that writes its -1s from slot ``L`` on reaches back into the previous
    row's last ``-L`` slots (``neighbour_writes``), or before the buffer for row 0. ``storage`` (from
    :func:`guarded_indices`) lets the check see writes outside the rows and slots never written."""
    rows = context_lens.numel() * next_n
    if not isinstance(selected, torch.Tensor) or tuple(selected.shape) != (rows, k):
        got = tuple(selected.shape) if isinstance(selected, torch.Tensor) else type(selected).__name__
        raise ValueError(f"selected must be ({rows}, {k}) indices, got {got}")
    sel = selected.detach().cpu().long()
    lens = signed_row_lengths(context_lens.cpu(), next_n)
    per_row, totals = {}, {"duplicates": 0, "out_of_range": 0, "missing": 0, "tail_not_minus_one": 0, "unwritten": 0}
    for r in range(rows):
        L = int(lens[r])
        n = min(k, max(L, 0))
        row = sel[r]
        head, tail = row[:n], row[n:]
        picked = row[row >= 0]
        uniq, counts = torch.unique(picked, return_counts=True)
        found = {
            "duplicates": int((counts - 1).sum()),
            "out_of_range": int(((picked >= max(L, 0))).sum()),
            "missing": int((head < 0).sum()),
            "tail_not_minus_one": int((tail != -1).sum()),
            "unwritten": int((row == INDEX_SENTINEL).sum()),
        }
        if any(found.values()):
            for key, v in found.items():
                totals[key] += v
            found["valid"] = L
            found["examples"] = {
                "duplicated": uniq[counts > 1][:MAX_LISTED].tolist(),
                "out_of_range": picked[picked >= max(L, 0)][:MAX_LISTED].tolist(),
                "missing_slots": torch.nonzero(head < 0).flatten()[:MAX_LISTED].tolist(),
                "tail": tail[tail != -1][:MAX_LISTED].tolist(),
            }
            per_row[r] = found
    # A negative count L in row r: its -1s from slot L on land in row r-1's slots [k + L, k).
    neighbour = {}
    for r in range(1, rows):
        L = int(lens[r])
        if L < 0 and r - 1 in per_row:
            slots = list(range(max(0, k + L), k))
            hit = [s for s in slots if int(sel[r - 1, s]) == -1 and s < min(k, max(int(lens[r - 1]), 0))]
            if hit:
                neighbour[r - 1] = {"from_row": r, "valid": L, "slots": hit}
    guard = {}
    if storage is not None:
        st = storage.detach().cpu()
        before, after = st[:INDEX_GUARD], st[INDEX_GUARD + rows * k:]
        if int((before != INDEX_SENTINEL).sum()):
            first = int(torch.nonzero(before != INDEX_SENTINEL)[0])
            guard["before"] = {"count": int((before != INDEX_SENTINEL).sum()), "slots_before_row0": INDEX_GUARD - first,
                               "values": before[before != INDEX_SENTINEL][:MAX_LISTED].tolist()}
        if int((after != INDEX_SENTINEL).sum()):
            guard["after"] = {"count": int((after != INDEX_SENTINEL).sum())}
    bad_rows = sorted(per_row)
    ok = not bad_rows and not guard
    parts = [f"{v} {name.replace('_', ' ')}" for name, v in totals.items() if v]
    if guard:
        parts += [f"{g['count']} slots written {side} the rows" for side, g in guard.items()]
    summary = (f"top-{k} contract holds in {rows} rows" if ok else
               f"top-{k} contract broken in {len(bad_rows)} rows: {', '.join(parts)}")
    if neighbour:
        summary += f"; consistent with rows of negative valid count writing into the previous row: {neighbour}"
    return Finding("topk-contract", ok, summary, {
        "k": k, "rows": bad_rows[:64], "counts": totals, "per_row": {r: per_row[r] for r in bad_rows[:MAX_LISTED]},
        "per_row_counts": {r: {key: per_row[r][key] for key in totals} for r in bad_rows[:256]},
        "neighbour_writes": neighbour, "guard": guard, "valid_counts": lens.tolist()[:256]})
