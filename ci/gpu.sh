#!/usr/bin/env bash
# The GPU half of the suite in one run, installing nothing:
#   1. pytest -m parity on the GPU for our backends (torch, triton): must pass;
#   2. python -m parity run at LEVEL for every backend present (JSON report; a third-party build's
#      findings land here);
#   3. the GPU tests of the downstream contract and of the third-party backends (top-k op, buffer
#      strategies, graph capture, aiter expectations);
#   4. build comparison: the aiter build against a copy with its store masked (when aiter is present);
#   5. the benchmark against the roofline (ci/gpu-bench.sh: triton and every third-party build that survives
#      one real call).
#
#   ci/gpu.sh [OUT_DIR]
#   env: PYTHON (default python3), PARITY_AITER_PATH (an aiter tree; else the installed package),
#        DEEPGEMM_SRC (a DeepGEMM source tree: built offline by ci/build-deepgemm.sh into build/deepgemm,
#        reused on a warm machine, and put on PYTHONPATH; else an installed deep_gemm is used if any;
#        DEEPGEMM_ARGS: more build-deepgemm.sh options, e.g. "--cutlass DIR --fmt DIR"),
#        LEVEL (default full), BENCH_ARGS (default --quick),
#        STEPS (default "parity run contract compare bench": a subset splits the work over several runs)
# Leaves OUT_DIR/{summary.md, pytest-parity.txt, parity.json, parity.md, contract.txt, graphs.json,
# compare.txt, pipelining.json, bench/{bench.json, bench.md, probe-*.txt}}; summary.md gathers the tails.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-gpu-results}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
S="$OUT_DIR/summary.md"
status=0
step() { echo -e "\n## $1" | tee -a "$S"; }
STEPS=" ${STEPS:-parity run contract compare bench} "
want() { [[ "$STEPS" == *" $1 "* ]]; }

{
  echo "# GPU run $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null \
    || rocm-smi --showproductname 2>/dev/null
  "$PY" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__, "device", torch.cuda.get_device_name())'
} > "$S" 2>&1

if [ -n "${DEEPGEMM_SRC:-}" ]; then
  # shellcheck disable=SC2086
  dg_pp=$(ci/build-deepgemm.sh "$DEEPGEMM_SRC" ${DEEPGEMM_ARGS:-} --out build/deepgemm --reuse 2> "$OUT_DIR/deepgemm-build.txt" \
    | sed -n 's/^PYTHONPATH=//p')
  if [ -n "$dg_pp" ]; then
    export PYTHONPATH="$PYTHONPATH:$dg_pp" DG_JIT_CACHE_DIR="${DG_JIT_CACHE_DIR:-$PWD/build/deepgemm-jit}"
    echo "deep_gemm: built from $DEEPGEMM_SRC ($(tail -n 2 "$OUT_DIR/deepgemm-build.txt" | head -n 1))" | tee -a "$S"
  else
    echo "deep_gemm: build of $DEEPGEMM_SRC failed: $(grep error "$OUT_DIR/deepgemm-build.txt" | tail -n 1)" | tee -a "$S"
  fi
fi

backends=(torch triton)
for b in aiter deepgemm vllm; do
  if "$PY" - "$b" >/dev/null 2>&1 <<'EOF'
import sys
from parity.backends import load_backend
from parity.problem.cases import IndexerCase, build_inputs
b = load_backend(sys.argv[1])
inp = build_inputs(IndexerCase(heads=64), "cuda")
sys.exit(0 if any(b.unsupported(p, inp) is None for p in b.paths) else 1)
EOF
  then backends+=("$b"); fi
done
echo "backends present: ${backends[*]}" | tee -a "$S"
bargs=()
for b in "${backends[@]}"; do bargs+=(--backend "$b"); done

if want parity; then
  step "pytest -m parity --device cuda (torch, triton; quick)"
  source ci/lib.sh; parity_plugin_args
  timeout 240 "$PY" -m pytest "${PLUGIN[@]}" -m parity -q -p no:cacheprovider --device cuda --backend torch --backend triton \
    > "$OUT_DIR/pytest-parity.txt" 2>&1 || status=1
  tail -n 3 "$OUT_DIR/pytest-parity.txt" | tee -a "$S"
fi

if want run; then
  step "python -m parity run --level ${LEVEL:-full} --device cuda (${backends[*]})"
  "$PY" -m parity run "${bargs[@]}" --device cuda --level "${LEVEL:-full}" --no-progress --timeout 200 \
    --out "$OUT_DIR/parity.json" > "$OUT_DIR/parity.md" 2>&1
  tail -n 30 "$OUT_DIR/parity.md" | tee -a "$S"
fi

if want contract; then
  step "downstream contract and third-party expectations on the GPU"
  contract=$(ls tests/test_topk.py tests/test_strategies.py tests/test_graphs.py tests/test_aiter_backend.py \
    tests/test_thirdparty_adapters.py 2>/dev/null)
  # shellcheck disable=SC2086
  PARITY_GRAPHS_JSON="$OUT_DIR/graphs.json" timeout 240 "$PY" -m pytest -q -rA -p no:cacheprovider $contract \
    > "$OUT_DIR/contract.txt" 2>&1 || status=1
  grep -E "^(PASSED|FAILED|ERROR|SKIPPED)|passed|failed" "$OUT_DIR/contract.txt" | tail -n 60 >> "$S"
  tail -n 2 "$OUT_DIR/contract.txt"
fi

if want compare && [[ " ${backends[*]} " == *" aiter "* ]]; then
  step "compare builds: aiter as installed/given vs the same build with its store masked"
  src="${PARITY_AITER_PATH:-installed}"
  from=(); [ -n "${PARITY_AITER_PATH:-}" ] && from=(--from "$PARITY_AITER_PATH")
  "$PY" ci/aiter-fixed-build.py /tmp/aiter-fixed "${from[@]}" > /dev/null 2>&1
  timeout 200 ci/compare-builds.sh --level full --path fused --device cuda --out-dir /tmp/cmp "$src" /tmp/aiter-fixed \
    > "$OUT_DIR/compare.txt" 2>&1
  echo "exit code $?" >> "$OUT_DIR/compare.txt"
  grep -E "^(regressions|fixed|changed|verdict|exit)" "$OUT_DIR/compare.txt" | tee -a "$S"
fi

if want bench; then
  step "key tiles in flight (TTGIR of the Triton kernel, parity.kernels.pipelining)"
  "$PY" -m parity.kernels.pipelining > "$OUT_DIR/pipelining.json" 2>/dev/null || status=1
  tr -d ' \n' < "$OUT_DIR/pipelining.json" | tee -a "$S"; echo | tee -a "$S"
  # one recipe for the benchmark: ci/gpu-bench.sh, whose probe keeps a build that crashes on its first
  # real call out of the one benchmark process (the check above only asks a backend what it supports)
  step "benchmark (ci/gpu-bench.sh)"
  STEPS=bench ci/gpu-bench.sh "$OUT_DIR/bench" > /dev/null 2>&1 || status=1
  cat "$OUT_DIR/bench/bench.md" >> "$S"
  grep -E "copy bandwidth|B64-n2-ctx8192" "$OUT_DIR/bench/bench.md"
fi
exit $status
