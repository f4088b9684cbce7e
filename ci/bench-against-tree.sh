#!/usr/bin/env bash
# This tree's Triton kernel against another checkout's on the same GPU: for a done-when such as "no shape slower
# than on main" on a GPU whose config a change did not mean to touch. The two trees' benchmarks run in turn
# (other, this, other, this, ...), each in a process of its own with only its own tree on PYTHONPATH, so neither
# imports the other's code; each run's rows are then paired (run i of each) and read by python -m parity.perf.runs
# with the other tree's rows named "triton@other".
#
#   ci/bench-against-tree.sh OTHER_TREE [OUT_DIR]     # OTHER_TREE: e.g. git archive <commit> | tar -x -C dir
#   env: PYTHON (default python3), RUNS (default 2), BENCH_ARGS (default "--quick --path fused --backend triton";
#        both trees must accept them), BAR (default 1.01)
#
# A shape is slower than on the other tree where every pair has it over BAR. 1.01 because two runs of one tree in
# turn differ by about that much (the same kernel, two processes); a real loss shows in every pair.
# Leaves OUT_DIR/{summary.md, other-<i>.json, this-<i>.json, pair-<i>.json, *.md}. Exit 0: no shape over BAR in
# any pair; 1: a shape is over it in some pair (summary.md's table: slower only where over it in every pair);
# 2: a run did not finish.
set -uo pipefail
cd "$(dirname "$0")/.."
other="${1:?usage: ci/bench-against-tree.sh OTHER_TREE [OUT_DIR]}"
[ -d "$other/parity" ] || { echo "error: OTHER_TREE $other has no parity/ package" >&2; exit 2; }
other="$(cd "$other" && pwd)"
OUT_DIR="${2:-${OUT:-tree-bench}}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
PY="${PYTHON:-python3}"
S="$OUT_DIR/summary.md"
read -r -a bargs <<< "${BENCH_ARGS:---quick --path fused --backend triton}"
{
  echo "# this tree against $other $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null
  echo "bench: ${bargs[*]}; runs: ${RUNS:-2}; bar: ${BAR:-1.01}"
} > "$S"
status=0
for i in $(seq 1 "${RUNS:-2}"); do
  for side in other this; do
    tree="$PWD"
    [ "$side" = other ] && tree="$other"
    t0=$SECONDS
    (cd "$tree" && PYTHONPATH="$tree" timeout 300 "$PY" -m parity bench "${bargs[@]}" \
      --out "$OUT_DIR/$side-$i.json" > "$OUT_DIR/$side-$i.md" 2>&1)
    rc=$?
    echo "run $i, $side tree: exit $rc ($((SECONDS - t0)) s)" | tee -a "$S"
    [ $rc -eq 0 ] || status=2
  done
  "$PY" - "$OUT_DIR/other-$i.json" "$OUT_DIR/this-$i.json" "$OUT_DIR/pair-$i.json" <<'PAIR' || status=2
import json, sys
other, this, out = sys.argv[1:]
rows = [{**r, "backend": r["backend"] + "@other"} for r in json.load(open(other))["rows"]]
json.dump({"rows": rows + json.load(open(this))["rows"]}, open(out, "w"))
PAIR
done
[ $status -eq 2 ] && exit 2
echo "" >> "$S"
PYTHONPATH="$PWD" "$PY" -m parity.perf.runs --row triton --against triton@other --bar "${BAR:-1.01}" \
  "$OUT_DIR"/pair-*.json >> "$S" 2>&1
rc=$?
cat "$S"
exit $rc
