#!/usr/bin/env bash
# The parity matrix over every GPU of one host, measured in one run, on a machine with
# no network: pytest-xdist, execnet and pytest-split come from wheels in .whl/ (git-ignored; carry it).
#   1. pytest -m parity --device cuda --parity-level full (torch, triton) in one process, then with
#      -n <GPUs>, each run with cold caches of its own (Triton kernels, float64 references), timed;
#      during the -n run nvidia-smi samples utilisation and memory per GPU every second and which
#      processes hold a context on which GPU every 5 s; each cell's device comes from --junitxml;
#   2. python -m parity run --level full --device cuda: one child process per GPU per backend;
#   3. the two-GPU test of tests/test_scale.py (each xdist worker launches on its own GPU).
#
#   ci/multi-gpu.sh OUT_DIR
#   env: PYTHON (default python3), LEVEL (default full), BACKENDS (default "torch triton"),
#        PYTEST_TIMEOUT (default 140 s per pytest run), DIST (xdist's --dist, default loadgroup: the
#        plugin groups the matrix's cells by case, so that a case's reference is computed once; the
#        Triton kernels are compiled before the first cell, each worker its share), STEPS (default
#        "pytest run gputest"), PYTEST_ADDOPTS (e.g. "-p no:hypothesispytest", for both runs).
#        A dry run of the script without GPUs:
#        PARITY_FAKE_GPUS=2 LEVEL=quick BACKENDS=torch ci/multi-gpu.sh /tmp/dry (parity.run.devices)
# Leaves OUT_DIR/{summary.md, single.txt, xdist.txt, xdist.xml, smi-gpu.csv, smi-apps.csv, run.json,
# run.md, gpu-test.txt}. Takes about 3 minutes on 2 x H100; at most about 8 (every step has a timeout).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:?usage: ci/multi-gpu.sh OUT_DIR}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
PY="${PYTHON:-python3}"
LEVEL="${LEVEL:-full}"
T="${PYTEST_TIMEOUT:-140}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
S="$OUT_DIR/summary.md"
SCRATCH="$(mktemp -d)"
status=0

{
  echo "# Multi-GPU run $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader 2>&1
  "$PY" -c 'import os, torch, triton; print("torch", torch.__version__, "triton", triton.__version__,
  "gpus", torch.cuda.device_count(), "cpus", os.cpu_count())'
} > "$S" 2>&1
GPUS=$("$PY" -c 'from parity.run.devices import gpu_count; print(gpu_count())')

source ci/lib.sh
ensure_xdist "$S" || exit 2
parity_plugin_args
bargs=(); for b in ${BACKENDS:-torch triton}; do bargs+=(--backend "$b"); done
matrix=(-m parity -q -p no:cacheprovider "${PLUGIN[@]}" --device cuda --parity-level "$LEVEL" "${bargs[@]}")

now() { date +%s.%N; }
timed() {  # NAME COMMAND...: runs it with cold caches of its own under the timeout; sets WALL (seconds)
  local name=$1; shift
  local t0 t1 rc; t0=$(now)
  TRITON_CACHE_DIR="$SCRATCH/triton-$name" PARITY_CACHE_DIR="$SCRATCH/ref-$name" timeout -k 10 "$T" "$@" \
    > "$OUT_DIR/$name.txt" 2>&1
  rc=$?; t1=$(now)
  WALL=$("$PY" -c "print(f'{$t1 - $t0:.1f}')")
  echo "$name: exit $rc, wall $WALL s$([ $rc -eq 124 ] && echo " (killed by the $T s timeout)")" >> "$S"
  [ $rc -eq 0 ] || status=1
}

echo -e "\n## pytest -m parity --parity-level $LEVEL --device cuda (${BACKENDS:-torch triton}; $GPUS GPUs)" >> "$S"
timed single "$PY" -m pytest "${matrix[@]}"; single=$WALL
tail -n 2 "$OUT_DIR/single.txt" >> "$S"

nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used --format=csv -l 1 > "$OUT_DIR/smi-gpu.csv" 2>&1 &
smi=$!
( while true; do nvidia-smi --query-compute-apps=timestamp,pid,gpu_uuid,used_memory --format=csv,noheader; sleep 5; done ) \
  > "$OUT_DIR/smi-apps.csv" 2>&1 &
apps=$!
timed xdist "$PY" -m pytest "${matrix[@]}" -n "$GPUS" --dist "${DIST:-loadgroup}" --junitxml "$OUT_DIR/xdist.xml" -o junit_family=xunit1
xdist=$WALL
kill "$smi" "$apps" 2>/dev/null; wait "$smi" "$apps" 2>/dev/null
tail -n 2 "$OUT_DIR/xdist.txt" >> "$S"
nvidia-smi --query-gpu=index,uuid --format=csv,noheader > "$OUT_DIR/smi-uuids.csv" 2>&1

{
  echo
  echo "| run | wall s |"
  echo "|---|---|"
  echo "| one process | $single |"
  echo "| -n $GPUS | $xdist |"
  "$PY" -c "print(f'\nratio -n $GPUS / one process: {$xdist / $single:.2f} (target <= 0.6)')"
  echo -e "\n### where the cells of the -n $GPUS run ran (junitxml properties)"
  "$PY" - "$OUT_DIR" <<'EOF'
import collections, csv, statistics, sys, xml.etree.ElementTree as ET
out = sys.argv[1]
try:
    seen = collections.Counter()
    for case in ET.parse(f"{out}/xdist.xml").iter("testcase"):
        p = {q.get("name"): q.get("value") for q in case.iter("property")}
        if case.find("skipped") is None and p:
            seen[(p.get("worker"), p.get("device"), p.get("worker_current"), p.get("ran_on_current"),
                  p.get("ran_on_output"))] += 1
    print("| worker | device | current between cells | current at launch | output on | cells |\n|---|---|---|---|---|---|")
    for k, n in sorted(seen.items(), key=lambda kv: str(kv[0])):
        print("| " + " | ".join(map(str, k)) + f" | {n} |")
except Exception as exc:
    print(f"no junitxml: {exc}")
print("\n### nvidia-smi during the -n run (1 s samples)")
util = collections.defaultdict(list)
mem = collections.defaultdict(list)
try:
    for row in csv.reader(open(f"{out}/smi-gpu.csv")):
        if len(row) == 4 and row[1].strip().isdigit():
            util[row[1].strip()].append(float(row[2].split()[0]))
            mem[row[1].strip()].append(float(row[3].split()[0]))
    print("| GPU | samples | mean util % | max util % | max memory MiB |\n|---|---|---|---|---|")
    for g in sorted(util):
        print(f"| {g} | {len(util[g])} | {statistics.mean(util[g]):.0f} | {max(util[g]):.0f} | {max(mem[g]):.0f} |")
    index = {r[1].strip(): r[0].strip() for r in csv.reader(open(f"{out}/smi-uuids.csv")) if len(r) == 2}
    gpus_of = collections.defaultdict(set)
    for r in csv.reader(open(f"{out}/smi-apps.csv")):
        if len(r) == 4:
            gpus_of[r[1].strip()].add(index.get(r[2].strip(), r[2].strip()))
    print("\nprocesses with a CUDA context (pid: GPUs): "
          + (", ".join(f"{pid}: {sorted(g)}" for pid, g in sorted(gpus_of.items())) or "none sampled"))
except Exception as exc:
    print(f"nvidia-smi samples unreadable: {exc}")
EOF
} >> "$S"

STEPS=" ${STEPS:-pytest run gputest} "
if [[ "$STEPS" == *" run "* ]]; then
echo -e "\n## python -m parity run --level $LEVEL --device cuda (one process per GPU per backend)" >> "$S"
t0=$(now)
TRITON_CACHE_DIR="$SCRATCH/triton-run" PARITY_CACHE_DIR="$SCRATCH/ref-run" timeout -k 10 140 \
  "$PY" -m parity run "${bargs[@]}" --level "$LEVEL" --device cuda --no-progress --timeout 120 --out "$OUT_DIR/run.json" \
  > "$OUT_DIR/run.md" 2>&1
rc=$?; t1=$(now)
"$PY" -c "print(f'run exit {$rc}, wall {$t1 - $t0:.1f} s')" >> "$S"
[ $rc -eq 0 ] || status=1
tail -n 4 "$OUT_DIR/run.md" >> "$S"
"$PY" - "$OUT_DIR/run.json" >> "$S" 2>&1 <<'EOF'
import collections, json, sys
r = json.load(open(sys.argv[1]))
for spec, info in r["backends"].items():
    print(f"backend {spec}: {info.get('status')} parts {info.get('parts')} {info.get('message', '')}")
c = collections.Counter((x["backend"], x["device"], ",".join(x.get("ran_on", {}).get("current", [])))
                        for x in r["results"] if x["status"] != "skip")
for k, n in sorted(c.items()):
    print(f"  {k[0]} on {k[1]} (current at launch: {k[2]}): {n} cells")
EOF
fi

if [[ "$STEPS" == *" gputest "* ]]; then
echo -e "\n## tests/test_scale.py on two GPUs" >> "$S"
TRITON_CACHE_DIR="$SCRATCH/triton-test" timeout -k 10 80 "$PY" -m pytest -q -p no:cacheprovider "${PLUGIN[@]}" \
  tests/test_scale.py -k "own_gpu or explicit_device" -rA > "$OUT_DIR/gpu-test.txt" 2>&1 || status=1
grep -E "^(PASSED|FAILED|ERROR|SKIPPED)|passed|failed" "$OUT_DIR/gpu-test.txt" | tail -n 5 >> "$S"
fi

rm -rf "$SCRATCH"
cat "$S"
exit $status
