"""The HTML report: ``python -m parity report R.json --html``, ``run --html``; self-contained (inline
PNG maps, no external resource), one map per failing cell, the diff; a clear error without the
optional matplotlib extra."""
from __future__ import annotations

import base64
import json
import re
import sys

import pytest

from parity import cli
from parity.reports import report as rep
from parity.backends import load_backend
from parity.problem.cases import IndexerCase
from parity.run.harness import run_cell

pytest.importorskip("matplotlib")
# The second case passes under the fault: max_model_len is a whole number of its 256-column chunks.
CASES = [IndexerCase(batch=3, next_n=2, context="ctx_eq_max_first"), IndexerCase(batch=1, next_n=1, max_model_len=256)]


def _report(spec: str, path) -> str:
    r = rep.new_report("cpu", "quick", ["test"])
    # one build name for both reports, so that the diff compares the same cells
    r["results"] = [run_cell(load_backend(spec), "fused", b, c, backend_name="build") for c in CASES
                    for b in ("exact", "padded")]
    r["backends"] = {"build": {"status": "ok", "name": "build"}}
    path.write_text(json.dumps(r, indent=1))
    return str(path)


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)]


def test_report_html_has_a_map_per_failing_cell_and_the_diff(tmp_path, capsys):
    good = _report("torch", tmp_path / "good.json")
    bad = _report("fault:unmasked_chunk_store", tmp_path / "bad.json")
    out = tmp_path / "out.html"
    assert cli.main(["report", bad, "--html", str(out), "--diff", good]) == 0
    assert f"html: {out}" in capsys.readouterr().out
    page = out.read_text()
    failing = [r["id"] for r in rep.load(bad)["results"] if r["status"] == "fail"]
    assert failing == ["build-fused-exact-B3-n2-bs64-ctx_eq_max_first", "build-fused-padded-B3-n2-bs64-ctx_eq_max_first"]
    pngs = _images(page)
    assert len(pngs) == len(failing) and all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    for cid in failing:
        assert f"<h3 id='{cid}'>" in page
    assert "<td>build</td><td>fused</td><td>exact</td><td>1</td><td>1</td>" in page  # summary
    assert "Diff against" in page and "REGRESSION" in page  # torch passed these cells
    assert "stray: previous row&#x27;s overshoot (next row)" in page  # the legend names the classes
    assert "from the end of row 0</td><td>12</td><td>next_row 12" in page  # the stray table
    assert not re.search(r"(src|href)=['\"](https?:|//)", page) and "<script" not in page and "<link" not in page


def test_run_html_writes_the_page_after_the_json(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "cases_for_level", lambda level: CASES[:1])
    js, page = tmp_path / "r.json", tmp_path / "r.html"
    rc = cli.main(["run", "--in-process", "--backend", "fault:unmasked_chunk_store", "--path", "fused",
                   "--buffer", "exact", "--out", str(js), "--html", str(page), "--quiet"])
    assert rc == 1  # the planted fault fails its cell
    assert rep.load(str(js))["results"][0]["map"]["strays"][0]["overshoot_cols"] == 12
    assert len(_images(page.read_text())) == 1


def test_without_matplotlib_the_error_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    js = _report("torch", tmp_path / "r.json")
    assert cli.main(["report", js, "--html", str(tmp_path / "x.html")]) == 2
    assert "pip install 'indexer-parity[report]'" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()
    monkeypatch.setattr(cli, "cases_for_level", lambda level: pytest.fail("ran before checking the extra"))
    assert cli.main(["run", "--in-process", "--backend", "torch", "--html", str(tmp_path / "y.html")]) == 2
    assert "indexer-parity[report]" in capsys.readouterr().err
    assert cli.main(["report", js]) == 0  # the text summary needs no extra


R = '{"id": "a", "backend": "torch", "path": "fused", "buffer": "exact", "case": {"id": "c"}'  # a result, open


@pytest.mark.parametrize("text, why", [
    ("{}", "schema 1"), ("[]", "schema 1"), ('{"schema": 1, "results": 5}', "a list of results"),
    ('{"schema": 1, "results": [3]}', "a list of results"),
    ('{"schema": 1, "results": [{"id": "a", "case": {}}], "backends": {}}', "result 0 has no backend, path, buffer, status, case.id"),
    # a status no rule knows would be judged as neither a pass nor a finding: a clean verdict from nothing
    ('{"schema": 1, "results": [%s, "status": "passed"}]}' % R, "result 0 has status 'passed', expected one of"),
    ('{"schema": 1, "results": [%s, "status": "fail", "path": 3}]}' % R, "must be strings"),
    ('{"schema": 1, "results": [], "backends": {"torch": "ok"}}', "backend objects"),
    ('{"schema": 1, "results": [], "backends": {"torch": {"status": "fine"}}}', "backend 'torch' has status 'fine'"),
    # merge read shard["matrix_digest"] and shard["assigned"] unchecked: a KeyError
    ('{"schema": 1, "results": [], "shard": {"index": 1, "count": 2}}', "'shard' needs matrix_cells (int), "
                                                                        "matrix_digest (str), assigned (list)"),
])
@pytest.mark.parametrize("command", ["report", "diff", "merge"])
def test_report_refuses_a_file_that_is_not_a_report(tmp_path, capsys, text, why, command):
    (tmp_path / "x.json").write_text(text)
    x = str(tmp_path / "x.json")
    argv = {"report": [x], "diff": [x, x], "merge": ["--out", str(tmp_path / "m.json"), x, x]}[command]
    assert cli.main([command, *argv]) == 2
    err = capsys.readouterr().err
    assert "is not a parity report" in err and why in err, err
