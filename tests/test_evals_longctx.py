"""The long-context retrieval task: a seeded generator whose prompts have the lengths asked for and
exactly one answer, lm-eval's loader finding the task YAML, and an embedded run at the model's
scale (prompts many times its index_topk) gated like GSM8K; a GSM8K-format data dir runs too."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from evals import longctx
from evals.__main__ import main
from evals.model import ModelConfig

BYTES = lambda text: len(text.encode("utf-8"))  # noqa: E731  (the embedded model's tokens)
LONGEST_ITEM = max(len("Locker 99999 has access code 9999.\n"), 40)


def prompt(doc):
    return f"Question: {doc['question']}\nAnswer:"


@pytest.mark.parametrize("text, want", [
    ("8192,16384,32768", [8192, 16384, 32768]), ("8K, 16k", [8192, 16384]), ("300", [300])])
def test_parse_lengths(text, want):
    assert longctx.parse_lengths(text) == want


def test_generator_lengths_answers_and_seed():
    docs = longctx.generate([300, 900], 6, seed=1, count=BYTES)
    assert docs == longctx.generate([300, 900], 6, seed=1, count=BYTES)  # seeded
    assert docs != longctx.generate([300, 900], 6, seed=2, count=BYTES)
    assert [d["context_tokens"] for d in docs] == [300] * 6 + [900] * 6
    for d in docs:
        p = prompt(d)
        assert d["context_tokens"] - LONGEST_ITEM <= BYTES(p) <= d["context_tokens"]
        assert BYTES(p) == d["prompt_tokens_generated"]
        value = d["answer"].rsplit("#### ", 1)[1]
        key = re.search(r"locker (\d+)\?$", d["question"]).group(1)
        assert d["answer"].startswith(f"Locker {key} has access code {value}.")
        assert p.count(f"Locker {key} has access code {value}.") == 1  # the asked record, once
        assert len(re.findall(rf"\b{value}\b", p)) == 1  # no distractor carries the answer
        assert p.count(f"Locker {key} ") == 1
        assert len(re.findall(r"Locker \d+ has access code", p)) >= 2  # distractors to choose from
    depths = sorted(d["depth"] for d in docs[6:])
    assert depths[0] < 0.25 and depths[-1] > 0.75  # the record is spread over the context


def test_generator_sizes_by_the_counter_it_is_given():
    est = lambda text: -(-len(text) // 4)  # noqa: E731
    (doc,) = longctx.generate([8192], 1, seed=0, count=est)
    assert 8192 - 16 <= est(prompt(doc)) <= 8192


def test_task_yaml_is_an_lm_eval_task():
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_defaults=False, include_path=str(longctx.TASKS_DIR))
    assert longctx.TASK in tm.all_tasks
    cfg = longctx.task_config(Path("/data/x/test.jsonl"))
    assert cfg["num_fewshot"] == 0 and cfg["output_type"] == "generate_until"
    assert cfg["dataset_kwargs"] == {"data_files": {"test": "/data/x/test.jsonl"}}
    assert [f["name"] for f in cfg["filter_list"]] == ["strict-match", "flexible-extract"]


def test_answer_extraction():
    """The filters score a bare number, GSM8K's '#### N' and a sentence ending in the number."""
    import re as _re

    cfg = longctx.task_config(Path("t.jsonl"))
    strict, flexible = (f["filter"][0]["regex_pattern"] for f in cfg["filter_list"])
    assert _re.findall(strict, " 4821") == ["4821"]
    assert _re.findall(strict, "The code is 4821.\n#### 4821") == ["4821"]
    assert _re.findall(strict, "locker 12 has code 4821") == []
    assert [m for m in _re.findall(flexible, "Locker 12345 has access code 4821.")][-1][0] == "4821."


def test_lookup_haystack_fills_each_length_with_the_trained_format():
    docs = longctx.generate([300, 900], 4, seed=1, count=BYTES, haystack="lookup")
    assert docs == longctx.generate([300, 900], 4, seed=1, count=BYTES, haystack="lookup")
    for d in docs:
        n = BYTES(f"Question: {d['question']}\nAnswer:")
        assert d["context_tokens"] - 40 < n <= d["context_tokens"] and n == d["prompt_tokens_generated"]
        value = d["answer"].rsplit("#### ", 1)[1]
        assert f" has {value}." in d["question"] and d["question"].endswith("?")
    with pytest.raises(ValueError, match="--context-tokens 64: too short for a lookup question"):
        longctx.generate([64], 1, seed=1, count=BYTES, haystack="lookup")  # a length under one fact: refused
    with pytest.raises(ValueError, match="--haystack must be one of"):
        longctx.generate([300], 1, seed=1, count=BYTES, haystack="needles")


def test_embedded_run_at_the_models_scale_then_gate(tmp_path, capsys):
    cfg = ModelConfig()
    run = tmp_path / "run"
    assert main(["longctx", "run", "--out", str(run), "--n-per-length", "1", "--max-gen-toks", "4", "--untrained"]) == 0
    out = capsys.readouterr().out
    print(out)
    m = json.loads((run / "run.json").read_text())
    room = cfg.max_model_len - 4
    assert m["data"]["source"] == "generated" and m["data"]["generator"]["context_tokens"] == [room // 4, room // 2, room]
    assert m["data"]["generator"]["haystack"] == "lookup"  # the format the embedded model is trained on
    assert m["task"] == "longctx_retrieval" and m["num_fewshot"] == 0 and m["index_topk"] == cfg.index_topk
    samples = [json.loads(x) for x in (run / "samples_longctx_retrieval.jsonl").read_text().splitlines()]
    sent = {str(r["doc_id"]): BYTES(r["arguments"][0][0]) for r in samples}
    block = m["prompt_tokens"]
    assert block["per_doc"] == sent and block["sources"] == ["server"] and block["truncated_prompts"] == 0
    assert min(sent.values()) > 8 * cfg.index_topk  # many times the model's top-k
    assert block["share_over_topk"] == 1.0 and "WARNING" not in out
    assert sorted(m["by_context_tokens"], key=int) == [str(n) for n in (room // 4, room // 2, room)]
    base = tmp_path / "base.json"
    assert main(["longctx", "baseline", str(run), "-o", str(base)]) == 0
    capsys.readouterr()
    assert main(["longctx", "gate", str(run), "--baseline", str(base), "--require-coverage"]) == 0
    out = capsys.readouterr().out
    assert "longctx_retrieval gate" in out and "decision: PASS" in out and "3 of 3 (100%) exceed index_topk" in out
    # The same run against a bar it cannot meet: the longctx gate's other verdict, on the same files.
    right = json.loads(base.read_text())["value"]
    assert main(["longctx", "gate", str(run), "--baseline", str(base), "--floor", str(min(1.0, right + 0.34))]) == 1
    assert "decision: REGRESSION (below the absolute floor)" in capsys.readouterr().out


def test_gsm8k_format_data_dir_runs(tmp_path, capsys):
    """A data dir written by another generator: only test.jsonl, question/answer ending in '#### N'."""
    d = tmp_path / "data"
    d.mkdir()
    docs = [{"question": "notes " * 60 + f"which is {i}?", "answer": f"It is {i}.\n#### {i}"} for i in range(2)]
    (d / "test.jsonl").write_text("".join(json.dumps(x) + "\n" for x in docs))
    run = tmp_path / "run"
    assert main(["longctx", "run", "--out", str(run), "--data-dir", str(d), "--max-gen-toks", "2", "--untrained"]) == 0
    m = json.loads((run / "run.json").read_text())
    assert m["data"]["source"] == "local" and m["data"]["files"]["test"]["rows"] == 2
    assert m["n"] == 2 and m["by_context_tokens"] == {}
    assert set(m["prompt_tokens"]["per_doc"].values()) == {BYTES(prompt(docs[0])), BYTES(prompt(docs[1]))}
