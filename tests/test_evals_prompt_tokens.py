"""Prompt lengths against the indexer's top-k: where the counts come from (the server's usage,
attributed to prompts only where that is possible), the share over top-k, and the gate's two sides:
a pass that says plainly it cannot see an indexer value bug, or, with --require-coverage, exit 2."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals import prompt_tokens as pt
from evals.__main__ import main
from evals.model import ModelConfig, TinyIndexerLM
from evals.server import CompletionService, ServerThread
from test_evals_gate import write_run

DATA = Path(__file__).parent / "data" / "gsm8k"
WARNING = ("only 25% of prompts exceed index_topk=2048: the indexer keeps every token of the rest, so this "
           "accuracy cannot see an indexer value bug")


def test_recorder_attributes_counts_only_where_it_can():
    rec = pt.UsageRecorder()
    # vLLM's shape: usage for the request, nothing per choice; one prompt -> its count
    rec.record(["p1"], {"choices": [{"index": 0, "text": "a"}], "usage": {"prompt_tokens": 812}})
    # a batch of two with only the total: not attributable
    rec.record(["p2", "p3"], {"choices": [{"index": 0, "text": "a"}, {"index": 1, "text": "b"}],
                              "usage": {"prompt_tokens": 1500}})
    # per-choice counts (the embedded server), choices out of order
    rec.record(["p4", "p5"], {"choices": [{"index": 1, "text": "b", "prompt_tokens": 7, "truncated_prompt_tokens": 3},
                                          {"index": 0, "text": "a", "prompt_tokens": 9}],
                              "usage": {"prompt_tokens": 16}})
    # a chat prompt (lm-eval's JsonChatStr) is keyed by its JSON string
    from lm_eval.models.api_models import JsonChatStr

    rec.record([JsonChatStr('[{"role": "user"}]')], {"choices": [{"index": 0}], "usage": {"prompt_tokens": 42}})
    assert rec.counts == {
        pt.text_key("p1"): {"prompt_tokens": 812, "truncated_prompt_tokens": 0},
        pt.text_key("p4"): {"prompt_tokens": 9, "truncated_prompt_tokens": 0},
        pt.text_key("p5"): {"prompt_tokens": 7, "truncated_prompt_tokens": 3},
        pt.text_key('[{"role": "user"}]'): {"prompt_tokens": 42, "truncated_prompt_tokens": 0}}
    assert rec.batched_totals == 1

    per_doc = pt.per_doc_counts({0: "p1", 1: "p2", 2: "héllo"}, rec, None)
    assert per_doc[0] == {"prompt_tokens": 812, "truncated_prompt_tokens": 0, "source": "server"}
    assert per_doc[1]["prompt_tokens"] is None and per_doc[2]["prompt_tokens"] is None
    per_doc = pt.per_doc_counts({0: "p1", 2: "héllo"}, rec, "embedded")
    assert per_doc[2] == {"prompt_tokens": 6, "truncated_prompt_tokens": None, "source": "embedded"}  # 6 UTF-8 bytes


def test_summary_and_coverage_figures():
    per_doc = {d: {"prompt_tokens": n, "truncated_prompt_tokens": 0, "source": "server"}
               for d, n in enumerate([100, 3000, 5000, 1000])}
    per_doc[4] = {"prompt_tokens": None, "truncated_prompt_tokens": None, "source": None}
    b = pt.summarize(per_doc, 2048)
    assert (b["counted"], b["unknown"], b["over_topk"], b["min"], b["median"], b["max"]) == (4, 1, 2, 100, 2000, 5000)
    assert b["share_over_topk"] == 0.5
    assert b["mean_dropped_share"] == pytest.approx((0 + (1 - 2048 / 3000) + (1 - 2048 / 5000) + 0) / 4)
    shown, lines = pt.coverage(b, min_share=0.4)  # 2 of the 5 prompts are known to exceed it
    assert shown and not any("WARNING" in x for x in lines)
    assert "2 of 4 (50%) exceed index_topk=2048" in lines[0] and "1 prompt(s) could not be counted" in lines[1]
    shown, lines = pt.coverage(b, min_share=0.41)  # the uncounted prompt is not taken to exceed it
    assert not shown and lines[-1].startswith("WARNING: only 40% of prompts exceed index_topk=2048")


def test_prompts_that_could_not_be_counted_are_not_shown_to_exceed_index_topk():
    """1 of 40 prompts counted (9000 tokens), 39 unknown (a server that reported batch totals only): the share
    over the counted prompt alone was 100 % and passed --require-coverage; over the run's prompts it is 2.5 %."""
    per_doc = {d: {"prompt_tokens": None, "truncated_prompt_tokens": None, "source": None} for d in range(40)}
    per_doc[0] = {"prompt_tokens": 9000, "truncated_prompt_tokens": 0, "source": "server"}
    shown, lines = pt.coverage(pt.summarize(per_doc, 2048))
    assert not shown and "39 prompt(s) could not be counted" in lines[1]
    assert lines[-1].startswith("WARNING: only 2% of prompts exceed")
    shown, lines = pt.coverage(None)
    assert not shown and "prompt lengths unknown" in lines[0]


def with_lengths(run: Path, lengths, topk=2048, truncated=()):
    m = json.loads((run / "run.json").read_text())
    per_doc = {d: {"prompt_tokens": n, "truncated_prompt_tokens": 5 if d in truncated else 0, "source": "server"}
               for d, n in enumerate(lengths)}
    m["prompt_tokens"] = pt.summarize(per_doc, topk)
    (run / "run.json").write_text(json.dumps(m))
    return run


def baseline(tmp_path, correct):
    ref = write_run(tmp_path / "ref", correct)
    out = tmp_path / "base.json"
    assert main(["gsm8k", "baseline", str(ref), "-o", str(out)]) == 0
    return out


SHORT = [900] * 30 + [2500] * 10  # 25 % over 2048: GSM8K 5-shot on DeepSeek-V3.2
LONG = [9000] * 40


@pytest.mark.parametrize("lengths, require, want, warned", [
    (SHORT, False, 0, True),   # a pass, with the plain warning
    (SHORT, True, 2, True),    # --require-coverage: unusable
    (LONG, False, 0, False),
    (LONG, True, 0, False),
    (None, False, 0, True),    # not recorded: said so
    (None, True, 2, True),
])
def test_gate_coverage_both_sides(tmp_path, capsys, lengths, require, want, warned):
    base = baseline(tmp_path, [1] * 30 + [0] * 10)
    capsys.readouterr()
    run = write_run(tmp_path / "run", [1] * 30 + [0] * 10)
    if lengths is not None:
        with_lengths(run, lengths)
    rc = main(["gsm8k", "gate", str(run), "--baseline", str(base), *(["--require-coverage"] if require else [])])
    cap = capsys.readouterr()
    text = cap.out + cap.err
    print(text)
    assert rc == want
    if lengths is SHORT:
        assert (WARNING in text) == warned
    elif lengths is None:
        assert "prompt lengths unknown" in text
    else:
        assert "WARNING" not in text and "40 of 40 (100%) exceed index_topk=2048" in text
    if want == 0:
        assert ("accuracy only: the indexer's values were not exercised" in text) == warned
    if want == 2:
        assert "UNUSABLE INPUT: --require-coverage" in text


def test_low_coverage_does_not_hide_a_regression(tmp_path, capsys):
    base = baseline(tmp_path, [1] * 38 + [0] * 2)
    run = with_lengths(write_run(tmp_path / "run", [1] * 20 + [0] * 20), SHORT, truncated={3})
    capsys.readouterr()
    assert main(["gsm8k", "gate", str(run), "--baseline", str(base)]) == 1
    out = capsys.readouterr().out
    assert WARNING in out and "decision: REGRESSION" in out
    assert "WARNING: the server truncated 1 prompt(s)" in out
    # the threshold is the user's: at 25 % required, 25 % is enough
    assert main(["gsm8k", "gate", str(run), "--baseline", str(base), "--min-share-over-topk", "0.25"]) == 1
    assert WARNING not in capsys.readouterr().out


def test_server_run_records_usage_per_prompt(tmp_path, capsys):
    """GSM8K against a server (the embedded one over HTTP, concurrent requests: lm-eval's async
    path) with the server default top-k 2048: every prompt is counted from the server's answers and
    the summary says the share over top-k is too small."""
    model = TinyIndexerLM(ModelConfig(max_model_len=1000))
    with ServerThread(CompletionService(model, truncate_prompts=True)) as s:
        rc = main(["gsm8k", "run", "--out", str(tmp_path / "r"), "--base-url", s.base_url, "--model",
                   "tiny-indexer-lm", "--limit", "3", "--max-gen-toks", "4", "--data-dir", str(DATA),
                   "--num-concurrent", "2"])
    out = capsys.readouterr().out
    print(out)
    assert rc == 0
    m = json.loads((tmp_path / "r" / "run.json").read_text())
    block = m["prompt_tokens"]
    samples = [json.loads(x) for x in (tmp_path / "r" / "samples_gsm8k.jsonl").read_text().splitlines()]
    sent = {r["doc_id"]: len(r["arguments"][0][0].encode()) for r in samples}
    # the 5-shot prompts are longer than the window: the server kept the last 996 bytes and said so
    assert all(n > 996 for n in sent.values())
    assert block["per_doc"] == {str(d): 996 for d in sent} and block["sources"] == ["server"]
    assert block["truncated_prompts"] == 3 and block["index_topk"] == m["index_topk"] == 2048
    assert block["share_over_topk"] == 0
    assert "WARNING: only 0% of prompts exceed index_topk=2048" in out
