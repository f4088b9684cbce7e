#!/usr/bin/env bash
# The Triton kernel's variants against DeepGEMM on one GPU, with Nsight Compute on both, in one call
# (about 6 minutes on an H200):
#   1. build DeepGEMM from DEEPGEMM_SRC (default third_party/DeepGEMM) with ci/build-deepgemm.sh --direct
#      --std c++20 --reuse, where the tree is there (about 60 s; none where an up-to-date build is there);
#   2. python -m parity.perf.kernel_study: every variant of parity.perf.kernel_study.VARIANTS and DeepGEMM on the fused
#      path at the quick shapes, preshuffle and stage1 for the base and the fastest variant, the bare reads;
#   3. ncu (--clock-control none; speed of light, memory, compute, occupancy, launch, warp state and
#      scheduler sections, and the bytes each kernel read from and wrote to DRAM, which summary.md lists)
#      on the base variant, the fastest and DeepGEMM at B64-n2-ctx8192 and -ctx32768.
#
#   ci/kernel-study.sh [OUT_DIR]
#   env: PYTHON (default python3), DEEPGEMM_SRC, STUDY_S (seconds for step 2, default 240; 0 skips it),
#        NCU_S (default 100; 0 skips step 3), NCU_VARIANTS (the variants ncu profiles, default the base and the
#        fastest; "default" is the GPU's config), NCU_SHAPES (default B64-n2-ctx8192,B64-n2-ctx32768)
# Leaves OUT_DIR/{summary.md, study.json, study.md, ncu.csv, dg-build.txt, log.txt}.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-study-results}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
# shellcheck source=ci/lib.sh
source ci/lib.sh
SRC="${DEEPGEMM_SRC:-third_party/DeepGEMM}"
STUDY_S="${STUDY_S:-240}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
S="$OUT_DIR/summary.md"
LOG="$OUT_DIR/log.txt"
{
  echo "# kernel study $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader
  "$PY" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
} > "$S" 2>&1

if [ -d "$SRC" ]; then
  build_deepgemm "$SRC" "$OUT_DIR" "$S"
else
  echo "deepgemm: no source tree at $SRC" | tee -a "$S"
fi

t0=$SECONDS
if [ "$STUDY_S" -le 0 ]; then
  echo "study: skipped (STUDY_S=0)" | tee -a "$S"
else
  timeout "$STUDY_S" "$PY" -m parity.perf.kernel_study --out "$OUT_DIR" --deadline-s $((STUDY_S - 70)) > "$LOG" 2>&1
  echo "study: exit $? after $((SECONDS - t0)) s" | tee -a "$S"
fi
best="$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1])).get("best_at_bar") or "")' \
  "$OUT_DIR/study.json" 2>/dev/null)"
variants=base
[ -n "$best" ] && [ "$best" != base ] && variants="base,$best"
variants="${NCU_VARIANTS:-$variants}"

if [ "${NCU_S:-100}" -le 0 ]; then
  echo "ncu: skipped (NCU_S=0)" | tee -a "$S"
elif command -v ncu >/dev/null; then
  t0=$SECONDS
  timeout "${NCU_S:-100}" ncu --clock-control none \
    --kernel-name regex:'paged_mqa_logits_kernel|paged_mqa_logits_sm90_(ws_|wg4_)?kernel|sm90_fp8_paged_mqa_logits' \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
    --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats \
    --metrics dram__bytes_read.sum,dram__bytes_write.sum --csv --page details \
    "$PY" -m parity.perf.kernel_study --profile --variants "$variants" \
    --profile-shapes "${NCU_SHAPES:-B64-n2-ctx8192,B64-n2-ctx32768}" > "$OUT_DIR/ncu.csv" 2>> "$LOG"
  echo "ncu ($variants, deepgemm): exit $? after $((SECONDS - t0)) s" | tee -a "$S"
  # DRAM bytes per profiled launch, in launch order, labelled by the lines kernel_study --profile prints
  "$PY" -m parity.perf.ncu_dram "$OUT_DIR/ncu.csv" >> "$S" 2>&1
else
  echo "ncu: not on PATH" | tee -a "$S"
fi
cat "$OUT_DIR/study.md" >> "$S" 2>/dev/null
exit 0
