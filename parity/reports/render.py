"""Buffer maps: every element of a cell's guarded output buffer, classified, as a compact grid a
report can draw ("every row spills 12 columns into the next" at a glance).

The grid lays the guarded storage out as the kernel addresses it, in rows of ``pitch`` elements:
guard rows before row 0, the data rows (``cols`` logical columns, then the padding), guard rows
after. Only the guard rows next to the data and those holding a write are kept. Each element gets
one class of :data:`CLASSES`; each grid row is run-length encoded as ``"class:count class:count
..."``. When the encoding would pass :data:`MAX_BYTES`, data rows beyond :data:`MAX_ROWS` and then
columns are merged in bins that keep their most severe class, so a map stays small whatever the
shape. ``ends`` zooms on each row's logical end at full resolution: the row's last columns, its
padding, and what follows in memory (the next row's leading columns), where an overshoot shows.

Stray writes (outside a row's logical region) are grouped into contiguous runs in memory and each
run is attributed to the row whose logical end it starts at. In an exact buffer the next row's
leading columns are that row's own elements: a damaged leading run there counts as a stray of the
previous row when that row's context reaches within one store chunk (:data:`checks.MAX_CHUNK`) of
its end (in a padded buffer: when that row's padding is written through to its end), the rule
:func:`checks.attribute_next_row` uses.
"""
from __future__ import annotations

import json
import math

import torch

from parity.judge.buffers import GuardedBuffer, sentinel_mask
from parity.judge import checks, consumers
from parity.judge.checks import MAX_CHUNK

CLASSES = (
    "correct",  # inside context_len, value within the tolerance of the values check
    "masked",  # -inf where the reference is -inf (causal rule), or untouched past the row's valid length
    "wrong_value",  # finite both, off by more than the tolerance; or NaN where the reference is -inf
    "spurious_finite",  # finite where the reference is -inf
    "spurious_neg_inf",  # -inf (or NaN, +inf) where the reference is finite
    "past_valid_len",  # finite past the row's valid length: don't-care for a length-bounded reader
    "next_row",  # a row's leading columns overwritten by the previous row's overshoot
    "row_padding",  # written in the padding after a row
    "outside_allocation",  # written in the guard before or after the buffer
    "sentinel",  # padding or guard, untouched
    "unallocated",  # grid cells past either end of the storage
)
(CORRECT, MASKED, WRONG_VALUE, SPURIOUS_FINITE, SPURIOUS_NEG_INF, PAST_VALID_LEN, NEXT_ROW, ROW_PADDING,
 OUTSIDE, SENTINEL, UNALLOCATED) = range(len(CLASSES))
STRAY = (NEXT_ROW, ROW_PADDING, OUTSIDE)
# A merged bin shows its most severe member: strays first, then mask and value errors.
SEVERITY = (OUTSIDE, NEXT_ROW, ROW_PADDING, SPURIOUS_NEG_INF, SPURIOUS_FINITE, WRONG_VALUE, PAST_VALID_LEN, CORRECT,
            MASKED, SENTINEL, UNALLOCATED)
MAX_ROWS = 256
MAX_BYTES = 60 * 1024
MAX_STRAYS = 64
ENDS_LEFT = 32


def classify(storage: torch.Tensor, ref: torch.Tensor, context_len: torch.Tensor, pitch: int, cols: int,
             guard: int, fp8: str, magnitude: torch.Tensor | None = None, row_len: torch.Tensor | None = None,
             causal_tail: int = 0, consumer: str = consumers.DEFAULT_CONSUMER) -> torch.Tensor:
    """One class code (int8) per element of the flat guarded ``storage``. ``ref`` is the float64
    reference ``(rows, cols)``; ``context_len`` and ``row_len`` (valid positions; default: the
    reference's finite prefix) per row; ``magnitude`` as for the values check; ``consumer`` the rule
    for what lies past each row's valid length. Wrong values, wrong masks and the next-row
    attribution are the checks' own verdicts (parity.judge.checks), so a map never disagrees with the
    findings it draws."""
    flat = storage.detach().cpu().reshape(-1)
    rows = ref.shape[0]
    if ref.shape[1] != cols or context_len.numel() != rows:
        raise ValueError(f"ref must be (rows, cols=({cols})) with one context_len per row; got ref "
                         f"{tuple(ref.shape)}, context_len {tuple(context_len.shape)}")
    end = guard + rows * pitch
    if pitch < cols or guard < 0 or end > flat.numel():
        raise ValueError(f"storage of {flat.numel()} elements cannot hold guard {guard} + {rows} rows x pitch "
                         f"{pitch} (cols {cols}) + guard")
    written = ~sentinel_mask(flat)  # in the buffer's own dtype: bf16 sentinels are bf16 bit patterns
    st = flat.float()
    codes = torch.full((st.numel(),), SENTINEL, dtype=torch.int8)
    codes[:guard][written[:guard]] = OUTSIDE
    codes[end:][written[end:]] = OUTSIDE
    body = codes[guard:end].view(rows, pitch)
    body[:, cols:][written[guard:end].view(rows, pitch)[:, cols:]] = ROW_PADDING

    out = st[guard:end].view(rows, pitch)[:, :cols]
    ref = ref.detach().cpu().double()
    ctx = context_len.detach().cpu().long()
    lens = row_len.detach().cpu().long() if row_len is not None else torch.isfinite(ref).sum(1)
    mask = checks.check_mask(out, ref, lens, consumer)
    values = checks.check_values(flat[guard:end].view(rows, pitch)[:, :cols], ref, ctx, fp8, magnitude)
    valid = consumers.read_mask(lens, cols, consumers.LENGTH_BOUNDED)
    judged = consumers.read_mask(lens, cols, consumer)
    got_fin, want_fin = torch.isfinite(out), torch.isfinite(ref)
    logical = torch.full((rows, cols), MASKED, dtype=torch.int8)
    logical[got_fin & want_fin & valid] = CORRECT
    logical[values.where] = WRONG_VALUE
    logical[mask.where & got_fin & ~want_fin] = SPURIOUS_FINITE
    logical[mask.where & ~got_fin & want_fin] = SPURIOUS_NEG_INF
    logical[judged & torch.isnan(out) & ~want_fin] = WRONG_VALUE  # the mask check counts NaN as not finite
    logical[~judged & (out != float("-inf"))] = PAST_VALID_LEN
    body[:, :cols] = logical
    pad_written = written[guard:end].view(rows, pitch)[:, cols:].sum(1) if pitch > cols else None
    next_row, _ = checks.attribute_next_row(mask, values, ctx, cols, causal_tail=causal_tail, row_len=lens,
                                            padding=pad_written, pad=pitch - cols)
    if next_row is not None:
        for r, claim in next_row.details["landed"]["next_row"].items():
            # the whole run: a stray that happens to equal the right value was written all the same
            body[r, :claim["leading_cols_damaged"]] = NEXT_ROW
    return codes


def _row_label(r: int, lead: list[int], ctx: list[int] | None) -> str:
    name = f"h{r // lead[1]} row {r % lead[1]}" if len(lead) == 2 else f"row {r}"
    return name + (f" (ctx {ctx[r]})" if ctx is not None else "")


def strays(codes: torch.Tensor, rows: int, pitch: int, cols: int, guard: int, lead: list[int]) -> list[dict]:
    """Contiguous runs (in memory) of writes outside the logical region, each with the row it came
    from: the row whose logical end it starts at (``overshoot_cols`` = its length), or the row whose
    padding it starts in; a run in the guard before row 0 or after the last row says so."""
    is_stray = torch.isin(codes, torch.tensor(STRAY, dtype=torch.int8))
    edges = torch.diff(is_stray.to(torch.int8), prepend=torch.zeros(1, dtype=torch.int8),
                       append=torch.zeros(1, dtype=torch.int8))
    starts = torch.nonzero(edges == 1).flatten().tolist()
    stops = torch.nonzero(edges == -1).flatten().tolist()
    end = guard + rows * pitch
    out = []
    for a, b in zip(starts, stops):
        seg = codes[a:b]
        lands = {CLASSES[c]: int((seg == c).sum()) for c in STRAY if int((seg == c).sum())}
        rec = {"start": a - guard, "length": b - a, "lands": lands}
        r_end, off = divmod(a - guard - cols, pitch)  # relative to row r_end's logical end
        if off == 0 and 0 <= r_end < rows:
            rec.update(from_row=r_end, overshoot_cols=b - a, where=f"from the end of {_row_label(r_end, lead, None)}")
        elif a < guard:
            rec.update(from_row=None, where=f"{guard - a} elements before row 0")
        elif a >= end:
            rec.update(from_row=rows - 1, where=f"{a - end} elements past the end of the allocation")
        else:
            r, c = divmod(a - guard, pitch)
            rec.update(from_row=r if c > cols else None,
                       where=f"{_row_label(r, lead, None)} {'padding ' if c >= cols else ''}column {c}")
        out.append(rec)
    return out


def _rank(codes: torch.Tensor) -> torch.Tensor:
    order = torch.empty(len(CLASSES), dtype=torch.int8)
    order[list(SEVERITY)] = torch.arange(len(CLASSES), dtype=torch.int8)
    return order[codes.long()]


def _merge(grid: torch.Tensor, row_bin: int, col_bin: int) -> torch.Tensor:
    """Bins of ``row_bin x col_bin`` cells, each showing its most severe class."""
    if row_bin == 1 and col_bin == 1:
        return grid
    n, w = grid.shape
    rank = _rank(grid)
    padded = torch.full((math.ceil(n / row_bin) * row_bin, math.ceil(w / col_bin) * col_bin), len(CLASSES) - 1,
                        dtype=torch.int8)
    padded[:n, :w] = rank
    best = padded.view(padded.shape[0] // row_bin, row_bin, -1, col_bin).amin(dim=(1, 3))
    return torch.tensor(SEVERITY, dtype=torch.int8)[best.long()]


def rle(grid: torch.Tensor) -> list[str]:
    """Per row ``"class:count class:count ..."`` (a string, so an indented JSON dump stays compact)."""
    rows = []
    for row in grid:
        change = torch.nonzero(row[1:] != row[:-1]).flatten() + 1
        bounds = [0] + change.tolist() + [row.numel()]
        vals = row[bounds[:-1]].tolist()
        rows.append(" ".join(f"{v}:{b - a}" for v, a, b in zip(vals, bounds[:-1], bounds[1:])))
    return rows


def expand(runs: list[str]) -> list[list[int]]:
    """The inverse of :func:`rle`."""
    out = []
    for row in runs:
        pairs = [tok.split(":") for tok in row.split()]
        out.append([int(c) for c, n in pairs for _ in range(int(n))])
    return out


def buffer_map(buf: GuardedBuffer, ref: torch.Tensor, context_len: torch.Tensor, fp8: str,
               magnitude: torch.Tensor | None = None, row_len: torch.Tensor | None = None,
               causal_tail: int = 0, consumer: str = consumers.DEFAULT_CONSUMER) -> dict:
    """The JSON-ready map of one call's guarded buffer (stage1's ``(H, rows, cols)`` as ``H * rows``
    flat rows, as the checks see it)."""
    rows, cols, pitch, guard = buf.flat_rows, buf.cols, buf.pitch, buf.guard
    lead = list(buf.view.shape[:-1])
    codes = classify(buf.storage, ref, context_len, pitch, cols, guard, fp8, magnitude, row_len, causal_tail, consumer)
    n = codes.numel()
    before, after = math.ceil(guard / pitch), math.ceil((n - guard - rows * pitch) / pitch)
    full = torch.full(((before + rows + after) * pitch,), UNALLOCATED, dtype=torch.int8)
    lo = before * pitch - guard
    full[lo:lo + n] = codes
    grid = full.view(-1, pitch)
    ctx = context_len.detach().cpu().long().tolist()
    has_stray = (grid == OUTSIDE).any(1).tolist()
    keep_before = [i for i in range(before) if i == before - 1 or has_stray[i]]
    keep_after = [before + rows + i for i in range(after) if i == 0 or has_stray[before + rows + i]]
    row_bin = math.ceil(rows / MAX_ROWS)
    labels = [f"guard {i - before}" for i in keep_before]
    if row_bin == 1:
        labels += [_row_label(r, lead, ctx) for r in range(rows)]
    else:
        labels += [f"rows {a}-{min(a + row_bin, rows) - 1}" for a in range(0, rows, row_bin)]
    labels += [f"guard +{i - before - rows + 1}" for i in keep_after]
    found = strays(codes, rows, pitch, cols, guard, lead)
    longest = max([s.get("overshoot_cols", 0) for s in found] + [0])
    left = min(ENDS_LEFT, cols)
    right = max(pitch - cols + ENDS_LEFT, min(longest + 8, pitch - cols + MAX_CHUNK))
    starts = (before + torch.arange(rows)) * pitch + cols - left  # each row's logical end - left, in `full`
    win = starts[:, None] + torch.arange(left + right)[None, :]
    ends = torch.where(win < full.numel(), full[win.clamp(max=full.numel() - 1)],
                       torch.tensor(UNALLOCATED, dtype=torch.int8))
    data_rows = grid[before:before + rows]
    result = {
        "classes": list(CLASSES), "rows": rows, "cols": cols, "pitch": pitch, "guard": guard, "lead_shape": lead,
        "counts": {CLASSES[c]: int(v) for c, v in enumerate(torch.bincount(codes.long(), minlength=len(CLASSES)))
                   if int(v) and c != UNALLOCATED},
        "strays": found[:MAX_STRAYS], "strays_total": len(found),
    }
    col_bin = 1
    while True:
        body = _merge(data_rows, row_bin, col_bin)
        parts = [_merge(grid[keep_before], 1, col_bin)] if keep_before else []
        parts += [body] + ([_merge(grid[keep_after], 1, col_bin)] if keep_after else [])
        result["grid"] = {"labels": labels, "row_bin": row_bin, "col_bin": col_bin,
                          "width": math.ceil(pitch / col_bin), "runs": rle(torch.cat(parts))}
        result["ends"] = {"left": left, "right": right, "col_bin": col_bin, "row_bin": row_bin,
                          "labels": labels[len(keep_before):len(keep_before) + body.shape[0]],
                          "runs": rle(_merge(ends, row_bin, col_bin))}
        if len(json.dumps(result, separators=(",", ":"))) <= MAX_BYTES or col_bin >= pitch:
            return result
        col_bin *= 2


def decode(m: dict, part: str = "grid") -> torch.Tensor:
    """A map's ``grid`` or ``ends`` as a ``(rows, width)`` int8 tensor of class codes."""
    return torch.tensor(expand(m[part]["runs"]), dtype=torch.int8)
