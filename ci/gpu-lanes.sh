#!/usr/bin/env bash
# The GPU half of the suite and the third-party builds in one run on a two-GPU host, two lanes at once:
#   lane 0 (GPU 0): DeepGEMM built from a source tree (ci/build-deepgemm.sh --direct --std c++20),
#     its parity at the full and stress levels, the benchmark (triton, deepgemm, aiter) against the
#     roofline, vLLM's decode top-k built from a source tree;
#   lane 1 (GPU 1): torch and triton at the stress level, pytest -m parity on the GPU, aiter builds
#     (PARITY_AITER_TREES) at the full and stress levels and their diff, the GPU contract tests.
# Each step has a timeout and the whole run a deadline (BUDGET seconds): a step that does not fit is
# skipped and says so in its lane's summary. Nothing is fetched; wheels come from .whl/.
#
# OUT_DIR gets summary.md and lanes.tgz (every step's log and JSON report, as one archive: one file to
# copy back from a GPU machine).
#
#   ci/gpu-lanes.sh OUT_DIR
#   env: BUDGET (default 560), DEEPGEMM_SRC (default third_party/DeepGEMM), PARITY_VLLM_SRC,
#        PARITY_AITER_TREES (space-separated trees, default: third_party/aiter-0.1.7 third_party/aiter-main
#        where present), LANES (default "0 1")
set -uo pipefail
cd "$(dirname "$0")/.."
DEST="${1:?usage: ci/gpu-lanes.sh OUT_DIR}"; mkdir -p "$DEST"; DEST="$(cd "$DEST" && pwd)"
OUT="$PWD/build/gpu-lanes"; rm -rf "$OUT"; mkdir -p "$OUT"
PY="${PYTHON:-python3}"
T0=$(date +%s); BUDGET=${BUDGET:-560}
export PYTHONUNBUFFERED=1 PARITY_CACHE_DIR="$PWD/build/parity-cache"
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }

# Our package, so that pytest finds the plugin's entry point (offline: no dependency is fetched).
"$PY" -m pip install -q --no-deps --no-build-isolation -e . > "$OUT/setup.txt" 2>&1 \
  || echo "pip install -e . failed: pytest gets -p parity.pytest_plugin" >> "$OUT/setup.txt"
source ci/lib.sh; parity_plugin_args
ensure_xdist "$OUT/setup.txt" || true  # only the steps that use xdist need it
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader >> "$OUT/setup.txt" 2>&1

# step LANE NAME TIMEOUT CMD...: runs CMD with at most min(TIMEOUT, what is left) seconds.
step() {
  local lane="$1" name="$2" want="$3"; shift 3
  local s="$OUT/lane$lane.md" t; t=$(left); (( t > want )) && t=$want
  if (( t < 20 )); then echo "- $name: skipped, ${t}s left of the call's budget" >> "$s"; return; fi
  local t1; t1=$(date +%s)
  timeout -k 5 "$t" "$@" > "$OUT/$name.txt" 2>&1; local rc=$?
  echo "- $name: exit $rc in $(( $(date +%s) - t1 ))s (limit ${t}s)" >> "$s"
  tail -n 25 "$OUT/$name.txt" | sed 's/^/    /' >> "$s"
}

lane0() {
  export CUDA_VISIBLE_DEVICES=0
  local src="${DEEPGEMM_SRC:-third_party/DeepGEMM}" dg=""
  if [ -d "$src" ]; then
    step 0 dg-build 200 ci/build-deepgemm.sh "$src" --direct --std c++20 --out build/deepgemm
    dg="$(tail -n 1 "$OUT/dg-build.txt" | sed -n 's/^PYTHONPATH=//p')"
  fi
  if [ -n "$dg" ]; then
    export PYTHONPATH="$dg${PYTHONPATH:+:$PYTHONPATH}"
    step 0 dg-full 150 "$PY" -m parity run --backend deepgemm --backend deepgemm:split --level full --device cuda \
      --no-progress --timeout 120 --out "$OUT/dg-full.json"
    step 0 dg-stress 150 "$PY" -m parity run --backend deepgemm --backend deepgemm:split --level stress --device cuda \
      --no-progress --timeout 120 --out "$OUT/dg-stress.json"
  fi
  local aiter; aiter=$(for t in ${PARITY_AITER_TREES:-third_party/aiter-0.1.7}; do echo "$t"; break; done)
  PARITY_AITER_PATH="$aiter" STEPS=bench step 0 bench 240 ci/gpu-bench.sh "$OUT/bench"
  STEPS=topk step 0 topk 150 ci/gpu-bench.sh "$OUT/topk"
}

lane1() {
  export CUDA_VISIBLE_DEVICES=1
  step 1 stress 220 "$PY" -m parity run --backend torch --backend triton --level stress --device cuda --no-progress \
    --timeout 150 --out "$OUT/stress.json"
  local trees=() t
  for t in ${PARITY_AITER_TREES:-third_party/aiter-0.1.7 third_party/aiter-main}; do [ -d "$t/aiter" ] && trees+=("$t"); done
  for t in "${trees[@]}"; do
    local n; n=$(basename "$t")
    step 1 "$n-full" 200 "$PY" -m parity run --backend aiter --aiter-path "$t" --level full --device cuda --no-progress \
      --timeout 120 --out "$OUT/$n-full.json"
  done
  if [ "${#trees[@]}" -ge 2 ]; then
    step 1 aiter-diff 60 "$PY" -m parity diff "$OUT/$(basename "${trees[0]}")-full.json" \
      "$OUT/$(basename "${trees[1]}")-full.json"
  fi
  step 1 pytest-parity 120 "$PY" -m pytest "${PLUGIN[@]}" -m parity -q -p no:cacheprovider --device cuda \
    --backend torch --backend triton
  for t in "${trees[@]}"; do
    local n; n=$(basename "$t")
    step 1 "$n-stress" 120 "$PY" -m parity run --backend aiter --aiter-path "$t" --level stress --device cuda \
      --no-progress --timeout 100 --out "$OUT/$n-stress.json"
  done
  step 1 contract 120 "$PY" -m pytest "${PLUGIN[@]}" -q -rA -p no:cacheprovider tests/test_topk.py \
    tests/test_strategies.py tests/test_graphs.py tests/test_aiter_backend.py tests/test_deepgemm_adapter.py
}

for l in ${LANES:-0 1}; do "lane$l" & done
wait
{
  echo "# GPU lanes, $(( $(date +%s) - T0 ))s of a ${BUDGET}s budget"
  cat "$OUT/setup.txt"
  for l in ${LANES:-0 1}; do echo; echo "## lane $l"; cat "$OUT/lane$l.md" 2>/dev/null; done
} > "$OUT/summary.md"
cp "$OUT/summary.md" "$DEST/summary.md"
tar -C "$OUT" -czf "$DEST/lanes.tgz" .
cat "$OUT/summary.md"
