#!/usr/bin/env bash
# The FP4 (MXFP4) indexer on one GPU, installing nothing. On an H200 there are no FP4 matrix units: our
# Triton kernel dequantizes E2M1 and the UE8M0 group scales in registers and multiplies in bf16.
#   1. the full level's FP4 cells for torch and triton on the GPU:
#        python -m parity run --level full --device cuda --case '*-mxfp4*'
#   2. the FP4 planted faults: python -m parity selftest --match 'fp4_*' (the derived tolerance included);
#   3. the benchmark: triton's fused path on the quick decode shapes in both flavours (--formats fp8,mxfp4),
#      each FP4 row with its time, x roofline and ratio to the fp8 kernel in the same run (vs fp8).
#
#   ci/fp4-gpu.sh OUT_DIR
#   env: PYTHON (default python3), BENCH_ARGS (default: --quick --path fused), DEVICE (default cuda; cpu
#        checks the script itself: the Triton interpreter, a tiny benchmark shape; 2.2-2.5 minutes on 2 cores)
# Leaves OUT_DIR/{summary.md, fp4-full.json, fp4-full.txt, selftest-fp4.txt, bench-fp4.json, bench-fp4.md}.
# Exit: 0 all clean; 1 a finding, a missed fault, or no timed FP4 row; 2 a step did not finish.
# Expected on one H200: about 3 minutes (run ~1 min with the compiles, selftest ~15 s, bench ~1.5 min);
# every step has its own time limit (300 + 90 + 150 s: 9 minutes at most).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-fp4-results}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
S="$OUT_DIR/summary.md"
status=0
worst() { [ "$1" -gt "$status" ] && status=$1; }
step() {  # step NAME SECONDS CMD...: runs CMD, logs its exit and duration into the summary
  local name=$1 limit=$2 t0 rc
  shift 2
  t0=$(date +%s)
  timeout "$limit" "$@"
  rc=$?
  echo "| $name | $rc | $(( $(date +%s) - t0 )) s |" >> "$S"
  return $rc
}
{
  echo "# FP4 indexer on the GPU $(date -u +%FT%TZ)"
  echo
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
  "$PY" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
  echo
  echo "| step | exit | time |"
  echo "|---|---|---|"
} > "$S" 2>&1

[ "${DEVICE:-cuda}" = cpu ] && export TRITON_INTERPRET=1
step "run --level full, FP4 cells (torch, triton)" 300 \
  "$PY" -m parity run --level full --device "${DEVICE:-cuda}" --backend torch --backend triton --case '*-mxfp4*' \
  --no-progress --out "$OUT_DIR/fp4-full.json" > "$OUT_DIR/fp4-full.txt" 2>&1
rc=$?
case $rc in 0|1) worst $rc ;; *) worst 2 ;; esac

step "selftest --match 'fp4_*'" 90 "$PY" -m parity selftest --match 'fp4_*' > "$OUT_DIR/selftest-fp4.txt" 2>&1
rc=$?
case $rc in 0) ;; 1) worst 1 ;; *) worst 2 ;; esac

# shellcheck disable=SC2086
step "bench --formats fp8,mxfp4" 150 "$PY" -m parity bench ${BENCH_ARGS:---quick --path fused} --backend triton \
  --formats fp8,mxfp4 --device "${DEVICE:-cuda}" --out "$OUT_DIR/bench-fp4.json" > "$OUT_DIR/bench-fp4.md" 2>&1
rc=$?
[ $rc -le 1 ] || worst 2
"$PY" - "$OUT_DIR/bench-fp4.json" >> "$S" 2>&1 <<'RATIOS' || worst 1
import json, sys
try:
    rows = json.load(open(sys.argv[1]))["rows"]
except (OSError, ValueError) as exc:
    sys.exit(f"no benchmark report: {exc}")
fp4 = [r for r in rows if r["shape"].endswith("-mxfp4") and "us" in r]
print("\n| shape | path | fp4 us | x roof | vs fp8 |\n|---|---|---:|---:|---:|")
for r in fp4:
    roof = "n/a" if r.get("x_roof") is None else f"{r['x_roof']:.2f}"
    vs = "-" if r.get("vs_fp8") is None else f"{r['vs_fp8']:.2f}"
    print(f"| {r['shape']} | {r['path']} | {r['us']:.1f} | {roof} | {vs} |")
sys.exit(0 if fp4 else "no timed FP4 row")
RATIOS

{
  echo
  echo "run: $(tail -n 1 "$OUT_DIR/fp4-full.txt" 2>/dev/null)"
  grep -E '^[0-9]+ passed' "$OUT_DIR/fp4-full.txt" 2>/dev/null
  echo "selftest: $(tail -n 1 "$OUT_DIR/selftest-fp4.txt" 2>/dev/null)"
  echo "exit $status"
} >> "$S"
cat "$S"
exit $status
