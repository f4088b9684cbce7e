"""``python -m parity.perf.runs RUN.json ...``: one backend's ratio to another across several runs of ``python -m
parity bench``, shape by shape, and whether each run keeps it at or under a bar.

A ratio is only ever taken within one run (both rows timed side by side), and runs on different machines or days
differ by more than the rows of one run do: at B128-n2-ctx8192 on the H200, triton / deepgemm read 0.998-1.014 over
five runs of one tree. So a claim like "no slower than DeepGEMM" needs every run, not the best one. This prints
the ratio of each run, its range, and the runs in which every shape is at or under ``--bar``.

    python -m parity.perf.runs bench-1.json bench-2.json --row triton --against deepgemm --against deepgemm:split

``--against`` may be given several times: each shape takes the first of them that has a row there (DeepGEMM's
kernel takes next_n <= 2; ``deepgemm:split`` runs next_n 4 as two calls). ``--shape GLOB`` (repeatable) keeps the
shapes it matches. ``--mean-bar`` also asks that the mean ratio over those shapes and runs be at or under it: a
change that is to replace a kernel must be faster, not only no slower (``ci/sm90-candidates.sh``:

    python -m parity.perf.runs bench-*.json --row X --against triton --shape 'B64-n2-*' --shape 'B128-n2-*' \
        --mean-bar 0.995

is the rule of docs/h200-coupled-q.md). Exit 0 when every run keeps every shape at or under the bar (and the mean
under ``--mean-bar``), 1 when not, 2 when a file cannot be read or holds no shape with both rows.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import sys


def ratios(rows: list[dict], row: str, against: list[str], path: str = "fused") -> dict:
    """Shape id -> (us of ``row`` / us of the first of ``against`` timed on that shape, the name taken), over the
    timed rows of one run on ``path``."""
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError("'rows' is not a list of objects")
    timed = {}
    for i, r in enumerate(rows):
        if "us" not in r or r.get("path", path) != path:
            continue
        us = r["us"]
        if "backend" not in r or "shape" not in r or not isinstance(us, (int, float)) or not us > 0:
            raise ValueError(f"row {i} is not a timed row (a backend, a shape and us > 0): {r}"[:200])
        timed[(r["backend"], r["shape"])] = us
    out = {}
    for shape in dict.fromkeys(s for _, s in timed):
        ref = next((a for a in against if (a, shape) in timed), None)
        if (row, shape) in timed and ref is not None:
            out[shape] = (timed[(row, shape)] / timed[(ref, shape)], ref)
    return out


def table(runs: dict, bar: float) -> tuple[str, list[str]]:
    """Markdown of ``runs`` (name -> ``ratios``): a shape a line, a run a column, the range last; and the runs
    with a shape over ``bar``."""
    names = list(runs)
    shapes = list(dict.fromkeys(s for r in runs.values() for s in r))
    lines = ["| shape | against | " + " | ".join(names) + " | range |", "|---|---|" + "---:|" * (len(names) + 1)]
    for shape in shapes:
        got = [runs[n].get(shape) for n in names]
        values = [g[0] for g in got if g]
        refs = sorted({g[1] for g in got if g})
        cells = ["-" if g is None else (f"**{g[0]:.3f}**" if g[0] > bar else f"{g[0]:.3f}") for g in got]
        spread = f"{min(values):.3f}-{max(values):.3f}"
        lines.append(f"| {shape} | {', '.join(refs)} | " + " | ".join(cells) + f" | {spread} |")
    over = [n for n in names if any(v[0] > bar for v in runs[n].values())]
    return "\n".join(lines), over


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m parity.perf.runs", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="JSON files written by python -m parity bench --out")
    p.add_argument("--row", default="triton", help="the backend whose ratio is read (default triton)")
    p.add_argument("--against", action="append", default=None,
                   help="the backend it is divided by; repeatable, the first with a row on a shape is taken "
                        "(default: deepgemm, then deepgemm:split)")
    p.add_argument("--path", default="fused", help="the path whose rows are read (default fused)")
    p.add_argument("--bar", type=float, default=1.0, help="the ratio no shape may pass (default 1.0)")
    p.add_argument("--shape", action="append", default=None, metavar="GLOB",
                   help="keep the shapes whose id matches (repeatable; default every shape), e.g. 'B128-n2-*'")
    p.add_argument("--mean-bar", type=float, default=None,
                   help="the mean ratio over the kept shapes and runs must be at or under this too")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    against = args.against or ["deepgemm", "deepgemm:split"]
    for name, bar in (("--bar", args.bar), ("--mean-bar", args.mean_bar)):
        if bar is not None and not (math.isfinite(bar) and bar > 0):  # NaN passes every comparison's "not over"
            print(f"error: {name} must be a finite number > 0, got {bar}", file=sys.stderr)
            return 2
    runs = {}
    names = [os.path.basename(path) for path in args.runs]
    for path, name in zip(args.runs, names):
        try:
            with open(path) as f:
                rows = json.load(f)["rows"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"error: {path}: not a bench report ({type(exc).__name__}: {exc})", file=sys.stderr)
            return 2
        try:
            every = ratios(rows, args.row, against, args.path)
        except ValueError as exc:
            print(f"error: {path}: not a bench report ({exc})", file=sys.stderr)
            return 2
        got = {shape: v for shape, v in every.items()
               if args.shape is None or any(fnmatch.fnmatchcase(shape, g) for g in args.shape)}
        if not got:
            kept = "" if args.shape is None else f" matching {' or '.join(args.shape)}"
            print(f"error: {path}: no {args.path} shape{kept} with rows of both {args.row!r} and one of {against}",
                  file=sys.stderr)
            return 2
        label = name if names.count(name) == 1 else path  # the file's name, its path where names repeat
        runs[label if label not in runs else f"{label} ({len(runs) + 1})"] = got
    text, over = table(runs, args.bar)
    print(f"{args.row} / {' or '.join(against)}, {args.path} path, {len(runs)} runs (bold: over {args.bar:g})\n")
    print(text)
    print(f"\nat or under {args.bar:g} at every shape: {len(runs) - len(over)} of {len(runs)} runs"
          + (f"; over it: {', '.join(over)}" if over else ""))
    if args.mean_bar is None:
        return 1 if over else 0
    values = [v[0] for r in runs.values() for v in r.values()]
    mean = sum(values) / len(values)
    high = mean > args.mean_bar
    print(f"mean over {len(values)} shape-runs: {mean:.4f} ({'over' if high else 'at or under'} {args.mean_bar:g})")
    return 1 if over or high else 0


if __name__ == "__main__":
    sys.exit(main())
