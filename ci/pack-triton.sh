#!/usr/bin/env bash
# A Triton wheel packed small enough to carry to a GPU machine without network, where a call carries at most
# 64 MiB (a Triton 3.9 wheel is 286 MB): libtriton.so without its debug info (477 -> 184 MB for 3.9), without
# the AMD backend, CUPTI, Proton and the disassemblers, xz-compressed (40 MB); the ptxas that Triton runs for
# sm_90 packed apart (3.9: ptxas-blackwell, CUDA 13.4, 12 MB; 3.6 and older: ptxas).
#
#   ci/pack-triton.sh WHEEL OUT_DIR      -> OUT_DIR/triton.tar.xz, OUT_DIR/ptxas.xz, OUT_DIR/ptxas.name
#
# On the GPU machine, beside the Triton installed there:
#   mkdir -p DIR && tar -xJf triton.tar.xz -C DIR
#   B=DIR/triton/backends/nvidia/bin; mkdir -p $B; xz -dc ptxas.xz > $B/$(cat ptxas.name); chmod +x $B/*
#   PYTHONPATH=DIR:$PYTHONPATH TRITON_BACKENDS_IN_TREE=1 python3 -m parity bench ...
# TRITON_BACKENDS_IN_TREE=1: the installed Triton's package metadata names an AMD backend this copy leaves out.
# The wheel's Python tag must match the machine's python3 (the H200 image: 3.12).
set -euo pipefail
[ $# -eq 2 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 2; }
WHEEL=$1 OUT_DIR=$2
[ -f "$WHEEL" ] || { echo "pack-triton: WHEEL $WHEEL is not a file" >&2; exit 2; }
mkdir -p "$OUT_DIR"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
python3 -m zipfile -e "$WHEEL" "$work"
T="$work/triton"
[ -f "$T/_C/libtriton.so" ] || { echo "pack-triton: $WHEEL holds no triton/_C/libtriton.so" >&2; exit 2; }
# which ptxas this Triton runs for sm_90 (get_ptxas in its NVIDIA backend)
if grep -q 'if arch < 90' "$T/backends/nvidia/compiler.py"; then name=ptxas-blackwell; else name=ptxas; fi
[ -f "$T/backends/nvidia/bin/$name" ] || { echo "pack-triton: no backends/nvidia/bin/$name in $WHEEL" >&2; exit 2; }
xz -T0 -9 -c "$T/backends/nvidia/bin/$name" > "$OUT_DIR/ptxas.xz"
echo "$name" > "$OUT_DIR/ptxas.name"
rm -rf "$T/backends/amd" "$T/backends/nvidia/lib/cupti" "$T/backends/nvidia/lib/cupti-blackwell" \
  "$T/backends/nvidia/bin" "$T/profiler" "$T/instrumentation" "$T"/_C/libproton*
strip --strip-unneeded "$T/_C/libtriton.so"
tar -C "$work" -cf - triton | xz -T0 -9 > "$OUT_DIR/triton.tar.xz"
ls -l "$OUT_DIR"
