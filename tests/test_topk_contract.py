"""The decode top-k op's own contract (parity.judge.topk.check_topk_contract), which vLLM's test does not check:
each row's indices unique and in range, the tail past min(k, valid) exactly -1, and rows of negative
valid count leaving their neighbours alone. Proven on fake ops (tests/fake_topk_ops.py) that each plant
one defect, and a correct one; then the GPU cases of parity.contract.topk_cases and their predictions, run on the
CPU with a correct op and with one that behaves as vLLM's source reads. Valid counts are written by hand."""
import pytest
import torch
from fake_topk_ops import as_read, make_op

from parity.contract import topk_cases
from parity.backends.vllm_topk_ext import decode_topk
from parity.judge.topk import INDEX_GUARD, check_topk_contract, compare_topk, guarded_indices
from parity.problem.lengths import signed_row_lengths

SMALL_K, SMALL_COLS, NEXT_N = 8, 64, 4
# next_n = 4 with context_len 0 and 1 (rows of count -3 .. 1) beside rows of exactly k and of more.
SMALL_CTX = torch.tensor([0, 50, SMALL_K, 0, 1, 12], dtype=torch.int32)
# the valid counts per row, by hand: context_len - 4 + i + 1
SMALL_LENS = [-3, -2, -1, 0, 47, 48, 49, 50, 5, 6, 7, 8, -3, -2, -1, 0, -2, -1, 0, 1, 9, 10, 11, 12]


def _run(op, ctx=SMALL_CTX, next_n=NEXT_N, k=SMALL_K, cols=SMALL_COLS):
    logits = torch.randn(ctx.numel() * next_n, cols, generator=torch.Generator().manual_seed(5))
    storage, view = guarded_indices(ctx.numel() * next_n, k, "cpu")
    decode_topk(op, logits, ctx, next_n, k, out=view)
    return logits, view, check_topk_contract(view, ctx, next_n, k, storage)


def test_signed_lengths_are_the_ops_own():
    assert signed_row_lengths(SMALL_CTX, NEXT_N).tolist() == SMALL_LENS


def test_a_correct_op_keeps_the_contract():
    logits, view, f = _run(make_op())
    assert f.ok, f.summary
    assert compare_topk(view, logits.double(), SMALL_CTX, NEXT_N, SMALL_K, 0.0, 0.0).ok
    assert view[11].tolist() == list(range(8)) and view[0].tolist() == [-1] * 8 and view[19].tolist()[:2] == [0, -1]


@pytest.mark.parametrize("defect, counter, rows", [
    ("duplicates", "duplicates", [4, 5, 6, 7, 20, 21, 22, 23]),  # every row of more than k positions
    ("out_of_range", "out_of_range", [4, 5, 6, 7, 20, 21, 22, 23]),
    ("tail_not_minus_one", "tail_not_minus_one", [8, 9, 10, 19]),  # rows of 0 < count < k
    ("unwritten_tail", "unwritten", [8, 9, 10, 19]),
])
def test_each_planted_defect_is_caught_in_its_rows(defect, counter, rows):
    _, _, f = _run(make_op(defect))
    assert not f.ok and f.details["rows"] == rows and f.details["counts"][counter] > 0, f.summary
    assert sorted(r for r, c in f.details["per_row_counts"].items() if c[counter]) == rows


def test_a_negative_count_writing_into_its_neighbour_is_caught_and_attributed():
    _, view, f = _run(make_op("neighbour_write"))
    assert not f.ok
    # Row 12 (count -3) overwrites the last 3 slots of row 11 (count 8 = k: all slots hold indices);
    # row 0 (count -3) writes 3 slots before the buffer; the others land on -1s already there.
    assert f.details["neighbour_writes"] == {11: {"from_row": 12, "valid": -3, "slots": [5, 6, 7]}}
    assert f.details["rows"] == [11] and f.details["per_row_counts"][11]["missing"] == 3
    assert f.details["guard"]["before"] | {"values": None} == {"count": 3, "slots_before_row0": 3, "values": None}
    assert view[11].tolist() == [0, 1, 2, 3, 4, -1, -1, -1]


def test_a_write_past_the_last_row_is_caught_in_the_guard():
    """The other side of the guard: a correct op's rows, then one slot written just past the last row (an
    op that sizes its grid by k rounded up, say). Every row keeps its contract; the guard alone sees it."""
    logits = torch.randn(SMALL_CTX.numel() * NEXT_N, SMALL_COLS, generator=torch.Generator().manual_seed(5))
    storage, view = guarded_indices(SMALL_CTX.numel() * NEXT_N, SMALL_K, "cpu")
    decode_topk(make_op(), logits, SMALL_CTX, NEXT_N, SMALL_K, out=view)
    assert check_topk_contract(view, SMALL_CTX, NEXT_N, SMALL_K, storage).ok
    storage[INDEX_GUARD + view.numel() + 2] = 7
    f = check_topk_contract(view, SMALL_CTX, NEXT_N, SMALL_K, storage)
    assert not f.ok and f.details["rows"] == [] and f.details["guard"] == {"after": {"count": 1}}
    assert "1 slots written after the rows" in f.summary


def test_the_contract_refuses_a_wrong_shape():
    with pytest.raises(ValueError, match=r"selected must be \(24, 8\)"):
        check_topk_contract(torch.zeros(24, 7, dtype=torch.int32), SMALL_CTX, NEXT_N, SMALL_K)
    with pytest.raises(ValueError, match="rows must be >= 0 and k >= 1"):
        guarded_indices(2, 0, "cpu")
    assert INDEX_GUARD >= 2048  # a negative count reaches back at most next_n - 1 slots; the guard holds far more


def test_decode_topk_refuses_an_out_buffer_of_another_shape():
    logits = torch.zeros(2, 16)
    with pytest.raises(ValueError, match="out must be a contiguous int32"):
        decode_topk(make_op(), logits, torch.tensor([16], dtype=torch.int32), 2, 4, out=torch.zeros(2, 5, dtype=torch.int32))


# --- the GPU cases and what the source predicts for them, run on the CPU with fake ops -----------------


def test_every_path_of_the_op_is_reached():
    paths = {c.path for c in topk_cases.cases()}
    assert paths == {"insertion", "radix", "two-pass"}
    ids = {c.id for c in topk_cases.cases()}
    assert {"short-rows-c200000", "zeros-c20000", "zeros-c163840", "negative-valid-n2-c8192"} <= ids
    assert all(c.cols >= 200_000 for c in topk_cases.cases() if c.id.startswith("short-rows") and c.path == "two-pass")


def test_predictions_as_read_in_the_source():
    by_id = {c.id: c for c in topk_cases.cases()}
    short = topk_cases.predict(by_id["short-rows-c200000"])
    assert short["duplicates"] == {0: 1, 1: 1000, 2: 548, 3: 1}  # rows of 1, 1000, 1500, 2047 positions
    assert topk_cases.predict(by_id["short-rows-c20000"]) == {"duplicates": {}, "neighbour_slots": {},
                                                              "before_buffer": 0}
    assert topk_cases.predict(by_id["zeros-c163840"])["duplicates"] == {0: 1000, 1: 548, 2: 1}
    neg = topk_cases.predict(by_id["negative-valid-n2-c8192"])
    assert neg["neighbour_slots"] == {3: [2047]} and neg["before_buffer"] == 1


def test_logits_of_the_zeros_mode():
    case = next(c for c in topk_cases.cases() if c.id == "zeros-c8192")
    logits = topk_cases.build_logits(case)
    for r, (pos, zeros) in enumerate(case.crowd):
        row = logits[r]
        assert int((row > 0).sum()) == pos and int((row == 0).sum()) == zeros


@pytest.mark.parametrize("case_id", ["short-rows-c200000", "zeros-c8192", "negative-valid-n4-c8192",
                                     "negative-valid-n2-c204800"])
def test_the_runner_says_reproduced_for_an_op_that_behaves_as_read(case_id):
    case = next(c for c in topk_cases.cases() if c.id == case_id)
    rec = topk_cases.run_case(as_read, case, "cpu", runs=1)
    want = topk_cases.predict(case)
    for name, e in rec["effects"].items():
        assert e["verdict"] == ("reproduced" if want[name] else "ruled out"), (name, e)
    assert rec["effects"]["duplicates"]["observed"] == want["duplicates"]


@pytest.mark.parametrize("case_id, verdict", [("short-rows-c20000", "unexpected"),  # none predicted there
                                              ("short-rows-c200000", "reproduced, other counts")])
def test_the_runner_tells_duplicates_it_did_not_predict(case_id, verdict):
    """An op that duplicates in other rows than the source reading predicts: not 'reproduced'."""
    case = next(c for c in topk_cases.cases() if c.id == case_id)
    rec = topk_cases.run_case(make_op("duplicates"), case, "cpu", runs=1)
    dup = rec["effects"]["duplicates"]
    assert dup["verdict"] == verdict and dup["observed"] != topk_cases.predict(case)["duplicates"], dup
    assert dup["observed"] and dup["runs_seen"] == 1


@pytest.mark.parametrize("case_id", ["short-rows-c200000", "zeros-c8192", "negative-valid-n4-c8192"])
def test_the_runner_says_not_reproduced_for_a_correct_op(case_id):
    case = next(c for c in topk_cases.cases() if c.id == case_id)
    rec = topk_cases.run_case(make_op(), case, "cpu", runs=1)
    assert {e["verdict"] for e in rec["effects"].values()} <= {"not reproduced", "ruled out"}
    assert rec["set_disagreement_rows"] == [] and not rec["other_counts"]
    md = topk_cases.markdown({"cases": [rec]})
    assert f"| {case_id} |" in md and "not reproduced" in md
