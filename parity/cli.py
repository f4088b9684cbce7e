"""``python -m parity run | diff | report | selftest | bench | list``.

``run`` executes each backend in its own child process (unless ``--in-process``), so a backend that
crashes the interpreter or hangs is reported as such and the other backends still run.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import torch

from parity import report as rep
from parity.backends import DEFAULT_BACKENDS, PATHS, load_backend
from parity.buffers import BUFFER_KINDS, DEFAULT_PAD
from parity.cases import cases_for_level
from parity.harness import failed_checks, run_cell


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def backend_options(args, spec: str) -> dict:
    opts = {}
    if spec == "aiter" and args.aiter_path:
        opts["aiter_path"] = args.aiter_path
    return opts


def _run_backend_in_process(args, spec: str, report: dict) -> None:
    try:
        backend = load_backend(spec, **backend_options(args, spec))
        info = backend.describe() if hasattr(backend, "describe") else {}
        report["backends"][spec] = {"status": "ok", "name": backend.name, **info}
    except Exception as exc:
        report["backends"][spec] = {"status": "unavailable", "message": f"{type(exc).__name__}: {exc}"}
        print(f"backend {spec}: unavailable: {exc}", file=sys.stderr)
        return
    cases = cases_for_level(args.level)
    cells = [(p, b, c) for c in cases for p in args.path for b in args.buffer]
    t0 = time.time()
    for i, (path, buf, case) in enumerate(cells, 1):
        # Cells are named by the backend's own name, so two builds loaded from different places compare.
        result = run_cell(backend, path, buf, case, args.device, pad=args.pad)
        report["results"].append(result)
        if args.progress:
            note = result.get("reason", "") if result["status"] == "skip" else "; ".join(failed_checks(result))[:160]
            print(f"[{backend.name} {i}/{len(cells)} {time.time() - t0:6.1f}s] {result['id']}: {result['status']} {note}",
                  file=sys.stderr, flush=True)


def _run_backend_isolated(args, spec: str, report: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "part.json")
        cmd = [sys.executable, "-m", "parity", "run", "--in-process", "--backend", spec, "--device", args.device,
               "--level", args.level, "--pad", str(args.pad), "--out", out, "--quiet"]
        cmd += sum((["--path", p] for p in args.path), []) + sum((["--buffer", b] for b in args.buffer), [])
        if args.aiter_path:
            cmd += ["--aiter-path", args.aiter_path]
        if not args.progress:
            cmd.append("--no-progress")
        proc = subprocess.Popen(cmd, start_new_session=True)
        try:
            code = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            report["backends"][spec] = {"status": "hung", "message": f"no result after {args.timeout} s; killed"}
            print(f"backend {spec}: hung, killed after {args.timeout} s", file=sys.stderr)
            return
        if not os.path.exists(out):
            how = f"killed by signal {-code} ({signal.Signals(-code).name})" if code < 0 else f"exit code {code}"
            report["backends"][spec] = {"status": "crashed", "message": f"process died: {how}"}
            print(f"backend {spec}: crashed ({how})", file=sys.stderr)
            return
        part = rep.load(out)
        report["backends"].update(part["backends"])
        report["results"].extend(part["results"])


def cmd_run(args) -> int:
    args.backend = args.backend or list(DEFAULT_BACKENDS)
    args.path = args.path or list(PATHS)
    args.buffer = args.buffer or list(BUFFER_KINDS)
    args.device = args.device or default_device()
    if args.html:  # before the run: a missing extra must not cost a whole run
        from parity import html_report

        try:
            html_report.require_matplotlib()
        except html_report.MissingExtra as exc:
            print(f"parity run --html: {exc}", file=sys.stderr)
            return 2
    report = rep.new_report(args.device, args.level, sys.argv[1:])
    for spec in args.backend:
        (_run_backend_in_process if args.in_process else _run_backend_isolated)(args, spec, report)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=1)
    if not args.quiet:
        print(rep.summary_table(report))
        if args.out:
            print(f"report: {args.out}")
    if args.html:
        html_report.write_html(args.html, report, name=args.out or "run")
        if not args.quiet:
            print(f"html: {args.html}")
    c = rep.counts(report)
    broken = any(v.get("status") in ("crashed", "hung") for v in report["backends"].values())
    return 1 if c.get("fail") or c.get("error") or broken else 0


def cmd_diff(args) -> int:
    try:
        a, b = rep.load(args.a), rep.load(args.b)
    except ValueError as exc:
        print(f"parity diff: {exc}", file=sys.stderr)
        return 2
    d = rep.diff(a, b)
    print(rep.format_diff(d, args.a, args.b))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(d, fh, indent=1)
    return 1 if d["regressions"] else 0


def cmd_list(args) -> int:
    from parity.backends import registered_names

    print("backends:", ", ".join(n for n in registered_names() if not n.startswith("fault:")))
    print("planted faults:", ", ".join(n for n in registered_names() if n.startswith("fault:")))
    for level in ("quick", "full"):
        print(f"{level}: {len(cases_for_level(level))} cases")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m parity", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the parity matrix and write a JSON report")
    r.add_argument("--backend", action="append", help=f"registered name, pkg.mod:factory or file.py[:factory] "
                                                      f"(repeatable; default {', '.join(DEFAULT_BACKENDS)})")
    r.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    r.add_argument("--level", choices=("quick", "full"), default="quick")
    r.add_argument("--path", action="append", choices=PATHS)
    r.add_argument("--buffer", action="append", choices=BUFFER_KINDS)
    r.add_argument("--pad", type=int, default=DEFAULT_PAD, help="padding columns of the padded buffer")
    r.add_argument("--aiter-path", help="aiter source tree or install dir to load the aiter backend from")
    r.add_argument("--out", help="JSON report path")
    r.add_argument("--html", help="also write a self-contained HTML page (summary, buffer maps); needs the 'report' extra")
    r.add_argument("--timeout", type=float, default=3600, help="seconds before a backend is declared hung")
    r.add_argument("--in-process", action="store_true", help="run backends in this process (no crash isolation)")
    r.add_argument("--quiet", action="store_true")
    r.add_argument("--no-progress", dest="progress", action="store_false")
    r.set_defaults(func=cmd_run)
    d = sub.add_parser("diff", help="is report B at least as good as report A? exit 1 on a regression")
    d.add_argument("a")
    d.add_argument("b")
    d.add_argument("--json", help="also write the diff as JSON")
    d.set_defaults(func=cmd_diff)
    h = sub.add_parser("report", help="summarize a JSON report; --html: a self-contained page with buffer maps")
    h.add_argument("report", help="JSON report of 'run'")
    h.add_argument("--html", help="write the HTML page here (needs the 'report' extra: matplotlib)")
    h.add_argument("--diff", metavar="BASE", help="also show what changed from report BASE to this one")
    h.set_defaults(func=lambda a: __import__("parity.html_report", fromlist=["cmd_report"]).cmd_report(a))
    s = sub.add_parser("selftest", help="run the planted-fault backends; every fault must be caught")
    s.set_defaults(func=lambda a: __import__("parity.selftest", fromlist=["main"]).main([]))
    b = sub.add_parser("bench", help="benchmark against the memory-bandwidth floor", add_help=False)
    b.set_defaults(func=None)
    ls = sub.add_parser("list", help="backends, planted faults and case counts")
    ls.set_defaults(func=cmd_list)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Triton decides at import whether to interpret; with no GPU the interpreter is the only way
    # Triton kernels (ours, aiter's) run, and the report imports triton before any backend loads.
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if argv[:1] == ["bench"]:  # the benchmark owns its own options
        from parity import bench

        return bench.main(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)
