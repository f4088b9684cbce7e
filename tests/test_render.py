"""Buffer maps (parity.reports.render): a planted overshoot shows at the right rows and columns. The truth
each map is held to is independent of the classifier: the elements where the faulty backend's
buffer differs bit for bit from the correct backend's, and where the fault's own rule (whole
256-column chunks stored unmasked) says its writes land."""
from __future__ import annotations

import json
import math

import pytest
import torch

from parity.reports import render
from parity.backends import load_backend
from parity.backends.faults import CHUNK
from parity.judge.buffers import fill_sentinel, guarded_buffer
from parity.problem.cases import IndexerCase, build_inputs
from parity.run.harness import _reference, run_cell

CASE = IndexerCase(batch=3, next_n=2, context="ctx_eq_max_first")
C = {name: i for i, name in enumerate(render.CLASSES)}


def _buffers(case: IndexerCase, kind: str):
    """(faulty buffer, correct buffer, inputs) for the unmasked-chunk fault."""
    inp = build_inputs(case)
    bufs = []
    for spec in ("fault:unmasked_chunk_store", "torch"):
        buf = guarded_buffer((inp.rows,), inp.max_model_len, kind, "cpu")
        load_backend(spec).run("fused", inp, buf.view)
        bufs.append(buf)
    return bufs[0], bufs[1], inp


def _map(case: IndexerCase, kind: str):
    bad, good, inp = _buffers(case, kind)
    _, ref, _, mag = _reference(case)
    ctx = inp.context_lens.long().repeat_interleave(inp.next_n)
    codes = render.classify(bad.storage, ref, ctx, bad.pitch, bad.cols, bad.guard, case.fp8, mag)
    m = render.buffer_map(bad, ref, ctx, case.fp8, magnitude=mag)
    changed = bad.storage.view(torch.int32) != good.storage.view(torch.int32)
    return m, codes, changed, ctx, bad


def _spilling_rows(ctx, cols):
    """The fault's rule: a row whose context rounds up past the row end, in CHUNK columns."""
    return {r: math.ceil(c / CHUNK) * CHUNK - cols for r, c in enumerate(ctx.tolist())
            if math.ceil(c / CHUNK) * CHUNK > cols}


def _data_row(m, r):
    return next(i for i, lb in enumerate(m["grid"]["labels"]) if lb.startswith(f"row {r} "))


def test_exact_buffer_overshoot_shows_in_the_next_rows_leading_columns():
    m, codes, changed, ctx, buf = _map(CASE, "exact")
    cols, g = buf.cols, buf.guard
    spill = _spilling_rows(ctx, cols)
    assert spill[0] == 12 and len(spill) >= 3  # the case's premise
    # Where the fault's rule says it writes: right after each spilling row's logical end.
    expect = torch.zeros_like(changed)
    for r, n in spill.items():
        expect[g + r * cols + cols: g + r * cols + cols + n] = True
    assert bool((changed <= expect).all())
    stray = torch.isin(codes, torch.tensor([C["next_row"], C["outside_allocation"], C["row_padding"]], dtype=torch.int8))
    damaged = torch.isin(codes, torch.tensor([C["wrong_value"], C["spurious_finite"], C["spurious_neg_inf"]],
                                             dtype=torch.int8))
    assert bool((stray <= expect).all())  # no stray where the fault's rule writes nothing (a stray equal to the
    # right value bit for bit is still the fault's write, so `changed` can miss it)
    # What it wrote is seen, except a stray 0.0 within the value tolerance of a tiny reference logit.
    unseen = changed & ~(stray | damaged)
    assert set(codes[unseen].tolist()) <= {C["correct"]} and int(unseen.sum()) < int(changed.sum()) // 4
    last = len(ctx) - 1
    assert codes[g + len(ctx) * cols: g + len(ctx) * cols + spill[last]].tolist() == [C["outside_allocation"]] * 12
    # Row 0 into row 1, row 1 into row 2: all 12 columns differ from the reference there.
    grid = render.decode(m)
    for r in (0, 1):
        assert grid[_data_row(m, r + 1)][:13].tolist() == [C["next_row"]] * 12 + [C["correct"]]
    assert C["next_row"] not in grid[_data_row(m, 0)].tolist()
    by_row = {s["from_row"]: s for s in m["strays"]}
    assert by_row[0]["overshoot_cols"] == 12 and by_row[0]["lands"] == {"next_row": 12}
    assert by_row[last]["lands"] == {"outside_allocation": 12} and by_row[last]["overshoot_cols"] == 12
    assert set(by_row) <= set(spill)
    # The zoom on row 0's end: its last columns, then 12 stray columns.
    ends = render.decode(m, "ends")
    left = m["ends"]["left"]
    assert ends[0][left:left + 12].tolist() == [C["next_row"]] * 12 and ends[0][left + 12] != C["next_row"]


def test_padded_buffer_overshoot_shows_in_the_row_padding():
    m, codes, changed, ctx, buf = _map(CASE, "padded")
    spill = _spilling_rows(ctx, buf.cols)
    grid = render.decode(m)
    assert grid.shape[1] == buf.pitch
    for r in range(len(ctx)):
        row = grid[_data_row(m, r)]
        n = spill.get(r, 0)
        assert row[buf.cols:buf.cols + n].tolist() == [C["row_padding"]] * n
        assert set(row[buf.cols + n:].tolist()) == {C["sentinel"]}
        assert set(row[:buf.cols].tolist()) <= {C["correct"], C["masked"]}  # the rows themselves match
    assert [(s["from_row"], s["overshoot_cols"], s["lands"]) for s in m["strays"]] == [
        (r, n, {"row_padding": n}) for r, n in sorted(spill.items())]
    assert m["counts"]["row_padding"] == int(changed.sum()) == sum(spill.values())


def test_map_agrees_with_the_checks_counts():
    """The map's wrong values and wrong-mask elements are the values and mask checks' own counts
    (NaN included: the scale mix-up makes some)."""
    r = run_cell(load_backend("fault:scales_interleaved"), "fused", "exact", IndexerCase(batch=2, next_n=1))
    values, mask = (next(f for f in r["findings"] if f["check"] == c) for c in ("values", "mask"))
    assert values["details"]["bad_count"] > 0 and r["map"]["counts"]["wrong_value"] == values["details"]["bad_count"]
    want = sum(v["spurious_neg_inf"] for v in mask["details"]["per_row"].values())
    assert mask["details"]["nan"] > 0 and r["map"]["counts"]["spurious_neg_inf"] == want
    r = run_cell(load_backend("fault:causal_off_by_one"), "fused", "exact", IndexerCase(batch=3, next_n=2),
                 consumer="unbounded")  # one position too many: a mask error for an unbounded reader only
    mask = next(f for f in r["findings"] if f["check"] == "mask")
    want = sum(v["spurious_finite"] for v in mask["details"]["per_row"].values())
    assert want > 0 and r["map"]["counts"]["spurious_finite"] == want
    assert "spurious_neg_inf" not in r["map"]["counts"] and "wrong_value" not in r["map"]["counts"]


def test_a_row_wrong_from_column_0_is_not_blamed_on_the_previous_row():
    """A stride bug in a padded buffer: the previous row's padding is written through, and the rows
    are wrong from column 0 for more than a chunk: no next-row attribution for those."""
    r = run_cell(load_backend("fault:ignores_stride0"), "fused", "padded", IndexerCase(batch=3, next_n=2))
    grid, m = render.decode(r["map"]), r["map"]
    for i in range(1, m["rows"]):
        assert C["next_row"] not in grid[_data_row(m, i)].tolist(), f"row {i}: a column blamed on row {i - 1}"
    oob, mask = (next(f for f in r["findings"] if f["check"] == c) for c in ("oob", "mask"))
    assert set(oob["details"]["landed"]) == {"row_padding"}  # the padding written through, nothing else
    assert "not attributed to a previous row" in mask["summary"] and mask["details"]["not_next_row"]


def test_passing_cells_carry_no_map():
    r = run_cell(load_backend("torch"), "fused", "exact", CASE)
    assert r["status"] == "pass" and "map" not in r


def test_a_large_scattered_failure_stays_bounded_and_keeps_its_strays():
    """400 rows x 1500 columns with half the values wrong: rows and columns are merged, the JSON
    stays under the budget, and a single stray write in the guard still shows."""
    rows, cols = 400, 1500
    buf = guarded_buffer((rows,), cols, "exact", "cpu")
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(rows, cols, generator=g, dtype=torch.float64) + 1
    out = ref.float().clone()
    out[torch.rand(rows, cols, generator=g) < 0.5] += 5
    buf.view.copy_(out)
    buf.storage[buf.guard + rows * cols + 7] = 1.0  # one write past the allocation
    ctx = torch.full((rows,), cols - render.MAX_CHUNK)  # no row reaches its end: nothing to attribute
    m = render.buffer_map(buf, ref, ctx, "e4m3fn")
    size = len(json.dumps(m))
    assert size <= render.MAX_BYTES <= 64 * 1024
    assert m["grid"]["row_bin"] == 2 and m["grid"]["col_bin"] >= 2
    grid = render.decode(m)
    assert C["outside_allocation"] in grid[-1].tolist()
    assert m["strays"] == [{"start": rows * cols + 7, "length": 1, "lands": {"outside_allocation": 1},
                            "from_row": rows - 1, "where": "7 elements past the end of the allocation"}]
    inside = torch.arange(cols)[None, :] < ctx[:, None]
    assert m["counts"]["wrong_value"] == int(((out != ref.float()) & inside).sum())


def test_bad_geometry_is_refused():
    buf = guarded_buffer((2,), 10, "exact", "cpu")
    fill_sentinel(buf.storage)
    with pytest.raises(ValueError, match="ref must be"):
        render.classify(buf.storage, torch.zeros(3, 10, dtype=torch.float64), torch.tensor([1, 1]), 10, 10,
                        buf.guard, "e4m3fn")
    with pytest.raises(ValueError, match="cannot hold"):
        render.classify(buf.storage[:100], torch.zeros(2, 10, dtype=torch.float64), torch.tensor([1, 1]), 10, 10,
                        buf.guard, "e4m3fn")
