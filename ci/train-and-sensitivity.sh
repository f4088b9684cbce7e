#!/usr/bin/env bash
# Train the embedded model, check it, and run the full sensitivity table, on one GPU host.
#
#   ci/train-and-sensitivity.sh OUT_DIR [PHASE]       PHASE: all (default) | train | sensitivity
#
# train:       python -m evals train (the committed defaults) -> OUT_DIR/weights/{tiny-indexer-lm.safetensors,
#              manifest.json} with the quick checks (256 questions: reference, random top-k, dense) in the
#              manifest; log OUT_DIR/train.log.
# sensitivity: python -m evals sensitivity on all 1319 questions with those weights (OUT_DIR/weights, else the
#              shipped evals/weights): reference, the controls, our Triton kernels, every selftest fault, aiter
#              0.1.7 (and aiter main stage1 with AITER_TREE=DIR), DeepGEMM where it loads ->
#              OUT_DIR/sensitivity/{sensitivity.json,sensitivity.md}; log OUT_DIR/sensitivity.log. Then the
#              reference row's accuracy (lm-eval, all 1319) goes into OUT_DIR/weights/manifest.json.
#
# Durations on one H200, estimated from a 2026-12-04 probe (speed of each stage at batch 32; the committed
# defaults were not run there end to end): train ~4 min (dense 3000 + indexer 300 + sparse 1000 steps at batch 32 x
# 1952 bytes, the batches made by 8 worker processes); sensitivity ~7-9 min with JOBS=12 (a torch-served row decodes the
# 1319 questions in ~3 min, rows run 12 at a time; the Triton rows are faster). With a 10-minute limit per
# device call, run the phases as two calls: ci/train-and-sensitivity.sh OUT train, then OUT sensitivity
# (carry OUT/weights from the first).
#
# The GPU image has no network and no lm-eval: carry the wheels in .whl/ (once, where there is network):
#   pip download --no-deps -d .whl lm_eval==0.4.13 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
#   pip download --no-deps -d .whl amd-aiter==0.1.7.post2.dev18     # 40 MB: the aiter rows (optional)
# Environment: PYTHON (default python3), JOBS (12), AITER_TREE, LIMIT (default: all questions), EXTRA_TRAIN_ARGS.
set -euo pipefail
OUT="${1:?usage: ci/train-and-sensitivity.sh OUT_DIR [all|train|sensitivity]}"
PHASE="${2:-all}"
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
case "$PHASE" in all|train|sensitivity) ;; *) echo "PHASE must be all, train or sensitivity, got $PHASE"; exit 2;; esac

# lm-eval (and aiter) from .whl/ where the machine has none.
wheels=()
"$PY" -c 'import lm_eval' 2>/dev/null || for w in .whl/lm_eval-*.whl .whl/datasets-*.whl .whl/dill-*.whl \
    .whl/multiprocess-*.whl; do [ -f "$w" ] && wheels+=("$w"); done
"$PY" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("aiter") is None)' 2>/dev/null \
  || for w in .whl/amd_aiter-*.whl; do [ -f "$w" ] && wheels+=("$w"); done
[ "${#wheels[@]}" -gt 0 ] && "$PY" -m pip install -q --no-index --no-deps "${wheels[@]}"
"$PY" -c 'import lm_eval' || { echo "lm-eval is not installed and .whl/ holds no wheels for it (see the header)"; exit 2; }
export PARITY_GIT_COMMIT="${PARITY_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"

START=$(date +%s)
if [ "$PHASE" != sensitivity ]; then
  # shellcheck disable=SC2086
  "$PY" -m evals train --out "$OUT/weights" --device cuda --no-eval ${EXTRA_TRAIN_ARGS:-} 2>&1 \
    | tee "$OUT/train.log"
  echo "train: $(( $(date +%s) - START )) s" | tee -a "$OUT/train.log"
fi
if [ "$PHASE" != train ]; then
  WEIGHTS=()
  [ -f "$OUT/weights/manifest.json" ] && WEIGHTS=(--weights "$OUT/weights")
  LIMIT_ARGS=(); [ -n "${LIMIT:-}" ] && LIMIT_ARGS=(--limit "$LIMIT")
  AITER=(); [ -n "${AITER_TREE:-}" ] && AITER=(--aiter-tree "$AITER_TREE")
  T=$(date +%s)
  "$PY" -m evals sensitivity --out "$OUT/sensitivity" --device cuda --jobs "${JOBS:-12}" "${WEIGHTS[@]}" \
    "${LIMIT_ARGS[@]}" "${AITER[@]}" 2>&1 | tee "$OUT/sensitivity.log"
  echo "sensitivity: $(( $(date +%s) - T )) s" | tee -a "$OUT/sensitivity.log"
  if [ -f "$OUT/weights/manifest.json" ] && [ -z "${LIMIT:-}" ]; then
    "$PY" -m evals record-accuracy "$OUT/sensitivity/rows/reference/run" --weights "$OUT/weights" \
      | tee -a "$OUT/sensitivity.log"
  fi
fi
echo "artifacts: $OUT"
