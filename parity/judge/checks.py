"""Checks of one kernel output against the float64 reference. Each returns a :class:`Finding`
(structured, JSON-ready) instead of asserting, so a report can say what went wrong and where.

All checks see the output as 2-D ``(rows, cols)``: stage1's ``(H, rows, cols)`` is flattened, with
``valid_len``/``context_len`` repeated per head.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from parity.judge import consumers
from parity.judge.buffers import GuardedBuffer, sentinel_mask

# (rtol of the row's max |ref|, atol). fp8 values are dequantized exactly, so the error is fp32
# accumulation over head_dim and heads: ~1e-6 of the row max on CPU, up to ~2e-4 for GPU kernels
# (SPEC section 5). 2e-3 leaves headroom for both flavours and still fails any scale or layout bug,
# which moves values by O(1) of the row max.
TOLERANCES = {"e4m3fn": (2e-3, 1e-5), "e4m3fnuz": (2e-3, 1e-5), "mxfp4": (2.0**-16, 1e-30)}
# mxfp4 is derived, not measured (docs/fp4.md): every product of two E2M1 values and
# their UE8M0 scales is exact in float32, so an fp32-accumulating kernel differs from the float64
# reference only by the roundings of its sums: at most (D - 1) in a head's dot, one for the weight,
# H - 1 in the head sum, each 2**-24 of the summed magnitude |w| (|q| . |k|) (the ``magnitude``
# check_values is given): (D + H - 1) * 2**-24 = 1.14e-5 at D = 128, H = 64, under 2**-16 = 1.53e-5
# for any D + H <= 256 (DeepGEMM's FP4 path takes D <= 128, H <= 64). A kernel that rounds more (an
# fp8 or bf16 accumulator or epilogue) is a finding; one UE8M0 step on one group of one key is not
# inside it (the selftest's one_group_scale_off).
CALC_DIFF_LIMIT = 1e-3  # DeepGEMM's and vLLM's tests
MAX_LISTED = 8


def mxfp4_rounding_bound(head_dim: int, heads: int) -> float:
    """The derived worst case above: roundings of an fp32-accumulating kernel, relative to the magnitude."""
    return (head_dim + heads - 1) * 2.0**-24


@dataclass
class Finding:
    check: str  # mask | values | oob | determinism | topk | error
    ok: bool
    summary: str
    details: dict = field(default_factory=dict)
    # (rows, cols) bool of the positions this check found wrong; kept for attribution, not reported.
    where: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {"check": self.check, "ok": self.ok, "summary": self.summary, "details": self.details}


def _first(idx: torch.Tensor, n: int = MAX_LISTED) -> list[int]:
    return [int(x) for x in idx[:n]]


def _runs(cols: torch.Tensor, n: int = MAX_LISTED) -> list[list[int]]:
    """Sorted column indices as their first ``n`` maximal runs ``[start, stop)``."""
    runs: list[list[int]] = []
    for c in cols.tolist():
        if runs and runs[-1][1] == c:
            runs[-1][1] = c + 1
        elif len(runs) == n:
            break
        else:
            runs.append([c, c + 1])
    return runs


def _check_shapes(out: torch.Tensor, ref: torch.Tensor | None, lens: torch.Tensor | None, lens_name: str) -> None:
    """A 2-D output, a reference of its shape, one integer length per row: a length tensor of another size
    would broadcast (one length for every row judges a prefix of each), so it is refused by name."""
    if out.dim() != 2:
        raise ValueError(f"out must be 2-D (rows, cols), got shape {tuple(out.shape)}")
    if ref is not None and tuple(ref.shape) != tuple(out.shape):
        raise ValueError(f"ref must have out's shape {tuple(out.shape)}, got {tuple(ref.shape)}")
    if lens is not None:
        if lens.dtype.is_floating_point or lens.dtype == torch.bool or lens.numel() != out.shape[0]:
            raise ValueError(f"{lens_name} must hold one integer per row of out ({out.shape[0]}), got "
                             f"{lens.dtype} of shape {tuple(lens.shape)}")


def check_mask(out: torch.Tensor, ref: torch.Tensor, row_len: torch.Tensor,
               consumer: str = consumers.DEFAULT_CONSUMER) -> Finding:
    """The finite/-inf pattern of each row must equal the reference's where the consumer reads it:
    inside ``[0, row_len)`` for a length-bounded reader, the whole row for an unbounded one (which
    then needs -inf past the valid length in every row, a row with no valid position included).
    Where the reference is -inf only -inf matches: +inf and NaN are not finite either, but a reader
    that ranks the row (torch.topk) picks them first.
    Finite values past the valid length are reported either way (``past_valid_len``: how many, which
    rows, which of them empty); for a length-bounded reader they are don't-care."""
    _check_shapes(out, ref, row_len, "row_len")
    out = out.detach().cpu().float()
    cols = out.shape[1]
    lens = row_len.detach().cpu().long()
    valid = consumers.read_mask(lens, cols, consumers.LENGTH_BOUNDED)
    judged = consumers.read_mask(lens, cols, consumer)
    got_fin, want_fin = torch.isfinite(out), torch.isfinite(ref)
    nan = torch.isnan(out) & judged
    not_neg_inf = ~got_fin & (out != float("-inf"))  # +inf or NaN: never what a masked position holds
    diff = ((got_fin != want_fin) | not_neg_inf) & judged
    rows = torch.nonzero(diff.any(1)).flatten()
    per_row = {}
    for r in rows[:MAX_LISTED]:
        c = torch.nonzero(diff[r]).flatten()
        per_row[int(r)] = {
            "first_cols": _first(c),
            "count": int(c.numel()),
            "spurious_finite": int((got_fin[r] & ~want_fin[r] & judged[r]).sum()),
            "spurious_neg_inf": int((~got_fin[r] & want_fin[r] & judged[r]).sum()),
            "pos_inf_or_nan": int((not_neg_inf[r] & judged[r]).sum()),
        }
    ok = rows.numel() == 0
    summary = "mask matches" if ok else f"mask differs in {rows.numel()} rows ({int(diff.sum())} positions)"
    if int(nan.sum()):
        summary += f"; {int(nan.sum())} NaN where the reader looks"
    past = got_fin & ~valid
    past_rows = torch.nonzero(past.any(1)).flatten()
    empty = lens <= 0
    empty_hit = torch.nonzero(empty & past.any(1)).flatten()
    record = {"count": int(past.sum()), "rows": _first(past_rows, 64), "empty_rows": _first(empty_hit, 64),
              "consumer": consumer, "dont_care": consumer == consumers.LENGTH_BOUNDED}
    if past_rows.numel():
        what = (f"{record['count']} finite values past the valid length in {past_rows.numel()} rows"
                + (f" ({empty_hit.numel()} of them with no valid position)" if empty_hit.numel() else ""))
        summary += f" ({what}: don't-care for a length-bounded reader)" if record["dont_care"] else \
            f"; {what}, where an unbounded reader needs -inf"
    runs = {int(r): _runs(torch.nonzero(diff[r]).flatten()) for r in rows[:MAX_LISTED]}
    details = {"rows": _first(rows, 64), "per_row": per_row, "runs": runs, "nan": int(nan.sum()),
               "consumer": consumer, "past_valid_len": record,
               "dummy_rows_written": _first(empty_hit, 64) if not record["dont_care"] else []}
    return Finding("mask", ok, summary, details, where=diff | nan)


def calc_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    """DeepGEMM's global similarity ``1 - 2 sum(xy) / sum(x^2 + y^2)`` over the given (finite) values."""
    x, y = x.double(), y.double()
    denom = (x * x + y * y).sum()
    return 0.0 if float(denom) == 0 else float(1 - 2 * (x * y).sum() / denom)


# Relative rounding of the stored logit on top of the computation's error: bf16 keeps 8 significant
# bits, so round-to-nearest moves a value by at most 2**-8 of itself (float32's is inside rtol).
OUTPUT_ROUNDING = {torch.float32: 0.0, torch.bfloat16: 2.0**-8}


def check_values(out: torch.Tensor, ref: torch.Tensor, context_len: torch.Tensor, fp8: str,
                 magnitude: torch.Tensor | None = None) -> Finding:
    """``|out - ref| <= atol + rtol * max(rowmax|ref|, magnitude) + rounding(out.dtype) * |ref|``
    where both are finite inside the context. ``magnitude`` (optional, elementwise
    ``|w| * (|q| . |k|) * scale``) is the size of the summed terms: fp8 matrix units accumulate with a
    short mantissa, so the error of a logit scales with it, and for a row with one valid position
    ``rowmax|ref|`` is that logit alone."""
    if fp8 not in TOLERANCES:
        raise ValueError(f"fp8 must be one of {sorted(TOLERANCES)}, got {fp8!r}")
    _check_shapes(out, ref, context_len, "context_len")
    if magnitude is not None and tuple(magnitude.shape) != tuple(out.shape):
        raise ValueError(f"magnitude must have out's shape {tuple(out.shape)}, got {tuple(magnitude.shape)}")
    rtol, atol = TOLERANCES[fp8]
    rounding = OUTPUT_ROUNDING[out.dtype] if out.dtype in OUTPUT_ROUNDING else 0.0
    out = out.detach().cpu().double()
    cols = out.shape[1]
    inside = torch.arange(cols)[None, :] < context_len.cpu()[:, None]
    both = torch.isfinite(out) & torch.isfinite(ref) & inside
    ref0 = torch.where(both, ref, torch.zeros_like(ref))
    out0 = torch.where(both, out, torch.zeros_like(out))
    rowmax = ref0.abs().amax(dim=1, keepdim=True)
    scale = rowmax if magnitude is None else torch.maximum(rowmax, magnitude.double())
    bound = atol + rtol * scale + rounding * ref0.abs()
    err = (out0 - ref0).abs()
    ratio = err / bound
    bad = (ratio > 1) & both
    cd = calc_diff(out[both], ref[both]) if int(both.sum()) else 0.0
    worst = {}
    if int(both.sum()):
        flat = int(torch.argmax(torch.where(both, ratio, torch.zeros_like(ratio))))
        r, c = divmod(flat, cols)
        worst = {"row": r, "col": c, "got": float(out[r, c]), "want": float(ref[r, c]),
                 "abs_err": float(err[r, c]), "err_over_rowmax": float(err[r, c] / max(float(rowmax[r]), 1e-30)),
                 "err_over_bound": float(ratio[r, c])}
    bad_rows = torch.nonzero(bad.any(1)).flatten()
    per_row = {int(r): {"first_cols": _first(torch.nonzero(bad[r]).flatten()), "count": int(bad[r].sum())}
               for r in bad_rows[:MAX_LISTED]}
    ok = bad_rows.numel() == 0
    # the bound is rtol times the larger of the row max and the logit's magnitude: the worst error is given
    # against that bound, and against the row max alone
    summary = (f"values within atol + rtol={rtol:g} x max(row max, magnitude) (worst {worst.get('err_over_bound', 0):.2f} "
               f"of it, {worst.get('err_over_rowmax', 0):.2e} of row max), calc_diff={cd:.2e}"
               if ok else f"{int(bad.sum())} values off in {bad_rows.numel()} rows; worst {worst}")
    return Finding("values", ok, summary, {
        "rtol": rtol, "atol": atol, "output_rounding": rounding, "worst": worst, "calc_diff": cd, "calc_diff_ok": cd < CALC_DIFF_LIMIT,
        "bad_count": int(bad.sum()), "rows": _first(bad_rows, 64), "per_row": per_row, "compared": int(both.sum()),
        "runs": {int(r): _runs(torch.nonzero(bad[r]).flatten()) for r in bad_rows[:MAX_LISTED]},
    }, where=bad)


def check_out_of_bounds(buf: GuardedBuffer) -> Finding:
    """Every write outside the logical region, classified by where it landed. (What lies inside a
    row past its valid length is the mask check's, judged by the consumer rule.)"""
    st = buf.storage.detach().cpu()
    written = ~sentinel_mask(st)
    N, pitch, cols, g = buf.flat_rows, buf.pitch, buf.cols, buf.guard
    end = g + N * pitch
    idx = torch.arange(st.numel())
    rel = idx - g
    col = torch.remainder(rel, pitch)
    in_rows = (idx >= g) & (idx < end)
    before = written & (idx < g)
    after = written & (idx >= end)
    padding = written & in_rows & (col >= cols)
    landed = {}
    if int(before.sum()):
        landed["outside_allocation_before"] = {"count": int(before.sum()),
                                               "elements_before_row0": int(g - idx[before].min())}
    if int(after.sum()):
        # Columns past max_model_len, counted from the last row's logical end.
        over = idx[after] - (g + (N - 1) * pitch + cols) + 1
        landed["outside_allocation_after"] = {"count": int(after.sum()), "max_overshoot_cols": int(over.max())}
    if int(padding.sum()):
        prow = torch.div(rel[padding], pitch, rounding_mode="floor")
        over = col[padding] - cols + 1
        landed["row_padding"] = {"count": int(padding.sum()), "rows": _first(torch.unique(prow), 64),
                                 "max_overshoot_cols": int(over.max())}
    ok = not landed
    if ok:
        summary = "no writes outside the logical region"
    else:
        summary = "; ".join(f"{k}: {v['count']} writes" + (f", overshoot {v['max_overshoot_cols']} cols"
                                                           if "max_overshoot_cols" in v else "")
                            for k, v in landed.items())
    return Finding("oob", ok, summary, {"landed": landed, "pitch": pitch, "cols": cols})


def padding_written(buf: GuardedBuffer) -> torch.Tensor | None:
    """Per flat row, how many columns of its padding were written (``buf.pad`` of them: written
    through to its end, as a store that ran from the row's end into the next row must have); None
    for a buffer without padding."""
    if buf.pad == 0:
        return None
    written = ~sentinel_mask(buf.storage.detach().cpu())
    body = written[buf.guard:buf.guard + buf.flat_rows * buf.pitch].view(buf.flat_rows, buf.pitch)
    return body[:, buf.cols:].sum(1)


MAX_CHUNK = 256  # widest unmasked store of the known bug class (ChunkK up to 256 columns)


def _reach(context_len: int, cols: int) -> int:
    """Columns past the row end that an unmasked store of chunks up to MAX_CHUNK wide, aligned to
    the row start, can reach from a row holding ``context_len`` positions."""
    return math.ceil(context_len / MAX_CHUNK) * MAX_CHUNK - cols if context_len else 0


def attribute_next_row(mask: Finding, values: Finding, context_len: torch.Tensor, cols: int,
                       causal_tail: int = 0, row_len: torch.Tensor | None = None,
                       padding: torch.Tensor | None = None, pad: int = 0) -> tuple[Finding | None, str | None]:
    """With an exact buffer an overshoot of row r lands in row r+1's leading columns (for stage1's
    flattened (H * rows) buffer, the last row of head h spills into the first row of head h+1).

    Returns ``(oob finding, None)`` only on positive evidence, for every row whose column 0 is wrong:
    its wrong positions (mask and values merged: a stray 0.0 at column 0 then spurious -inf is one
    run) all lie within the columns the previous row can reach, the row matches the reference after
    them, and no other row is wrong where no overshoot reaches (the first row anywhere, or past the
    reach of its previous row): such damage shows the values are the kernel's own. Stray values may
    coincide with the right ones, so a run may have holes. Mask errors in the last ``causal_tail``
    positions of a row's valid length and past it (``row_len``; ``context_len`` without it) belong to
    the causal rule or to what lies past the length, classes of their own, and do not count against
    the attribution.

    A padded buffer (``padding``: per row, the padding columns written, of ``pad``; from
    :func:`padding_written`) is reached from the previous row only through all of that row's padding:
    a row whose previous row's padding is not written through to its end was not reached, whatever
    its leading columns hold (the guard check's own evidence). When nothing is attributed, the second
    item says why."""
    bad = None
    for f in (mask, values):
        if f.where is not None:
            bad = f.where.clone() if bad is None else bad | f.where
    if bad is None or not bool(bad[:, 0].any()):
        return None, None
    ctx = [int(c) for c in context_len.cpu()]
    bound = (row_len if row_len is not None else context_len).cpu().long()
    if causal_tail and mask.where is not None:
        tail = torch.arange(cols)[None, :] >= (bound[:, None] - causal_tail)
        only_mask = mask.where & ~(values.where if values.where is not None else torch.zeros_like(mask.where))
        bad &= ~(tail & only_mask)
    damaged = {r: torch.nonzero(bad[r]).flatten() for r in torch.nonzero(bad.any(1)).flatten().tolist()}
    leading = {r: int(c.max()) + 1 for r, c in damaged.items() if int(c[0]) == 0}
    if not leading:
        return None, None
    head = f"values wrong from column 0 in {len(leading)} rows, not attributed to a previous row's overshoot: "

    def reach(r: int) -> int:
        """Columns of row r a store of row r - 1 can have reached."""
        if r == 0:
            return 0
        if padding is None:
            return _reach(ctx[r - 1], cols)
        return cols if int(padding[r - 1]) >= pad else 0  # past the padding: how far is not bounded

    for r in sorted(leading):
        if reach(r) > 0:
            continue
        if r > 0 and padding is not None:
            return None, head + (f"row {r - 1}'s padding is not written through to its end ({int(padding[r - 1])} of "
                                 f"its {pad} columns written), so no store of row {r - 1} reached row {r}")
        return None, head + f"row {r} has the same damage and no previous row reaches it"
    for r, c in sorted(damaged.items()):
        if r not in leading and int(c.max()) >= reach(r):
            where = "row 0 is wrong" if r == 0 else f"row {r} is wrong past the {reach(r)} columns row {r - 1} can reach"
            return None, head + f"{where} (from column {int(c[0])}): the values are the kernel's own"
    desc, why_not = {}, []
    for r, w in sorted(leading.items()):
        if w >= int(bound[r]):
            why_not.append(f"row {r} is wrong up to column {w - 1}, none of its {int(bound[r])} positions is right "
                           "after it")
        elif w > reach(r):
            why_not.append(f"row {r} is wrong up to column {w - 1}, beyond the {reach(r)} columns row {r - 1} can reach")
        else:
            desc[r] = {"from_row": r - 1, "leading_cols_damaged": w}
    if why_not:
        return None, head + why_not[0]
    return Finding("oob", False,
                   f"leading columns of {len(desc)} rows damaged, consistent with the previous row writing past "
                   f"its end (in the next row): {desc}", {"landed": {"next_row": desc}}), None


def cross_check_next_row(exact: dict, padded: dict) -> None:
    """Weigh an exact-buffer cell's next-row attribution against the padded-buffer run of the same
    cell (result dicts of :func:`parity.run.harness.run_cell`), in place. A real overshoot of row r-1
    lands in that row's padding when there is padding: confirmed when it does; withdrawn, with the
    reason on the values/mask findings, when the padded run wrote nothing past any row end."""
    if padded.get("status") not in ("pass", "fail"):
        return
    nxt = [f for f in exact.get("findings", []) if f["check"] == "oob" and "next_row" in f["details"].get("landed", {})]
    if not nxt:
        return
    pad = {}
    for f in padded.get("findings", []):
        if f["check"] == "oob":
            pad = f["details"].get("landed", {}).get("row_padding", {})
    claims = nxt[0]["details"]["landed"]["next_row"]
    if pad:
        truncated = len(pad.get("rows", [])) >= 64
        ok = all((truncated or int(c["from_row"]) in pad["rows"]) and pad["max_overshoot_cols"] >= c["leading_cols_damaged"]
                 for c in claims.values())
        if ok:
            nxt[0]["details"]["confirmed_by"] = padded["id"]
            nxt[0]["summary"] += f"; confirmed: {padded['id']} wrote into the row padding"
        return
    why = (f"values wrong from column 0, not attributed to a previous row's overshoot: {padded['id']} "
           "(the same cell with padded rows) wrote nothing past any row end")
    exact["findings"] = [f for f in exact["findings"] if f is not nxt[0]]
    for f in exact["findings"]:
        if f["check"] in ("values", "mask") and not f["ok"]:
            f["summary"] += f" ({why})"
            f["details"]["not_next_row"] = why


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().view({4: torch.int32, 2: torch.int16}[t.element_size()])


def check_determinism(first: torch.Tensor, *others: torch.Tensor, row_len: torch.Tensor | None = None,
                      consumer: str = consumers.DEFAULT_CONSUMER, run: int | None = None,
                      runs: int | None = None) -> Finding:
    """Every later run on the same inputs must be bitwise equal to the first (DeepGEMM's own test
    replays its kernel 20 times): a racing store shows as differing positions in some run. With
    ``row_len`` (each row of ``first.reshape(-1, cols)``) and a length-bounded consumer, positions past
    a row's length are don't-care here too (a kernel that allocates its output with ``torch::empty``
    leaves whatever was there): their differences are counted, not failed on. ``run`` and ``runs`` number
    a single later run for a caller that compares its runs one at a time (default: 2.., 1 + len(others))."""
    consumers.check_consumer(consumer)
    for i, other in enumerate(others, 2):  # bit patterns of two dtypes or sizes are not comparable
        if other.dtype != first.dtype or other.shape != first.shape:
            raise ValueError(f"run {i} is {other.dtype} {tuple(other.shape)}; run 1 is {first.dtype} "
                             f"{tuple(first.shape)}: determinism compares the same buffer's runs")
    if first.element_size() not in (2, 4):
        raise ValueError(f"first must be float32 or a 16-bit float (the logits' dtypes), got {first.dtype}")
    if row_len is not None:
        _check_shapes(first.reshape(-1, first.shape[-1]), None, row_len, "row_len")
    a = _bits(first)
    n_runs = runs or 1 + len(others)
    cols = first.shape[-1]
    read = None
    if row_len is not None and consumer == consumers.LENGTH_BOUNDED:
        read = consumers.read_mask(row_len, cols, consumer)
    dont_care = 0
    for k, other in enumerate(others, run or 2):
        diff = (a != _bits(other)).reshape(-1, cols)
        if read is not None:
            dont_care = max(dont_care, int((diff & ~read).sum()))
            diff &= read
        n = int(diff.sum())
        if n:
            pos = torch.nonzero(diff)
            return Finding("determinism", False, f"{n} positions differ between run 1 and run {k} of {n_runs} on "
                           "the same inputs", {"count": n, "run": k, "runs": n_runs, "dont_care_differ": dont_care,
                                               "first_positions": [[int(r), int(c)] for r, c in pos[:MAX_LISTED]]})
    if dont_care:
        return Finding("determinism", True, f"{n_runs} runs bitwise equal where the consumer reads ({dont_care} "
                       "positions past the rows' lengths differ: don't-care)",
                       {"runs": n_runs, "dont_care_differ": dont_care, "consumer": consumer})
    return Finding("determinism", True, f"{n_runs} runs bitwise equal", {"runs": n_runs})
