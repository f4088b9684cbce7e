"""The rule for what lies past a row's valid length is the consumer's (parity.judge.consumers): a correct
kernel that leaves finite values there, in every row and in rows with no valid position, passes for a
length-bounded reader and fails for an unbounded one with a mask finding; the report names the rule."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from parity.backends import load_backend
from parity.backends.torch_ref import TorchBackend
from parity.cli import main as cli_main
from parity.judge import consumers
from parity.problem.cases import IndexerCase, build_inputs
from parity.problem.grids import stress_cases
from parity.reports import render, report
from parity.run import shards
from parity.run.harness import run_cell
from fake_kernels import WritesPastLengths
from findings import failing, finding
from xdist_runs import CHECKOUT, clean_env, plugin_args

JUNK = 3.0


DUMMY = next(c for c in stress_cases() if c.id == "B4-n2-bs64-dummy_rows-H64-mml320")
ALL_DUMMY = next(c for c in stress_cases() if c.id == "B2-n3-bs16-all_dummy")
SPECULATIVE = IndexerCase(batch=2, next_n=3, block_size=16, max_model_len=300, context="random")


@pytest.mark.parametrize("case", [DUMMY, ALL_DUMMY, SPECULATIVE], ids=lambda c: c.id)
@pytest.mark.parametrize("path, buffer", [("fused", "exact"), ("fused", "padded"), ("stage1", "exact")])
def test_finite_values_past_every_length_are_the_consumers_business(case, path, buffer):
    backend = WritesPastLengths()
    bounded = run_cell(backend, path, buffer, case)
    assert bounded["status"] == "pass" and bounded["consumer"] == "length-bounded", failing(bounded)
    mask = finding(bounded, "mask")
    lens = build_inputs(case).row_lens.repeat(case.heads if path == "stage1" else 1)
    short = torch.nonzero(lens < case.max_model_len).flatten().tolist()[:64]  # rows with columns past their length
    past = mask["details"]["past_valid_len"]
    assert past["dont_care"] and past["rows"] == short
    assert "don't-care for a length-bounded reader" in mask["summary"]
    unbounded = run_cell(backend, path, buffer, case, consumer="unbounded")
    assert failing(unbounded) == ["mask"]
    mask = finding(unbounded, "mask")
    assert mask["details"]["rows"] == short and "unbounded reader needs -inf" in mask["summary"]
    assert bool(mask["details"]["dummy_rows_written"]) is (case.context in ("dummy_rows", "all_dummy"))
    assert unbounded["map"]["counts"]["spurious_finite"] == mask["details"]["past_valid_len"]["count"]


@pytest.mark.parametrize("consumer, drawn_as", [("length-bounded", "past_valid_len"), ("unbounded", "spurious_finite")])
def test_the_map_draws_what_lies_past_the_lengths_by_the_rule(consumer, drawn_as):
    from parity.judge.buffers import guarded_buffer
    from parity.run.harness import _reference

    inputs = build_inputs(DUMMY)
    buf = guarded_buffer((inputs.rows,), inputs.max_model_len, "padded", "cpu")
    WritesPastLengths().run("fused", inputs, buf.view)
    _, ref, _, _ = _reference(DUMMY)
    ctx = inputs.context_lens.long().repeat_interleave(inputs.next_n)
    m = render.buffer_map(buf, ref, ctx, DUMMY.fp8, row_len=inputs.row_lens, consumer=consumer)
    past = int((torch.arange(inputs.max_model_len)[None, :] >= inputs.row_lens[:, None]).sum())
    assert m["counts"][drawn_as] == past and "wrong_value" not in m["counts"] and not m["strays"]


def test_writing_an_empty_row_is_correct_for_a_length_bounded_reader():
    """The old empty-row fault: a finite logit in a row with no valid position, nothing out of bounds."""
    fault = load_backend("fault:writes_dummy_rows")
    assert run_cell(fault, "fused", "exact", DUMMY)["status"] == "pass"
    assert failing(run_cell(fault, "fused", "exact", DUMMY, consumer="unbounded")) == ["mask"]


def test_an_empty_rows_stores_past_its_end_are_caught_under_both_rules():
    fault = load_backend("fault:dummy_row_overrun")
    for consumer in consumers.CONSUMERS:
        r = run_cell(fault, "fused", "padded", DUMMY, consumer=consumer)
        oob = finding(r, "oob")
        assert not oob["ok"] and oob["details"]["landed"]["row_padding"]["rows"] == [0, 1, 2]


def test_a_bad_consumer_is_refused_by_name():
    with pytest.raises(ValueError, match="consumer must be one of"):
        run_cell(TorchBackend(), "fused", "exact", SPECULATIVE, consumer="clean")


def test_cli_report_names_the_rule_and_its_sources(tmp_path, capsys):
    out = tmp_path / "r.json"
    code = cli_main(["run", "--in-process", "--backend", "torch", "--path", "fused", "--buffer", "exact",
                     "--consumer", "unbounded", "--out", str(out), "--no-progress"])
    assert code == 0
    rep = json.loads(out.read_text())
    assert rep["consumer"]["rule"] == "unbounded" and any("42072" in s for s in rep["consumer"]["sources"])
    assert all(r["consumer"] == "unbounded" for r in rep["results"])
    assert "consumer rule: unbounded" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main(["run", "--consumer", "clean"])


def _report(rule, results=()):
    return {"schema": report.SCHEMA, "consumer": consumers.describe(rule) if rule else None, "backends": {},
            "results": list(results)}


def test_reports_judged_by_different_rules_do_not_compare_or_merge():
    cell = {"id": "x-fused-exact-c", "backend": "x", "path": "fused", "buffer": "exact", "status": "pass",
            "findings": []}
    d = report.diff(_report("length-bounded", [cell]), _report("unbounded", [cell]))
    assert d["verdict"] == "UNUSABLE" and "judged for a length-bounded consumer, B for a unbounded" in d["unusable"][0]
    assert report.diff(_report(None, [cell]), _report("unbounded", [cell]))["verdict"] == "OK"  # an older report
    shard = {"index": 1, "count": 1, "matrix_digest": "d", "matrix_cells": 1, "assigned": ["x:k"]}
    merged = shards.merge_reports([("a", {**_report("length-bounded"), "shard": shard}),
                                   ("b", {**_report("unbounded"), "shard": {**shard, "assigned": []}})])
    assert any("different consumers" in why for why in merged["incomplete"])


PAST_LENGTHS_FILE = textwrap.dedent(f'''
    import torch
    from parity.backends.torch_ref import TorchBackend

    class WritesPastLengths(TorchBackend):
        def run(self, path, inputs, out):
            super().run(path, inputs, out)
            past = torch.arange(out.shape[-1])[None, :] >= inputs.row_lens[:, None]
            out.masked_fill_(past.expand_as(out), {JUNK})

    def make_backend():
        b = WritesPastLengths()
        b.name = "pastlens"
        return b
''')


def test_pytest_option_picks_the_rule(tmp_path):
    backend = tmp_path / "past_lengths.py"
    backend.write_text(PAST_LENGTHS_FILE)
    runs = {}
    for rule in consumers.CONSUMERS:
        runs[rule] = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", *plugin_args(), "-m", "parity",
             "--backend", str(backend), "--parity-consumer", rule, "-k", "fused-exact-B2-n2-bs64-block_multiple_plus1"],
            cwd=tmp_path, env=clean_env(PYTHONPATH=str(CHECKOUT)), capture_output=True, text=True, timeout=300)
    bounded, unbounded = runs["length-bounded"], runs["unbounded"]
    assert bounded.returncode == 0 and "consumer rule: length-bounded" in bounded.stdout, bounded.stdout[-2000:]
    assert unbounded.returncode == 1 and "unbounded reader needs -inf" in unbounded.stdout, unbounded.stdout[-2000:]
