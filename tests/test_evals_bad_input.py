"""Bad input to the runs: a data dir without its files, a JSON lines file lm-eval could not read, a
bad length or top-k flag. Each is exit 2 with a message naming what is wrong, before any run."""
from __future__ import annotations

import json

import pytest

from evals.__main__ import main
from evals.model import ModelConfig

CFG = ModelConfig()  # the untrained embedded model (--untrained) the flags are checked against
TOPK, WINDOW = CFG.index_topk, CFG.max_model_len
GOOD = {"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"}


def run_cli(args, capsys):
    rc = main([*args, "--untrained"] if args[1:2] == ["run"] else args)
    cap = capsys.readouterr()
    return rc, cap.out + cap.err


def gsm8k_dir(tmp_path, test_text: str | bytes):
    d = tmp_path / "gsm"
    d.mkdir(exist_ok=True)
    (d / "train.jsonl").write_text(json.dumps(GOOD) + "\n")
    (d / "test.jsonl").write_bytes(test_text if isinstance(test_text, bytes) else test_text.encode())
    return d


BAD_JSONL = [
    (json.dumps(GOOD) + "\n{not json\n", "test.jsonl:2: not valid JSON"),
    (b"\xff\xfe\x00garbage", "test.jsonl: not UTF-8 text"),
    (json.dumps({"question": "q"}) + "\n", "test.jsonl:1: expected a JSON object with string fields 'question' and 'answer'"),
    (json.dumps({"question": "q", "answer": 5}) + "\n", "test.jsonl:1: expected a JSON object"),
    (json.dumps(["q", "a"]) + "\n", "test.jsonl:1: expected a JSON object"),
    (json.dumps({"question": "q", "answer": "five"}) + "\n", "test.jsonl:1: the answer must end in '#### N'"),
    (json.dumps({"question": "q", "answer": "five ####  "}) + "\n", "test.jsonl:1: the answer must end in '#### N'"),
    ("\n\n", "test.jsonl: no documents"),
]


@pytest.mark.parametrize("content, message", BAD_JSONL, ids=[m.split(": ", 1)[1][:20] for _, m in BAD_JSONL])
@pytest.mark.parametrize("task", ["gsm8k", "longctx"])
def test_unreadable_jsonl_is_named(tmp_path, capsys, task, content, message):
    d = gsm8k_dir(tmp_path, content)
    rc, text = run_cli([task, "run", "--out", str(tmp_path / "out"), "--data-dir", str(d), "--limit", "1"], capsys)
    assert rc == 2 and message in text and str(d / "test.jsonl") in text, text
    assert "Traceback" not in text and not (tmp_path / "out").exists()


@pytest.mark.parametrize("task, make, message", [
    ("gsm8k", lambda p: p / "nowhere", "no such directory"),
    ("gsm8k", lambda p: p, "missing ['train.jsonl', 'test.jsonl']"),
    ("longctx", lambda p: p / "nowhere", "no such directory"),
    ("longctx", lambda p: p, "missing 'test.jsonl'"),
])
def test_data_dir_without_the_files(tmp_path, capsys, task, make, message):
    rc, text = run_cli([task, "run", "--out", str(tmp_path / "out"), "--data-dir", str(make(tmp_path))], capsys)
    assert rc == 2 and message in text and "--data-dir" in text, text
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, message", [
    (["--context-tokens", "abc"], "--context-tokens: 'abc' is not a token count"),
    (["--context-tokens", "256,0"], "--context-tokens: '0' must be a positive token count"),
    (["--context-tokens", "256,-3"], "--context-tokens: '-3' must be a positive token count"),
    (["--context-tokens", "256,256"], "repeats a length"),
    (["--context-tokens", str(TOPK + 1)], f"--context-tokens: {TOPK + 1} is not several times index_topk={TOPK}"),
    (["--context-tokens", str(WINDOW)], f"--context-tokens: {WINDOW} tokens plus --max-gen-toks 32 exceed the "
                                        f"model's max_model_len={WINDOW}; at most {WINDOW - 32}"),
    (["--context-tokens", "256", "--data-dir", "."], "--context-tokens and --data-dir exclude each other"),
    (["--n-per-length", "0"], "--n-per-length must be >= 1"),
    (["--index-topk", str(TOPK + 1)], f"--index-topk {TOPK + 1}: the embedded model's indexer keeps index_topk={TOPK}"),
    (["--tokenizer", "/nonexistent/tokenizer"], "--tokenizer '/nonexistent/tokenizer'"),
])
def test_bad_length_flags(tmp_path, capsys, flags, message):
    rc, text = run_cli(["longctx", "run", "--out", str(tmp_path / "out"), *flags], capsys)
    assert rc == 2 and message in text, text
    assert "Traceback" not in text and not (tmp_path / "out").exists()


def test_bad_topk_flag_is_an_argument_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["gsm8k", "run", "--index-topk", "0"])
    assert exc.value.code == 2 and "--index-topk must be a positive integer, got 0" in capsys.readouterr().err


def test_embedded_gsm8k_topk_mismatch(tmp_path, capsys):
    from pathlib import Path

    data = Path(__file__).parent / "data" / "gsm8k"
    rc, text = run_cli(["gsm8k", "run", "--out", str(tmp_path / "o"), "--data-dir", str(data), "--index-topk",
                        str(TOPK + 1)], capsys)
    assert rc == 2 and f"--index-topk {TOPK + 1}: the embedded model's indexer keeps index_topk={TOPK}" in text
    assert json.loads((tmp_path / "o" / "run.json").read_text())["status"] == "failed"  # the record stays


@pytest.mark.parametrize("argv, message", [
    (["gsm8k", "run", "--limit", "0"], "--limit must be a positive integer, got 0"),
    (["longctx", "run", "--limit", "-3"], "--limit must be a positive integer, got -3"),
    (["gsm8k", "run", "--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    (["gsm8k", "run", "--num-concurrent", "0"], "--num-concurrent must be a positive integer, got 0"),
    (["gsm8k", "run", "--max-retries", "-1"], "--max-retries must be an integer >= 0, got -1"),
    (["gsm8k", "run", "--timeout", "0"], "--timeout must be a positive integer, got 0"),
    (["gsm8k", "run", "--max-gen-toks", "0"], "--max-gen-toks must be a positive integer, got 0"),
    (["gsm8k", "run", "--device", "tpu"], "--device: 'tpu' is not a device the suite runs on"),
    # a NaN bar compares false with everything: it would pass the gate whatever the run scored
    (["gsm8k", "gate", "r", "--baseline", "b", "--floor", "nan"], "--floor must be a number in [0, 1], got 'nan'"),
    (["longctx", "gate", "r", "--baseline", "b", "--floor", "1.5"], "--floor must be a number in [0, 1], got '1.5'"),
    (["gsm8k", "gate", "r", "--baseline", "b", "--min-share-over-topk", "5"],
     "--min-share-over-topk must be a number in [0, 1], got '5'"),
    (["gsm8k", "gate", "r", "--baseline", "b", "--confidence", "1"], "--confidence must be a number in [0.5, 1), got '1'"),
    (["serve", "--port", "99999"], "--port must be in 0..65535, got 99999"),
    (["sensitivity", "--out", "o", "--jobs", "-1"], "--jobs must be an integer >= 0, got -1"),  # looped forever
    (["sensitivity", "--out", "o", "--confidence", "2"], "--confidence must be a number in [0.5, 1), got '2'"),
    (["train", "--out", "o", "--device", "cuda:9"], "--device: 'cuda:9'"),
    (["gsm8k", "run", "--max-model-len", "1"], "--max-model-len must be an integer >= 2, got 1"),
    (["gsm8k", "make-data", "d", "--n-test", "0"], "--n-test must be a positive integer, got 0"),
    (["gsm8k", "make-data", "d", "--n-train", "-2"], "--n-train must be a positive integer, got -2"),
    (["gsm8k", "make-data", "d", "--target-chars", "3"], "--target-chars must be an integer >= 120, got 3"),
])
def test_bad_numbers_and_devices_are_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err, err


def test_serve_names_the_address_it_cannot_listen_on(capsys):
    rc = main(["serve", "--untrained", "--host", "192.0.2.1"])  # TEST-NET-1: an address no machine has
    err = capsys.readouterr().err
    assert rc == 2 and "cannot listen on --host 192.0.2.1 --port 8000" in err, err


def test_a_server_run_without_its_model_name_is_unusable(tmp_path, capsys):
    rc = main(["gsm8k", "run", "--base-url", "http://127.0.0.1:9/v1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "--model is required with --base-url" in err, err


def test_serve_names_a_log_it_cannot_append_to(tmp_path, capsys):
    rc = main(["serve", "--untrained", "--port", "0", "--log", str(tmp_path / "no" / "such" / "log.jsonl")])
    err = capsys.readouterr().err
    assert rc == 2 and "--log" in err and "cannot be appended to" in err, err


def test_baseline_into_a_directory_is_named(tmp_path, capsys):
    from test_evals_gate import write_run

    run = write_run(tmp_path / "ref", [1, 0, 1, 1])
    rc = main(["gsm8k", "baseline", str(run), "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "-o/--output" in err and "cannot be written" in err, err
