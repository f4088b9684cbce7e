"""Where a GSM8K run's documents come from: the user's JSONL (--data-dir / $GSM8K_DATA_DIR) or the
hub dataset lm-eval names; never a path the code guesses; a clear exit 2 when offline with neither;
and the export for offline machines, byte-for-byte the original release's serialization."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evals import data
from evals.gsm8k import task_config

FIXTURE = Path(__file__).parent / "data" / "gsm8k"
REPO = Path(__file__).resolve().parent.parent


def test_no_data_dir_means_the_hub_even_beside_a_shared_folder(tmp_path, monkeypatch):
    # the development layout: GSM8K beside the checkout, which the product must not look for
    beside = tmp_path.joinpath("shared", "data", "gsm8k")
    beside.mkdir(parents=True)
    for s in data.SPLITS:
        (beside / f"{s}.jsonl").write_text((FIXTURE / f"{s}.jsonl").read_text())
    (tmp_path / "checkout").mkdir()
    monkeypatch.chdir(tmp_path / "checkout")
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    assert data.resolve_data_dir(None) is None
    cfg = task_config(None)  # lm-eval's own hub dataset, not a local path
    assert (cfg["dataset_path"], cfg["dataset_name"]) == ("openai/gsm8k", "main")
    assert "data_files" not in (cfg.get("dataset_kwargs") or {})


def test_env_and_argument_name_the_jsonl(tmp_path, monkeypatch):
    monkeypatch.chdir(FIXTURE.parent)
    monkeypatch.setenv(data.DATA_ENV, "gsm8k")  # relative to the working directory
    assert data.resolve_data_dir(None) == FIXTURE.resolve()
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    with pytest.raises(ValueError, match=r"--data-dir / \$GSM8K_DATA_DIR = .*missing \['train.jsonl', 'test.jsonl'\]"):
        data.resolve_data_dir(None)
    assert data.resolve_data_dir(str(FIXTURE)) == FIXTURE.resolve()  # the argument wins over the environment
    cfg = task_config(FIXTURE)
    assert cfg["dataset_path"] == "json" and cfg["dataset_kwargs"]["data_files"]["test"] == str(FIXTURE / "test.jsonl")


def test_local_record_hashes_each_file():
    rec = data.local_record(FIXTURE)
    assert rec["source"] == "local"
    for s in data.SPLITS:
        raw = (FIXTURE / f"{s}.jsonl").read_bytes()
        assert rec["files"][s]["sha256"] == hashlib.sha256(raw).hexdigest()
        assert rec["files"][s]["rows"] == len(raw.decode().splitlines())


def test_fixture_is_gsm8k_shaped():
    for s in data.SPLITS:
        docs = [json.loads(line) for line in (FIXTURE / f"{s}.jsonl").read_text().splitlines()]
        assert len(docs) >= 5 and all(sorted(d) == ["answer", "question"] for d in docs)
        for d in docs:  # the final answer is the last annotated result
            last = d["answer"].rsplit("<<", 1)[1].split("=", 1)[1].split(">>")[0]
            assert d["answer"].endswith(f"\n#### {int(float(last))}")


# A server run reads GSM8K (the embedded model's default is the generated task, no hub needed).
SERVER_RUN = ["run", "--limit", "1", "--base-url", "http://127.0.0.1:9/v1", "--model", "m"]


@pytest.mark.parametrize("action", [SERVER_RUN, ["export-data"]])
def test_offline_without_data_dir_says_what_to_do(tmp_path, action):
    """The user's offline mode and an empty cache: exit 2 naming --data-dir, $GSM8K_DATA_DIR and the
    export command, not lm-eval's traceback, and nothing written (before any server is reached)."""
    env = {k: v for k, v in os.environ.items() if k != data.DATA_ENV}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(REPO))
    out = tmp_path / "out"
    args = [*action, "--out", str(out)] if action[0] == "run" else [*action, str(out)]
    proc = subprocess.run([sys.executable, "-m", "evals", "gsm8k", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    for needle in ("openai/gsm8k", "--data-dir DIR", "GSM8K_DATA_DIR=DIR", "python -m evals gsm8k export-data DIR"):
        assert needle in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_export_writes_the_release_serialization(tmp_path):
    """The export, fed through ``datasets`` from the fixture (no network here): files equal to the
    fixture byte for byte (it is written as the original GSM8K release is), and the record's hashes
    equal the files' and the local record's, so hub and offline runs compare by hash."""
    import datasets

    def load(dataset, config, revision):
        files = {s: str(FIXTURE / f"{s}.jsonl") for s in data.SPLITS}
        return datasets.load_dataset("json", data_files=files, cache_dir=str(tmp_path / "cache")), "c0ffee"

    rec = data.export(tmp_path / "x", "openai/gsm8k", "main", load=load)
    local = data.local_record(tmp_path / "x")
    for s in data.SPLITS:
        assert (tmp_path / "x" / f"{s}.jsonl").read_bytes() == (FIXTURE / f"{s}.jsonl").read_bytes()
        assert rec["sha256"][s] == local["files"][s]["sha256"]
    assert rec["revision"] == "c0ffee" and rec["rows"]["test"] == 6
    assert json.loads((tmp_path / "x" / data.SOURCE_FILE).read_text()) == rec
