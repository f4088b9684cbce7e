"""Summarizes the JSON lines of parity_profile.py: one table row per process of each run, and the number
of distinct Triton specializations compiled (python summarize.py NAME=LOG ...)."""
import collections
import json
import sys

COLS = ("tests", "precompile", "backend_call", "compile", "compile_hit", "reference", "build_inputs", "check_values",
        "check_mask", "check_out_of_bounds", "topk_reference", "compare_topk", "buffer_map")

print("| run | worker | tests | to first test s | first->last s | " + " | ".join(c + " s" for c in COLS)
      + " | compiles (hits) |")
print("|" + "---|" * (5 + len(COLS) + 1))
variants = {}
for arg in sys.argv[1:]:
    name, path = arg.split("=", 1)
    lines = [json.loads(x) for x in open(path)]
    for p in (x for x in lines if x["kind"] == "process"):
        s, c = p["seconds"], p["counts"]
        print(f"| {name} | {p['worker']} | {p['tests']} | {p['to_first_test']} | {p['first_to_last_test']} | "
              + " | ".join(str(s.get(k, 0)) for k in COLS)
              + f" | {c.get('compile', 0)} ({c.get('compile_hit', 0)}) |")
    comp = [x for x in lines if x["kind"] == "compile" and not x.get("hit") and "error" not in x]
    variants[name] = comp
print("\n### timelines (seconds after the first process of the run started)")
for arg in sys.argv[1:]:
    name, path = arg.split("=", 1)
    lines = [json.loads(x) for x in open(path)]
    events = [x for x in lines if x["kind"] == "events"]
    if not events:
        continue
    t0 = min(e["start"] for e in events)
    exits = {x["pid"]: x["t"] for x in lines if x["kind"] == "exit"}
    for e in sorted(events, key=lambda e: e["start"]):
        marks = {k: v for k, v in e.items() if isinstance(v, float) and k != "start"}
        marks["exit"] = exits.get(e["pid"], float("nan"))
        print(f"- {name} {e['worker']}: start {e['start'] - t0:.1f}, "
              + ", ".join(f"{k} {v - t0:.1f}" for k, v in sorted(marks.items(), key=lambda kv: kv[1])))
        if cpu := e.get("cpu"):  # CPU seconds of all the process's threads, at each event
            print("  - CPU s: " + ", ".join(f"{k} {v}" for k, v in sorted(cpu.items(), key=lambda kv: kv[1])))
for name, comp in variants.items():
    keys = collections.Counter((x["name"], x["constants"], x["attrs"]) for x in comp)
    by_kernel = collections.Counter(x["name"] for x in comp)
    secs = sum(x["s"] for x in comp)
    print(f"\n{name}: {len(comp)} compiles, {len(keys)} distinct specializations, {secs:.1f} s of compiling; "
          f"per kernel: {dict(by_kernel)}")
    errs = [x for x in open(dict(a.split('=', 1) for a in sys.argv[1:])[name]) if '"error"' in x]
    if errs:
        print("listener errors:", errs[:2])

print("\n### the end of each run (cProfile of pytest_sessionfinish, one process per run and worker kind)")
for arg in sys.argv[1:]:
    name, path = arg.split("=", 1)
    seen = set()
    for x in (json.loads(line) for line in open(path)):
        if x["kind"] == "sessionfinish_profile" and x["worker"][:2] not in seen:
            seen.add(x["worker"][:2])
            body = [ln for ln in x["text"].splitlines() if ln.strip()][:18]
            print(f"\n{name} {x['worker']}:\n" + "\n".join(body))
