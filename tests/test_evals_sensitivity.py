"""The sensitivity table: every planted fault has its row, the gate's verdicts come from the paired
per-question vectors, and a backend that cannot run is a row saying why, not the end of the table."""
from __future__ import annotations

import json
from dataclasses import asdict

from evals import sensitivity
from evals.__main__ import main
from parity.selftest import PLANTED
from tiny_model import save_tiny


def test_every_planted_fault_has_a_row():
    rows = sensitivity.all_rows(aiter_tree="/x")
    faults = {(r.backend, r.path, r.buffer) for r in rows if r.kind == "fault"}
    assert faults == {(f"fault:{p.fault}", p.path, p.buffer) for p in PLANTED}
    ids = [r.id for r in rows]
    assert len(ids) == len(set(ids)) and ids[0] == "reference"
    assert {"control:random-topk", "control:dense", "aiter-0.1.7/fused/exact", "aiter-main/stage1/padded",
            "deepgemm/fused/exact", "triton/preshuffle/padded"} <= set(ids)
    assert next(r for r in rows if "fp8_flavour" in r.id).fp8 == "e4m3fnuz"  # the fault reads e4m3fnuz keys


def record(row_id, correct, status="ok"):
    return {"row": {"id": row_id, "kind": "fault", "note": ""}, "status": status, "doc_ids": list(range(len(correct))),
            "correct": {"flexible-extract": correct, "strict-match": correct}, "parity": {"verdict": "FAIL"},
            "metrics": {}, "reason": "why"}


def test_the_gate_sees_a_large_drop_and_passes_noise():
    ref = record("reference", [1] * 40)
    drop = record("fault:x", [1] * 20 + [0] * 20)
    noise = record("fault:y", [1] * 39 + [0])
    broken = record("fault:z", [], status="error")
    table = sensitivity.assemble([ref, drop, noise, broken], {"data": {"name": "d"}, "n": 40, "date": "d",
                                                              "hardware": "h", "command": "c", "model": "m",
                                                              "batch_size": 8})
    g = {r["row"]["id"]: r["gate"] for r in table["rows"]}
    assert g["fault:x"]["gate"] == "REGRESSION" and g["fault:x"]["mcnemar"]["lost"] == 20
    assert g["fault:x"]["ci95"][1] < 0 < g["fault:y"]["ci95"][1]
    assert g["fault:y"]["gate"] == "pass" and g["fault:z"]["gate"] == "UNUSABLE"
    md = sensitivity.markdown(table)
    assert "| fault:x | fault | 0.5000 |" in md and "ERROR: why" in md


def test_rows_that_cannot_run_say_why(tmp_path):
    w = tmp_path / "w"
    save_tiny(w)
    out = tmp_path / "sens"
    rc = main(["sensitivity", "--out", str(out), "--weights", str(w), "--limit", "2", "--jobs", "0", "--device", "cpu",
               "--only", "fault:raises/fused/exact,deepgemm/fused/exact"])
    assert rc == 0
    table = json.loads((out / "sensitivity.json").read_text())
    rows = {r["row"]["id"]: r for r in table["rows"]}
    assert rows["reference"]["status"] == "ok" and rows["reference"]["n"] == 2
    assert rows["fault:raises/fused/exact"]["status"] == "error"
    assert "planted: kernel launch failed" in rows["fault:raises/fused/exact"]["reason"]
    assert rows["fault:raises/fused/exact"]["parity"]["verdict"] == "FAIL"  # the selftest's cell catches it
    assert rows["deepgemm/fused/exact"]["status"] in ("unsupported", "error")
    assert "deep" in rows["deepgemm/fused/exact"]["reason"]
    assert (out / "sensitivity.md").read_text().count("\n| ") >= 4


def test_unknown_row_is_bad_input(tmp_path, capsys):
    assert main(["sensitivity", "--out", str(tmp_path), "--only", "nope", "--device", "cpu"]) == 2
    assert "--only: unknown rows ['nope']" in capsys.readouterr().err


def test_judge_never_passes_a_row_without_results():
    assert sensitivity.judge({"status": "crashed"}, record("reference", [1]), 0.95)["gate"] == "UNUSABLE"
    assert sensitivity.judge(record("fault:q", [1, 1]), record("reference", [1]), 0.95)["gate"] == "UNUSABLE"


def test_resume_keeps_recorded_rows_and_skip_leaves_rows_out(tmp_path):
    """A table split over two hosts: rows recorded elsewhere are kept as they are, crashed ones rerun."""
    w = tmp_path / "w"
    save_tiny(w)
    out = tmp_path / "sens"
    rows = out / "rows"
    rows.mkdir(parents=True)
    row = next(r for r in sensitivity.all_rows() if r.id == "fault:raises/fused/exact")
    planted = {"row": asdict(row), "status": "error", "reason": "recorded on another host", "host": "GPU X",
               "parity": {"verdict": "FAIL", "detail": "kept"}}
    (rows / "fault_raises_fused_exact.json").write_text(json.dumps(planted))
    (rows / "reference.json").write_text(json.dumps({"status": "crashed"}))  # not finished: runs again
    rc = main(["sensitivity", "--out", str(out), "--weights", str(w), "--limit", "2", "--jobs", "0", "--device", "cpu",
               "--only", "fault:raises/fused/exact,deepgemm/fused/exact", "--skip", "deepgemm/", "--resume"])
    assert rc == 0
    table = {r["row"]["id"]: r for r in json.loads((out / "sensitivity.json").read_text())["rows"]}
    assert set(table) == {"reference", "fault:raises/fused/exact"}
    assert table["fault:raises/fused/exact"]["reason"] == "recorded on another host"
    assert table["reference"]["status"] == "ok" and table["reference"]["n"] == 2
    hardware = json.loads((out / "sensitivity.json").read_text())["hardware"]
    assert "GPU X" in hardware and "CPUs" in hardware  # both hosts named
    assert main(["sensitivity", "--out", str(out), "--skip", "ref", "--device", "cpu"]) == 2


META = {"data": {"name": "d"}, "n": 40, "date": "d", "hardware": "h", "command": "c", "model": "m", "batch_size": 8}


def test_a_row_over_other_questions_is_shown_unusable_in_the_table():
    """A row that ran but over other doc_ids than the reference (a resumed row recorded at another --limit):
    judge calls it UNUSABLE; the table once failed on it (KeyError 'accuracy') and was not written."""
    table = sensitivity.assemble([record("reference", [1] * 40), record("fault:x", [1] * 30)], META)
    assert table["rows"][1]["gate"]["gate"] == "UNUSABLE"
    md = sensitivity.markdown(table)
    assert "| fault:x | fault | - |" in md and "UNUSABLE: " in md


def test_a_reference_row_that_did_not_run_is_unusable_input():
    """Nothing can be judged without the reference row: unusable input (exit 2), not a RuntimeError (exit 1)."""
    import pytest

    from evals.gate import Unusable

    with pytest.raises(Unusable, match="the reference row did not run"):
        sensitivity.assemble([record("reference", [], status="error"), record("fault:x", [1] * 30)], META)
