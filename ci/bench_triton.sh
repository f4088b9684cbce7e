#!/usr/bin/env bash
# Tuning run of the Triton kernels on a GPU, small output: parity of the Triton backend (pytest), a
# config sweep at the reference shape (B64-n2-ctx8192), then the quick benchmark.
# Usage: ci/bench_triton.sh [OUT_DIR] [sweep args]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-bench-results}}"; shift || true
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
"$PY" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__, torch.cuda.get_device_name())'
"$PY" -m pytest -q -p no:cacheprovider tests/test_triton_backend.py -x > "$OUT_DIR/pytest-triton.txt" 2>&1
tail -n 2 "$OUT_DIR/pytest-triton.txt"
"$PY" -m parity.perf.tune "$@" 2>&1 | tee "$OUT_DIR/tune.txt"
"$PY" -m parity bench ${BENCH_ARGS:---quick} --out "$OUT_DIR/bench.json" > "$OUT_DIR/bench.md" 2>&1
grep -E "copy bandwidth|B64-n2-ctx8192|error" "$OUT_DIR/bench.md"
