"""Runs the parity matrix for ``python -m parity run``: each backend in its own child process, whose
results stream back one JSON line per cell, so that a backend which crashes the interpreter or hangs
is reported as such, with the cell it was in, and the cells it finished are kept.

The verdict of a run, as the CLI's exit code:

* 2 (unusable): a backend the user asked for could not be judged: it did not load, or every one of
  its cells was skipped; or nothing at all was judged.
* 1 (findings): a cell failed or errored, or a backend crashed or hung.
* 0: every judged cell passed.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from parity.backends import load_backend
from parity.cases import IndexerCase
from parity.checks import cross_check_next_row
from parity.harness import failed_checks, run_cell

EXIT_CLEAN, EXIT_FINDINGS, EXIT_UNUSABLE = 0, 1, 2


@dataclass
class RunPlan:
    """What one backend runs: its cells and how (the CLI's options, validated)."""

    spec: str
    requested: bool  # named by the user (``--backend``), not a default
    cases: list[IndexerCase]
    paths: list[str]
    buffers: list[str]
    device: str
    pad: int
    timeout: float  # seconds without a finished cell before the backend is declared hung
    options: dict = field(default_factory=dict)  # backend factory options (aiter_path ...)
    progress: bool = True
    repeats: int = 2  # calls per cell (each compared bitwise with the first)

    def cells(self) -> list[tuple[str, str, IndexerCase]]:
        return [(p, b, c) for c in self.cases for p in self.paths for b in self.buffers]


def _emit(stream, record: dict) -> None:
    stream.write(json.dumps(record) + "\n")
    stream.flush()


def run_in_process(plan: RunPlan, stream) -> None:
    """Load the backend and run its cells here, writing JSON lines to ``stream``: one ``backend``
    record, then ``start``/``result`` records per cell."""
    try:
        backend = load_backend(plan.spec, **plan.options)
        info = backend.describe() if hasattr(backend, "describe") else {}
        _emit(stream, {"backend": {"status": "ok", "name": backend.name, **info}})
    except Exception as exc:
        _emit(stream, {"backend": {"status": "unavailable", "message": f"{type(exc).__name__}: {exc}"}})
        return
    cells = plan.cells()
    t0 = time.time()
    for i, (path, buf, case) in enumerate(cells, 1):
        cid = f"{backend.name}-{path}-{buf}-{case.id}"
        _emit(stream, {"start": cid})
        result = run_cell(backend, path, buf, case, plan.device, pad=plan.pad, repeats=plan.repeats)
        _emit(stream, {"result": result})
        if plan.progress:
            note = result.get("reason", "") if result["status"] == "skip" else "; ".join(failed_checks(result))[:160]
            print(f"[{backend.name} {i}/{len(cells)} {time.time() - t0:6.1f}s] {result['id']}: {result['status']} "
                  f"{note}", file=sys.stderr, flush=True)


def _read_stream(path: str) -> tuple[dict | None, list[dict], str | None]:
    """(backend record, finished results, id of the cell started last and not finished)."""
    info, results, started = None, [], None
    if not os.path.exists(path):
        return info, results, started
    with open(path) as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a crash
                break
            if "backend" in rec:
                info = rec["backend"]
            elif "start" in rec:
                started = rec["start"]
            elif "result" in rec:
                results.append(rec["result"])
                started = None
    return info, results, started


def write_plan(plan: RunPlan, path: str) -> None:
    with open(path, "w") as fh:
        json.dump({**plan.__dict__, "cases": [c.__dict__ for c in plan.cases]}, fh)


def read_plan(path: str) -> RunPlan:
    with open(path) as fh:
        raw = json.load(fh)
    return RunPlan(**{**raw, "cases": [IndexerCase(**c) for c in raw["cases"]]})


def child_main(plan_path: str, stream_path: str) -> int:
    """Entry of the child process (``python -m parity _run-backend PLAN STREAM``)."""
    with open(stream_path, "a") as stream:
        run_in_process(read_plan(plan_path), stream)
    return 0


def run_isolated(plan: RunPlan) -> tuple[dict, list[dict]]:
    """Run ``plan`` in a child process; returns (backend info, results). A child that dies or makes
    no progress for ``plan.timeout`` seconds is reported with the cell it was in."""
    with tempfile.TemporaryDirectory() as tmp:
        stream, plan_path = os.path.join(tmp, "cells.jsonl"), os.path.join(tmp, "plan.json")
        write_plan(plan, plan_path)
        proc = subprocess.Popen([sys.executable, "-m", "parity", "_run-backend", plan_path, stream],
                                start_new_session=True)
        last_size, last_change, hung = -1, time.monotonic(), False
        while proc.poll() is None:
            size = os.path.getsize(stream) if os.path.exists(stream) else 0
            if size != last_size:
                last_size, last_change = size, time.monotonic()
            elif time.monotonic() - last_change > plan.timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                hung = True
                break
            time.sleep(0.2)
        info, results, started = _read_stream(stream)
    info = dict(info or {"status": "unavailable", "message": "the backend process wrote nothing"})
    where = f" in cell {started}" if started else ""
    done = f"; {len(results)} cells finished before it"
    if hung:
        info.update(status="hung", message=f"no cell finished for {plan.timeout:g} s{where}; killed{done}")
    elif proc.returncode != 0 and info.get("status") == "ok":
        code = proc.returncode
        how = f"killed by signal {-code} ({signal.Signals(-code).name})" if code < 0 else f"exit code {code}"
        info.update(status="crashed", message=f"process died{where}: {how}{done}")
    if started and info["status"] in ("crashed", "hung"):
        info["cell"] = started
    return info, results


def run_here(plan: RunPlan) -> tuple[dict, list[dict]]:
    """Run ``plan`` in this process (no crash isolation); returns (backend info, results)."""
    with tempfile.TemporaryDirectory() as tmp:
        stream = os.path.join(tmp, "cells.jsonl")
        with open(stream, "w") as fh:
            run_in_process(plan, fh)
        info, results, _ = _read_stream(stream)
    return info, results


def reconcile(results: list[dict]) -> None:
    """Cross-cell evidence: an exact-buffer next-row attribution against the padded run of the same cell."""
    by_id = {r["id"]: r for r in results}
    for r in results:
        if r["buffer"] == "exact":
            twin = by_id.get(r["id"].replace(f"-{r['path']}-exact-", f"-{r['path']}-padded-", 1))
            if twin is not None and twin.get("device") == r.get("device"):
                cross_check_next_row(r, twin)


def judge(report: dict) -> tuple[int, list[str]]:
    """Exit code of a finished run and the lines that explain it."""
    unusable, findings, notes = [], [], []
    judged: dict[str, int] = {}
    for r in report["results"]:
        if r["status"] != "skip":
            judged[r["backend"]] = judged.get(r["backend"], 0) + 1
    for spec, info in report["backends"].items():
        status, msg = info.get("status"), info.get("message", "")
        if status == "unavailable":
            # A default that is merely absent (no triton here, say) skips; one asked for is unusable.
            (unusable if info.get("requested") else notes).append(f"backend {spec}: unavailable: {msg}")
        elif status in ("crashed", "hung"):
            findings.append(f"backend {spec}: {status}: {msg}")
        elif info.get("requested") and not judged.get(info.get("name", spec)):
            skips = [r.get("reason", "") for r in report["results"] if r["backend"] == info.get("name", spec)]
            unusable.append(f"backend {spec}: nothing judged: all {len(skips)} cells skipped"
                            + (f" (first reason: {skips[0]})" if skips else ""))
    if not judged:
        unusable.append("nothing was judged: no backend ran a cell")
    failing = sum(r["status"] in ("fail", "error") for r in report["results"])
    if failing:
        findings.insert(0, f"{failing} cells failed or errored")
    code = EXIT_UNUSABLE if unusable else EXIT_FINDINGS if findings else EXIT_CLEAN
    return code, unusable + findings + notes
