"""Splitting the matrix: over the GPUs of a host (``python -m parity run --device cuda``) and over
machines (``--shard K/N``), and merging the shard reports back into one report.

A cell's machine shard is a stable hash of ``path-case`` (sha256, not Python's salted ``hash``), the
same on every machine and for every backend; the backend is left out because a spec may be a file
path that differs between machines, and the buffer because the exact and padded twins of a cell are
cross-checked against each other (runner.reconcile) and so must run together.

Each shard report records its shard, the cells assigned to it and a digest of the whole matrix, so
that merging finds a missing shard, a duplicate, or a shard of another matrix (another level or
backend list) and marks the merged report ``incomplete``: ``run``'s verdict and ``diff`` then say
UNUSABLE instead of judging a smaller matrix as if it were the whole.
"""
from __future__ import annotations

import hashlib
import os
import re

BROKEN_ORDER = ("crashed", "hung", "unavailable")  # the worst status of a backend's parts wins


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N) with 1 <= K <= N; a ValueError naming the form otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise ValueError(f"--shard must be K/N with 1 <= K <= N (e.g. 2/4), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def cell_key(path: str, buffer: str, case_id: str) -> str:
    return f"{path}-{buffer}-{case_id}"


def shard_of(path: str, case_id: str, count: int) -> int:
    """The 1-based machine shard of every cell of ``path`` x ``case_id``, out of ``count``."""
    digest = hashlib.sha256(f"{path}-{case_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


def backend_label(spec: str) -> str:
    """A backend spec as the same on every machine: a file spec by its file name (the checkout's
    path differs between CI runners), anything else as given."""
    target, sep, attr = spec.partition(":")
    return os.path.basename(target) + sep + attr if target.endswith(".py") else spec


def matrix_digest(keys: list[str], backends: list[str]) -> str:
    h = hashlib.sha256("\n".join(sorted(keys)).encode())
    h.update(("\n" + "\n".join(backends)).encode())
    return h.hexdigest()[:16]


def split_by_case(cells: list[tuple], weight, parts: int) -> list[list[tuple]]:
    """Cells ``(path, buffer, case)`` into ``parts`` lists, whole cases only (a case's reference and
    inputs are built once per process), heaviest case first to the lightest part; each part keeps
    the cells' order."""
    by_case: dict = {}
    for cell in cells:
        by_case.setdefault(cell[2], []).append(cell)
    load, owner = [0.0] * parts, {}
    for case in sorted(by_case, key=lambda c: -weight(c) * len(by_case[c])):
        i = min(range(parts), key=lambda j: load[j])
        owner[case] = i
        load[i] += weight(case) * len(by_case[case])
    out = [[] for _ in range(parts)]
    for cell in cells:
        out[owner[cell[2]]].append(cell)
    return out


def merge_infos(parts: list[tuple[str, dict]]) -> dict:
    """One backend record from the records of its parts (label, info): the worst status wins
    (crashed, hung, unavailable, then ok) with every part's message of that status, labelled; an
    ``ok`` backend lists the parts it ran in."""
    for status in BROKEN_ORDER:
        broken = [(label, info) for label, info in parts if info.get("status") == status]
        if broken:
            merged = dict(broken[0][1])
            merged["message"] = "; ".join(f"{label}: {info.get('message', '')}" for label, info in broken)
            return merged
    return {**parts[0][1], "parts": [label for label, _ in parts]}


def merge_reports(reports: list[tuple[str, dict]]) -> dict:
    """One report from shard reports (name, report). Anything that keeps the merge from being the
    whole matrix exactly once is listed in ``incomplete`` (never dropped or deduplicated silently)."""
    incomplete = []
    shards = [(name, r.get("shard")) for name, r in reports]
    for name, s in shards:
        if not s:
            incomplete.append(f"{name} is not a shard report (run it with --shard K/N)")
    shards = [(name, s) for name, s in shards if s]
    counts = {s["count"] for _, s in shards}
    digests = {s["matrix_digest"] for _, s in shards}
    if len(counts) > 1:
        incomplete.append(f"shards of different splits: N = {sorted(counts)}")
    if len(digests) > 1:
        incomplete.append("shards of different matrices (level, paths, buffers or backends differ): "
                          + ", ".join(f"{n}: {s['matrix_digest']}" for n, s in shards))
    seen: dict[int, str] = {}
    for name, s in shards:
        if s["index"] in seen:
            incomplete.append(f"shard {s['index']}/{s['count']} given twice: {seen[s['index']]} and {name}")
        seen.setdefault(s["index"], name)
    if shards and len(counts) == 1:
        n = counts.pop()
        missing = sorted(set(range(1, n + 1)) - set(seen))
        if missing:
            incomplete.append(f"missing shard(s) {', '.join(f'{k}/{n}' for k in missing)}")
    assigned: dict[str, str] = {}
    overlap = 0
    for name, s in shards:
        for key in s["assigned"]:
            overlap += key in assigned
            assigned.setdefault(key, name)
    if overlap:
        incomplete.append(f"{overlap} cells assigned to more than one shard report")
    want = {s["matrix_cells"] for _, s in shards}
    if len(want) == 1 and len(assigned) != (total := want.pop()):
        incomplete.append(f"the shards cover {len(assigned)} of the matrix's {total} cells")
    results, ids = [], set()
    dupes = 0
    for _, r in reports:
        for res in r["results"]:
            dupes += res["id"] in ids
            ids.add(res["id"])
            results.append(res)
    if dupes:
        incomplete.append(f"{dupes} cell results appear in more than one shard report")
    rules = {(r.get("consumer") or {}).get("rule") for _, r in reports}
    if len(rules) > 1:
        incomplete.append("shards judged for different consumers: " + ", ".join(
            f"{name}: {(r.get('consumer') or {}).get('rule')}" for name, r in reports))
    first = reports[0][1]
    backends = {}
    for spec in dict.fromkeys(spec for _, r in reports for spec in r.get("backends", {})):
        parts = [(name, r["backends"][spec]) for name, r in reports if spec in r.get("backends", {})]
        backends[spec] = merge_infos(parts)
    return {"schema": first["schema"], "created": first.get("created"), "argv": first.get("argv"),
            "level": first.get("level"), "consumer": first.get("consumer"), "environment": first.get("environment"),
            "backends": backends,
            "results": results, "incomplete": incomplete,
            "merged_from": [{"file": name, "shard": (r.get("shard") or {}).get("index"),
                             "count": (r.get("shard") or {}).get("count"), "created": r.get("created"),
                             "device": (r.get("environment") or {}).get("device")} for name, r in reports]}
