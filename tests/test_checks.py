"""Every detector catches its planted fault, at the right place."""
import pytest
import torch

from parity.judge import checks
from parity.backends.base import SimpleBackend
from parity.backends.torch_ref import TorchBackend
from parity.judge.buffers import guarded_buffer
from parity.problem.cases import IndexerCase
from parity.run.harness import run_cell
from parity.selftest import PLANTED

from fake_kernels import WritesPastLengths
from findings import finding


@pytest.mark.parametrize("planted", PLANTED, ids=lambda p: f"{p.fault}-{p.buffer}-{p.case.context}")
def test_planted_fault_is_caught_where_it_is(planted):
    caught, detail = planted.run()
    assert caught, detail


@pytest.mark.parametrize("planted", PLANTED, ids=lambda p: f"{p.fault}-{p.buffer}-{p.case.context}")
def test_the_correct_kernel_passes_each_planted_cell(planted):
    """The other half of each detector's proof: the same cell, buffer, consumer rule and repeats, judged
    on a correct kernel, has no finding. A check that flagged these cells whatever it was given would
    still 'catch' every planted fault above."""
    r = run_cell(TorchBackend(), planted.path, planted.buffer, planted.case, repeats=planted.repeats,
                 consumer=planted.consumer)
    assert r["status"] == "pass", [f["summary"] for f in r["findings"] if not f["ok"]]


@pytest.mark.parametrize("kind", ["exact", "padded"])
def test_oob_classifies_each_landing_place(kind):
    rows, cols, pad = 4, 100, 256
    buf = guarded_buffer((rows,), cols, kind, "cpu", pad=pad)
    assert checks.check_out_of_bounds(buf).ok
    st = buf.storage
    st[buf.guard - 3] = 1.0  # 3 elements before row 0
    last_end = buf.guard + (rows - 1) * buf.pitch + cols
    st[last_end + (pad if kind == "padded" else 0) + 6] = 2.0  # past the allocation's rows
    if kind == "padded":
        st[buf.guard + 1 * buf.pitch + cols + 9] = 3.0  # row 1 padding, 10th column past the end
    f = checks.check_out_of_bounds(buf)
    landed = f.details["landed"]
    assert not f.ok
    assert landed["outside_allocation_before"] == {"count": 1, "elements_before_row0": 3}
    assert landed["outside_allocation_after"]["max_overshoot_cols"] == (pad if kind == "padded" else 0) + 7
    if kind == "padded":
        assert landed["row_padding"]["rows"] == [1] and landed["row_padding"]["max_overshoot_cols"] == 10


def test_writes_inside_the_rows_are_not_the_guard_checks():
    buf = guarded_buffer((2,), 50, "padded", "cpu")
    buf.view[1, 45] = 0.0  # past a row's valid length, inside the row: the consumer rule's, not an oob write
    assert checks.check_out_of_bounds(buf).ok


@pytest.mark.parametrize("consumer", ["length-bounded", "unbounded"])
def test_mask_reports_first_differing_columns_where_the_reader_looks(consumer):
    ref = torch.zeros(2, 10, dtype=torch.float64)
    ref[:, 6:] = float("-inf")  # 6 valid positions a row
    out = ref.float().clone()
    out[1, 7] = 1.0  # finite past the valid length
    out[1, 2] = float("-inf")  # spurious -inf inside it
    f = checks.check_mask(out, ref, torch.tensor([6, 6]), consumer)
    assert not f.ok and f.details["rows"] == [1] and f.details["consumer"] == consumer
    if consumer == "length-bounded":
        assert f.details["per_row"][1] == {"first_cols": [2], "count": 1, "spurious_finite": 0, "spurious_neg_inf": 1,
                                           "pos_inf_or_nan": 0}
    else:
        assert f.details["per_row"][1] == {"first_cols": [2, 7], "count": 2, "spurious_finite": 1,
                                           "spurious_neg_inf": 1, "pos_inf_or_nan": 0}
    past = f.details["past_valid_len"]
    assert (past["count"], past["rows"], past["dont_care"]) == (1, [1], consumer == "length-bounded")


@pytest.mark.parametrize("fill", [float("inf"), float("nan")])
@pytest.mark.parametrize("consumer", ["length-bounded", "unbounded"])
def test_pos_inf_or_nan_where_neg_inf_belongs_fails_where_the_reader_looks(consumer, fill):
    """Neither is finite, as -inf is not; torch.topk over the row picks +inf (and NaN) first."""
    ref = torch.zeros(2, 10, dtype=torch.float64)
    ref[:, 6:] = float("-inf")
    out = ref.float().clone()
    out[0, 8] = fill  # past the valid length: read by an unbounded reader only
    f = checks.check_mask(out, ref, torch.tensor([6, 6]), consumer)
    assert f.ok == (consumer == "length-bounded"), f.summary
    if not f.ok:
        assert f.details["per_row"][0]["pos_inf_or_nan"] == 1 and f.details["per_row"][0]["first_cols"] == [8]
    out[1, 3] = fill  # inside it: every reader
    f = checks.check_mask(out, ref, torch.tensor([6, 6]), consumer)
    assert not f.ok and 1 in f.details["rows"]


def test_an_unknown_consumer_is_named():
    with pytest.raises(ValueError, match="consumer must be one of"):
        checks.check_mask(torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.float64), torch.tensor([2]), "bounded")


def test_values_report_worst_element_and_calc_diff():
    ref = torch.linspace(-1, 1, 30, dtype=torch.float64).view(3, 10)
    out = ref.float().clone()
    assert checks.check_values(out, ref, torch.tensor([10] * 3), "e4m3fn").ok
    out[2, 4] += 0.01  # 1% of the row max: over rtol 2e-3
    f = checks.check_values(out, ref, torch.tensor([10] * 3), "e4m3fn")
    assert not f.ok and (f.details["worst"]["row"], f.details["worst"]["col"]) == (2, 4)
    assert f.details["calc_diff"] > 0


def test_determinism_names_positions():
    a = torch.randn(3, 8)
    b = a.clone()
    b[2, 5] = torch.nextafter(b[2, 5], torch.tensor(10.0))
    f = checks.check_determinism(a, b)
    assert not f.ok and f.details["first_positions"] == [[2, 5]]


def test_determinism_judges_what_the_consumer_reads():
    a = torch.randn(3, 8)
    b = a.clone()
    b[1, 6:] += 1.0  # past row 1's length of 6: a torch::empty output's leftovers, different each call
    lens = torch.tensor([8, 6, 8])
    f = checks.check_determinism(a, b, row_len=lens, consumer="length-bounded")
    assert f.ok and f.details["dont_care_differ"] == 2
    assert not checks.check_determinism(a, b, row_len=lens, consumer="unbounded").ok
    b[1, 5] += 1.0  # inside the length: a race, under either rule
    f = checks.check_determinism(a, b, row_len=lens, consumer="length-bounded")
    assert not f.ok and f.details["first_positions"] == [[1, 5]]


def test_junk_past_the_length_that_changes_per_call_fails_only_the_unbounded_rule():
    case = IndexerCase(batch=2, next_n=2, context="ctx_eq_max_first")
    bounded = run_cell(WritesPastLengths(per_call=True), "fused", "exact", case, consumer="length-bounded")
    assert bounded["status"] == "pass", bounded["findings"]
    assert finding(bounded, "determinism")["details"]["dont_care_differ"] > 0
    unbounded = run_cell(WritesPastLengths(per_call=True), "fused", "exact", case, consumer="unbounded")
    failed = {f["check"] for f in unbounded["findings"] if not f["ok"]}
    assert "mask" in failed and "determinism" in failed


class _WrongShape(SimpleBackend):
    def run(self, path, inputs, out):
        return torch.zeros(out.shape[0], out.shape[1] + 1)


def test_backend_returning_wrong_shape_is_an_error_finding():
    r = run_cell(_WrongShape(name="wrong-shape"), "fused", "exact", IndexerCase(batch=1, next_n=1))
    assert r["status"] == "error" and "expected (1, 500)" in r["findings"][0]["summary"]


def test_bad_case_inputs_become_an_error_finding_not_a_crash():
    class _Nan(SimpleBackend):
        def run(self, path, inputs, out):  # pragma: no cover - never reached
            raise AssertionError

    case = IndexerCase(batch=1, next_n=1)
    from parity.run import harness

    harness._inputs.cache_clear()
    inp = harness._inputs(case, "cpu")
    inp.weights[0, 0] = float("nan")
    try:
        r = run_cell(_Nan(name="x"), "fused", "exact", case)
        assert r["status"] == "error" and "NaN" in r["findings"][0]["summary"]
    finally:
        harness._inputs.cache_clear()


class _WritesItsCache(SimpleBackend):
    def run(self, path, inputs, out):
        from parity.backends.torch_ref import TorchBackend

        TorchBackend().run(path, inputs, out)
        inputs.kv_cache[0, 0, 0, 0] += 1  # twice over the two calls: never back to the original


def test_backend_writing_its_inputs_is_caught_and_inputs_restored():
    from parity.run import harness

    case = IndexerCase(batch=1, next_n=1, seed=7)
    r = run_cell(_WritesItsCache(name="writes-cache"), "fused", "exact", case)
    bad = [f for f in r["findings"] if f["check"] == "inputs"]
    assert r["status"] == "fail" and bad and bad[0]["details"]["changed"] == ["kv_cache"]
    from parity.problem.cases import build_inputs

    assert torch.equal(harness._inputs(case, "cpu").kv_cache, build_inputs(case).kv_cache)


# --- next-row attribution: only with positive evidence ----------------------------------------------

def _bad(rows, cols, runs):
    """Mask and values findings whose wrong positions are ``runs`` {row: [(start, stop), ...]}."""
    where = torch.zeros(rows, cols, dtype=torch.bool)
    for r, spans in runs.items():
        for a, b in spans:
            where[r, a:b] = True
    none = torch.zeros_like(where)
    return checks.Finding("mask", True, "", where=none), checks.Finding("values", False, "", where=where)


COLS = 500
FULL, SHORT = torch.tensor([500, 480, 400, 100]), 100  # rows 0-2 reach 12 columns past the end


@pytest.mark.parametrize("runs, attributed", [
    ({1: [(0, 12)]}, {1: 12}),  # the previous row's chunk reaches 512 - 500 = 12 columns
    ({1: [(0, 5), (6, 12)], 2: [(0, 12)]}, {1: 12, 2: 12}),  # a stray value equal to the right one
    ({1: [(0, 13)]}, None),  # wider than row 0 can reach
    ({1: [(0, 12), (300, 301)]}, None),  # wrong after the run too: the row's own values
    ({0: [(0, 12)], 1: [(0, 12)]}, None),  # row 0 has the same damage and nothing precedes it
    ({3: [(0, 12)]}, {3: 12}),
])
def test_next_row_attribution_needs_positive_evidence(runs, attributed):
    mask, values = _bad(4, COLS, runs)
    found, why_not = checks.attribute_next_row(mask, values, FULL, COLS)
    if attributed is None:
        assert found is None and why_not.startswith("values wrong from column 0")
    else:
        assert why_not is None
        assert found.details["landed"]["next_row"] == {r: {"from_row": r - 1, "leading_cols_damaged": w}
                                                       for r, w in attributed.items()}


def test_next_row_attribution_refused_after_a_short_row():
    mask, values = _bad(4, COLS, {1: [(0, 12)]})
    found, why_not = checks.attribute_next_row(mask, values, torch.tensor([SHORT, 480, 400, 100]), COLS)
    assert found is None and "row 1 has the same damage and no previous row reaches it" in why_not


def test_causal_tail_mask_errors_do_not_hide_an_overshoot():
    where = torch.zeros(4, COLS, dtype=torch.bool)
    where[1, 479] = True  # row 1 (context 480) gains a finite value at its last position: causal rule
    mask = checks.Finding("mask", False, "", where=where)
    _, values = _bad(4, COLS, {1: [(0, 12)]})
    found, _ = checks.attribute_next_row(mask, values, FULL, COLS, causal_tail=2)
    assert found is not None and found.details["landed"]["next_row"] == {1: {"from_row": 0, "leading_cols_damaged": 12}}
    assert checks.attribute_next_row(mask, values, FULL, COLS)[0] is None


def test_damage_no_overshoot_reaches_elsewhere_refuses_the_attribution():
    # Row 1's leading damage fits row 0's reach, but row 0 itself is wrong further in: the kernel's values.
    mask, values = _bad(4, COLS, {1: [(0, 12)], 0: [(26, 27)]})
    found, why_not = checks.attribute_next_row(mask, values, FULL, COLS)
    assert found is None and "row 0 is wrong (from column 26): the values are the kernel's own" in why_not
    mask, values = _bad(4, COLS, {1: [(0, 12)], 3: [(5, 40)]})  # past the 12 columns row 2 can reach
    assert "row 3 is wrong past the 12 columns row 2 can reach" in checks.attribute_next_row(
        mask, values, FULL, COLS)[1]


@pytest.mark.parametrize("written, attributed", [(256, True), (255, False), (0, False)])
def test_padded_rows_are_reached_only_through_all_of_the_padding(written, attributed):
    mask, values = _bad(4, COLS, {1: [(0, 12)]})
    padding = torch.tensor([written, 0, 0, 0])
    found, why_not = checks.attribute_next_row(mask, values, FULL, COLS, padding=padding, pad=256)
    if attributed:
        assert found.details["landed"]["next_row"] == {1: {"from_row": 0, "leading_cols_damaged": 12}}
    else:
        assert found is None and f"row 0's padding is not written through to its end ({written} of its 256" in why_not


class _LeadingValueFault(SimpleBackend):
    """Right logits, then the first 12 columns of every row after a row at max_model_len zeroed: it
    looks like an overshoot from the previous row, but nothing is written past any row end."""

    def run(self, path, inputs, out):
        from parity.backends.torch_ref import TorchBackend

        TorchBackend().run(path, inputs, out)
        ctx = inputs.context_lens.repeat_interleave(inputs.next_n)
        for r in range(1, out.shape[0]):
            if int(ctx[r - 1]) == out.shape[1]:
                out[r, :12] = 0.0


def test_padded_run_of_the_same_cell_withdraws_or_confirms_the_attribution():
    from parity.run.runner import reconcile

    case = IndexerCase(batch=3, next_n=2, context="ctx_eq_max_first")
    fake = _LeadingValueFault(name="leading", paths=("fused",))
    exact, padded = (run_cell(fake, "fused", b, case) for b in ("exact", "padded"))
    assert any(f["check"] == "oob" and not f["ok"] for f in exact["findings"])  # alone, the cell looks like an oob
    reconcile([exact, padded])
    assert all(f["ok"] for f in exact["findings"] if f["check"] == "oob")
    values = next(f for f in exact["findings"] if f["check"] == "values")
    assert not values["ok"] and "wrote nothing past any row end" in values["summary"]

    from parity.backends import load_backend

    chunky = load_backend("fault:unmasked_chunk_store")
    exact, padded = (run_cell(chunky, "fused", b, case) for b in ("exact", "padded"))
    reconcile([exact, padded])
    nxt = next(f for f in exact["findings"] if f["check"] == "oob" and "next_row" in f["details"]["landed"])
    assert nxt["details"]["confirmed_by"] == padded["id"]


def test_a_rare_race_needs_the_stress_levels_repeats():
    """Two calls agree; the seventh of twenty does not (why the stress level calls each cell 20 times)."""
    from parity.backends import load_backend

    case = IndexerCase(batch=2, next_n=1)
    two = run_cell(load_backend("fault:rare_race"), "fused", "exact", case, repeats=2)
    twenty = run_cell(load_backend("fault:rare_race"), "fused", "exact", case, repeats=20)
    assert two["status"] == "pass"
    det = next(f for f in twenty["findings"] if f["check"] == "determinism")
    assert not det["ok"] and det["details"]["run"] == 7 and det["details"]["runs"] == 20


def test_bf16_guard_bands_count_bf16_elements():
    buf = guarded_buffer((2,), 50, "exact", "cpu", dtype=torch.bfloat16)
    assert buf.storage.dtype == torch.bfloat16 and checks.check_out_of_bounds(buf).ok
    buf.storage[buf.guard + 2 * 50 + 4] = 1.0  # the 5th bf16 element past the last row
    f = checks.check_out_of_bounds(buf)
    assert not f.ok and f.details["landed"]["outside_allocation_after"]["max_overshoot_cols"] == 5


def test_bf16_values_get_the_rounding_of_bf16_and_no_more():
    ref = torch.linspace(1, 100, 50, dtype=torch.float64).view(1, 50)
    rounded = ref.to(torch.bfloat16)
    assert checks.check_values(rounded, ref, torch.tensor([50]), "e4m3fn").ok
    worse = rounded.clone()
    worse[0, 49] = torch.nextafter(torch.nextafter(worse[0, 49].float(), torch.tensor(0.0)), torch.tensor(0.0)).to(
        torch.bfloat16) - 2  # several bf16 ulps off at the row max
    assert not checks.check_values(worse, ref, torch.tensor([50]), "e4m3fn").ok


def test_a_row_with_no_valid_position_is_judged_by_the_consumer_rule():
    ref = torch.full((2, 10), float("-inf"), dtype=torch.float64)
    ref[1, :3] = 1.0
    out = ref.float().clone()
    out[0, 7] = 0.5  # a finite value in a row with no valid position
    unbounded = checks.check_mask(out, ref, torch.tensor([0, 3]), "unbounded")
    assert not unbounded.ok and unbounded.details["dummy_rows_written"] == [0]
    bounded = checks.check_mask(out, ref, torch.tensor([0, 3]), "length-bounded")
    assert bounded.ok and bounded.details["dummy_rows_written"] == []
    assert bounded.details["past_valid_len"] | {"consumer": None} == {
        "count": 1, "rows": [0], "empty_rows": [0], "consumer": None, "dont_care": True}
    assert "don't-care for a length-bounded reader" in bounded.summary


def test_a_dropped_head_is_never_an_overshoot():
    """The quick cell where a backend that ignores head 63 of 64 once got an oob finding: its rows are
    wrong from column 0 because every value is, and no row wrote past its end."""
    from parity.backends import load_backend
    from parity.problem.grids import quick_cases

    case = next(c for c in quick_cases() if c.id == "B2-n2-bs1-ctx_eq_max-H64-mml130")
    for buffer in ("exact", "padded"):
        r = run_cell(load_backend("fault:drops_one_head"), "fused", buffer, case)
        assert [f["check"] for f in r["findings"] if not f["ok"]] == ["values", "topk"], (buffer, r["findings"])
        values = next(f for f in r["findings"] if f["check"] == "values")
        why = {"exact": "row 0 is wrong (from column 26)", "padded": "row 1's padding is not written through"}[buffer]
        assert why in values["details"]["not_next_row"]


class _OverrunsThePadding(SimpleBackend):
    """Right logits; then a row at max_model_len stores on through its whole padding and 12 columns into
    the next row (a store that knows nothing of the pitch)."""

    def run(self, path, inputs, out):
        from parity.backends.torch_ref import TorchBackend

        TorchBackend().run(path, inputs, out)
        rows, cols = out.shape
        ctx = inputs.context_lens.repeat_interleave(inputs.next_n)
        for r in reversed(range(rows - 1)):
            if int(ctx[r]) == cols:
                span = out.stride(0) - cols + 12
                torch.as_strided(out, (span,), (1,), out.storage_offset() + r * out.stride(0) + cols).fill_(0.0)


def test_a_padded_row_overrun_through_its_padding_is_attributed():
    case = IndexerCase(batch=3, next_n=1, context="ctx_eq_max_first")
    r = run_cell(_OverrunsThePadding(name="overrun", paths=("fused",)), "fused", "padded", case)
    landed = {k: v for f in r["findings"] if f["check"] == "oob" for k, v in f["details"]["landed"].items()}
    assert landed["row_padding"]["rows"] == [0] and landed["next_row"] == {1: {"from_row": 0,
                                                                                "leading_cols_damaged": 12}}


def test_a_length_tensor_of_another_size_is_refused_not_broadcast():
    """One length for four rows used to broadcast: every row judged over the first row's prefix only, so a
    wrong tail passed."""
    ref = torch.zeros(4, 16, dtype=torch.float64)
    out = ref.float().clone()
    out[3, 10:] = 5.0
    with pytest.raises(ValueError, match=r"context_len must hold one integer per row of out \(4\)"):
        checks.check_values(out, ref, torch.tensor([4]), "e4m3fn")
    with pytest.raises(ValueError, match=r"row_len must hold one integer per row of out \(4\)"):
        checks.check_mask(out, ref, torch.tensor([4]), "length-bounded")
    with pytest.raises(ValueError, match=r"row_len must hold one integer per row"):
        checks.check_determinism(out, out.clone(), row_len=torch.tensor([4]))
    assert not checks.check_values(out, ref, torch.tensor([4, 8, 12, 16]), "e4m3fn").ok  # the whole row judged


@pytest.mark.parametrize("call, message", [
    (lambda o, r: checks.check_values(o, r, torch.tensor([4, 4]), "fp8"), "fp8 must be one of"),
    (lambda o, r: checks.check_values(o, r.T, torch.tensor([4, 4]), "e4m3fn"), "ref must have out's shape"),
    (lambda o, r: checks.check_values(o, r, torch.tensor([4.0, 4.0]), "e4m3fn"), "one integer per row"),
    (lambda o, r: checks.check_mask(o[None], r[None], torch.tensor([4, 4])), "out must be 2-D"),
    (lambda o, r: checks.check_determinism(o, o.bfloat16()), "determinism compares the same buffer's runs"),
    (lambda o, r: checks.check_determinism(r, r.clone()), "first must be float32 or a 16-bit float"),
])
def test_bad_arguments_to_the_checks_are_named(call, message):
    ref = torch.zeros(2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=message):
        call(ref.float(), ref)


def test_the_sentinel_of_a_dtype_the_logits_never_have_is_named():
    from parity.judge.buffers import fill_sentinel, sentinel_mask

    with pytest.raises(ValueError, match="t must be one of the logits' dtypes"):
        sentinel_mask(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="t must be one of the logits' dtypes"):
        fill_sentinel(torch.zeros(3, dtype=torch.float16))
    t = torch.zeros(3, dtype=torch.bfloat16)
    fill_sentinel(t)
    assert sentinel_mask(t).all()
