"""Runs the parity matrix for ``python -m parity run``: each backend in its own child process, whose
results stream back one JSON line per cell, so that a backend which crashes the interpreter or hangs
is reported as such, with the cell it was in, and the cells it finished are kept. With several
GPUs (``--device cuda``) a backend's cells are spread over one child process per GPU.

The verdict of a run, as the CLI's exit code:

* 2 (unusable): a backend the user asked for could not be judged: it did not load, or every one of
  its cells was skipped; or nothing at all was judged; or a merge of shard reports is not the whole
  matrix exactly once.
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
from dataclasses import dataclass, field, replace

import torch

from parity.run import devices, shards
from parity.backends import load_backend
from parity.problem.cases import IndexerCase
from parity.judge.checks import cross_check_next_row
from parity.judge.consumers import DEFAULT_CONSUMER
from parity.run.harness import failed_checks, precompile, run_cell

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
    max_crashes: int = 8  # cells that may crash the process, each followed by a fresh one resuming
    select: list[str] | None = None  # cell keys (shards.cell_key) to run; None: every cell
    share: int = 1  # processes running at once on this host's cores (one per GPU)
    consumer: str = DEFAULT_CONSUMER  # the rule for what lies past each row's valid length (parity.judge.consumers)

    def cells(self) -> list[tuple[str, str, IndexerCase]]:
        """Case by case, so that a case's reference and inputs serve all of its cells."""
        every = [(p, b, c) for c in self.cases for p in self.paths for b in self.buffers]
        if self.select is None:
            return every
        keep = set(self.select)
        return [cell for cell in every if shards.cell_key(cell[0], cell[1], cell[2].id) in keep]


def _emit(stream, record: dict) -> None:
    stream.write(json.dumps(record) + "\n")
    stream.flush()


def run_in_process(plan: RunPlan, stream) -> None:
    """Load the backend and run its cells here, writing JSON lines to ``stream``: one ``backend``
    record, then ``start``/``result`` records per cell. Each cell runs with ``plan.device`` current
    and records where its launches ran (``ran_on``)."""
    devices.pin(plan.device)
    threads = devices.cpu_threads(plan.share)  # not torch's thread per core: see devices.cpu_threads
    torch.set_num_threads(threads)
    try:
        backend = load_backend(plan.spec, **plan.options)
    except Exception as exc:
        _emit(stream, {"backend": {"status": "unavailable", "message": f"{type(exc).__name__}: {exc}"}})
        return
    _emit(stream, {"backend": {"status": "ok", "name": backend.name, **_describe(backend)}})
    cells = plan.cells()
    if not plan.device.startswith("cpu"):
        with devices.current(plan.device):
            precompile(backend, cells, devices.placement(plan.device), pad=plan.pad, threads=threads)
    t0 = time.time()
    for i, (path, buf, case) in enumerate(cells, 1):
        cid = f"{backend.name}-{path}-{buf}-{case.id}"
        _emit(stream, {"start": cid})
        probe = devices.OnDevice(backend, plan.device)
        with devices.current(plan.device):
            result = run_cell(probe, path, buf, case, devices.placement(plan.device), pad=plan.pad,
                              repeats=plan.repeats, consumer=plan.consumer)
        result.update(device=plan.device, ran_on=probe.ran_on())
        _emit(stream, {"result": result})
        if plan.progress:
            note = result.get("reason", "") if result["status"] == "skip" else "; ".join(failed_checks(result))[:160]
            where = f" {plan.device}" if ":" in plan.device else ""  # one of several GPUs
            print(f"[{backend.name}{where} {i}/{len(cells)} {time.time() - t0:6.1f}s] {result['id']}: "
                  f"{result['status']} {note}", file=sys.stderr, flush=True)
        if _context_lost(result):  # every later cell of this process would fail the same way
            _emit(stream, {"context_lost": cid})
            return
    # what the cells taught it (stand-ins called, launches adapted)
    _emit(stream, {"backend": {"status": "ok", "name": backend.name, **_describe(backend)}})


def _describe(backend) -> dict:
    """The backend's own account of itself; one that raises is recorded as such, its cells still judged."""
    if not hasattr(backend, "describe"):
        return {}
    try:
        return dict(backend.describe())
    except Exception as exc:
        return {"describe_error": f"{type(exc).__name__}: {exc}"}


STICKY = ("illegal memory access", "CUDA error: an illegal", "unspecified launch failure", "misaligned address",
          "hipErrorIllegalAddress", "device-side assert")


def _context_lost(result: dict) -> bool:
    """A GPU fault leaves the process's device context unusable (CUDA's sticky errors)."""
    return any(f["check"] == "error" and any(s in f["summary"] for s in STICKY) for f in result.get("findings", []))


def _read_stream(path: str) -> tuple[dict | None, list[dict], str | None, bool]:
    """(backend record, finished results, id of the cell started last and not finished, whether the
    process ended its run itself: a ``done`` record, written after the last cell)."""
    info, results, started, done = None, [], None, False
    if not os.path.exists(path):
        return info, results, started, done
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
            elif "context_lost" in rec:
                started = rec["context_lost"]
                results[-1]["context_lost"] = True
            elif "done" in rec:
                done = True
    return info, results, started, done


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
        # Only a run that came back here is over: a backend that calls os._exit(0) or raises SystemExit
        # mid-cell exits with status 0 too, and without this line its lost cells would read as a clean end.
        _emit(stream, {"done": True})
    return 0


class _Child:
    """One child process running a plan, streaming its cells into a file."""

    def __init__(self, plan: RunPlan, tmp: str, tag: str):
        self.plan, self.hung = plan, False
        self.stream, plan_path = os.path.join(tmp, f"cells-{tag}.jsonl"), os.path.join(tmp, f"plan-{tag}.json")
        write_plan(plan, plan_path)
        self.proc = subprocess.Popen([sys.executable, "-m", "parity", "_run-backend", plan_path, self.stream],
                                     start_new_session=True)
        self.last_size, self.last_change = -1, time.monotonic()

    def poll(self) -> bool:
        """True while it runs; a child without a finished cell for ``plan.timeout`` seconds is killed."""
        if self.proc.poll() is not None:
            return False
        size = os.path.getsize(self.stream) if os.path.exists(self.stream) else 0
        if size != self.last_size:
            self.last_size, self.last_change = size, time.monotonic()
        elif time.monotonic() - self.last_change > self.plan.timeout:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.hung = True
            return False
        return True

    def outcome(self) -> tuple[dict, list[dict]]:
        info, results, started, ended = _read_stream(self.stream)
        code = self.proc.returncode
        how = (f"killed by signal {-code} ({signal.Signals(-code).name})" if code < 0 else f"exit code {code}")
        if info is None:  # it never got as far as loading the backend
            why = (f"hung while loading: no output for {self.plan.timeout:g} s; killed" if self.hung
                   else f"the backend process wrote nothing ({how})")
            info = {"status": "unavailable", "message": why}
        info = dict(info)
        where = f" in cell {started}" if started else ""
        done = f"; {len(results)} cells finished before it"
        if self.hung and info.get("status") == "ok":
            info.update(status="hung", message=f"no cell finished for {self.plan.timeout:g} s{where}; killed{done}")
        elif info.get("status") == "ok" and (code != 0 or not ended):
            info.update(status="crashed", message=f"process died{where}: {how}"
                        + ("" if code else " before its run was over") + done)
        if started and info["status"] in ("crashed", "hung"):
            info["cell"] = started
        return info, results


class _Supervised:
    """A plan run by child processes one after the other: when one dies in a cell (a GPU memory fault,
    an abort) or loses its device context, that cell is recorded as crashed, the other cells of its
    case as not run, and a fresh process resumes with the next case, so one bad cell does not take the
    rest of the run down (up to ``plan.max_crashes`` times)."""

    def __init__(self, plan: RunPlan, tmp: str, tag: str):
        self.plan, self.tmp, self.tag = plan, tmp, tag
        self.results, self.crashes, self.info, self.first_how = [], [], None, ""
        self.child, self.finished = _Child(plan, tmp, f"{tag}-0"), False

    def poll(self) -> bool:
        if self.finished:
            return False
        if self.child.poll():
            return True
        self.finished = True  # until a fresh child resumes below
        info, results = self.child.outcome()
        self.results += results
        self.info = self.info if self.info and info.get("status") == "ok" else info
        lost = bool(results) and results[-1].get("context_lost")
        cell = info.get("cell") or (results[-1]["id"] if lost else None)
        if cell is None or info.get("status") == "hung" or (info.get("status") == "ok" and not lost):
            return False
        how = info.get("message", "") if not lost else "the device context was lost (a GPU memory fault)"
        if not lost:  # the process died inside the cell: the cell gets a result saying so
            self.results.append(_cell_result(self.plan, cell, f"crashed: {how}"))
        self.first_how = self.first_how or how
        self.crashes.append(cell)
        done = {r["id"] for r in self.results}
        name, crashed_case = next((cell[: -len(f"-{p}-{b}-{c.id}")], c.id) for p, b, c in self.plan.cells()
                                  if cell.endswith(f"-{p}-{b}-{c.id}"))
        rest = []
        for p, b, c in self.plan.cells():
            cid = f"{name}-{p}-{b}-{c.id}"
            if cid in done:
                continue
            if c.id == crashed_case:  # the rest of a case that crashed the process is not run
                self.results.append(_cell_result(self.plan, cid, f"not run: {cell} crashed the process"))
                continue
            rest.append(shards.cell_key(p, b, c.id))
        if not rest or len(self.crashes) > self.plan.max_crashes:
            return False
        self.child = _Child(replace(self.plan, select=rest), self.tmp, f"{self.tag}-{len(self.crashes)}")
        self.finished = False
        return True

    def outcome(self) -> tuple[dict, list[dict]]:
        info = dict(self.info or {})
        left = len(self.plan.cells()) - len(self.results)
        if self.crashes:
            info.update(status="crashed", cell=self.crashes[0], crashed_cells=self.crashes,
                        message=f"{len(self.crashes)} cells crashed the process, the first {self.crashes[0]}: "
                                f"{self.first_how}; a fresh process resumed after each"
                                + (f"; {left} cells not run" if left > 0 else ""))
        elif left > 0 and info.get("status") in ("crashed", "hung"):
            info["message"] += f"; {left} cells not run"
        elif left > 0 and info.get("status") == "ok":  # cells planned and never reported: not a clean run
            info.update(status="crashed", message=f"{left} of {len(self.plan.cells())} cells never reported")
        return info, self.results

    @property
    def proc(self):
        return self.child.proc


def _cell_result(plan: RunPlan, cid: str, why: str) -> dict:
    """An error result for a cell the process died in, or did not run because of that."""
    for path, buf, case in plan.cells():
        if cid.endswith(f"-{path}-{buf}-{case.id}"):
            return {"id": cid, "backend": cid[: -len(f"-{path}-{buf}-{case.id}")], "path": path, "buffer": buf,
                    "case": {**case.__dict__, "id": case.id}, "device": plan.device, "status": "error",
                    "findings": [{"check": "error", "ok": False, "summary": why, "details": {}}]}
    raise KeyError(cid)


def run_isolated_many(plans: list[RunPlan]) -> list[tuple[dict, list[dict]]]:
    """Run each plan in a child process of its own, all at once; (backend info, results) per plan."""
    # The children run in sessions of their own (a hang is killed with its group), so a CI timeout's
    # SIGTERM to this process would not reach them: turn it into an exit that kills them first.
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    with tempfile.TemporaryDirectory() as tmp:
        children = []
        try:
            children += [_Supervised(plan, tmp, str(i)) for i, plan in enumerate(plans)]
            while any([c.poll() for c in children]):
                time.sleep(0.2)
        finally:  # interrupted: leave no child running
            signal.signal(signal.SIGTERM, previous)
            for c in children:
                if c.proc.poll() is None:
                    os.killpg(c.proc.pid, signal.SIGKILL)
                    c.proc.wait()
        return [c.outcome() for c in children]


def run_isolated(plan: RunPlan) -> tuple[dict, list[dict]]:
    """Run ``plan`` in a child process; returns (backend info, results). A child that dies or makes
    no progress for ``plan.timeout`` seconds is reported with the cell it was in."""
    return run_isolated_many([plan])[0]


def _case_weight(case: IndexerCase) -> float:
    return case.heads * case.rows * case.max_model_len  # the reference's and the checks' size


def run_on_gpus(plan: RunPlan, gpus: list[str]) -> tuple[dict, list[dict]]:
    """``plan`` spread over ``gpus`` (``cuda:0`` ...), one child process per GPU with whole cases; a
    crash or hang in one is reported with its GPU and cell, the others' cells are kept."""
    parts = [p for p in shards.split_by_case(plan.cells(), _case_weight, len(gpus))]
    plans = [replace(plan, device=gpu, select=[shards.cell_key(p, b, c.id) for p, b, c in cells])
             for gpu, cells in zip(gpus, parts) if cells]
    plans = [replace(p, share=len(plans)) for p in plans]
    outcomes = run_isolated_many(plans)
    info = shards.merge_infos([(p.device, i) for p, (i, _) in zip(plans, outcomes)])
    order = {shards.cell_key(p, b, c.id): n for n, (p, b, c) in enumerate(plan.cells())}
    results = sorted((r for _, rs in outcomes for r in rs),
                     key=lambda r: order.get(shards.cell_key(r["path"], r["buffer"], r["case"]["id"]), len(order)))
    return info, results


def run_here(plan: RunPlan) -> tuple[dict, list[dict]]:
    """Run ``plan`` in this process (no crash isolation); returns (backend info, results)."""
    with tempfile.TemporaryDirectory() as tmp:
        stream = os.path.join(tmp, "cells.jsonl")
        with open(stream, "w") as fh:
            run_in_process(plan, fh)
        info, results, _, _ = _read_stream(stream)
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
    # A merge of shards that is not the whole matrix exactly once cannot be judged as if it were.
    unusable, findings, notes = [f"incomplete merge: {why}" for why in report.get("incomplete", [])], [], []
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
