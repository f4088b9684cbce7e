#!/usr/bin/env bash
# DeepGEMM's real build judged under both consumer rules (docs/contract.md, "Past a row's valid length"),
# on one GPU, in one call:
#   1. build DeepGEMM from DEEPGEMM_SRC (default third_party/DeepGEMM) with ci/build-deepgemm.sh --direct
#      --std c++20 --reuse (about 60 s; none where an up-to-date build is there);
#   2. python -m parity run --backend deepgemm:noclean (the adapter never asks DeepGEMM to clean; releases
#      since 2026-04 cannot) at each LEVEL, under --consumer length-bounded and --consumer unbounded;
#      deepgemm:clean as well, which skips with the reason where the release cannot clean.
# Expected of a correct build that leaves its rows uncleaned: length-bounded clean (exit 0), unbounded
# `mask` findings past the rows' lengths (exit 1). The script exits 0 when deepgemm:noclean gave exactly
# that at every level it ran, 1 when it did not, 2 when the build failed.
#
#   ci/deepgemm-consumers.sh [OUT_DIR]
#   env: PYTHON (default python3), DEEPGEMM_SRC, LEVELS (default "quick full"), DEADLINE_S (default 300)
# Leaves OUT_DIR/{summary.md, <variant>-<consumer>-<level>.{json,log}, dg-build.txt}.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-deepgemm-consumers}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
# shellcheck source=ci/lib.sh
source ci/lib.sh
SRC="${DEEPGEMM_SRC:-third_party/DeepGEMM}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
S="$OUT_DIR/summary.md"
END=$((SECONDS + ${DEADLINE_S:-300}))
echo "# DeepGEMM under both consumer rules $(date -u +%FT%TZ)" > "$S"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >> "$S" 2>&1

if [ -d "$SRC" ]; then
  build_deepgemm "$SRC" "$OUT_DIR" "$S" || exit 2
fi
status=0

for level in ${LEVELS:-quick full}; do
  for variant in deepgemm:noclean deepgemm:clean; do
    for consumer in length-bounded unbounded; do
      left=$((END - SECONDS))
      if [ "$left" -lt 20 ]; then echo "| $variant | $consumer | $level | not run: deadline |" >> "$S"; continue; fi
      name="${variant#deepgemm:}-$consumer-$level"
      timeout "$left" "$PY" -m parity run --backend "$variant" --consumer "$consumer" --level "$level" \
        --device cuda --out "$OUT_DIR/$name.json" > "$OUT_DIR/$name.log" 2>&1
      rc=$?
      if [ "$variant" = deepgemm:noclean ]; then  # the expectation above, or a finding of this script
        want=0; [ "$consumer" = unbounded ] && want=1
        [ "$rc" -eq "$want" ] || status=1
      fi
      echo "| $variant | $consumer | $level | exit $rc: $(grep -E 'verdict|passed|failed' "$OUT_DIR/$name.log" | tail -n 2 | tr '\n' ' ' | head -c 300) |" \
        | tee -a "$S"
    done
  done
done
[ $status -eq 0 ] || echo "deepgemm:noclean did not give length-bounded exit 0 and unbounded exit 1" | tee -a "$S"
exit $status
