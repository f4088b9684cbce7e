"""The DRAM bytes of each kernel launch that Nsight Compute profiled, from its CSV, as a Markdown table.

    ncu ... --metrics dram__bytes_read.sum,dram__bytes_write.sum --csv --page details \\
        python -m parity.perf.kernel_study --profile ... > ncu.csv
    python -m parity.perf.ncu_dram ncu.csv

Why: two kernels that read the same keys should read the same bytes from DRAM, and a difference is a bug a
timing cannot name. On the H200 the four-warpgroup program read 142.16 MB at B128-n2-ctx8192 where DeepGEMM
read 140.69. It was reading each share's second q from DRAM again (docs/h200-q-reread.md).

``kernel_study --profile`` prints ``profiled NAME SHAPE CALLS`` after each backend's calls of a shape. These
lines label the launches in order, ``CALLS`` to a line, where their counts add up to the launches. Otherwise
the launches are listed unlabelled.
"""
from __future__ import annotations

import csv
import re
import sys

# to MB and us; ncu 2025 (the H200 image's) writes byte and ns in its CSV, older ones scaled units
_BYTES = {"byte": 1e-6, "Kbyte": 1e-3, "Mbyte": 1.0, "Gbyte": 1e3}
_TIME = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}
_METRICS = {"dram__bytes_read.sum": "read", "dram__bytes_write.sum": "written", "Duration": "us",
            "gpu__time_duration.sum": "us"}


def _short(kernel: str) -> str:
    """A kernel's name without its return type, template arguments and parameters."""
    name = re.sub(r"^void ", "", kernel)
    name = re.sub(r"[<(].*$", "", name)
    return name.split("::")[-1]


def launches(text: str) -> tuple[list[dict], list[str]]:
    """(each profiled launch in ID order: its kernel, us, MB read and written; the ``profiled`` labels, one a
    launch they stand for)."""
    labels = [f"{m.group(1)} {m.group(2)}" for m in re.finditer(r"^profiled (\S+) (\S+) (\d+)\s*$", text, re.M)
              for _ in range(int(m.group(3)))]
    lines = [line for line in text.splitlines() if line.startswith('"')]
    if not lines:
        raise ValueError("no CSV rows: expected the output of ncu --csv --page details")
    rows = list(csv.DictReader(lines))
    missing = {"ID", "Kernel Name", "Metric Name", "Metric Unit", "Metric Value"} - set(rows[0])
    if missing:
        raise ValueError(f"the CSV lacks the columns {sorted(missing)}: expected ncu --csv --page details")
    by_id: dict[int, dict] = {}
    for row in rows:
        what = _METRICS.get(row["Metric Name"])
        if what is None:
            continue
        unit, value = row["Metric Unit"], float(row["Metric Value"].replace(",", ""))
        scale = (_TIME if what == "us" else _BYTES).get(unit)
        if scale is None:
            raise ValueError(f"metric {row['Metric Name']!r} in unknown unit {unit!r}")
        launch = by_id.setdefault(int(row["ID"]), {"kernel": _short(row["Kernel Name"])})
        launch[what] = value * scale
    return [by_id[i] for i in sorted(by_id)], labels


def markdown(text: str) -> str:
    found, labels = launches(text)
    labelled = len(labels) == len(found)
    out = ["DRAM bytes per profiled launch (Nsight Compute, caches flushed before each):", "",
           "| launch | backend, shape | kernel | us | MB read | MB written |", "|---:|---|---|---:|---:|---:|"]
    for i, launch in enumerate(found):
        label = labels[i] if labelled else "unlabelled"
        cells = [f"{launch[k]:.2f}" if k in launch else "n/a" for k in ("us", "read", "written")]
        out.append(f"| {i + 1} | {label} | {launch['kernel']} | " + " | ".join(cells) + " |")
    if not labelled and labels:
        out += ["", f"labels for {len(labels)} launches, {len(found)} profiled: not matched"]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m parity.perf.ncu_dram NCU_CSV", file=sys.stderr)
        return 2
    try:
        with open(args[0]) as f:
            print(markdown(f.read()), end="")
    except (OSError, ValueError) as e:
        print(f"error: {args[0]}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
