#!/usr/bin/env bash
# Train the embedded model, check it, and run the full sensitivity table, on one GPU host.
#
#   ci/train-and-sensitivity.sh OUT_DIR [PHASE]       PHASE: all (default) | train | sensitivity
#
# train:       python -m evals train (the committed defaults, the shipped recipe) -> OUT_DIR/weights/{tiny-indexer-lm.safetensors,
#              manifest.json} with the quick checks (256 questions: reference, random top-k, dense) in the
#              manifest; log OUT_DIR/train.log.
# sensitivity: python -m evals sensitivity on all 1319 questions with those weights (OUT_DIR/weights, else the
#              shipped evals/weights): reference, the controls, our Triton kernels, every selftest fault, aiter
#              0.1.7 (and aiter main stage1 with AITER_TREE=DIR), DeepGEMM where it loads ->
#              OUT_DIR/sensitivity/{sensitivity.json,sensitivity.md}; log OUT_DIR/sensitivity.log. Then the
#              reference row's accuracy (lm-eval, all 1319) goes into OUT_DIR/weights/manifest.json.
#
# Durations on one H200 (2026-12-04): train ~4 min (the committed defaults, the shipped weights' recipe: dense
# 1500 + indexer 150 + sparse 500 steps at batch 32 x 1952 bytes, the batches made by 8 worker processes; 238 s
# with the quick checks). With a 10-minute limit per device call, run the phases as separate calls:
# ci/train-and-sensitivity.sh OUT train, then OUT sensitivity (carry OUT/weights from the first), and split a
# table that does not finish in one call with SENS_TIMEOUT_S and a second call given its rows in ROWS_FROM.
#
# The GPU image has no network and no lm-eval: carry the wheels in .whl/ (once, where there is network):
#   pip download --no-deps -d .whl lm_eval==0.4.13 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
#   pip download --no-deps -d .whl amd-aiter==0.1.7.post2.dev18     # 40 MB: the aiter rows (optional)
# Environment: PYTHON (default python3), JOBS (12), AITER_TREE, LIMIT (default: all questions), EXTRA_TRAIN_ARGS,
#   BATCH_SIZE (decode batch, default the command's), ONLY / SKIP (row ids, or id prefixes for SKIP),
#   ROWS_FROM (a folder of row records made elsewhere, e.g. DeepGEMM's rows from a host that built it: kept,
#   not rerun), SENS_TIMEOUT_S (stop the table after this long; the finished rows stay for a --resume),
#   PARITY_TIMEOUT (seconds for each kernel row's parity run, default 900).
# The rows, the table and the logs are also packed into OUT_DIR/sensitivity.tgz (hosts that return few files).
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
  MORE=()
  [ -n "${BATCH_SIZE:-}" ] && MORE+=(--batch-size "$BATCH_SIZE")
  [ -n "${ONLY:-}" ] && MORE+=(--only "$ONLY")
  [ -n "${SKIP:-}" ] && MORE+=(--skip "$SKIP")
  [ -n "${PARITY_TIMEOUT:-}" ] && MORE+=(--parity-timeout "$PARITY_TIMEOUT")
  if [ -n "${ROWS_FROM:-}" ]; then
    mkdir -p "$OUT/sensitivity/rows" && cp "$ROWS_FROM"/*.json "$OUT/sensitivity/rows/"
  fi
  SENS_TIMEOUT_S="${SENS_TIMEOUT_S:-86400}"
  [[ "$SENS_TIMEOUT_S" =~ ^[1-9][0-9]*$ ]] || { echo "SENS_TIMEOUT_S must be a positive number of seconds"; exit 2; }
  T=$(date +%s)
  sens_rc=0  # a table stopped by SENS_TIMEOUT_S is still packed: its finished rows are what a --resume keeps
  timeout "$SENS_TIMEOUT_S" "$PY" -m evals sensitivity --out "$OUT/sensitivity" --device cuda \
    --jobs "${JOBS:-12}" --resume "${WEIGHTS[@]}" "${LIMIT_ARGS[@]}" "${AITER[@]}" "${MORE[@]}" 2>&1 \
    | tee "$OUT/sensitivity.log" || sens_rc=$?
  echo "sensitivity: exit $sens_rc after $(( $(date +%s) - T )) s" | tee -a "$OUT/sensitivity.log"
  (cd "$OUT/sensitivity" && tar czf ../sensitivity.tgz --exclude='rows/*/run' rows/*.json rows/logs \
    sensitivity.json sensitivity.md 2>/dev/null) || true
  [ "$sens_rc" -eq 0 ] || exit "$sens_rc"
  if [ -f "$OUT/weights/manifest.json" ] && [ -z "${LIMIT:-}" ]; then
    "$PY" -m evals record-accuracy "$OUT/sensitivity/rows/reference/run" --weights "$OUT/weights" \
      | tee -a "$OUT/sensitivity.log"
  fi
fi
echo "artifacts: $OUT"
