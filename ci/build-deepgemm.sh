#!/usr/bin/env bash
# Build a user's DeepGEMM source tree so that `import deep_gemm` works from it, offline.
#
#   ci/build-deepgemm.sh SRC_DIR [--cutlass DIR] [--fmt DIR] [--out DIR] [--direct] [--std c++17|c++20]
#                        [--debug] [--runtime-api] [--reuse]
#
# SRC_DIR      a deepseek-ai/DeepGEMM checkout (setup.py, csrc/python_api.cpp, deep_gemm/).
# --cutlass    NVIDIA/cutlass checkout or its include/ dir (default SRC_DIR/third-party/cutlass); only
#              include/{cute,cutlass} are used, by the host build and by the JIT at run time.
# --fmt        fmtlib/fmt checkout or its include/ dir (default SRC_DIR/third-party/fmt).
# --out DIR    build outside the tree and import from DIR/pkg (links to the sources and to this build's
#              .so: several builds of one tree side by side); default: in place, the way DeepGEMM's
#              develop.sh does it (the built _C*.so linked into SRC_DIR/deep_gemm/). Either way
#              cute/cutlass are linked into SRC_DIR/deep_gemm/include/, where the JIT looks.
# --direct     one g++ command instead of DeepGEMM's setup.py (no setuptools/wheel involved); the
#              default is DeepGEMM's own `setup.py build`.
# --std        C++ standard of the host build in --direct mode (DeepGEMM's setup.py uses c++17).
# --debug      line tables in the .so (-g1), for addr2line on a crash.
# --runtime-api  compile DeepGEMM's JIT loader against the CUDA runtime API (DG_JIT_USE_RUNTIME_API=1, a
#              build-time switch) instead of the driver API it dlopens from libcuda.so.1.
# --reuse      keep an existing build when its settings match and no source is newer than the .so.
#
# Needs torch, g++ and a CUDA toolkit (CUDA_HOME or nvcc on PATH: nvcc, cuda.h, nvrtc.h, cublasLt.h,
# libnvrtc). Installs nothing. DeepGEMM's setup.py imports `wheel`; if it is missing, a wheel file in
# REPO/.whl/ is put on PYTHONPATH for the build (get one where there is network:
# `pip download wheel --no-deps -d .whl/`), else a stub module stands in (`build` never runs bdist_wheel).
# The last line printed is `PYTHONPATH=...` to import the build with.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
die() { echo "build-deepgemm: error: $*" >&2; exit 2; }

SRC="" CUTLASS="" FMT="" OUT="" MODE=setup STD=c++17 DEBUG=0 RTAPI=0 REUSE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cutlass) CUTLASS="${2:?--cutlass needs a directory}"; shift 2 ;;
    --fmt) FMT="${2:?--fmt needs a directory}"; shift 2 ;;
    --out) OUT="${2:?--out needs a directory}"; shift 2 ;;
    --direct) MODE=direct; shift ;;
    --std) STD="${2:?--std needs c++17 or c++20}"; shift 2 ;;
    --debug) DEBUG=1; shift ;;
    --runtime-api) RTAPI=1; shift ;;
    --reuse) REUSE=1; shift ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$SRC" ] || die "one SRC_DIR only (got $SRC and $1)"; SRC="$1"; shift ;;
  esac
done
[ -n "$SRC" ] || die "usage: $0 SRC_DIR [--cutlass DIR] [--fmt DIR] [--out DIR] ... (see --help)"
[ -d "$SRC" ] || die "SRC_DIR $SRC is not a directory"
SRC="$(cd "$SRC" && pwd)"
for f in setup.py csrc/python_api.cpp deep_gemm/__init__.py deep_gemm/include/deep_gemm; do
  [ -e "$SRC/$f" ] || die "$SRC is not a DeepGEMM tree: no $f"
done
case "$STD" in c++17|c++20) ;; *) die "--std must be c++17 or c++20, got $STD" ;; esac

# An include dir holding $2 (cute / fmt): DIR itself or DIR/include.
include_dir() {
  local d="$1" probe="$2"
  if [ -e "$d/$probe" ]; then (cd "$d" && pwd); elif [ -e "$d/include/$probe" ]; then (cd "$d/include" && pwd); fi
}
CUT_INC="$(include_dir "${CUTLASS:-$SRC/third-party/cutlass}" cute/tensor.hpp)"
[ -n "$CUT_INC" ] || die "no CUTLASS headers: ${CUTLASS:-$SRC/third-party/cutlass}{,/include}/cute/tensor.hpp missing (an uninitialised submodule? pass --cutlass DIR)"
[ -e "$CUT_INC/cutlass/cutlass.h" ] || die "$CUT_INC has cute/ but no cutlass/cutlass.h"
FMT_INC="$(include_dir "${FMT:-$SRC/third-party/fmt}" fmt/format.h)"
[ -n "$FMT_INC" ] || die "no fmt headers: ${FMT:-$SRC/third-party/fmt}{,/include}/fmt/format.h missing (pass --fmt DIR)"

command -v g++ >/dev/null || die "g++ not found"
TORCH_INFO="$("$PY" - <<'EOF' 2>&1 || true
import sys, sysconfig, warnings
try:
    import torch
    from torch.utils import cpp_extension as ce
    cuda = ce.CUDA_HOME
    if not cuda:
        raise RuntimeError("torch finds no CUDA toolkit (set CUDA_HOME or put nvcc on PATH)")
    try:
        inc, lib = ce.include_paths(device_type="cuda"), ce.library_paths(device_type="cuda")
    except TypeError:  # torch < 2.6
        inc, lib = ce.include_paths(cuda=True), ce.library_paths(cuda=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        abi = getattr(ce, "_get_pybind11_abi_build_flags", lambda: [])()
except Exception as exc:
    print(f"ERROR {type(exc).__name__}: {exc}")
    sys.exit(0)
print("CUDA_HOME", cuda)
print("TORCH", torch.__version__, torch.version.cuda)
print("CXX11_ABI", int(torch.compiled_with_cxx11_abi()))
print("INC", " ".join(inc + [sysconfig.get_paths()["include"]]))
print("LIB", " ".join(lib))
print("ABIFLAGS", " ".join(abi))
print("EXT", sysconfig.get_config_var("EXT_SUFFIX"))
EOF
)"
get() { sed -n "s/^$1 //p" <<<"$TORCH_INFO" | head -n 1; }
grep -q '^CUDA_HOME ' <<<"$TORCH_INFO" \
  || die "torch with CUDA needed ($PY): $(sed -n 's/^ERROR //p' <<<"$TORCH_INFO" | grep . || tail -n 3 <<<"$TORCH_INFO")"
CUDA_HOME="${CUDA_HOME:-$(get CUDA_HOME)}"
[ -n "$CUDA_HOME" ] && [ -d "$CUDA_HOME" ] || die "no CUDA toolkit: set CUDA_HOME or put nvcc on PATH"
for f in bin/nvcc include/cuda.h include/nvrtc.h include/cublasLt.h; do
  [ -e "$CUDA_HOME/$f" ] || die "CUDA toolkit at $CUDA_HOME lacks $f (DeepGEMM compiles against it and runs nvcc at run time)"
done
ls "$CUDA_HOME"/lib64/libnvrtc.so* >/dev/null 2>&1 || die "CUDA toolkit at $CUDA_HOME lacks lib64/libnvrtc.so"
[ -x "$CUDA_HOME/bin/cuobjdump" ] || echo "build-deepgemm: warning: no $CUDA_HOME/bin/cuobjdump (DeepGEMM's JIT needs it on CUDA < 12.4 and for DG_JIT_DUMP_SASS)" >&2

# cute/ and cutlass/ where DeepGEMM's JIT looks for them (deep_gemm/include) and where setup.py does.
for d in cute cutlass; do
  [ -e "$SRC/deep_gemm/include/$d" ] || ln -sfn "$CUT_INC/$d" "$SRC/deep_gemm/include/$d"
done
if [ "$MODE" = setup ]; then
  for pair in "cutlass:$CUT_INC:cute" "fmt:$FMT_INC:fmt"; do
    IFS=: read -r name inc probe <<<"$pair"
    want="$SRC/third-party/$name/include"
    if [ ! -e "$want/$probe" ]; then
      mkdir -p "$SRC/third-party/$name"; rm -rf "$want"; ln -s "$inc" "$want"
    fi
  done
fi

BASE="${OUT:-$SRC/build}"
mkdir -p "$BASE"
BASE="$(cd "$BASE" && pwd)"
CONFIG="src=$SRC mode=$MODE std=$STD debug=$DEBUG rtapi=$RTAPI torch=$(get TORCH) cutlass=$CUT_INC fmt=$FMT_INC"
STAMP="$BASE/.deepgemm-build"
find_so() { find "$BASE" -path "*deep_gemm*" -name "_C*.so" -type f 2>/dev/null | head -n 1; }
SO="$(find_so)"
fresh=0
if [ "$REUSE" = 1 ] && [ -n "$SO" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$CONFIG" ] \
   && [ -z "$(find "$SRC/csrc" "$SRC/setup.py" -newer "$SO" -print -quit)" ]; then
  echo "build-deepgemm: reusing $SO" >&2
else
  t0=$(date +%s)
  if [ "$MODE" = setup ]; then
    extra_pp=""
    if ! "$PY" -c "import wheel.bdist_wheel" >/dev/null 2>&1; then
      whl="$(ls "$REPO"/.whl/wheel-*.whl 2>/dev/null | sort -V | tail -n 1 || true)"
      if [ -n "$whl" ] && PYTHONPATH="$whl" "$PY" -c "import wheel.bdist_wheel" >/dev/null 2>&1; then
        extra_pp="$whl"
      else
        extra_pp="$BASE/wheel-stub"  # setup.py only subclasses bdist_wheel; `build` never runs it
        mkdir -p "$extra_pp/wheel"
        : > "$extra_pp/wheel/__init__.py"
        printf 'try:\n    from setuptools.command.bdist_wheel import bdist_wheel\nexcept ImportError:\n    from setuptools import Command as bdist_wheel\n' > "$extra_pp/wheel/bdist_wheel.py"
        echo "build-deepgemm: no 'wheel' package (nor .whl/wheel-*.whl): using a stub for setup.py's import" >&2
      fi
    fi
    envs=(DG_USE_LOCAL_VERSION=0 "DG_JIT_USE_RUNTIME_API=$RTAPI" "CUDA_HOME=$CUDA_HOME"
          "PYTHONPATH=${extra_pp}${PYTHONPATH:+${extra_pp:+:}$PYTHONPATH}")
    [ "$DEBUG" = 1 ] && envs+=("CFLAGS=${CFLAGS:-} -g1")  # distutils adds CFLAGS to every compile
    (cd "$SRC" && env "${envs[@]}" "$PY" setup.py build --build-base "$BASE") >&2 \
      || die "DeepGEMM's setup.py build failed (output above)"
  else
    so="$BASE/direct/deep_gemm/_C$(get EXT)"
    mkdir -p "$(dirname "$so")"
    flags=(-shared -fPIC -O3 "-std=$STD" -Wno-psabi -Wno-deprecated-declarations
           -DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME=_C "-D_GLIBCXX_USE_CXX11_ABI=$(get CXX11_ABI)")
    [ "$RTAPI" = 1 ] && flags+=(-DDG_JIT_USE_RUNTIME_API)
    [ "$DEBUG" = 1 ] && flags+=(-g1)
    read -r -a abi <<<"$(get ABIFLAGS)"
    incs=("$CUDA_HOME/include" "$CUDA_HOME/include/cccl" "$SRC/deep_gemm/include" "$CUT_INC" "$FMT_INC")
    read -r -a tinc <<<"$(get INC)"
    read -r -a tlib <<<"$(get LIB)"
    cmd=(g++ "${flags[@]}" "${abi[@]}" "${incs[@]/#/-I}" "${tinc[@]/#/-I}" "$SRC/csrc/python_api.cpp"
         "${tlib[@]/#/-L}" "-L$CUDA_HOME/lib64" -lc10 -ltorch -ltorch_cpu -ltorch_python -lc10_cuda -ltorch_cuda
         -lcudart -lnvrtc -o "$so")
    echo "build-deepgemm: ${cmd[*]}" >&2
    "${cmd[@]}" >&2 || die "g++ failed (output above)"
  fi
  echo "$CONFIG" > "$STAMP"
  echo "build-deepgemm: built in $(( $(date +%s) - t0 )) s ($CONFIG)" >&2
fi
SO="$(find_so)"
[ -n "$SO" ] || die "no _C*.so under $BASE after the build"

# Where the package is imported from.
if [ -z "$OUT" ]; then
  for old in "$SRC"/deep_gemm/_C*.so; do [ -L "$old" ] && rm -f "$old"; done
  [ -e "$SRC/deep_gemm/$(basename "$SO")" ] && die "$SRC/deep_gemm/$(basename "$SO") exists and is not a link; remove it"
  ln -s "$SO" "$SRC/deep_gemm/$(basename "$SO")"
  PP="$SRC"
else  # the sources as they are (develop.sh style), beside this build's .so
  PKG="$BASE/pkg/deep_gemm"
  rm -rf "$BASE/pkg"; mkdir -p "$BASE/pkg"
  cp -rs "$SRC/deep_gemm" "$PKG"  # a tree of links to the sources
  rm -f "$PKG"/_C*.so; ln -s "$SO" "$PKG/$(basename "$SO")"
  PP="$BASE/pkg"
fi
echo "build-deepgemm: import with PYTHONPATH=$PP (DeepGEMM JIT-compiles kernels on first use: set DG_JIT_CACHE_DIR to keep them)" >&2
echo "PYTHONPATH=$PP"
