"""``python -m evals sensitivity --out DIR``: what accuracy sees and what only parity sees.

Every planted fault of ``python -m parity selftest`` (the stress classes too) and the real builds
the suite judges run as the embedded model's decode indexer on the same generated questions,
through lm-eval's real ``gsm8k`` task in process (``evals.lm``). Per row: accuracy, the paired
difference from the reference with its 95% interval, the gate's two tests (one-sided
two-proportion, exact McNemar) and the parity verdict of the same build (the selftest's own cells
for a planted fault; ``python -m parity run --level quick`` for a kernel build).

Rows run in worker processes (``--jobs``), one row each, so a build that kills its process costs
its row only; a backend that declines the model's shape is a row saying why. Writes
``sensitivity.json`` and ``sensitivity.md`` in DIR (``rows/`` holds each row's record and run).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from evals import stats
from evals.gate import DEFAULT_FILTER as GATED
from evals.gate import FILTERS, Unusable


@dataclass(frozen=True)
class Row:
    id: str
    kind: str  # reference | control | kernel | fault | build
    backend: str = "torch"
    path: str = "fused"
    buffer: str = "exact"
    selection: str = "indexer"
    fp8: str | None = None  # the model's fp8 flavour, where a row needs another one
    options: dict = field(default_factory=dict)
    parity: str = "matrix"  # matrix | selftest | none
    note: str = ""


def planted_rows() -> list[Row]:
    """One row per distinct (fault, path, buffer) of the selftest."""
    from parity.selftest import PLANTED

    seen, out = set(), []
    for p in PLANTED:
        key = (p.fault, p.path, p.buffer)
        if key in seen:
            continue
        seen.add(key)
        fp8 = "e4m3fnuz" if p.fault == "fp8_flavour_misread" else None  # it misreads e4m3fnuz keys only
        out.append(Row(f"fault:{p.fault}/{p.path}/{p.buffer}", "fault", f"fault:{p.fault}", p.path, p.buffer, fp8=fp8,
                       parity="selftest", note=p.bug_class))
    return out


def all_rows(aiter_tree: str | None = None, triton: bool = True, builds: bool = True) -> list[Row]:
    rows = [Row("reference", "reference", parity="none", note="torch indexer, exact buffer: the baseline"),
            Row("control:random-topk", "control", selection="random", parity="none",
                note="index_topk tokens drawn at random (selection matters)"),
            Row("control:dense", "control", selection="dense", parity="none", note="no indexer: every token")]
    if triton:
        rows += [Row(f"triton/{p}/{b}", "kernel", "triton", p, b, note="the project's Triton kernel")
                 for p in ("fused", "stage1", "preshuffle") for b in ("exact", "padded")]
    rows += planted_rows()
    if builds:
        rows += [Row(f"aiter-0.1.7/fused/{b}", "build", "aiter", "fused", b,
                     note="amd-aiter 0.1.7: the installed package, or the tree in $PARITY_AITER_PATH")
                 for b in ("exact", "padded")]
        if aiter_tree:
            rows += [Row(f"aiter-main/stage1/{b}", "build", "aiter", "stage1", b, options={"aiter_path": aiter_tree},
                         note=f"aiter tree {aiter_tree}") for b in ("exact", "padded")]
        rows += [Row(f"deepgemm/fused/{b}", "build", "deepgemm", "fused", b, note="deep_gemm where it loads")
                 for b in ("exact", "padded")]
    return rows


# -- one row ------------------------------------------------------------------------------------
def run_row(row: Row, args, data_dir: Path, out: Path) -> dict:
    from evals.gsm8k import hardware, hardware_label
    from evals.lm import evaluate
    from evals.model import BackendUnsupported
    from evals.synth import read_record
    from evals.weights import embedded_model

    rec = {"row": asdict(row), "status": "ok", "host": hardware_label(hardware())}
    t0 = time.time()
    try:
        model = embedded_model(args.weights, backend=row.backend, buffer=row.buffer, path=row.path,
                               selection=row.selection, device=args.device, backend_options=row.options, fp8=row.fp8)
        model.probe()  # one decode call: does the backend take the shape?
        res = evaluate(model, data_dir, out / "run", limit=args.limit, batch_size=args.batch_size,
                       max_gen_toks=args.max_gen_toks, label=row.id, data_record=read_record(data_dir))
        rec.update(metrics=res["metrics"], n=res["n"], doc_ids=res["doc_ids"], correct=res["correct"],
                   eval_wall_s=res["wall_s"], prompt_tokens=res["prompt_tokens"],
                   indexer_calls=model.indexer.calls, oob_calls=model.indexer.oob_calls,
                   backend_info=model.indexer.describe().get("backend_info"))
    except BackendUnsupported as exc:
        rec.update(status="unsupported", reason=str(exc))
    except Exception as exc:  # noqa: BLE001 - a failing build is a row, not the end of the table
        rec.update(status="error", reason=f"{type(exc).__name__}: {exc}"[:600])
    rec["wall_s"] = round(time.time() - t0, 1)
    rec["parity"] = parity_verdict(row, args)
    return rec


def parity_verdict(row: Row, args) -> dict:
    if row.parity == "none":
        return {"verdict": "n/a", "detail": "the reference" if row.kind == "reference" else "not a kernel"}
    if row.parity == "selftest":
        from parity.selftest import PLANTED

        cells = []
        for p in PLANTED:
            if f"fault:{p.fault}" == row.backend and p.path == row.path and p.buffer == row.buffer:
                ok, detail = p.run()
                cells.append({"case": p.case.id, "check": p.check, "caught": ok, "detail": detail})
        caught = [c for c in cells if c["caught"]]
        return {"verdict": "FAIL" if caught else "pass", "how": "selftest cells", "cells": cells,
                "detail": f"caught in {len(caught)}/{len(cells)} selftest cells by "
                          + ", ".join(sorted({c['check'] for c in caught}) or ["nothing"])}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "parity", "run", "--backend", row.backend, "--path", row.path, "--buffer",
               row.buffer, "--level", "quick", "--device", args.device, "--out", f"{tmp}/r.json", "--quiet",
               "--no-progress"] + (["--aiter-path", row.options["aiter_path"]] if "aiter_path" in row.options else [])
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.parity_timeout)
        except subprocess.TimeoutExpired:
            return {"verdict": "unusable", "how": "parity run --level quick", "detail": "timed out"}
        verdict = {0: "pass", 1: "FAIL"}.get(proc.returncode, "unusable")
        detail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        try:
            report = json.loads(Path(f"{tmp}/r.json").read_text())
            summary = report.get("summary", {})
            detail = [json.dumps(summary)[:300]] if summary else detail
        except (OSError, json.JSONDecodeError):
            pass
        return {"verdict": verdict, "how": "parity run --level quick", "exit": proc.returncode,
                "detail": " | ".join(detail)[:400]}


# -- the table ----------------------------------------------------------------------------------
def judge(rec: dict, ref: dict, confidence: float) -> dict:
    """The gate's two tests of ``rec`` against the reference row, on the gated filter."""
    if rec["status"] != "ok":
        return {"gate": "UNUSABLE", "why": rec.get("reason", rec["status"])}
    if rec["doc_ids"] != ref["doc_ids"]:
        return {"gate": "UNUSABLE", "why": "different questions than the reference"}
    run, base = rec["correct"][GATED], ref["correct"][GATED]
    n = len(run)
    mc = stats.mcnemar(run, base, confidence)
    tp = stats.two_proportion(sum(run), n, sum(base), n, confidence)
    z = 1.959963984540054  # two-sided 95% interval of the paired difference
    return {"accuracy": {f: sum(rec["correct"][f]) / n for f in FILTERS if f in rec["correct"]},
            "diff": mc.diff, "ci95": [mc.diff - z * mc.stderr, mc.diff + z * mc.stderr],
            "two_proportion": {"p": tp.p_value, "regression": tp.regression},
            "mcnemar": {"p": mc.p_value, "regression": mc.regression, "lost": mc.details["losses"],
                        "gained": mc.details["gains"]},
            "gate": "REGRESSION" if mc.regression else "pass"}


def assemble(records: list[dict], meta: dict, confidence: float = 0.95) -> dict:
    ref = next((r for r in records if r["row"]["id"] == "reference"), None)
    if ref is None or ref["status"] != "ok":
        # unusable input (exit 2), not a finding: no row can be judged without it
        raise Unusable(f"the reference row did not run: {ref and ref.get('reason')}")
    for r in records:
        r["gate"] = judge(r, ref, confidence)
    return {"schema": 1, **meta, "confidence": confidence, "gated_filter": GATED, "rows": records}


def _fmt_p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.0e}"


def markdown(table: dict) -> str:
    m = table
    lines = [f"# Sensitivity: accuracy against parity ({m['data']['name']}, n={m['n']})", "",
             f"{m['date']}, {m['hardware']}; `{m['command']}`; model {m['model']}; decode batch {m['batch_size']}; "
             f"gate: one-sided, confidence {m['confidence']}, on {m['gated_filter']}.", "",
             "| row | kind | flexible | strict | diff vs reference [95% CI] | two-proportion p | McNemar lost/gained, p "
             "| gate | parity | note |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in m["rows"]:
        row, g, par = r["row"], r["gate"], r["parity"]
        if r["status"] != "ok" or g["gate"] == "UNUSABLE":  # judge's UNUSABLE has no figures, only its why
            status, reason = ((r["status"], r.get("reason", "")) if r["status"] != "ok"
                              else ("unusable", g.get("why", "")))
            lines.append(f"| {row['id']} | {row['kind']} | - | - | - | - | - | {status.upper()}: "
                         f"{(reason or '')[:160]} | {par['verdict']} | {row['note']} |")
            continue
        acc = g["accuracy"]
        ci = f"{g['diff']:+.4f} [{g['ci95'][0]:+.4f}, {g['ci95'][1]:+.4f}]"
        tp, mc = g["two_proportion"], g["mcnemar"]
        lines.append(f"| {row['id']} | {row['kind']} | {acc.get('flexible-extract', 0):.4f} | "
                     f"{acc.get('strict-match', 0):.4f} | {ci} | {_fmt_p(tp['p'])}{' **R**' if tp['regression'] else ''} | "
                     f"{mc['lost']}/{mc['gained']}, {_fmt_p(mc['p'])} | **{g['gate']}** | {par['verdict']} | "
                     f"{row['note']}{'; writes outside its rows' if r.get('oob_calls') else ''} |")
    ok = [r for r in m["rows"] if r["row"]["kind"] in ("fault", "build", "kernel")]
    seen = [r["row"]["id"] for r in ok if r["gate"]["gate"] != "pass"]
    only_parity = [r["row"]["id"] for r in ok if r["gate"]["gate"] == "pass" and r["parity"]["verdict"] == "FAIL"]
    lines += ["", f"Kernel rows the accuracy gate fails (or cannot judge): {len(seen)}; failed by parity but passed by "
              f"the accuracy gate: {len(only_parity)} ({', '.join(only_parity) or 'none'})."]
    return "\n".join(lines) + "\n"


# -- driver ---------------------------------------------------------------------------------------
def _worker_cmd(args, row_id: str, data_dir: Path) -> list[str]:
    cmd = [sys.executable, "-m", "evals", "sensitivity", "--out", str(args.out), "--only", row_id,
           "--data-dir", str(data_dir), "--batch-size", str(args.batch_size), "--max-gen-toks", str(args.max_gen_toks),
           "--device", args.device, "--worker", "--parity-timeout", str(args.parity_timeout)]
    for flag, val in (("--limit", args.limit), ("--weights", args.weights), ("--aiter-tree", args.aiter_tree)):
        if val is not None:
            cmd += [flag, str(val)]
    return cmd + (["--no-triton"] if args.no_triton else []) + (["--no-builds"] if args.no_builds else [])


def main(args) -> int:
    from evals import synth
    from evals.gsm8k import hardware, hardware_label

    out = Path(args.out)
    rows = all_rows(args.aiter_tree, triton=not args.no_triton, builds=not args.no_builds)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {r.id for r in rows}
        if unknown:
            raise ValueError(f"--only: unknown rows {sorted(unknown)}; rows are {[r.id for r in rows]}")
        rows = [r for r in rows if r.id in wanted] + ([] if args.worker else [r for r in rows if r.id == "reference"
                                                                                  and r.id not in wanted])
    if getattr(args, "skip", None):
        skip = tuple(s for s in args.skip.split(",") if s)
        if "reference".startswith(skip):
            raise ValueError("--skip: the reference row is what every other row is judged against; it cannot be left out")
        rows = [r for r in rows if not r.id.startswith(skip)]
    data_dir = Path(args.data_dir) if args.data_dir else out / "data"
    if not args.data_dir:
        synth.write(data_dir, synth.SynthSpec(seed=args.data_seed))
    elif not (data_dir / "test.jsonl").is_file():
        raise ValueError(f"--data-dir {data_dir}: no test.jsonl (a GSM8K-format directory)")
    rows_dir = out / "rows"
    rows_dir.mkdir(parents=True, exist_ok=True)
    todo = rows
    if getattr(args, "resume", False) and not args.worker:
        todo = [r for r in rows if not _finished(rows_dir / f"{_safe(r.id)}.json")]
        print(f"[sensitivity] --resume: {len(rows) - len(todo)} of {len(rows)} rows already recorded, "
              f"{len(todo)} to run", file=sys.stderr, flush=True)
    if args.worker or args.jobs == 0:
        for row in todo:
            rec = run_row(row, args, data_dir, rows_dir / _safe(row.id))
            (rows_dir / f"{_safe(row.id)}.json").write_text(json.dumps(rec, indent=1, default=str))
            print(f"[{row.id}] {rec['status']} {_short(rec)} ({rec['wall_s']} s)", file=sys.stderr, flush=True)
        if args.worker:
            return 0
    elif todo:
        _run_workers(args, todo, data_dir, rows_dir)
    records = []
    for row in rows:
        f = rows_dir / f"{_safe(row.id)}.json"
        records.append(json.loads(f.read_text()) if f.is_file() else
                       {"row": asdict(row), "status": "crashed", "reason": "its worker process died (see the log)",
                        "parity": {"verdict": "n/a", "detail": "not reached"}})
    rec = synth.read_record(data_dir) or {"name": f"GSM8K-format files in {data_dir}"}
    # Where the rows ran (a table resumed from rows recorded on other hosts names them all).
    hosts = sorted({r["host"] for r in records if r.get("host")}) or [hardware_label(hardware())]
    meta = {"date": time.strftime("%Y-%m-%d"), "hardware": " + ".join(hosts), "command": "python -m evals sensitivity "
            + " ".join(sys.argv[2:]), "model": _model_name(args), "data": rec, "n": next(
                (r.get("n") for r in records if r.get("n")), None), "batch_size": args.batch_size}
    table = assemble(records, meta, args.confidence)
    (out / "sensitivity.json").write_text(json.dumps(table, indent=1, default=str))
    md = markdown(table)
    (out / "sensitivity.md").write_text(md)
    print(md)
    return 0


def _run_workers(args, rows: list[Row], data_dir: Path, rows_dir: Path) -> None:
    """Runs the rows ``args.jobs`` at a time, each worker's output copied line by line to stderr
    (progress per row and per question batch) and to ``rows/logs/<row>.log``."""
    import threading

    from parity.run.devices import gpu_count

    pending, running = list(rows), []
    logs = rows_dir / "logs"
    logs.mkdir(exist_ok=True)
    t0 = time.time()

    def pump(proc, path: Path):
        with open(path, "w") as log:
            for line in proc.stdout:
                log.write(line)
                sys.stderr.write(line)
                sys.stderr.flush()

    gpus = gpu_count() if args.device.startswith("cuda") else 0
    started = 0
    while pending or running:
        while pending and len(running) < args.jobs:
            row = pending.pop(0)
            env = dict(os.environ)
            # Rows share the host's cores: on a GPU host each worker's intra-op pool the size of its share,
            # not of the host (on the CPU, evals' cpu_threads holds every process to one thread anyway).
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, args.jobs))))
            if gpus > 1:  # the workers spread over the host's GPUs, round robin
                env["CUDA_VISIBLE_DEVICES"] = str(started % gpus)
            started += 1
            proc = subprocess.Popen(_worker_cmd(args, row.id, data_dir), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, env=env)
            thread = threading.Thread(target=pump, args=(proc, logs / f"{_safe(row.id)}.log"), daemon=True)
            thread.start()
            running.append((row, proc, thread))
            print(f"[sensitivity] started {row.id} ({len(rows) - len(pending)}/{len(rows)})", file=sys.stderr, flush=True)
        time.sleep(0.5)
        for item in list(running):
            row, proc, thread = item
            if proc.poll() is None:
                continue
            thread.join()
            running.remove(item)
            f = rows_dir / f"{_safe(row.id)}.json"
            status = json.loads(f.read_text()) if f.is_file() else None
            print(f"[sensitivity] {row.id}: {status['status'] + ' ' + _short(status) if status else 'CRASHED'} "
                  f"(exit {proc.returncode}, {time.time() - t0:.0f} s)", file=sys.stderr, flush=True)


def _finished(path: Path) -> bool:
    """A row record a run may keep: one that says how the row ended (not a crash, which is worth a retry)."""
    try:
        return json.loads(path.read_text()).get("status") in ("ok", "unsupported", "error")
    except (OSError, ValueError):
        return False


def _short(rec: dict) -> str:
    if rec.get("status") != "ok":
        return rec.get("reason", "")[:120]
    m = rec["metrics"]
    return " ".join(f"{k.split(',')[1]} {m[k]:.4f}" for k in sorted(m) if k.startswith("exact_match,"))


def _safe(row_id: str) -> str:
    return row_id.replace(":", "_").replace("/", "_")


def _model_name(args) -> str:
    from evals.weights import read_manifest

    m = read_manifest(args.weights)
    return f"tiny-indexer-lm sha256 {m['sha256'][:12]}"
