#!/usr/bin/env bash
# Bisect a DeepGEMM crash on the GPU in one run (< 8 minutes), with a native backtrace where there is
# no gdb. Builds are kept under build/deepgemm-diag/ (git-ignored) and reused on a warm
# machine.
#
#   ci/deepgemm-diagnose.sh OUT_DIR [--src DIR] [--pin DIR] [--old DIR]
#
# --src  the DeepGEMM tree to judge (default third_party/DeepGEMM, with third-party/{cutlass,fmt}/include)
# --pin  a second tree, the revision vLLM pins (default third_party/DeepGEMM-891d57b when present); it is
#        built with --src's cutlass and fmt (both revisions pin the same submodule commits)
# --old  a release of the older call generation, (B,) context_lens and clean_logits (default
#        third_party/DeepGEMM-d30fc36 when present), built like --pin
#
# 1. builds, in parallel: head = --src with DeepGEMM's setup.py and line tables (the recipe that
#    crashed); head-cxx20 = the same sources with one g++ command at -std=c++20 (how vLLM builds this
#    _C); head-rtapi = setup.py with DG_JIT_USE_RUNTIME_API=1 (the JIT loads kernels through the CUDA
#    runtime instead of dlsym'd driver entry points); pin = --pin and old = --old with setup.py.
# 2. ci/segv-backtrace.c compiled with gcc and LD_PRELOADed into every step.
# 3. ci/deepgemm-steps.py, one process per step, faulthandler on, DG_JIT_DEBUG=1,
#    DG_JIT_PRINT_COMPILER_COMMAND=1, a fresh DG_JIT_CACHE_DIR per build: head runs every step (meta2d
#    also under NVRTC and with an unlimited stack); the other builds run import/meta2d/logits only when
#    head crashed; when head's logits step passes, head's parity step runs instead (and old's logits).
# OUT_DIR gets: diag.md (the table and the verdict lines), steps.log (every step's output, backtraces
# resolved with addr2line), builds.log, env.txt, cache.txt (what the JIT left in its cache dirs).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: ci/deepgemm-diagnose.sh OUT_DIR [--src DIR] [--pin DIR] [--old DIR]}"; shift
SRC=third_party/DeepGEMM PIN="" OLD=""
[ -d third_party/DeepGEMM-891d57b ] && PIN=third_party/DeepGEMM-891d57b
[ -d third_party/DeepGEMM-d30fc36 ] && OLD=third_party/DeepGEMM-d30fc36
while [ $# -gt 0 ]; do
  case "$1" in
    --src) SRC="$2"; shift 2 ;;
    --pin) PIN="$2"; shift 2 ;;
    --old) OLD="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"; OUT="$(cd "$OUT" && pwd)"
WORK="$PWD/build/deepgemm-diag"; mkdir -p "$WORK/logs"
PY="${PYTHON:-python3}"
T0=$(date +%s)
BUDGET=${BUDGET:-460}  # seconds for everything: steps past it are skipped, a step's timeout is cut to fit
el() { echo "$(( $(date +%s) - T0 ))s"; }
MD="$OUT/diag.md"; LOG="$OUT/steps.log"
: > "$LOG"

{
  echo "# DeepGEMM diagnostic $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" --version 2>&1 | tail -n 2
  gcc --version | head -n 1; ldd --version | head -n 1; echo "ulimit -s: $(ulimit -s)"
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "cxx11abi", torch.compiled_with_cxx11_abi(), "arch", torch.cuda.get_device_capability())' 2>&1
  "$PY" -c 'import wheel; print("wheel", wheel.__version__)' 2>&1 | tail -n 1
  ls .whl 2>/dev/null
  for t in "$SRC" "$PIN" "$OLD"; do [ -n "$t" ] && { echo "tree $t:"; cat "$t/REVISION" 2>/dev/null; du -sh "$t" 2>/dev/null; }; done
  command -v addr2line gdb catchsegv 2>&1
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

gcc -shared -fPIC -O1 -o "$WORK/segv-backtrace.so" ci/segv-backtrace.c -ldl || { echo "gcc failed" >&2; exit 2; }

# --- builds -----------------------------------------------------------------------------------------
declare -A PP BUILD_RC
build() {  # name, build-deepgemm.sh args...
  local name="$1"; shift
  timeout "${BUILD_TIMEOUT:-300}" ci/build-deepgemm.sh "$@" --out "$WORK/$name" --reuse > "$WORK/logs/build-$name.log" 2>&1
  echo $? > "$WORK/logs/build-$name.rc"
}
CUT="$SRC/third-party/cutlass" FMT="$SRC/third-party/fmt"
build head "$SRC" --debug &
build head-cxx20 "$SRC" --direct --std c++20 &
build head-rtapi "$SRC" --runtime-api &
[ -n "$PIN" ] && build pin "$PIN" --cutlass "$CUT" --fmt "$FMT" &
[ -n "$OLD" ] && build old "$OLD" --cutlass "$CUT" --fmt "$FMT" &
wait
VARIANTS=(head head-cxx20 head-rtapi); [ -n "$PIN" ] && VARIANTS+=(pin); [ -n "$OLD" ] && VARIANTS+=(old)
: > "$OUT/builds.log"
for v in "${VARIANTS[@]}"; do
  BUILD_RC[$v]=$(cat "$WORK/logs/build-$v.rc" 2>/dev/null || echo 99)
  PP[$v]=$(sed -n 's/^PYTHONPATH=//p' "$WORK/logs/build-$v.log" | tail -n 1)
  { echo "=== build $v: rc ${BUILD_RC[$v]} PYTHONPATH=${PP[$v]}"; grep -E "build-deepgemm|error|Error|warning: no" "$WORK/logs/build-$v.log" | tail -n 15
    [ "${BUILD_RC[$v]}" = 0 ] || tail -n 40 "$WORK/logs/build-$v.log"; } >> "$OUT/builds.log"
done
echo "builds done at $(el)"; cat "$OUT/builds.log"

# --- steps ------------------------------------------------------------------------------------------
declare -A RES
resolve() {  # addr2line for the frames a crash printed
  grep '^\[segv-backtrace\] \(pc\|#\)' "$1" | head -n 40 | while read -r _ tag addr objoff sym; do
    obj="${objoff%+0x*}"; off="0x${objoff##*+0x}"
    case "$obj" in *.so*|*/python*) ;; *) continue ;; esac
    [ "$tag" != pc ] && off=$(printf '0x%x' $(( off - 1 )))  # a return address: the call is before it
    where=$(addr2line -f -C -i -e "$obj" "$off" 2>/dev/null | paste -sd' ' -)
    printf '  %-4s %s %s\n' "$tag" "$(basename "$obj")+$off" "${where:-$sym}"
  done
}
run_step() {  # variant step label [VAR=value...]; appends to $STEPLOG (default steps.log)
  local v="$1" s="$2" label="$3"; shift 3
  local f="$WORK/logs/step-$v-$label.log" rc res left=$(( BUDGET - $(date +%s) + T0 ))
  if [ "$left" -lt 15 ]; then
    RES[$v/$label]="skipped (time budget)"
    echo "=================== $v / $label: skipped (time budget) (rc -)" >> "${STEPLOG:-$LOG}"; return
  fi
  local limit=$(( left < ${STEP_TIMEOUT:-120} ? left : ${STEP_TIMEOUT:-120} ))
  mkdir -p "$WORK/jit-$v"
  env PYTHONPATH="${PP[$v]}" LD_PRELOAD="$WORK/segv-backtrace.so" DG_JIT_DEBUG=1 DG_JIT_PRINT_COMPILER_COMMAND=1 \
    DG_JIT_CACHE_DIR="$WORK/jit-$v" PYTHONUNBUFFERED=1 "$@" \
    timeout "$limit" "$PY" ci/deepgemm-steps.py "$s" > "$f" 2>&1
  rc=$?
  if grep -q "^STEP $s OK" "$f"; then res="ok"
  elif grep -q "^STEP $s RAISED" "$f"; then res="raised: $(sed -n "s/^STEP $s RAISED //p" "$f" | cut -c1-110)"
  elif [ $rc = 124 ]; then res="timeout ${limit}s"
  elif [ $rc -ge 128 ]; then res="died: signal $(( rc - 128 )) ($(kill -l $(( rc - 128 )) 2>/dev/null))"
  else res="exit $rc"; fi
  RES[$v/$label]="$res"
  {
    echo "=================== $v / $label: $res (rc $rc, at $(el))"
    grep -v "^Generated kernel code" "$f" | cut -c1-400 | head -n 160
    if grep -q '^\[segv-backtrace\]' "$f"; then echo "--- resolved frames"; resolve "$f"; fi
  } >> "${STEPLOG:-$LOG}"
  echo "$v/$label: $res ($(el))"
}
list_cache() { echo "--- jit cache $1 after $2:"; (cd "$WORK/jit-$1" 2>/dev/null && find . -maxdepth 3 | sort | head -n 30); }

HEAD_STEPS=(import num_sms assert meta1d meta2d)
if [ "${BUILD_RC[head]}" = 0 ]; then
  rm -rf "$WORK/jit-head"
  for s in "${HEAD_STEPS[@]}"; do run_step head "$s" "$s"; done
  list_cache head meta2d > "$OUT/cache.txt"
  run_step head meta2d meta2d-nvrtc DG_JIT_USE_NVRTC=1
  if [[ "${RES[head/meta2d]:-}" == died* ]]; then  # a recursion that overflows the stack?
    ( ulimit -s unlimited 2>/dev/null || ulimit -s 1048576; run_step head meta2d meta2d-bigstack )
  fi
  for s in cublaslt jit_gemm logits; do run_step head "$s" "$s"; done
  list_cache head logits >> "$OUT/cache.txt"
fi
if [ "${RES[head/logits]:-}" = ok ]; then
  if [ "${BUILD_RC[old]:-1}" = 0 ]; then  # the older generation's clean_logits, beside head's parity cells
    ( rm -rf "$WORK/jit-old"; export STEPLOG="$WORK/logs/variant-old.steps"; : > "$STEPLOG"
      run_step old logits logits ) &
  fi
  STEP_TIMEOUT=200 run_step head parity parity
  wait
  cat "$WORK/logs/variant-old.steps" >> "$LOG" 2>/dev/null
else
  for v in "${VARIANTS[@]:1}"; do  # in parallel: the GPU work is tiny, the time goes to imports and nvcc
    [ "${BUILD_RC[$v]}" = 0 ] || continue
    ( rm -rf "$WORK/jit-$v"; export STEPLOG="$WORK/logs/variant-$v.steps"; : > "$STEPLOG"
      for s in import meta2d logits; do run_step "$v" "$s" "$s"; done
      list_cache "$v" logits > "$WORK/logs/variant-$v.cache" ) &
  done
  wait
  for v in "${VARIANTS[@]:1}"; do
    cat "$WORK/logs/variant-$v.steps" >> "$LOG" 2>/dev/null; cat "$WORK/logs/variant-$v.cache" >> "$OUT/cache.txt" 2>/dev/null
  done
fi
while IFS= read -r line; do  # results of every step, subshells' included, from the log
  k="${line#=================== }"; k="${k%%: *}"; RES[${k// \/ //}]="${line#*: }"
done < <(grep '^=================== ' "$LOG")

# --- summary ----------------------------------------------------------------------------------------
{
  echo "# DeepGEMM diagnostic ($(el))"
  echo; sed -n '2,6p' "$OUT/env.txt"
  echo; echo "| build | built | import | num_sms | assert | meta1d | meta2d | meta2d nvrtc | cublaslt | jit_gemm | logits | parity |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
  for v in "${VARIANTS[@]}"; do
    row="| $v | rc ${BUILD_RC[$v]} |"
    for s in import num_sms assert meta1d meta2d meta2d-nvrtc cublaslt jit_gemm logits parity; do
      r="${RES[$v/$s]:-}"; r="${r%% (rc*}"; row+=" ${r:--} |"
    done
    echo "$row"
  done
  echo
  echo "meta2d with an unlimited stack (run only when meta2d died): ${RES[head/meta2d-bigstack]:-not run}"
  echo; echo "## crash frames (addr2line)"
  awk '/^=================== /{h=$0} /^--- resolved frames/{p=1; print h; n=0; next} p&&/^  /{if(n++<12)print; next} {p=0}' "$LOG" | head -n 60
  echo; echo "## logits steps"
  awk '/^=================== .* \/ logits:/{print; p=1; next} /^===================/{p=0} p&&/^   [^ ]/' "$LOG" | head -n 40
  echo; echo "## parity step"
  awk '/^=================== head \/ parity:/{print; p=1; next} /^===================/{p=0} p&&/^(   |STEP)/' "$LOG" | head -n 50
} > "$MD"
cat "$MD"
