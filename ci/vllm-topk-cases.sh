#!/usr/bin/env bash
# vLLM's decode top-k, top_k_per_row_decode, built from a vLLM source tree and run on the cases that reach
# each of its paths (parity/contract/topk_cases.py): short rows at 200000+ columns, a crowded fp16 bin of exact
# zeros at the k-th value (8192, 20000, 163840 columns), next_n 2 and 4 with context_len 0 and 1. Per case
# id and per effect that reading csrc/sampler.cu predicts: reproduced / ruled out / not reproduced /
# unexpected, with the rows and the counts. One H200, no network, installs nothing.
#
#   ci/vllm-topk-cases.sh OUT_DIR [--only CASE_ID ...] [--runs N]
#   env: PYTHON (default python3), DEADLINE_S (the build and the cases together, default 560: one
#        10-minute device call), PARITY_VLLM_SRC (default third_party/vllm-src: csrc/sampler.cu and the
#        headers it includes, see README "Downstream contract"; git-ignored, carry it to the GPU machine)
# Leaves OUT_DIR/{summary.md, topk-build.txt, topk-cases.txt, topk-cases.json, topk-cases.md}.
# Exit 0 when the op was built and every case ran (the verdicts are in the files), 1 otherwise, 2 on bad use.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
  echo "usage: ci/vllm-topk-cases.sh OUT_DIR [--only CASE_ID ...] [--runs N]" >&2
  exit 2
fi
OUT_DIR="$1"
shift
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
S="$OUT_DIR/summary.md"
src="${PARITY_VLLM_SRC:-}"
[ -z "$src" ] && [ -d third_party/vllm-src/csrc ] && src="$PWD/third_party/vllm-src"
{
  echo "# vLLM top_k_per_row_decode cases $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
  echo "vLLM tree: ${src:-none}"
} > "$S" 2>&1
if [ -z "$src" ] || [ ! -f "$src/csrc/sampler.cu" ]; then
  echo "no vLLM tree with csrc/sampler.cu: set PARITY_VLLM_SRC or fill third_party/vllm-src" | tee -a "$S"
  exit 1
fi
# The cases and their predictions first: a bad --only stops here, before the compile.
"$PY" -m parity.contract.topk_cases --list --out "$OUT_DIR" "$@" > "$OUT_DIR/predictions.txt" 2>&1 || {
  cat "$OUT_DIR/predictions.txt" >&2
  exit 2
}

END=$((SECONDS + ${DEADLINE_S:-560}))
t0=$SECONDS
timeout 300 "$PY" -m parity.backends.vllm_topk_ext --vllm-src "$src" > "$OUT_DIR/topk-build.txt" 2>&1
rc=$?
echo "build: exit $rc after $((SECONDS - t0)) s" | tee -a "$S"
if [ $rc -ne 0 ]; then
  tail -n 30 "$OUT_DIR/topk-build.txt" | tee -a "$S"
  exit 1
fi

t0=$SECONDS
left=$((END - SECONDS))
[ "$left" -ge 30 ] || { echo "cases: not run, the deadline is spent" | tee -a "$S"; exit 1; }
timeout "$left" "$PY" -m parity.contract.topk_cases --vllm-src "$src" --out "$OUT_DIR" "$@" > "$OUT_DIR/topk-cases.txt" 2>&1
rc=$?
echo "cases: exit $rc after $((SECONDS - t0)) s" | tee -a "$S"
tail -n 40 "$OUT_DIR/topk-cases.txt" >> "$S"
[ -f "$OUT_DIR/topk-cases.md" ] && cat "$OUT_DIR/topk-cases.md" >> "$S"
[ $rc -eq 0 ] || exit 1
exit 0
