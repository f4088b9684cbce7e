#!/usr/bin/env bash
# Performance against the roofline, and vLLM's decode top-k, in one GPU run, installing nothing:
#   1. python -m parity bench with triton, and deepgemm / aiter where one real call of theirs survives
#      (deepgemm and deepgemm:noclean: rows with and without clean_logits; deepgemm:split: next_n 4);
#   2. where a vLLM source tree is given (PARITY_VLLM_SRC, default third_party/vllm-src when present):
#      build its top_k_per_row_decode as a torch extension and run the top-k contract tests on it.
#
#   ci/gpu-bench.sh [OUT_DIR]
#   env: PYTHON (default python3), BENCH_ARGS (default --quick), PARITY_VLLM_SRC,
#        STEPS (default "bench topk"; one of them splits the work over two runs, e.g. under a job time limit)
# Leaves OUT_DIR/{summary.md, probe-*.txt, bench.json, bench.md, topk-build.txt, topk.txt}.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-bench-results}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
S="$OUT_DIR/summary.md"
status=0
STEPS=" ${STEPS:-bench topk} "
want() { [[ "$STEPS" == *" $1 "* ]]; }
{
  echo "# GPU bench $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
  "$PY" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
} > "$S" 2>&1

# A third-party build is benchmarked only if one real call survives in a process of its own: the
# benchmark runs all backends in one process, and a build that dies there (SIGSEGV) would end it.
if want bench; then
  backends=(triton)
  for b in deepgemm aiter; do
    names=("$b")
    # rows with and without clean_logits; split: next_n beyond the kernel's limit (sm90: 2) as several calls
    [ "$b" = deepgemm ] && names+=(deepgemm:noclean deepgemm:split)
    timeout 120 "$PY" - "${names[@]}" > "$OUT_DIR/probe-$b.txt" 2>&1 <<'PROBE'
import sys
import torch
from parity.backends import load_backend
from parity.perf.bench import Shape, make_inputs, timed_call
shape = Shape(2, 2, 1024)
inp = make_inputs(shape, "cuda")
for name in sys.argv[1:]:
    b = load_backend(name)
    paths = [p for p in b.paths if b.unsupported(p, inp) is None]
    if not paths:
        sys.exit(f"{name}: {b.unsupported(b.paths[0], inp)}")
    lead = (shape.heads,) if paths[0] == "stage1" else ()
    out = torch.full((*lead, shape.batch * shape.next_n, shape.context), float("-inf"), device="cuda")
    call, prepared = timed_call(b, paths[0], [inp], [out])
    call(0)
    torch.cuda.synchronize()
    print(f"{name}: {paths[0]} ran (prepared={prepared})")
PROBE
    rc=$?
    echo "probe $b: exit $rc: $(tail -n 1 "$OUT_DIR/probe-$b.txt")" | tee -a "$S"
    [ $rc -eq 0 ] && backends+=("${names[@]}")
  done
  echo "backends: ${backends[*]}" | tee -a "$S"
  bargs=()
  for b in "${backends[@]}"; do bargs+=(--backend "$b"); done

  echo -e "\n## benchmark" | tee -a "$S"
  t0=$SECONDS
  # shellcheck disable=SC2086
  timeout 330 "$PY" -m parity bench ${BENCH_ARGS:---quick} "${bargs[@]}" --out "$OUT_DIR/bench.json" \
    > "$OUT_DIR/bench.md" 2>&1 || status=1
  echo "($((SECONDS - t0)) s)" >> "$OUT_DIR/bench.md"
  cat "$OUT_DIR/bench.md" >> "$S"
  grep -E "copy bandwidth|B64-n(2|4)-ctx8192" "$OUT_DIR/bench.md"
fi

src="${PARITY_VLLM_SRC:-}"
[ -z "$src" ] && [ -d third_party/vllm-src/csrc ] && src="$PWD/third_party/vllm-src"
if want topk && [ -n "$src" ]; then
  echo -e "\n## vLLM top_k_per_row_decode from $src" | tee -a "$S"
  t0=$SECONDS
  timeout 300 "$PY" -m parity.backends.vllm_topk_ext --vllm-src "$src" > "$OUT_DIR/topk-build.txt" 2>&1
  rc=$?
  [ $rc -eq 0 ] || status=1
  echo "build: exit $rc after $((SECONDS - t0)) s" | tee -a "$S"
  tail -n 12 "$OUT_DIR/topk-build.txt" >> "$S"
  PARITY_VLLM_SRC="$src" timeout 240 "$PY" -m pytest -q -rA -p no:cacheprovider tests/test_topk.py \
    tests/test_vllm_topk_ext.py > "$OUT_DIR/topk.txt" 2>&1 || status=1
  grep -iE "^(PASSED|FAILED|ERROR|SKIPPED).*vllm|passed|failed" "$OUT_DIR/topk.txt" | tee -a "$S"
fi
exit $status
