#!/usr/bin/env bash
# The GPU half of the suite in one call, installing nothing: the parity matrix (pytest, and a JSON
# report at the full level) on every backend present, the GPU tests of the downstream contract
# (top-k op, buffer strategies, graph capture), then the benchmark.
#
#   ci/gpu.sh [OUT_DIR]
#   env: PYTHON (default python3), AITER_PATH (an aiter tree for the aiter backend),
#        BENCH_ARGS (default --quick), LEVEL (default full)
#
# Leaves OUT_DIR/{summary.md, parity.json, parity.md, pytest-parity.txt, contract.txt, bench.json, bench.md}.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-gpu-results}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0

{
  echo "# GPU run $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || rocm-smi --showproductname 2>/dev/null
  "$PY" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__, "device", torch.cuda.get_device_name())'
} > "$OUT_DIR/summary.md" 2>&1

# Which backends load here: torch and triton always; third-party ones when their build is present.
backends=(torch triton)
aiter_args=()
[ -n "${AITER_PATH:-}" ] && aiter_args=(--aiter-path "$AITER_PATH")
for b in aiter deepgemm vllm; do
  if "$PY" - "$b" "${AITER_PATH:-}" >/dev/null 2>&1 <<'EOF'
import sys, torch
from parity.backends import load_backend
from parity.cases import IndexerCase, build_inputs
opts = {"aiter_path": sys.argv[2]} if sys.argv[1] == "aiter" and sys.argv[2] else {}
b = load_backend(sys.argv[1], **opts)
inp = build_inputs(IndexerCase(), "cuda")
sys.exit(0 if any(b.unsupported(p, inp) is None for p in b.paths) else 1)
EOF
  then backends+=("$b"); fi
done
echo "backends present: ${backends[*]}" | tee -a "$OUT_DIR/summary.md"
bargs=()
for b in "${backends[@]}"; do bargs+=(--backend "$b"); done

echo "## pytest -m parity (quick)" >> "$OUT_DIR/summary.md"
"$PY" -m pytest -m parity -q -p no:cacheprovider "${bargs[@]}" "${aiter_args[@]}" > "$OUT_DIR/pytest-parity.txt" 2>&1 || status=1
tail -n 3 "$OUT_DIR/pytest-parity.txt" >> "$OUT_DIR/summary.md"

echo "## python -m parity run --level ${LEVEL:-full}" >> "$OUT_DIR/summary.md"
"$PY" -m parity run "${bargs[@]}" "${aiter_args[@]}" --level "${LEVEL:-full}" --no-progress \
  --out "$OUT_DIR/parity.json" > "$OUT_DIR/parity.md" 2>&1 || status=1
tail -n 25 "$OUT_DIR/parity.md" >> "$OUT_DIR/summary.md"

echo "## downstream contract on the GPU" >> "$OUT_DIR/summary.md"
contract=$(ls tests/test_topk.py tests/test_strategies.py tests/test_graphs.py tests/test_aiter_backend.py 2>/dev/null)
"$PY" -m pytest -q -rA -p no:cacheprovider $contract "${aiter_args[@]}" > "$OUT_DIR/contract.txt" 2>&1 || status=1
tail -n 3 "$OUT_DIR/contract.txt" >> "$OUT_DIR/summary.md"

echo "## benchmark" >> "$OUT_DIR/summary.md"
# shellcheck disable=SC2086
"$PY" -m parity bench ${BENCH_ARGS:---quick} "${bargs[@]}" --out "$OUT_DIR/bench.json" > "$OUT_DIR/bench.md" 2>&1 || status=1
cat "$OUT_DIR/bench.md" >> "$OUT_DIR/summary.md"

cat "$OUT_DIR/summary.md"
exit $status
