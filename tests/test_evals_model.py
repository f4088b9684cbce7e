"""The embedded model and its server, without lm-eval: request validation, and that the indexer
path and buffer strategy change nothing for a correct backend while a kernel fault does."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from evals.model import Indexer, ModelConfig, TinyIndexerLM
from evals.server import CompletionService, ServerThread

# A 300-token window keeps these tests fast; prompts longer than it are left-truncated to end near
# max_model_len, past the last full 256-column chunk, where an unmasked chunk store overshoots.
CFG = ModelConfig(max_model_len=300)
PROMPTS = ["Question: 2 + 3?\nAnswer:" * 14, "Question: how many ducks?\nAnswer:" * 12, "abc, 12 eggs. " * 30]


def generate(backend="torch", buffer="exact", path="fused"):
    return [o["text"] for o in TinyIndexerLM(CFG, Indexer(backend, buffer, path)).generate(PROMPTS, 12, ["Question:"])]


@pytest.fixture(scope="module")
def reference():
    return generate()


@pytest.mark.parametrize("buffer, path", [("padded", "fused"), ("exact", "stage1"), ("padded", "preshuffle"),
                                          ("cached-at-least-rows", "fused"), ("fresh-per-call", "fused")])
def test_paths_and_buffers_agree_for_a_correct_backend(reference, buffer, path):
    assert generate(buffer=buffer, path=path) == reference


def test_overshoot_damages_the_rows_after_the_first(reference):
    got = generate("fault:unmasked_chunk_store", "exact")
    assert got[0] == reference[0]  # nothing before row 0 to write into it
    assert got[1:] != reference[1:]
    assert generate("fault:unmasked_chunk_store", "padded") == reference


def test_generation_is_deterministic_and_printable(reference):
    assert generate() == reference
    assert all(t and all(c == "\n" or 32 <= ord(c) < 127 for c in t) for t in reference)


def post(url, body):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def server():
    with ServerThread(CompletionService(TinyIndexerLM(CFG), truncate_prompts=True)) as s:  # PROMPTS overflow
        yield s


def test_completions_batch_and_stop(server, reference):
    code, out = post(server.base_url, {"prompt": PROMPTS, "max_tokens": 12, "temperature": 0, "stop": ["Question:"]})
    assert code == 200 and [c["index"] for c in out["choices"]] == [0, 1, 2]
    assert [c["text"] for c in out["choices"]] == reference
    code, one = post(server.base_url, {"prompt": PROMPTS[2], "max_tokens": 3})
    assert code == 200 and len(one["choices"]) == 1 and one["choices"][0]["finish_reason"] == "length"
    stop = reference[2][1:3]  # stop on text the model is known to produce
    code, cut = post(server.base_url, {"prompt": PROMPTS[2], "max_tokens": 12, "stop": [stop]})
    assert cut["choices"][0]["text"] == reference[2][: reference[2].find(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("body, message", [
    ({"prompt": [1, 2, 3], "max_tokens": 4}, "prompt as token ids is not accepted"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens must be at least 1"),
    ({"prompt": "x", "temperature": 0.7}, "temperature must be 0"),
    ({"prompt": "x", "echo": True, "logprobs": 1}, "echo is not supported"),
    ({"prompt": "x", "max_tokens": 400}, "This model's maximum context length is 300 tokens"),
])
def test_bad_requests_are_rejected(server, body, message):
    code, out = post(server.base_url, body)
    assert code == 400 and message in out["error"]["message"], out
