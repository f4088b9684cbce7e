#!/usr/bin/env bash
# Where the time of `pytest -m parity --device cuda` goes with one process and with -n <GPUs>:
# each run with the profiling plugin ci/profiling/parity_profile.py, which logs per process the time to
# the first test, the tests' own time, Triton compile time and count (Triton's compilation listener),
# and the time in backend calls, references, inputs and checks. Runs, in this order:
#   single-cold (empty Triton and reference caches), single-warm (Triton cache of single-cold, empty
#   reference cache), xdist-cold, xdist-warm (likewise).
#
#   ci/profile-xdist.sh OUT_DIR      env: PYTHON, LEVEL (full), BACKENDS ("torch triton"), T (150 s a run),
#                                    RUNS (default "single-cold single-warm xdist-cold xdist-warm"), DIST (loadgroup)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:?usage: ci/profile-xdist.sh OUT_DIR}"; mkdir -p "$OUT_DIR"; OUT_DIR="$(cd "$OUT_DIR" && pwd)"
PY="${PYTHON:-python3}"; T="${T:-150}"; LEVEL="${LEVEL:-full}"
export PYTHONPATH="$PWD/ci/profiling:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
SCRATCH="$(mktemp -d)"
GPUS=$("$PY" -c 'from parity.run.devices import gpu_count; print(gpu_count())')
source ci/lib.sh
ensure_xdist /dev/stderr || exit 2
parity_plugin_args
bargs=(); for b in ${BACKENDS:-torch triton}; do bargs+=(--backend "$b"); done
matrix=(-m parity -q -p no:cacheprovider "${PLUGIN[@]}" -p parity_profile --device cuda --parity-level "$LEVEL" "${bargs[@]}")
S="$OUT_DIR/profile.md"
{ echo "# profile $(date -u +%FT%TZ), $GPUS GPUs, $(nproc) CPUs"
  "$PY" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)
try:
    import triton.runtime._async_compile as a; print("triton AsyncCompileMode:", hasattr(a, "AsyncCompileMode"))
except ImportError as e: print("no async compile:", e)'; } > "$S" 2>&1
logs=()
for run in ${RUNS:-single-cold single-warm xdist-cold xdist-warm}; do
  mode=${run%-*}; temp=${run#*-}
  extra=(); [ "$mode" = xdist ] && extra=(-n "$GPUS" --dist "${DIST:-loadgroup}")
  rm -rf "$SCRATCH/ref"; mkdir -p "$SCRATCH/ref"
  [ "$temp" = cold ] && rm -rf "$SCRATCH/triton-$mode"
  log="$OUT_DIR/$run.jsonl"; rm -f "$log"
  t0=$(date +%s.%N)
  TRITON_CACHE_DIR="$SCRATCH/triton-$mode" PARITY_CACHE_DIR="$SCRATCH/ref" PARITY_PROFILE_LOG="$log" \
    timeout -k 10 "$T" "$PY" -m pytest "${matrix[@]}" "${extra[@]}" > "$OUT_DIR/$run.txt" 2>&1
  rc=$?; t1=$(date +%s.%N)
  echo "$run: exit $rc, wall $("$PY" -c "print(f'{$t1 - $t0:.1f}')") s; $(tail -n 1 "$OUT_DIR/$run.txt")" >> "$S"
  [ -s "$log" ] && logs+=("$run=$log")
done
echo >> "$S"
[ ${#logs[@]} -gt 0 ] && "$PY" ci/profiling/summarize.py "${logs[@]}" >> "$S" 2>&1
rm -rf "$SCRATCH"
cat "$S"
