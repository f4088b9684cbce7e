#!/usr/bin/env bash
# The Hopper configs not yet in the tree's config for the GPU this runs on, judged and timed beside it and
# DeepGEMM in two calls of under 10 minutes each (docs/h200-coupled-q.md):
#   - on another GPU of compute capability 9.0 than the H200 (an H100, whose entry is the base config, the
#     portable kernel): the H200's config (ci/config_variants.py:h200_config);
#   - on an H200 none by default (the coupled program judged there on 2026-12-05 lost and left the tree); JUDGED
#     and TIMED name candidates.
# Steps:
#   tests   the GPU tests of the Hopper kernels (the four-warpgroup program's logits against the warp-specialized
#           form's and the float64 reference; a prepared call against an unprepared one);
#   parity  python -m parity run --path fused at the full and stress levels of each judged backend;
#   bench   DeepGEMM built from DEEPGEMM_SRC (default third_party/DeepGEMM, unpacked from third_party/dg.tar.xz
#           where only the archive was carried), then RUNS (default 2) runs of python -m parity bench --quick
#           --path fused --reps 40 with triton, the candidates (ci/config_variants.py), deepgemm and
#           deepgemm:split; then each row's ratio to DeepGEMM over the runs, and each candidate's to triton under
#           the timing half of the rule of docs/h200-coupled-q.md, with a line "rule, timing half, X: met|not met"
#           (python -m parity.perf.runs) in summary.md.
#
#   STEPS="tests parity" ci/sm90-candidates.sh OUT_DIR     # one call
#   STEPS=bench ci/sm90-candidates.sh OUT_DIR              # the other
#   env: PYTHON (default python3), STEPS (default "tests parity bench": over 10 minutes), RUNS, DEEPGEMM_SRC,
#        JUDGED, TIMED (space-separated backend specs judged by the parity step, timed beside triton, instead of
#        the ones above)
# Leaves OUT_DIR/{summary.md, pytest.txt, parity-<backend>-<level>.json, bench-<i>.json, bench-<i>.md, dg-build.txt}.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-candidate-results}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
# shellcheck source=ci/lib.sh
source ci/lib.sh
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
S="$OUT_DIR/summary.md"
STEPS=" ${STEPS:-tests parity bench} "
want() { [[ "$STEPS" == *" $1 "* ]]; }
status=0
gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)"
# what is judged and timed beside the tree's config: see the header
judged=() timed=()
if [[ "$gpu" != *H200* ]]; then
  judged=(ci/config_variants.py:h200_config)
  timed=(ci/config_variants.py:h200_config)
fi
[ -n "${JUDGED:-}" ] && read -r -a judged <<< "$JUDGED"
[ -n "${TIMED:-}" ] && read -r -a timed <<< "$TIMED"
{
  echo "# Hopper candidates $(date -u +%FT%TZ), tree $(git rev-parse --short HEAD 2>/dev/null)"
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
  "$PY" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
  echo "judged: ${judged[*]}; timed beside triton: ${timed[*]}"
} > "$S" 2>&1

if want tests; then
  t0=$SECONDS
  timeout 240 "$PY" -m pytest -q -p no:cacheprovider tests/test_sm90_kernel.py tests/test_sm90_forms.py \
    tests/test_sm90_schedule_gpu.py \
    tests/test_sm90_gpu.py tests/test_prepared_launch.py > "$OUT_DIR/pytest.txt" 2>&1 \
    || status=1
  echo "tests: $(tail -n 1 "$OUT_DIR/pytest.txt") ($((SECONDS - t0)) s)" | tee -a "$S"
fi

if want parity; then
  for b in "${judged[@]}"; do
    tag="${b##*/}"
    tag="${tag//.py:/-}"
    tag="${tag//:/-}"
    for level in full stress; do
      t0=$SECONDS
      timeout 200 "$PY" -m parity run --backend "$b" --device cuda --level "$level" --path fused --timeout 30 \
        --no-progress --out "$OUT_DIR/parity-$tag-$level.json" > "$OUT_DIR/parity-$tag-$level.txt" 2>&1
      rc=$?
      [ $rc -eq 0 ] || status=1
      log="$OUT_DIR/parity-$tag-$level.txt"
      echo "parity $b $level: exit $rc ($((SECONDS - t0)) s):" \
        "$(grep -m1 -iE 'passed|failed' "$log" || tail -n 1 "$log")" | tee -a "$S"
    done
  done
fi

if want bench; then
  SRC="${DEEPGEMM_SRC:-third_party/DeepGEMM}"
  [ -d "$SRC" ] || [ ! -f third_party/dg.tar.xz ] || tar -xJf third_party/dg.tar.xz -C third_party
  dg=()
  if [ -d "$SRC" ] && build_deepgemm "$SRC" "$OUT_DIR" "$S"; then
    dg=(--backend deepgemm --backend deepgemm:split)
  else
    echo "deepgemm: not built; the runs compare the Triton rows only" | tee -a "$S"
  fi
  for i in $(seq 1 "${RUNS:-2}"); do
    t0=$SECONDS
    bargs=(--backend triton)
    for b in "${timed[@]}"; do bargs+=(--backend "$b"); done
    timeout 200 "$PY" -m parity bench --quick --path fused --reps 40 "${bargs[@]}" "${dg[@]}" \
      --out "$OUT_DIR/bench-$i.json" > "$OUT_DIR/bench-$i.md" 2>&1 || status=1
    echo "bench run $i: $((SECONDS - t0)) s" | tee -a "$S"
  done
  # each row against DeepGEMM over the runs, and the runs in which it is at or under 1.00 at every quick shape;
  # each candidate against the tree's row, the rule of docs/h200-coupled-q.md (bench-<i>.md: every row's ratios
  # to the others, with their spread round by round)
  for b in triton "${timed[@]}"; do
    echo -e "\n### $b over the runs" >> "$S"
    "$PY" -m parity.perf.runs --row "$b" "$OUT_DIR"/bench-*.json >> "$S" 2>&1
  done
  # the timing half of the rule, written before any run (docs/h200-coupled-q.md); the other half is the parity
  # step of the other call. H200: a candidate at or under triton at every next_n 2 shape with B >= 64 in every
  # run, and 0.5 % under it on average. Elsewhere: no quick shape slower than triton.
  rule=(--bar 1.0)
  [[ "$gpu" == *H200* ]] && rule=(--shape 'B64-n2-*' --shape 'B128-n2-*' --bar 1.0 --mean-bar 0.995)
  echo -e "\n## The rule's timing half: ${rule[*]}" >> "$S"
  for b in "${timed[@]}"; do
    echo -e "\n### $b / triton" >> "$S"
    "$PY" -m parity.perf.runs --row "$b" --against triton "${rule[@]}" "$OUT_DIR"/bench-*.json >> "$S" 2>&1
    rc=$?
    verdict="met"
    [ $rc -eq 1 ] && verdict="not met"
    [ $rc -gt 1 ] && verdict="unusable (exit $rc)"
    echo "rule, timing half, $b: $verdict" | tee -a "$S"
  done
fi
exit $status
