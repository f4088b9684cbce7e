"""Planted faults, one per bug class of SPEC section 4 that the torch layer can express. Each must be
caught by the check meant for it, and the finding must point at the right place."""
from __future__ import annotations

import argparse
import fnmatch
import math
import sys
from dataclasses import dataclass
from typing import Callable

from parity.backends import load_backend
from parity.problem.cases import IndexerCase
from parity.judge.consumers import DEFAULT_CONSUMER, UNBOUNDED
from parity.run.harness import run_cell

MML = 500
OVERSHOOT = math.ceil(MML / 256) * 256 - MML  # an unmasked 256-column chunk of a full row


def _finding(result: dict, check: str) -> list[dict]:
    return [f for f in result.get("findings", []) if f["check"] == check and not f["ok"]]


def _ok(result: dict, check: str) -> bool:
    return all(f["ok"] for f in result.get("findings", []) if f["check"] == check)


def _landed(result: dict, where: str) -> dict:
    for f in _finding(result, "oob"):
        if where in f["details"].get("landed", {}):
            return f["details"]["landed"][where]
    return {}


@dataclass
class Planted:
    fault: str
    path: str
    buffer: str
    case: IndexerCase
    check: str  # the check meant to catch it
    bug_class: str
    where: Callable[[dict], bool]  # the finding points at the right place
    repeats: int = 2
    consumer: str = DEFAULT_CONSUMER  # the rule it is judged by (parity.judge.consumers)

    def run(self) -> tuple[bool, str]:
        result = run_cell(load_backend(f"fault:{self.fault}"), self.path, self.buffer, self.case, repeats=self.repeats,
                          consumer=self.consumer)
        caught = bool(_finding(result, self.check)) and self.where(result)
        detail = "; ".join(f["summary"] for f in _finding(result, self.check))[:200]
        return caught, detail or f"status {result['status']}, {self.check} check passed"

    def run_correct(self) -> tuple[bool, str]:
        """The same cell, buffer, consumer rule and repeats on the correct kernel (torch): no finding, or the
        catch above proves nothing (a check that flags every output catches every fault)."""
        result = run_cell(load_backend("torch"), self.path, self.buffer, self.case, repeats=self.repeats,
                          consumer=self.consumer)
        return result["status"] == "pass", "; ".join(f["summary"] for f in result["findings"] if not f["ok"])[:200]


def _rows_of(result: dict, check: str) -> set[int]:
    return {r for f in _finding(result, check) for r in f["details"].get("rows", [])}


def _one_each(result: dict, kind: str) -> bool:
    """Every row of the mask finding is off by one position of ``kind``, at its valid length's edge."""
    rows = [v for f in _finding(result, "mask") for v in f["details"]["per_row"].values()]
    return bool(rows) and all(v["count"] == 1 and v[kind] == 1 for v in rows)


C = IndexerCase
PLANTED = [
    Planted("unmasked_chunk_store", "fused", "exact", C(batch=3, next_n=2, context="ctx_eq_max"), "oob",
            "1 unmasked stores, last row: past the allocation",
            lambda r: _landed(r, "outside_allocation_after").get("max_overshoot_cols") == OVERSHOOT),
    Planted("unmasked_chunk_store", "fused", "exact", C(batch=3, next_n=2, context="ctx_eq_max_first"), "oob",
            "1 unmasked stores, first row: into the next row",
            lambda r: {1, 2} <= set(_landed(r, "next_row"))),
    Planted("unmasked_chunk_store", "fused", "padded", C(batch=3, next_n=2, context="ctx_eq_max"), "oob",
            "1 unmasked stores, padded buffer: into the padding, values intact",
            lambda r: _landed(r, "row_padding").get("max_overshoot_cols") == OVERSHOOT and _ok(r, "values")),
    # One position too many is seen only by a reader that ranks past the row's length; one too few
    # by every reader.
    Planted("causal_off_by_one", "fused", "exact", C(batch=3, next_n=2, context="random"), "mask",
            "2 causal rule one position too many (unbounded reader)", lambda r: _one_each(r, "spurious_finite"),
            consumer=UNBOUNDED),
    Planted("causal_short_by_one", "fused", "exact", C(batch=3, next_n=2, context="random"), "mask",
            "2 causal rule one position too few", lambda r: _one_each(r, "spurious_neg_inf")),
    # +inf or NaN where -inf belongs is not finite either; an unbounded reader ranks it first
    *[Planted(fault, "fused", "exact", C(batch=3, next_n=2, context="random"), "mask",
              f"2 {what} past the valid length (unbounded reader)",
              lambda r: bool(_rows_of(r, "mask")) and all(
                  v["pos_inf_or_nan"] == v["count"] for f in _finding(r, "mask") for v in f["details"]["per_row"].values()),
              consumer=UNBOUNDED)
      for fault, what in (("pos_inf_past_length", "+inf"), ("nan_past_length", "NaN"))],
    Planted("ignores_stride0", "fused", "padded", C(batch=3, next_n=2, context="random"), "values",
            "3 ignores stride(0) of a padded view",
            lambda r: 0 not in _rows_of(r, "values") and bool(_rows_of(r, "values"))),
    Planted("scales_interleaved", "fused", "exact", C(batch=2, next_n=1, block_size=64), "values",
            "5 scales read interleaved (block_size 64)", lambda r: bool(_rows_of(r, "values"))),
    Planted("wrong_preshuffle_offsets", "preshuffle", "exact", C(batch=2, next_n=1, block_size=64), "values",
            "5 preshuffle offsets wrong", lambda r: bool(_rows_of(r, "values"))),
    # Whole-row value errors next to a row that ends at max_model_len: they write nothing out of
    # bounds, so they must be values/mask findings and never an out-of-bounds one.
    *[Planted(fault, path, "exact", C(batch=3, next_n=2, heads=64, max_model_len=1000, context=ctx, fp8=fp8, topk=128),
              "values", f"5 {what}, {ctx}: values, no oob", lambda r: _ok(r, "oob") and bool(_rows_of(r, "values")))
      for fault, path, fp8, what in (("drops_one_head", "fused", "e4m3fn", "one of 64 heads dropped"),
                                     ("drops_one_head", "stage1", "e4m3fn", "one of 64 heads dropped (stage1)"),
                                     ("wrong_preshuffle_offsets", "preshuffle", "e4m3fn", "16x16 tiles read transposed"),
                                     ("fp8_flavour_misread", "fused", "e4m3fnuz", "e4m3fnuz keys read as e4m3fn"))
      for ctx in ("ctx_eq_max_first", "near_max")],
    Planted("racy_write", "fused", "exact", C(batch=2, next_n=2), "determinism",
            "6 racing writes (run-to-run differences)", lambda r: _ok(r, "values")),
    Planted("raises", "fused", "exact", C(batch=1, next_n=1), "error",
            "a backend that raises is reported, the run goes on", lambda r: r["status"] == "error"),
]


def _stress(case_id: str) -> IndexerCase:
    from parity.problem.grids import stress_cases

    return next(c for c in stress_cases() if c.id == case_id)


def _dummy_rows_named(r: dict) -> bool:
    return any(f["details"].get("dummy_rows_written") for f in _finding(r, "mask"))


# The bug classes seen in the wild (the stress level), on its CPU-sized cases.
PLANTED_STRESS = [
    # Finite values inside a row with no valid position are don't-care for a length-bounded reader and
    # a mask finding for an unbounded one; stores past such a row's end are caught under either rule.
    Planted("writes_dummy_rows", "fused", "exact", _stress("B4-n2-bs64-dummy_rows-H64-mml320"), "mask",
            "wild: context_len 0/1 rows written (CUDA-graph padding; unbounded reader)", _dummy_rows_named,
            consumer=UNBOUNDED),
    Planted("writes_dummy_rows", "stage1", "padded", _stress("B2-n3-bs16-all_dummy"), "mask",
            "wild: a whole batch of dummy rows written (unbounded reader)", _dummy_rows_named, consumer=UNBOUNDED),
    Planted("dummy_row_overrun", "fused", "padded", _stress("B4-n2-bs64-dummy_rows-H64-mml320"), "oob",
            "wild: dummy rows stored as full rows: into their padding",
            lambda r: set(_landed(r, "row_padding").get("rows", [])) == {0, 1, 2}),
    Planted("dummy_row_overrun", "fused", "exact", _stress("B1-n4-bs64-all_dummy"), "oob",
            "wild: dummy rows stored as full rows: past the allocation",
            lambda r: _landed(r, "outside_allocation_after").get("max_overshoot_cols") == OVERSHOOT),
    Planted("dummy_row_overrun", "fused", "exact", _stress("B4-n2-bs64-dummy_rows-H64-mml320"), "values",
            "wild: dummy rows stored as full rows: into the next row", lambda r: _rows_of(r, "values") == {3}),
    Planted("offset_wraps", "fused", "exact", _stress("B2-n2-bs16-ctx_eq_max-mml300-blk600"), "values",
            "wild: block byte offsets wrap (proxy of int32 past 2 GiB)", lambda r: bool(_rows_of(r, "values"))),
    Planted("batch_stride_over_64", "fused", "exact", _stress("B65-n1-bs16-random-mml48"), "values",
            "wild: batch over 64 reads the wrong block-table row", lambda r: _rows_of(r, "values") == {64}),
    Planted("block_table_cap", "fused", "exact", _stress("B2-n2-bs16-near_max-mml1000"), "values",
            "wild: block table read capped (proxy of the >325K off-by-one)",
            lambda r: all(c >= 32 * 16 for f in _finding(r, "values") for v in f["details"]["per_row"].values()
                          for c in v["first_cols"])),
    # A row that sees more than its own length is visible to an unbounded reader only (the drawn per-row
    # lengths are mostly below the causal diagonal the fault applies).
    Planted("ignores_row_lengths", "fused", "exact", _stress("B3-n2-bs64-random-H64-mml320-perrow"), "mask",
            "wild: per-row context lengths ignored (unbounded reader)", lambda r: bool(_rows_of(r, "mask")),
            consumer=UNBOUNDED),
    Planted("bf16_writes_fp32", "fused", "padded", _stress("B3-n2-bs64-ctx_eq_max_first-H64-mml320-bf16"), "oob",
            "wild: bf16 logits stored as fp32 (guard bands in bf16)",
            lambda r: _landed(r, "row_padding").get("max_overshoot_cols", 0) > 0),
    Planted("rare_race", "fused", "exact", _stress("B2-n3-bs16-near_max-H64-mml300"), "determinism",
            "wild: a race that loses 1 call in 7 (20 repeats)",
            lambda r: any(f["details"].get("run") == 7 for f in _finding(r, "determinism")), repeats=20),
    Planted("drops_tie_group", "fused", "exact", _stress("B2-n2-bs64-random-H64-mml1000-ties"), "values",
            "wild: a near-tied group at the k-th place pushed down", lambda r: bool(_rows_of(r, "values"))),
    Planted("odd_next_n_reads_next_q", "fused", "exact", _stress("B3-n3-bs64-ctx_eq_max_first-H64-mml320"), "values",
            "wild: odd next_n reads the next row's q", lambda r: _rows_of(r, "values") <= {2, 5, 8}
            and bool(_rows_of(r, "values"))),
]
PLANTED += PLANTED_STRESS


def _only_column(col: int):
    """Every values finding lies in column ``col`` of its row, and there is one."""
    def where(r: dict) -> bool:
        found = [v for f in _finding(r, "values") for v in f["details"]["per_row"].values()]
        return bool(found) and all(v["first_cols"] == [col] for v in found)
    return where


F4 = dict(key_format="mxfp4")
# The MXFP4 format's own bug classes (SPEC section 10), on FP4 cells; every one is a values or mask
# finding under the derived mxfp4 tolerance, and none writes out of bounds but the row offset's wrap.
PLANTED_FP4 = [
    Planted("fp4_nibbles_swapped", "fused", "exact", C(batch=2, next_n=2, **F4), "values",
            "fp4: key nibbles read high-first (writer low-first)",
            lambda r: _ok(r, "oob") and _rows_of(r, "values") == {0, 1, 2, 3}),
    Planted("fp4_scale_neighbour_group", "fused", "exact", C(batch=2, next_n=1, **F4), "values",
            "fp4: key scale read from the neighbouring group", lambda r: _rows_of(r, "values") == {0, 1}),
    Planted("fp4_scale_neighbour_group", "stage1", "padded",
            C(batch=2, next_n=3, heads=64, head_dim=64, block_size=16, max_model_len=200, context="ctx_eq_max",
              row_lens="per_row", **F4), "values",
            "fp4: the same at head_dim 64 (reads the 1.0 padding)", lambda r: bool(_rows_of(r, "values"))),
    Planted("fp4_scales_token_interleaved", "fused", "exact", C(batch=2, next_n=1, block_size=64, **F4), "values",
            "fp4: scale words read token-interleaved, not block-planar", lambda r: _rows_of(r, "values") == {0, 1}),
    Planted("fp4_row_offset_wraps", "fused", "exact", _stress("B3-n2-bs64-ctx_eq_max-mml2000-mxfp4"), "mask",
            "fp4: row x stride in 32 bits (proxy of aiter #4028 past 2 GiB)",
            lambda r: {4, 5} <= _rows_of(r, "mask") and _ok(r, "oob")),
    Planted("fp4_one_group_scale_off", "fused", "exact",
            C(batch=2, next_n=2, heads=64, max_model_len=1000, topk=128, **F4), "values",
            "fp4: one UE8M0 step on one group of one key (the tolerance)", _only_column(7)),
]
PLANTED += PLANTED_FP4


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m parity selftest")
    ap.add_argument("--match", action="append", metavar="GLOB",
                    help="only the planted faults whose name matches (repeatable), e.g. 'fp4_*'")
    args = ap.parse_args(argv or [])
    chosen = [p for p in PLANTED if not args.match or any(fnmatch.fnmatchcase(p.fault, m) for m in args.match)]
    unmatched = [m for m in args.match or [] if not any(fnmatch.fnmatchcase(p.fault, m) for p in PLANTED)]
    if unmatched:
        print(f"selftest: --match {' '.join(unmatched)} matches no planted fault", file=sys.stderr)
        return 2
    caught = clean = 0
    for p in chosen:
        ok, detail = p.run()
        caught += ok
        mark = "caught" if ok else "MISSED"
        print(f"{mark:7} {p.bug_class:62} [{p.check}] {detail}")
        correct, why = p.run_correct()
        clean += correct
        if not correct:
            print(f"{'FALSE ALARM':7} the correct kernel on the same cell: {why}")
    print(f"caught {caught}/{len(chosen)}; the correct kernel passed {clean}/{len(chosen)} of the same cells")
    return 0 if caught == clean == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
