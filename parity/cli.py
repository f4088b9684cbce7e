"""``python -m parity run | merge | diff | report | selftest | bench | list``.

``run`` executes each backend in its own child process (unless ``--in-process``), so a backend that
crashes the interpreter or hangs is reported as such and the other backends still run.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import sys

import torch

from parity.judge import consumers
from parity.run import devices
from parity.reports import report as rep
from parity.run import runner, shards
from parity.backends import DEFAULT_BACKENDS, PATHS
from parity.run.device_names import device_error
from parity.judge.buffers import BUFFER_KINDS, DEFAULT_PAD
from parity.problem.grids import LEVELS, REPEATS, cases_for_level, repeats_for


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def backend_options(args, spec: str) -> dict:
    opts = {}
    if spec.split(":")[0] == "aiter" and args.aiter_path:
        opts["aiter_path"] = args.aiter_path
    return opts


def check_device(value: str) -> str | None:
    """Why ``value`` cannot be used as ``--device`` here, or None."""
    return device_error(value, devices.gpu_count, f"torch {torch.__version__}")


MAX_PAD = 65536  # columns; the fix pads 256, and a pad past this only measures the allocator


def usage_error(args) -> str | None:
    """The first bad option of ``run``, named, before anything runs."""
    if not 0 <= args.pad <= MAX_PAD:
        return f"--pad must be in 0..{MAX_PAD} (padding columns of the padded buffer), got {args.pad}"
    if args.repeats is not None and args.repeats < 1:
        return f"--repeats must be >= 1 (calls per cell), got {args.repeats}"
    if args.max_crashes < 0:
        return f"--max-crashes must be >= 0, got {args.max_crashes}"
    if not (math.isfinite(args.timeout) and args.timeout > 0):  # inf would let a hung backend hang the run
        return f"--timeout must be a finite number > 0 of seconds, got {args.timeout}"
    if args.device is not None and (why := check_device(args.device)):
        return why
    try:
        devices.cpu_threads()
    except ValueError as exc:
        return str(exc)
    if args.aiter_path and not os.path.isdir(args.aiter_path):
        return f"--aiter-path {args.aiter_path!r} is not a directory (expected one containing aiter/)"
    if args.shard is not None:
        try:
            shards.parse_shard(args.shard)
        except ValueError as exc:
            return str(exc)
    return None


def output_error(flag: str, path: str) -> str | None:
    """Why ``path`` cannot be written as ``flag``'s file, or None: checked before a run, whose report
    would otherwise be lost to a traceback at its end."""
    if os.path.isdir(path):
        return f"{flag} {path!r} is a directory; expected a file to write"
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):  # the folders missing are made
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        return f"{flag} {path!r} cannot be written: {parent!r} is not a writable directory"
    return None


OUTPUT_FLAGS = ("out", "html", "json")  # every file a subcommand writes


def select_cases(cases: list, patterns: list[str] | None) -> list:
    """The cases whose id matches one of the glob ``patterns`` (all of them without patterns)."""
    if not patterns:
        return cases
    return [c for c in cases if any(fnmatch.fnmatchcase(c.id, p) for p in patterns)]


def gpu_fan_out(args, device: str) -> list[str]:
    """The GPUs a backend's cells are spread over: every visible one for a plain ``cuda``, in child
    processes (``--in-process`` keeps one process, and so one GPU)."""
    n = devices.gpu_count()
    if device != "cuda" or args.in_process or n < 2:
        return []
    return [f"cuda:{i}" for i in range(n)]


def shard_record(args, specs: list[str], every: list[str]) -> tuple[list[str] | None, dict | None]:
    """(cell keys of this machine's shard, the report's record of it), or (None, None) unsharded."""
    if args.shard is None:
        return None, None
    k, n = shards.parse_shard(args.shard)
    mine = [key for key, path, case_id in every if shards.shard_of(path, case_id, n) == k]
    keys = [key for key, _, _ in every]
    names = [shards.backend_label(spec) for spec in specs]
    return mine, {"index": k, "count": n, "matrix_cells": len(keys) * len(specs), "backends": names,
                  "matrix_digest": shards.matrix_digest(keys, names),
                  "assigned": [f"{name}:{key}" for name in names for key in mine]}


def cmd_run(args) -> int:
    if why := usage_error(args):
        print(f"parity run: error: {why}", file=sys.stderr)
        return runner.EXIT_UNUSABLE
    if args.html:  # before the run: a missing extra must not cost a whole run
        from parity.reports import html_report

        try:
            html_report.require_matplotlib()
        except html_report.MissingExtra as exc:
            print(f"parity run --html: {exc}", file=sys.stderr)
            return runner.EXIT_UNUSABLE
    requested = args.backend is not None
    specs = args.backend or list(DEFAULT_BACKENDS)
    device = args.device or default_device()
    report = rep.new_report(device, args.level, sys.argv[1:], args.consumer)
    level_cases = cases_for_level(args.level)
    cases = select_cases(level_cases, args.case)
    # each pattern on its own: a mistyped one beside a good one would drop its cases without a word
    unmatched = [p for p in args.case or [] if not select_cases(level_cases, [p])]
    if unmatched:
        print(f"parity run: error: --case {' '.join(unmatched)} matches no case id of level {args.level} (ids look "
              f"like {level_cases[0].id}; patterns are globs)", file=sys.stderr)
        return runner.EXIT_UNUSABLE
    paths, buffers = args.path or list(PATHS), args.buffer or list(BUFFER_KINDS)
    every = [(shards.cell_key(p, b, c.id), p, c.id) for c in cases for p in paths for b in buffers]
    select, shard = shard_record(args, specs, every)
    if shard:
        report["shard"] = shard
    gpus = gpu_fan_out(args, device)
    for spec in specs:
        plan = runner.RunPlan(spec=spec, requested=requested, cases=cases, paths=paths, buffers=buffers,
                              device=device, pad=args.pad, timeout=args.timeout,
                              options=backend_options(args, spec), progress=args.progress, select=select,
                              repeats=args.repeats or repeats_for(args.level, device),
                              max_crashes=args.max_crashes, consumer=args.consumer)
        if args.in_process:
            info, results = runner.run_here(plan)
        elif gpus:
            info, results = runner.run_on_gpus(plan, gpus)
        else:
            info, results = runner.run_isolated(plan)
        report["backends"][spec] = {**info, "requested": requested}
        report["results"].extend(results)
    runner.reconcile(report["results"])
    code, why = runner.judge(report)
    report["verdict"] = {"exit_code": code, "reasons": why}
    if args.out:
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
    for line in why:
        print(f"parity run: {line}", file=sys.stderr)
    verdict = {0: "clean", 1: "findings", 2: "UNUSABLE (what was asked for could not be judged)"}[code]
    print(f"verdict: {verdict} (exit {code})", file=sys.stderr)
    return code


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
    return rep.DIFF_EXIT[d["verdict"]]


def cmd_merge(args) -> int:
    """Shard reports of one matrix -> one report; exit as ``run`` would have for the whole matrix,
    2 when the shards are not the whole matrix exactly once (the report then says why)."""
    loaded = []
    for path in args.reports:
        try:
            loaded.append((path, rep.load(path)))
        except ValueError as exc:
            print(f"parity merge: {exc}", file=sys.stderr)
            return runner.EXIT_UNUSABLE
    merged = shards.merge_reports(loaded)
    code, why = runner.judge(merged)
    merged["verdict"] = {"exit_code": code, "reasons": why}
    with open(args.out, "w") as fh:
        json.dump(merged, fh, indent=1)
    if not args.quiet:
        print(rep.summary_table(merged))
        print(f"merged {len(loaded)} reports into {args.out}")
    for line in why:
        print(f"parity merge: {line}", file=sys.stderr)
    verdict = {0: "clean", 1: "findings", 2: "UNUSABLE (the shards are not the whole matrix, or it could "
                                             "not be judged)"}[code]
    print(f"verdict: {verdict} (exit {code})", file=sys.stderr)
    return code


def cmd_list(args) -> int:
    from parity.backends import registered_names

    print("backends:", ", ".join(n for n in registered_names() if not n.startswith("fault:")))
    print("planted faults:", ", ".join(n for n in registered_names() if n.startswith("fault:")))
    for level in LEVELS:
        print(f"{level}: {len(cases_for_level(level))} cases, {REPEATS[level]} calls per cell on a GPU "
              f"({repeats_for(level, 'cpu')} on the CPU)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m parity", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the parity matrix and write a JSON report")
    r.add_argument("--backend", action="append", help=f"registered name, pkg.mod:factory or file.py[:factory] "
                                                      f"(repeatable; default {', '.join(DEFAULT_BACKENDS)})")
    r.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    r.add_argument("--level", choices=LEVELS, default="quick",
                   help="quick (CI), full (every edge at H=64), stress (the bug classes seen in the wild; 20 calls a cell)")
    r.add_argument("--repeats", type=int, default=None,
                   help="calls per cell, each compared bitwise with the first (default: 2; 20 at --level stress "
                        "on a GPU)")
    r.add_argument("--consumer", choices=consumers.CONSUMERS, default=consumers.DEFAULT_CONSUMER,
                   help="who reads the logits next, which decides what may lie past each row's valid length: "
                        "length-bounded (default: vLLM's decode top-k, SGLang; don't-care, reported) or unbounded "
                        "(torch.topk over the whole row, clean_logits=True; -inf required)")
    r.add_argument("--case", action="append", metavar="GLOB",
                   help="only the level's cases whose id matches (repeatable), e.g. '*-mxfp4*' for the FP4 cells")
    r.add_argument("--path", action="append", choices=PATHS)
    r.add_argument("--buffer", action="append", choices=BUFFER_KINDS)
    r.add_argument("--pad", type=int, default=DEFAULT_PAD, help="padding columns of the padded buffer")
    r.add_argument("--aiter-path", help="aiter source tree or install dir to load the aiter backend from")
    r.add_argument("--out", help="JSON report path")
    r.add_argument("--timeout", type=float, default=900,
                   help="seconds without a finished cell before a backend is declared hung (default 900)")
    r.add_argument("--html", help="also write a self-contained HTML page (summary, buffer maps); needs the 'report' extra")
    r.add_argument("--max-crashes", type=int, default=8,
                   help="cells that may crash a backend's process (a GPU memory fault): after each, its case is "
                        "marked not run and a fresh process resumes with the next case (default 8; 0: stop)")
    r.add_argument("--in-process", action="store_true", help="run backends in this process (no crash isolation)")
    r.add_argument("--quiet", action="store_true")
    r.add_argument("--no-progress", dest="progress", action="store_false")
    r.add_argument("--shard", metavar="K/N", help="run only shard K of N of the matrix (the same cells on every "
                                                  "machine); join the reports with `merge`")
    r.set_defaults(func=cmd_run)
    m = sub.add_parser("merge", help="join the reports of `run --shard K/N` into one; exit 2 when a shard is "
                                     "missing or given twice")
    m.add_argument("reports", nargs="+", help="shard reports (JSON) of one matrix, every shard once")
    m.add_argument("--out", required=True, help="merged JSON report path")
    m.add_argument("--quiet", action="store_true")
    m.set_defaults(func=cmd_merge)
    d = sub.add_parser("diff", help="is report B at least as good as report A? exit 1 on a regression, "
                                    "2 when a side cannot be judged")
    d.add_argument("a")
    d.add_argument("b")
    d.add_argument("--json", help="also write the diff as JSON")
    d.set_defaults(func=cmd_diff)
    h = sub.add_parser("report", help="summarize a JSON report; --html: a self-contained page with buffer maps")
    h.add_argument("report", help="JSON report of 'run'")
    h.add_argument("--html", help="write the HTML page here (needs the 'report' extra: matplotlib)")
    h.add_argument("--diff", metavar="BASE", help="also show what changed from report BASE to this one")
    h.set_defaults(func=lambda a: __import__("parity.reports.html_report", fromlist=["cmd_report"]).cmd_report(a))
    s = sub.add_parser("selftest", help="run the planted-fault backends; every fault must be caught")
    s.add_argument("--match", action="append", metavar="GLOB", help="only the faults whose name matches, e.g. 'fp4_*'")
    s.set_defaults(func=lambda a: __import__("parity.selftest", fromlist=["main"]).main(
        [x for m in (a.match or []) for x in ("--match", m)]))
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
    if argv[:1] == ["_run-backend"]:  # the child process of `run` (parity.run.runner)
        return runner.child_main(*argv[1:3])
    if argv[:1] == ["bench"]:  # the benchmark owns its own options
        from parity.perf import bench

        return bench.main(argv[1:], check_device=check_device, check_output=output_error)
    args = build_parser().parse_args(argv)
    for flag in OUTPUT_FLAGS:
        if (path := getattr(args, flag, None)) is not None:
            why = output_error(f"--{flag}", path)
            if why is None:
                try:
                    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                except OSError as exc:
                    why = f"--{flag} {path!r} cannot be written: {exc}"
            if why:
                print(f"parity {argv[0]}: error: {why}", file=sys.stderr)
                return 2
    return args.func(args)
