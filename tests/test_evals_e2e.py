"""GSM8K end to end: lm-eval's gsm8k task over real HTTP against the embedded model, gated; and the
planted overshoot fault, which ``compare`` must flag with an exact logits buffer and not with a
padded one. Marked slow (they run by default; ``-m "not slow"`` skips them). ~15 s on 2 cores.
The documents are the suite's own GSM8K-format fixture (tests/data/gsm8k), so these run anywhere."""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from evals.__main__ import main

pytestmark = pytest.mark.slow
DATA = Path(__file__).parent / "data" / "gsm8k"
# The untrained model (these tests are about the HTTP path, lm-eval and compare, not accuracy). Its
# 1000-token window is shorter than GSM8K's 5-shot prompts (~2 KB): cut from the left, reported.
LIMIT = ["--limit", "3", "--max-gen-toks", "16", "--data-dir", str(DATA), "--truncate-prompts", "--untrained"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    offline = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    assert main(["gsm8k", "run", "--out", str(out), *LIMIT]) == 0
    # A run never forces offline mode: that is the user's choice (and would stop hub runs).
    assert {k: os.environ.get(k) for k in offline} == offline
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "evals", "serve", "--port", str(port), "--truncate-prompts",
                             "--untrained"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"server exited: {proc.stdout.read()}")
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_lm_eval_over_http_then_gate(reference_run, server, tmp_path, capsys):
    run = tmp_path / "http"
    rc = main(["gsm8k", "run", "--out", str(run), "--base-url", server + "/v1", "--model", "tiny-indexer-lm",
               "--batch-size", "8", *LIMIT])
    assert rc == 0
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["status"] == "ok" and manifest["n"] == 3 and manifest["num_fewshot"] == 5
    assert manifest["server"]["models"]["data"][0]["id"] == "tiny-indexer-lm"  # reached over HTTP
    assert manifest["data"]["source"] == "local" and manifest["data"]["dir"] == str(DATA.resolve())
    assert manifest["data"]["files"]["test"]["sha256"] == hashlib.sha256((DATA / "test.jsonl").read_bytes()).hexdigest()
    lines = [json.loads(x) for x in (run / "samples_gsm8k.jsonl").read_text().splitlines()]
    assert sorted({(r["doc_id"], r["filter"]) for r in lines}) == [
        (d, f) for d in range(3) for f in ("flexible-extract", "strict-match")]
    assert all(r["arguments"][0][0].count("Question:") == 6 for r in lines)  # 5-shot + the question

    base = tmp_path / "base.json"
    assert main(["gsm8k", "baseline", str(reference_run), "-o", str(base)]) == 0
    capsys.readouterr()
    assert main(["gsm8k", "gate", str(run), "--baseline", str(base)]) == 0
    out = capsys.readouterr().out
    print(out)
    assert "mcnemar-exact" in out and "decision: PASS" in out
    # The same model over HTTP and in process: identical generations.
    assert main(["gsm8k", "compare", str(reference_run), str(run)]) == 0
    assert "3/3 identical" in capsys.readouterr().out


def test_planted_overshoot_diverges_with_exact_buffer_only(reference_run, tmp_path, capsys):
    fault = ["--backend", "fault:unmasked_chunk_store"]
    exact, padded = tmp_path / "exact", tmp_path / "padded"
    assert main(["gsm8k", "run", "--out", str(exact), *fault, "--buffer", "exact", *LIMIT]) == 0
    assert main(["gsm8k", "run", "--out", str(padded), *fault, "--buffer", "padded", *LIMIT]) == 0
    info = json.loads((exact / "run.json").read_text())["server"]["info"]
    assert info["stats"]["indexer_oob_calls"] > 0  # the last row's chunk left the allocation (into the guard)
    capsys.readouterr()

    assert main(["gsm8k", "compare", str(reference_run), str(exact)]) == 1
    out = capsys.readouterr().out
    print(out)
    assert "DIVERGENCE beyond ties" in out and "verdict: DIVERGED" in out
    # Row 0 of each batch has no row before it to damage it: its generation must agree.
    first_row = json.loads((exact / "server_requests.jsonl").read_text().splitlines()[0])["texts"][0]
    ref_first = json.loads((reference_run / "server_requests.jsonl").read_text().splitlines()[0])["texts"][0]
    assert first_row == ref_first

    assert main(["gsm8k", "compare", str(reference_run), str(padded)]) == 0
    out = capsys.readouterr().out
    print(out)
    assert "3/3 identical" in out and "verdict: AGREE" in out


def test_correct_kernel_differs_only_at_ties(reference_run, tmp_path, capsys):
    """A backend inside the value tolerance may pick another member at a near-tied k-th value; compare
    must trace each such difference to a top-k tie and still agree."""
    jitter = os.path.join(os.path.dirname(__file__), "evals_jitter_backend.py")
    run = tmp_path / "jitter"
    assert main(["gsm8k", "run", "--out", str(run), "--backend", jitter, *LIMIT]) == 0
    capsys.readouterr()
    rc = main(["gsm8k", "compare", str(reference_run), str(run)])
    out = capsys.readouterr().out
    print(out)
    assert rc == 0 and "verdict: AGREE (differences are top-k ties)" in out
    assert "top-k tie;" in out and "0 divergence beyond ties, 0 untraced" in out
