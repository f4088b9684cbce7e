"""``gsm8k gate`` and ``gsm8k baseline``: is a run as accurate as its baseline, beyond what noise
explains? Fails closed: input that cannot support a decision is exit 2, never a pass.

Exit codes: 0 pass, 1 regression, 2 unusable input."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from evals import prompt_tokens, stats
from evals.gsm8k import MANIFEST, NULL_RESPONSE, RESULTS, TASK, samples_file

PASS, REGRESSION, UNUSABLE = 0, 1, 2
DEFAULT_FILTER = "flexible-extract"
FILTERS = ("strict-match", "flexible-extract")


class Unusable(Exception):
    """The input cannot support a decision (exit 2)."""


@dataclass
class RunScores:
    path: Path
    manifest: dict
    filter: str
    value: float  # lm-eval's aggregate
    n: int
    task_version: object
    num_fewshot: int | None
    doc_ids: list[int]
    correct: list[int]  # per doc, in doc_id order
    records: dict[int, dict]  # doc_id -> lm-eval's record for this filter
    task: str = TASK


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise Unusable(f"{what}: {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise Unusable(f"{what}: {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise Unusable(f"{what}: {path} holds a JSON {type(data).__name__}; expected an object")
    return data


def _number(x) -> bool:
    """A finite int or float; JSON's true/false are Python bools, which are ints, and would count as 1/0."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def load_run(run_dir: str | Path, filter: str = DEFAULT_FILTER) -> RunScores:
    """A run directory, checked for everything a decision rests on."""
    if filter not in FILTERS:
        raise Unusable(f"--filter must be one of {FILTERS}, got {filter!r}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise Unusable(f"run directory {run_dir} does not exist")
    manifest = _read_json(run_dir / MANIFEST, "run manifest")
    if manifest.get("status") != "ok":
        raise Unusable(f"run {run_dir} did not complete (status {manifest.get('status')!r}): {manifest.get('error')}")
    info = (manifest.get("server") or {}).get("info") or {}
    st = info.get("stats") or {}
    if st.get("errors"):
        raise Unusable(f"run {run_dir}: the server answered {st['errors']} request(s) with an error")
    results = _read_json(run_dir / RESULTS, "lm-eval results")
    task_name = manifest.get("task", TASK)
    task = results.get("results") if isinstance(results.get("results"), dict) else {}
    task = task.get(task_name)
    if not isinstance(task, dict):
        raise Unusable(f"{run_dir / RESULTS} has no {task_name!r} results")
    key = f"exact_match,{filter}"
    if key not in task:
        raise Unusable(f"{run_dir / RESULTS}: no metric {key!r} (has {sorted(k for k in task if ',' in k)})")
    if not _number(task[key]):
        raise Unusable(f"{run_dir / RESULTS}: metric {key!r} is {task[key]!r}, expected a number")
    counts = results.get("n-samples") if isinstance(results.get("n-samples"), dict) else {}
    counts = counts.get(task_name) if isinstance(counts.get(task_name), dict) else {}
    n = counts.get("effective", task.get("sample_len"))
    samples_path = run_dir / samples_file(task_name)
    if not samples_path.is_file():
        raise Unusable(f"run {run_dir}: per-sample records {samples_path.name} are missing")
    records: dict[int, dict] = {}
    for lineno, line in enumerate(samples_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise Unusable(f"{samples_path}:{lineno} is not valid JSON") from None
        if not isinstance(rec, dict):
            raise Unusable(f"{samples_path}:{lineno} is a JSON {type(rec).__name__}; expected a record (object)")
        if rec.get("filter") != filter:
            continue
        doc = rec.get("doc_id")
        if not _count(doc):
            raise Unusable(f"{samples_path}:{lineno}: doc_id {doc!r} is not an integer")
        if doc in records:
            raise Unusable(f"{samples_path}: doc_id {doc} appears twice under filter {filter}")
        if not _number(rec.get("exact_match")):
            raise Unusable(f"{samples_path}:{lineno}: exact_match is {rec.get('exact_match', 'missing')!r}, "
                           "expected a number")
        resps = rec.get("resps") or [[None]]
        if not isinstance(resps, list) or not all(isinstance(g, list) for g in resps):
            raise Unusable(f"{samples_path}:{lineno}: resps must be a list of lists of responses")
        if any(r is None or r == NULL_RESPONSE for group in resps for r in group):
            raise Unusable(f"{samples_path}: doc_id {doc} has no response from the server (null/failed request)")
        records[doc] = rec
    if _count(n) and n == 0:  # nothing was scored: no accuracy to gate (it was a division by zero, exit 1)
        raise Unusable(f"run {run_dir}: results say n=0: no question was scored")
    if not _count(n) or n != len(records):
        raise Unusable(f"run {run_dir}: results say n={n} but {len(records)} per-sample records under {filter}: "
                       "samples are missing")
    doc_ids = sorted(records)
    correct = [int(records[d]["exact_match"] >= 1.0) for d in doc_ids]
    value = float(task[key])
    if abs(sum(correct) / n - value) > 1e-9:
        raise Unusable(f"run {run_dir}: per-sample records give {sum(correct)}/{n} but results say {value}")
    return RunScores(run_dir, manifest, filter, value, n, results.get("versions", {}).get(task_name),
                     results.get("n-shot", {}).get(task_name), doc_ids, correct, records, task_name)


def load_baseline(path: str | Path, task: str | None = None) -> dict:
    """A baseline file, checked; ``task``: the task it must be for (default: any)."""
    path = Path(path)
    b = _read_json(path, "baseline")
    text = lambda x: isinstance(x, str)  # noqa: E731
    need = {"task": (text, "a string"), "metric": (text, "a string"), "value": (_number, "a number"),
            "n": (_count, "an integer")}
    for k, (ok, what) in need.items():
        if not ok(b.get(k)):
            raise Unusable(f"baseline {path}: {k!r} is missing or not {what}")
    if not b["metric"].startswith("exact_match,") or b["metric"].split(",", 1)[1] not in FILTERS:
        raise Unusable(f"baseline {path}: metric {b['metric']!r}, expected exact_match,<{'|'.join(FILTERS)}>")
    if task is not None and b["task"] != task:
        raise Unusable(f"baseline {path}: task {b['task']!r}, expected {task!r}")
    if not 0.0 <= b["value"] <= 1.0 or b["n"] < 1:
        raise Unusable(f"baseline {path}: value must be in [0, 1] and n >= 1, got {b['value']}, {b['n']}")
    s = b.get("samples")
    if s is not None and not isinstance(s, dict):
        raise Unusable(f"baseline {path}: samples must be an object with doc_ids and correct")
    if s is not None:
        ids, cor = s.get("doc_ids"), s.get("correct")
        if not isinstance(ids, list) or not isinstance(cor, list) or len(ids) != b["n"] or len(cor) != b["n"]:
            raise Unusable(f"baseline {path}: samples.doc_ids and samples.correct must both have n={b['n']} entries")
        if any(not _count(c) or c not in (0, 1) for c in cor):
            raise Unusable(f"baseline {path}: samples.correct must hold 0/1")
        if not all(_count(d) for d in ids):
            raise Unusable(f"baseline {path}: samples.doc_ids must hold integers")
        if abs(sum(cor) / b["n"] - b["value"]) > 1e-9:
            raise Unusable(f"baseline {path}: samples give {sum(cor)}/{b['n']} but value is {b['value']}")
    return b


def gate(run: RunScores, baseline: dict, confidence: float = 0.95, floor: float | None = None,
         out=print, min_share: float = prompt_tokens.DEFAULT_MIN_SHARE, require_coverage: bool = False) -> int:
    """``min_share``: the share of prompts longer than the indexer's top-k below which the verdict
    says that this accuracy cannot see an indexer value bug; with ``require_coverage`` such a run
    is unusable (exit 2) instead of a pass or regression with that warning."""
    want = f"exact_match,{run.filter}"
    if baseline["task"] != run.task:
        raise Unusable(f"baseline is for task {baseline['task']!r}, the run for {run.task!r}")
    if baseline["metric"] != want:
        raise Unusable(f"baseline metric {baseline['metric']!r} is not the gated metric {want!r} (use --filter)")
    if run.n != baseline["n"]:
        raise Unusable(f"different n: run has {run.n} questions, baseline {baseline['n']} "
                       "(a --limit run needs a baseline made at the same limit)")
    for field, got in (("task_version", run.task_version), ("num_fewshot", run.num_fewshot)):
        if field in baseline and baseline[field] != got:
            raise Unusable(f"different {field}: run {got!r}, baseline {baseline[field]!r}")
    samples = baseline.get("samples")
    if samples is not None:
        if samples["doc_ids"] != run.doc_ids:
            raise Unusable("baseline and run per-sample vectors cover different doc_ids")
        t = stats.mcnemar(run.correct, samples["correct"], confidence)
        d = t.details
        detail = f"discordant {d['discordant']}: {d['losses']} lost, {d['gains']} gained"
    else:
        base_correct = round(baseline["value"] * baseline["n"])
        t = stats.two_proportion(sum(run.correct), run.n, base_correct, baseline["n"], confidence)
        detail = f"z {t.details['z']:.3f}; baseline counted as {base_correct}/{baseline['n']}"
    below_floor = floor is not None and run.value < floor
    regression = t.regression or below_floor
    shown, coverage_lines = prompt_tokens.coverage(run.manifest.get("prompt_tokens"), min_share)
    if require_coverage and not shown:
        for line in coverage_lines:
            out(f"  {line}")
        raise Unusable("--require-coverage: this run's prompts are too short for its accuracy to reflect the "
                       f"indexer (threshold: {min_share:.0%} of prompts longer than index_topk)")
    out(f"{run.task} gate [{run.filter}] run {run.path}")
    out(f"  run      {run.value:.4f}  ({sum(run.correct)}/{run.n})")
    out(f"  baseline {baseline['value']:.4f}  (n={baseline['n']}, {baseline.get('name', '?')})")
    out(f"  test {t.test}: difference {t.diff:+.4f}, standard error {t.stderr:.4f}, one-sided p-value {t.p_value:.4g}, "
        f"threshold p < {t.alpha:.4g} (confidence {confidence}); {detail}")
    if floor is not None:
        out(f"  floor {floor:.4f}: {'BELOW' if below_floor else 'above'}")
    reason = ("below the absolute floor" if below_floor and not t.regression else
              "worse than the baseline beyond noise" if t.regression else "within noise of the baseline")
    for line in coverage_lines:
        out(f"  {line}")
    scope = "" if shown else "; accuracy only: the indexer's values were not exercised"
    out(f"  decision: {'REGRESSION' if regression else 'PASS'} ({reason}{scope})")
    return REGRESSION if regression else PASS


def make_baseline(run: RunScores, name: str, with_samples: bool = True, **extra) -> dict:
    p, n = run.value, run.n
    b = {"name": name, "task": run.task, "task_version": run.task_version, "num_fewshot": run.num_fewshot,
         "metric": f"exact_match,{run.filter}", "value": p, "n": n,
         "stderr": math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else 0.0,
         "model": run.manifest.get("model", {}).get("name"), "limit": run.manifest.get("limit"),
         "kernel": run.manifest.get("kernel"), "hardware": run.manifest.get("hardware"), "source": str(run.path),
         **extra}
    if with_samples:
        b["samples"] = {"doc_ids": run.doc_ids, "correct": run.correct}
    return b
