#!/usr/bin/env bash
# Is aiter build B at least as good as build A? Runs the parity suite's aiter backend once per build
# and prints `python -m parity diff A.json B.json`. Exit code: 0 B is at least as good, 1 B regressed,
# 2 unusable (a build did not load, crashed, hung or judged nothing; or bad arguments).
#
# usage: ci/compare-builds.sh [--level quick|full] [--device DEV] [--out-dir DIR] [--path P]... A B
#
# A and B each name a build, as one of:
#   installed      the aiter package installed for this repository's python
#   DIR            a directory containing aiter/ (a source tree, an unpacked wheel, a site-packages,
#                  or a copy made by ci/aiter-fixed-build.py): run with --aiter-path DIR
#   VENV           a virtual environment (VENV/bin/python) with amd-aiter and this project installed
#   PYTHON         a Python executable of such an environment
# Reports land in --out-dir (default: a temporary directory) as A.json and B.json.
set -euo pipefail

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

repo="$(cd "$(dirname "$0")/.." && pwd)"
here_python="${PYTHON:-python}"
level=quick device="" out_dir="" extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --level) level="$2"; shift 2 ;;
    --device) device="$2"; shift 2 ;;
    --out-dir) out_dir="$2"; shift 2 ;;
    --path|--buffer) extra+=("$1" "$2"); shift 2 ;;
    -h|--help) usage ;;
    --*) echo "compare-builds: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[[ $# -eq 2 ]] || { echo "compare-builds: need exactly two builds, A and B (got $#)" >&2; usage; }
[[ -n "$out_dir" ]] || out_dir="$(mktemp -d -t parity-compare.XXXXXX)"
mkdir -p "$out_dir"
[[ -n "$device" ]] && extra+=(--device "$device")

# build spec -> "python|aiter_path" (aiter_path empty: the python's installed package)
resolve() {
  local spec="$1"
  if [[ "$spec" == installed ]]; then echo "$here_python|"
  elif [[ -d "$spec/aiter" ]]; then echo "$here_python|$(cd "$spec" && pwd)"
  elif [[ -x "$spec/bin/python" ]]; then echo "$spec/bin/python|"
  elif [[ -f "$spec" && -x "$spec" ]]; then echo "$spec|"
  else
    echo "compare-builds: build '$spec' is neither 'installed', a directory containing aiter/, a virtual" \
         "environment (bin/python) nor a Python executable" >&2
    return 2
  fi
}

run_one() {  # label spec
  local label="$1" spec="$2" resolved py tree
  resolved="$(resolve "$spec")" || exit 2
  py="${resolved%%|*}" tree="${resolved#*|}"
  local cmd=("$py" -m parity run --backend aiter --level "$level" --out "$out_dir/$label.json" --quiet
             --no-progress "${extra[@]}")
  [[ -n "$tree" ]] && cmd+=(--aiter-path "$tree")
  # Without a GPU, Triton kernels run only interpreted, and Triton must see the switch before import.
  if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    cmd=(env TRITON_INTERPRET=1 "${cmd[@]}")
  fi
  echo "== build $label: $spec" >&2
  echo "   ${cmd[*]}" >&2
  # `parity run` exits 1 when cells fail (a finding about the build) and 2 when the build could not
  # be judged; either way the diff below decides, from both reports (it says UNUSABLE for the latter).
  (cd "$repo" && "${cmd[@]}") || true
  if [[ ! -s "$out_dir/$label.json" ]]; then
    echo "compare-builds: build $label ($spec) produced no report" >&2
    exit 2
  fi
  "$here_python" - "$out_dir/$label.json" <<'PY' >&2
import json, sys
r = json.load(open(sys.argv[1]))
info = r["backends"].get("aiter", {})
if info.get("status") == "ok":
    print(f"   aiter {info.get('version')} from {info.get('origin')}: loaded")
else:
    print(f"   aiter build not judged ({info.get('status', 'absent from the report')}): {info.get('message', '')}")
PY
}

run_one A "$1"
run_one B "$2"
cd "$repo"
exec "$here_python" -m parity diff "$out_dir/A.json" "$out_dir/B.json" --json "$out_dir/diff.json"
