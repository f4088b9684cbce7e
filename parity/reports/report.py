"""JSON reports of a parity run, their summary table, and the diff of two reports (two builds)."""
from __future__ import annotations

import datetime as dt
import json
import platform
from collections import Counter

import torch

from parity.judge import consumers

SCHEMA = 1


def environment(device: str) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception as exc:  # triton is an optional extra
        env["triton"] = f"unavailable ({type(exc).__name__})"
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(dev)
        env["device"] = {"type": "cuda", "name": p.name, "hip": getattr(torch.version, "hip", None),
                         "cuda": torch.version.cuda, "sms": p.multi_processor_count}
    else:
        env["device"] = {"type": dev.type, "name": platform.processor() or platform.machine()}
    return env


def new_report(device: str, level: str, argv: list[str], consumer: str = consumers.DEFAULT_CONSUMER) -> dict:
    return {"schema": SCHEMA, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "argv": argv, "level": level, "consumer": consumers.describe(consumer), "environment": environment(device),
            "backends": {}, "results": []}


def counts(report: dict) -> dict:
    return dict(Counter(r["status"] for r in report["results"]))


def _overshoot(result: dict) -> int:
    worst = 0
    for f in result.get("findings", []):
        if f["check"] == "oob":
            for where in f["details"].get("landed", {}).values():
                if isinstance(where, dict) and "max_overshoot_cols" in where:
                    worst = max(worst, where["max_overshoot_cols"])
                elif isinstance(where, dict):  # next_row: {row: {leading_cols_damaged}}
                    worst = max([worst] + [v.get("leading_cols_damaged", 0) for v in where.values()
                                           if isinstance(v, dict)])
    return worst


def _max_err(result: dict) -> float | None:
    for f in result.get("findings", []):
        if f["check"] == "values":
            return f["details"].get("worst", {}).get("err_over_rowmax")
    return None


def _failed(result: dict) -> set[str]:
    return {f["check"] for f in result.get("findings", []) if not f["ok"]}


def summary_rows(report: dict) -> list[tuple[tuple[str, str, str], Counter, str]]:
    """Per backend x path x buffer: the cells' statuses and which checks failed ("oob x3, mask x1")."""
    groups: dict[tuple, Counter] = {}
    failing: dict[tuple, Counter] = {}
    for r in report["results"]:
        key = (r["backend"], r["path"], r["buffer"])
        groups.setdefault(key, Counter())[r["status"]] += 1
        for c in _failed(r):
            failing.setdefault(key, Counter())[c] += 1
    return [(key, groups[key], ", ".join(f"{k} x{v}" for k, v in sorted(failing.get(key, {}).items())) or "-")
            for key in sorted(groups)]


def summary_table(report: dict) -> str:
    """One line per backend x path x buffer: cells passed/failed/skipped and which checks failed."""
    lines = ["| backend | path | buffer | pass | fail | error | skip | failing checks |", "|---|---|---|---|---|---|---|---|"]
    for key, c, f in summary_rows(report):
        lines.append(f"| {' | '.join(key)} | {c['pass']} | {c['fail']} | {c['error']} | {c['skip']} | {f} |")
    for name, info in report.get("backends", {}).items():
        if info.get("status") not in (None, "ok"):
            lines.append(f"\nbackend {name}: {info['status']}: {info.get('message', '')}")
        for caveat in info.get("caveats", []):  # what the checks cannot see for this backend
            lines.append(f"\nbackend {name}: note: {caveat}")
    total = counts(report)
    lines.append(f"\n{total.get('pass', 0)} passed, {total.get('fail', 0)} failed, {total.get('error', 0)} errors, "
                 f"{total.get('skip', 0)} skipped")
    if line := consumers.line(report.get("consumer")):
        lines.append(line)
    return "\n".join(lines)


def load(path: str) -> dict:
    try:
        with open(path) as fh:
            report = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read report {path!r}: {exc}") from exc
    if why := report_error(report):
        raise ValueError(f"{path!r} is not a parity report: {why}")
    return report


RESULT_KEYS = ("id", "backend", "path", "buffer", "status", "case")  # what report, diff and merge read of each
RESULT_STATUSES = ("pass", "fail", "error", "skip")  # parity.run.harness; any other would be judged as none
BACKEND_STATUSES = ("ok", "unavailable", "crashed", "hung")  # parity.run.runner
SHARD_KEYS = {"index": int, "count": int, "matrix_cells": int, "matrix_digest": str, "assigned": list}


def report_error(report) -> str | None:
    """What keeps ``report`` from being read as a report of this schema, or None. A field of the wrong type
    would otherwise be a traceback in merge or diff, or a status no rule knows would count as neither a pass
    nor a finding."""
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        return f"expected an object with schema {SCHEMA}"
    if not isinstance(report.get("results"), list) or not all(isinstance(r, dict) for r in report["results"]):
        return "expected a list of results (objects) under 'results'"
    backends = report.get("backends", {})
    if not isinstance(backends, dict) or not all(isinstance(v, dict) for v in backends.values()):
        return "expected an object of backend objects under 'backends'"
    for name, info in backends.items():
        if info.get("status") not in BACKEND_STATUSES:
            return f"backend {name!r} has status {info.get('status')!r}, expected one of {', '.join(BACKEND_STATUSES)}"
    for i, r in enumerate(report["results"]):
        missing = [k for k in RESULT_KEYS if k not in r] + ([] if isinstance(r.get("case"), dict) and "id" in r["case"]
                                                            else ["case.id"])
        if missing:
            return f"result {i} has no {', '.join(dict.fromkeys(missing))}"
        if not all(isinstance(r[k], str) for k in ("id", "backend", "path", "buffer")):
            return f"result {i}: id, backend, path and buffer must be strings"
        if r["status"] not in RESULT_STATUSES:
            return f"result {i} has status {r['status']!r}, expected one of {', '.join(RESULT_STATUSES)}"
    shard = report.get("shard")
    if shard is not None:
        bad = [k for k, t in SHARD_KEYS.items() if not isinstance(shard, dict) or not isinstance(shard.get(k), t)
               or (t is int and isinstance(shard.get(k), bool))]
        if bad:
            return f"'shard' needs {', '.join(f'{k} ({SHARD_KEYS[k].__name__})' for k in bad)}"
    return None


BROKEN = ("unavailable", "crashed", "hung")


def _coverage(report: dict) -> str:
    shard = report.get("shard")
    return f"shard {shard['index']}/{shard['count']}" if shard and shard["count"] > 1 else "the whole matrix"


def coverage_reasons(a: dict, b: dict) -> list[str]:
    """A merge of shards that is not the whole matrix exactly once, or one shard against a report of
    another coverage, would make a smaller comparison look like the whole one."""
    reasons = [f"{side}: incomplete merge of shards: {why}" for side, rep in (("A", a), ("B", b))
               for why in rep.get("incomplete", [])]
    if _coverage(a) != _coverage(b):
        reasons.append(f"A covers {_coverage(a)}, B {_coverage(b)}: merge the shards "
                       "(python -m parity merge) before comparing")
    return reasons


def unusable_reasons(a: dict, b: dict) -> list[str]:
    """Why two reports cannot be compared, one line each (empty when they can): a side whose backend
    did not load, crashed or hung, or that has no judged cells for a backend the other side judged."""
    reasons = coverage_reasons(a, b)
    rules = [(rep.get("consumer") or {}).get("rule") for rep in (a, b)]
    if None not in rules and rules[0] != rules[1]:
        reasons.append(f"A was judged for a {rules[0]} consumer, B for a {rules[1]} one: the same kernel passes one "
                       "and fails the other (run both with the same --consumer)")
    judged = {}
    for side, rep in (("A", a), ("B", b)):
        for spec, info in rep.get("backends", {}).items():
            if info.get("status") in BROKEN:
                cell = f" (in cell {info['cell']})" if info.get("cell") else ""
                reasons.append(f"{side}: backend {spec} {info['status']}{cell}: {info.get('message', '')}")
        judged[side] = Counter(r["backend"] for r in rep["results"] if r["status"] != "skip")
    for side, other in (("A", "B"), ("B", "A")):
        for name in sorted(set(judged[other]) - set(judged[side])):
            reasons.append(f"{side}: no judged cells for backend {name} ({other} has {judged[other][name]})")
    if not reasons:
        ra = {r["id"] for r in a["results"] if r["status"] != "skip"}
        rb = {r["id"] for r in b["results"] if r["status"] != "skip"}
        if not ra & rb:
            reasons.append("no cell was judged in both reports (different backends, cases or devices)")
    return reasons


def diff(a: dict, b: dict, err_ratio: float = 2.0) -> dict:
    """What changed from build A to build B. A regression is a cell that got worse: passed and now
    fails or errors, a check that newly fails, or a larger overshoot. Cells A ran that B did not
    (a narrower grid) are listed apart; a side that could not be judged makes the diff unusable."""
    ra = {r["id"]: r for r in a["results"]}
    rb = {r["id"]: r for r in b["results"]}
    out = {"unusable": unusable_reasons(a, b), "regressions": [], "fixed": [], "changed_error": [],
           "changed_overshoot": [], "missing_in_b": [], "new_in_b": [], "timing": []}
    for cid in sorted(ra.keys() | rb.keys()):
        x, y = ra.get(cid), rb.get(cid)
        if y is None:
            if x["status"] != "skip":
                out["missing_in_b"].append(cid)
            continue
        if x is None:
            out["new_in_b"].append({"id": cid, "status": y["status"]})
            continue
        fx, fy = _failed(x), _failed(y)
        newly, healed = sorted(fy - fx), sorted(fx - fy)
        if newly or (x["status"] == "pass" and y["status"] in ("fail", "error")):
            out["regressions"].append({"id": cid, "from": x["status"], "to": y["status"], "newly_failing": newly})
        elif healed or (x["status"] in ("fail", "error") and y["status"] == "pass"):
            out["fixed"].append({"id": cid, "from": x["status"], "to": y["status"], "now_passing": healed})
        ox, oy = _overshoot(x), _overshoot(y)
        if ox != oy:
            out["changed_overshoot"].append({"id": cid, "from": ox, "to": oy})
            if oy > ox and not newly:
                out["regressions"].append({"id": cid, "from": x["status"], "to": y["status"],
                                           "newly_failing": [f"overshoot {ox} -> {oy} cols"]})
        ex, ey = _max_err(x), _max_err(y)
        if ex is not None and ey is not None and max(ex, ey) > 0:
            ratio = (ey + 1e-12) / (ex + 1e-12)
            if ratio > err_ratio or ratio < 1 / err_ratio:
                out["changed_error"].append({"id": cid, "from": ex, "to": ey, "ratio": ratio})
        tx, ty = x.get("seconds"), y.get("seconds")
        if tx and ty:
            out["timing"].append({"id": cid, "ratio_b_over_a": min(ty) / max(min(tx), 1e-12)})
    out["verdict"] = "UNUSABLE" if out["unusable"] else "REGRESSION" if out["regressions"] else "OK"
    return out


DIFF_EXIT = {"OK": 0, "REGRESSION": 1, "UNUSABLE": 2}


def format_diff(d: dict, a_name: str, b_name: str) -> str:
    lines = [f"parity diff: A = {a_name}  B = {b_name}"]

    def section(title, rows, fmt):
        lines.append(f"\n{title}: {len(rows)}")
        lines.extend("  " + fmt(r) for r in rows[:200])

    if d["unusable"]:
        section("cannot compare", d["unusable"], str)
    section("regressions (B worse)", d["regressions"],
            lambda r: f"{r['id']}: {r['from']} -> {r['to']} {', '.join(r['newly_failing'])}")
    section("fixed (B better)", d["fixed"], lambda r: f"{r['id']}: {r['from']} -> {r['to']} {', '.join(r['now_passing'])}")
    section("changed overshoot (cols)", d["changed_overshoot"], lambda r: f"{r['id']}: {r['from']} -> {r['to']}")
    section("changed max error (x row max)", d["changed_error"],
            lambda r: f"{r['id']}: {r['from']:.2e} -> {r['to']:.2e} (x{r['ratio']:.2f})")
    section("only in A (not run by B: a narrower grid, not a regression)", d["missing_in_b"], str)
    section("only in B", d["new_in_b"], lambda r: f"{r['id']} ({r['status']})")
    if d["timing"]:
        ratios = sorted(t["ratio_b_over_a"] for t in d["timing"])
        lines.append(f"\ntiming B/A over {len(ratios)} cells: median {ratios[len(ratios) // 2]:.2f}, "
                     f"min {ratios[0]:.2f}, max {ratios[-1]:.2f} (call wall time, not a benchmark)")
    if d["verdict"] == "UNUSABLE":
        verdict = f"UNUSABLE: {d['unusable'][0]}"
    elif d["verdict"] == "REGRESSION":
        verdict = "REGRESSION"
    else:
        verdict = "B is at least as good as A" + (f" on the cells both ran ({len(d['missing_in_b'])} of A's not run by B)"
                                                 if d["missing_in_b"] else "")
    lines.append(f"\nverdict: {verdict}")
    return "\n".join(lines)
