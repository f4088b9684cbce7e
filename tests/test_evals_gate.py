"""The GSM8K gate on constructed score sets with known answers, and its refusal of bad input.

Expected p-values come from stdlib ``statistics.NormalDist`` and a Pascal-triangle binomial, not
from evals.stats."""
from __future__ import annotations

import json
import math
from fractions import Fraction
from statistics import NormalDist

import pytest

from evals import stats
from evals.__main__ import main
from evals.gsm8k import NULL_RESPONSE

BASELINES = __import__("pathlib").Path(__file__).resolve().parent.parent / "evals" / "baselines"
REF = BASELINES / "dsv32-tp4-mi355x-bs64-reference.json"


def write_run(path, correct, *, version=3.0, shots=5, status="ok", server_errors=0, drop=0, null_doc=None,
              n_override=None, filt="flexible-extract"):
    """A run directory as ``gsm8k run`` writes one, from a 0/1 vector."""
    path.mkdir(parents=True, exist_ok=True)
    n = len(correct)
    value = sum(correct) / n
    (path / "run.json").write_text(json.dumps({
        "status": status, "error": None if status == "ok" else "ConnectionError: refused", "task": "gsm8k",
        "model": {"kind": "server", "name": "m"}, "server": {"info": {"stats": {"errors": server_errors}}}}))
    (path / "results.json").write_text(json.dumps({
        "results": {"gsm8k": {"exact_match,strict-match": value, f"exact_match,{filt}": value}},
        "versions": {"gsm8k": version}, "n-shot": {"gsm8k": shots},
        "n-samples": {"gsm8k": {"original": 1319, "effective": n if n_override is None else n_override}}}))
    with open(path / "samples_gsm8k.jsonl", "w") as f:
        for d, c in enumerate(correct[: n - drop]):
            for fl in ("strict-match", filt):
                resp = NULL_RESPONSE if d == null_doc else f"... #### {d if c else -1}"
                f.write(json.dumps({"doc_id": d, "filter": fl, "exact_match": float(c), "resps": [[resp]],
                                    "filtered_resps": [str(d if c else -1)], "target": f"#### {d}",
                                    "arguments": [[f"Question: {d}\nAnswer:", {}]]}) + "\n")
    return path


def vector(n, right):
    return [1] * right + [0] * (n - right)


def gate(tmp_path, run, baseline, *extra, capsys=None):
    rc = main(["gsm8k", "gate", str(run), "--baseline", str(baseline), *extra])
    return rc, (capsys.readouterr() if capsys else None)


def unpaired_p(x1, n1, x2, n2):
    p = (x1 + x2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    return NormalDist().cdf((x1 / n1 - x2 / n2) / se)


def pascal_tail(k, m):
    row = [1]
    for _ in range(m):
        row = [a + b for a, b in zip([0] + row, row + [0])]
    return float(Fraction(sum(row[k:]), 2**m))


# --- unpaired: the seed's baseline (0.9409 of 1319, aggregate only) ----------------------------------------

@pytest.mark.parametrize("right, expect", [
    (1242, 0),  # the padded build's 0.9416: far inside noise
    (1220, 0),  # borderline: p just above 0.05
    (1219, 1),  # borderline: p just below 0.05
    (1213, 1),  # a 0.02 drop: clear regression
])
def test_unpaired_decisions(tmp_path, capsys, right, expect):
    run = write_run(tmp_path / "run", vector(1319, right))
    rc, out = gate(tmp_path, run, REF, capsys=capsys)
    p = unpaired_p(right, 1319, 1241, 1319)
    assert rc == expect, out.out
    assert (p < 0.05) == bool(expect)
    assert f"p-value {p:.4g}" in out.out and "standard error" in out.out and "threshold p < 0.05" in out.out


def test_borderline_is_near_the_threshold():
    assert 0.05 < unpaired_p(1220, 1319, 1241, 1319) < 0.053
    assert 0.043 < unpaired_p(1219, 1319, 1241, 1319) < 0.05
    r = stats.two_proportion(1220, 1319, 1241, 1319)
    assert r.p_value == pytest.approx(unpaired_p(1220, 1319, 1241, 1319), rel=1e-9)


def test_confidence_moves_the_threshold(tmp_path):
    run = write_run(tmp_path / "run", vector(1319, 1219))
    assert gate(tmp_path, run, REF)[0] == 1
    assert gate(tmp_path, run, REF, "--confidence", "0.99")[0] == 0


def test_floor_fails_a_run_inside_noise(tmp_path, capsys):
    run = write_run(tmp_path / "run", vector(1319, 1242))
    rc, out = gate(tmp_path, run, REF, "--floor", "0.95", capsys=capsys)
    assert rc == 1 and "below the absolute floor" in out.out


# --- paired: per-sample vectors on both sides -------------------------------------------------------------

def paired_baseline(path, correct):
    n = len(correct)
    path.write_text(json.dumps({"name": "b", "task": "gsm8k", "task_version": 3.0, "num_fewshot": 5,
                                "metric": "exact_match,flexible-extract", "value": sum(correct) / n, "n": n,
                                "samples": {"doc_ids": list(range(n)), "correct": correct}}))
    return path


def test_paired_catches_what_unpaired_cannot(tmp_path, capsys):
    base = vector(200, 150)
    run = list(base)
    for d in range(8):  # 8 questions lost, none gained
        run[d] = 0
    assert unpaired_p(142, 200, 150, 200) > 0.15  # the unpaired test cannot decide
    b = paired_baseline(tmp_path / "b.json", base)
    rc, out = gate(tmp_path, write_run(tmp_path / "run", run), b, capsys=capsys)
    assert rc == 1, out.out
    assert "mcnemar-exact" in out.out and f"p-value {pascal_tail(8, 8):.4g}" in out.out and "8 lost, 0 gained" in out.out


def test_paired_balanced_churn_passes(tmp_path, capsys):
    base = vector(200, 150)
    run = list(base)
    for d in range(30):  # 30 lost
        run[d] = 0
    for d in range(150, 172):  # 22 gained
        run[d] = 1
    b = paired_baseline(tmp_path / "b.json", base)
    rc, out = gate(tmp_path, write_run(tmp_path / "run", run), b, capsys=capsys)
    p = pascal_tail(30, 52)
    assert rc == 0 and p > 0.05, out.out
    assert f"p-value {p:.4g}" in out.out


def test_mcnemar_tail_matches_pascal():
    for k, m in ((0, 0), (3, 10), (10, 10), (30, 52), (700, 1319)):
        assert stats.binomial_upper_tail(k, m) == pytest.approx(pascal_tail(k, m), rel=1e-12)


# --- fail closed -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, message", [
    (dict(drop=3), "samples are missing"),
    (dict(status="failed"), "did not complete"),
    (dict(server_errors=2), "answered 2 request(s) with an error"),
    (dict(null_doc=5), "no response from the server"),
    (dict(version=2.0), "different task_version"),
    (dict(shots=8), "different num_fewshot"),
    (dict(n_override=1300), "samples are missing"),
])
def test_bad_run_is_unusable(tmp_path, capsys, bad, message):
    run = write_run(tmp_path / "run", vector(1319, 1242), **bad)
    rc, out = gate(tmp_path, run, REF, capsys=capsys)
    assert rc == 2 and message in out.err, out.err


def _edit_samples(run, change):
    path = run / "samples_gsm8k.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = json.dumps(change(json.loads(lines[1])))  # doc 0 under flexible-extract
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("change, message", [
    (lambda r: {**r, "exact_match": "abc"}, "exact_match is 'abc', expected a number"),
    (lambda r: {**r, "doc_id": "0"}, "doc_id '0' is not an integer"),
    (lambda r: {**r, "resps": "text"}, "resps must be a list of lists"),
    (lambda r: [r], "is a JSON list; expected a record"),
])
def test_a_malformed_sample_record_is_unusable(tmp_path, capsys, change, message):
    run = write_run(tmp_path / "run", vector(1319, 1242))
    _edit_samples(run, change)
    rc, out = gate(tmp_path, run, REF, capsys=capsys)
    assert rc == 2 and message in out.err, out.err


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["results"]["gsm8k"].update({"exact_match,flexible-extract": "0.94"}), "expected a number"),
    (lambda r: r.update(results=[]), "has no 'gsm8k' results"),
    (lambda r: r["n-samples"].update(gsm8k=True), "samples are missing"),
])
def test_malformed_results_are_unusable(tmp_path, capsys, edit, message):
    run = write_run(tmp_path / "run", vector(1319, 1242))
    results = json.loads((run / "results.json").read_text())
    edit(results)
    (run / "results.json").write_text(json.dumps(results))
    rc, out = gate(tmp_path, run, REF, capsys=capsys)
    assert rc == 2 and message in out.err, out.err


def test_different_n_is_unusable(tmp_path, capsys):
    run = write_run(tmp_path / "run", vector(100, 94))
    rc, out = gate(tmp_path, run, REF, capsys=capsys)
    assert rc == 2 and "different n" in out.err


def test_missing_samples_file_and_dir(tmp_path, capsys):
    run = write_run(tmp_path / "run", vector(1319, 1242))
    (run / "samples_gsm8k.jsonl").unlink()
    assert gate(tmp_path, run, REF, capsys=capsys)[0] == 2
    assert gate(tmp_path, tmp_path / "nowhere", REF, capsys=capsys)[0] == 2


@pytest.mark.parametrize("change, message", [
    (dict(value=1.5), "value must be in [0, 1]"),
    (dict(metric="exact_match,strict-match"), "not the gated metric"),
    (dict(task="mmlu"), "expected 'gsm8k'"),
    (dict(n="1319"), "'n' is missing"),
    (dict(n=True), "'n' is missing or not an integer"),  # JSON true is a Python int
    (dict(value=True), "'value' is missing or not a number"),
    (dict(metric="abc"), "metric 'abc', expected exact_match,<strict-match|flexible-extract>"),
    (dict(samples=[]), "samples must be an object"),
])
def test_bad_baseline_is_unusable(tmp_path, capsys, change, message):
    b = json.loads(REF.read_text()) | change
    (tmp_path / "b.json").write_text(json.dumps(b))
    run = write_run(tmp_path / "run", vector(1319, 1242))
    rc, out = gate(tmp_path, run, tmp_path / "b.json", capsys=capsys)
    assert rc == 2 and message in out.err, out.err


@pytest.mark.parametrize("text", ["[]", "3", '"baseline"'])
def test_a_baseline_that_is_not_an_object_is_unusable(tmp_path, capsys, text):
    (tmp_path / "b.json").write_text(text)
    rc, out = gate(tmp_path, write_run(tmp_path / "run", vector(1319, 1242)), tmp_path / "b.json", capsys=capsys)
    assert rc == 2 and "expected an object" in out.err, out.err


def test_paired_baseline_of_other_docs_is_unusable(tmp_path, capsys):
    b = paired_baseline(tmp_path / "b.json", vector(10, 5))
    data = json.loads(b.read_text())
    data["samples"]["doc_ids"] = list(range(1, 11))
    b.write_text(json.dumps(data))
    rc, out = gate(tmp_path, write_run(tmp_path / "run", vector(10, 5)), b, capsys=capsys)
    assert rc == 2 and "different doc_ids" in out.err


def test_shipped_baselines_hold_the_seed_figures():
    from evals.gate import load_baseline

    ref, pad = load_baseline(REF), load_baseline(BASELINES / "dsv32-tp4-mi355x-bs64-padded.json")
    assert (ref["value"], pad["value"], ref["n"], pad["n"]) == (0.9409, 0.9416, 1319, 1319)
    assert ref["stderr"] == pytest.approx(math.sqrt(0.9409 * 0.0591 / 1318), abs=1e-5)


def test_a_run_that_scored_no_question_is_unusable(tmp_path, capsys):
    """results say n=0 and there are no samples: it was a division by zero (exit 1, as a regression)."""
    import json as _json

    run = write_run(tmp_path / "run", [1, 0, 1])
    results = _json.loads((run / "results.json").read_text())
    results["n-samples"]["gsm8k"]["effective"] = 0
    (run / "results.json").write_text(_json.dumps(results))
    for f in run.glob("samples_*.jsonl"):
        f.write_text("")
    assert main(["gsm8k", "baseline", str(run), "-o", str(tmp_path / "b.json")]) == 2
    assert "n=0: no question was scored" in capsys.readouterr().err
