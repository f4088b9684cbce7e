#!/usr/bin/env bash
# The parity matrix split over N machines (CI jobs) and merged back into one report.
# Every job runs the same command with its own K; a cell's shard is a stable hash of its path and
# case, so the N jobs cover the matrix exactly once whatever machines they land on.
#
#   ci/sharded-run.sh shard K N OUT_DIR [run options...]  one job: OUT_DIR/shard-K-of-N.json
#   ci/sharded-run.sh merge OUT_DIR [BASELINE.json]         the last job: OUT_DIR/merged.json from every
#                                                           OUT_DIR/**/shard-*-of-*.json, then diff it
#                                                           against BASELINE when given
#   ci/sharded-run.sh local N OUT_DIR [run options...]      all N shards on this machine at once, then merge
#
# Exit codes are those of `python -m parity run` (shard), `merge` (2 when a shard is missing or given
# twice), and `diff` when a baseline is given. See ci/github-actions-sharded.yml for a CI matrix.
set -uo pipefail
PY="${PYTHON:-python}"
mode="${1:-}"; shift || true
case "$mode" in
  shard)
    k="${1:?K}"; n="${2:?N}"; out="${3:?OUT_DIR}"; shift 3
    mkdir -p "$out"
    "$PY" -m parity run --shard "$k/$n" --no-progress --out "$out/shard-$k-of-$n.json" "$@"
    ;;
  merge)
    out="${1:?OUT_DIR}"; baseline="${2:-}"
    mapfile -t reports < <(find "$out" -name 'shard-*-of-*.json' | sort)
    [ ${#reports[@]} -gt 0 ] || { echo "no shard reports under $out" >&2; exit 2; }
    "$PY" -m parity merge "${reports[@]}" --out "$out/merged.json"
    code=$?
    if [ -n "$baseline" ]; then
      "$PY" -m parity diff "$baseline" "$out/merged.json"
      code=$?
    fi
    exit $code
    ;;
  local)
    n="${1:?N}"; out="${2:?OUT_DIR}"; shift 2
    pids=()
    for k in $(seq 1 "$n"); do
      "$0" shard "$k" "$n" "$out" --quiet "$@" > "$out.shard-$k.log" 2>&1 &
      pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
    "$0" merge "$out"
    ;;
  *)
    sed -n '2,14p' "$0" >&2
    exit 2
    ;;
esac
