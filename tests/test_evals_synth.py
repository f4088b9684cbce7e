"""The generated task: GSM8K's format, answers that only the asked fact holds, seeded, and prompts
that fit the trained model's window; the training stream; the prefill selection rule."""
from __future__ import annotations

import json
import random
import re

import pytest
import torch

from evals import synth
from evals.model import causal_topk
from parity.judge.topk import topk_reference


def test_docs_are_gsm8k_shaped_and_answer_from_one_fact():
    spec = synth.SynthSpec(n_test=50, n_train=20)
    for d in synth.docs(spec, "test"):
        assert sorted(d) == ["answer", "question"]
        value = int(d["answer"].rsplit("\n#### ", 1)[1])
        code = re.search(r" ([A-Z0-9]{3})\?$", d["question"]).group(1)
        facts = dict(re.findall(r" ([A-Z0-9]{3}) has (\d+)\.", d["question"]))
        assert spec.min_facts <= len(facts) <= spec.max_facts and facts[code] == str(value)
        assert d["answer"].startswith(d["question"].split(". ")[1].split(" ")[0])  # restates the fact


def test_seeded_and_versioned(tmp_path):
    a, b = synth.write(tmp_path / "a", synth.SynthSpec(n_test=30, n_train=10)), \
        synth.write(tmp_path / "b", synth.SynthSpec(n_test=30, n_train=10))
    assert a["sha256"] == b["sha256"] and a["generator_version"] == synth.GENERATOR_VERSION
    other = synth.write(tmp_path / "c", synth.SynthSpec(seed=1, n_test=30, n_train=10))
    assert other["sha256"]["test"] != a["sha256"]["test"]
    # The test split does not depend on the size of the few-shot pool.
    assert synth.docs(synth.SynthSpec(n_test=30, n_train=99), "test") == synth.docs(synth.SynthSpec(n_test=30), "test")
    assert synth.read_record(tmp_path / "a")["name"] == "synthetic lookup v1 seed 0"
    (tmp_path / "a" / "test.jsonl").write_text("{}\n")
    assert synth.read_record(tmp_path / "a") is None  # edited files are no longer the generator's


def test_five_shot_prompts_fit_the_bound_and_the_window():
    spec = synth.SynthSpec()
    train, test = synth.docs(spec, "train"), synth.docs(spec, "test")[:200]
    rng = random.Random(0)
    longest = max(len(synth.prompt(rng.sample(train, 5), d)) for d in test)
    assert longest <= synth.max_prompt_chars(spec) <= 2000 - 48  # the trained window minus max_gen_toks
    assert longest >= 40 * 32  # many times index_topk = 32


def test_long_format_reaches_its_target():
    spec = synth.SynthSpec(n_test=5, n_train=5, target_chars=1500)
    for d in synth.docs(spec, "test"):
        assert 1500 - 25 <= len(d["question"]) <= 1500


def test_training_text_marks_the_answers():
    text, spans = synth.training_text(random.Random(3), 1200, synth.SynthSpec(), long_share=0.0)
    assert len(text) <= 1200 and len(spans) >= 2
    for s, e in spans:
        assert text[s:].startswith(" ") and "\n#### " in text[s:e]
    assert text[spans[0][1] - len("Question:"):spans[0][1]] == "Question:"


@pytest.mark.parametrize("kw, match", [({"n_test": 0}, "n_test"), ({"max_facts": 2}, "max_facts"),
                                       ({"target_chars": 50}, "target_chars")])
def test_bad_spec_names_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        synth.SynthSpec(**kw)


def test_make_data_cli(tmp_path, capsys):
    from evals.__main__ import main

    assert main(["gsm8k", "make-data", str(tmp_path), "--n-test", "7", "--n-train", "6", "--facts", "3:5"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "test.jsonl").read_text().splitlines()]
    assert len(rows) == 7 and json.loads((tmp_path / "source.json").read_text())["spec"]["max_facts"] == 5
    assert main(["gsm8k", "make-data", str(tmp_path), "--facts", "3-5"]) == 2
    assert "--facts must be MIN:MAX" in capsys.readouterr().err


@pytest.mark.parametrize("T, k", [(10, 16), (60, 16), (300, 32)])
def test_prefill_selection_is_the_reference_consumers(T, k):
    """Prefill's vectorized top-k selects the sets of parity.judge.topk's consumer, ties included."""
    torch.manual_seed(T)
    x = torch.randn(T, T)
    x[x < 0.3] = 0.0  # many exact ties, as relu gives
    causal = x.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    ref = topk_reference(causal, torch.arange(1, T + 1, dtype=torch.int32), 1, k)
    assert torch.equal(causal_topk(x, k), ref)
    rows = torch.tensor([T - 1, T // 2])
    assert torch.equal(causal_topk(x[rows], k, rows), ref[rows])
