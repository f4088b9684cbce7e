#!/usr/bin/env bash
# Every variant of two aiter builds, then the comparison (docs/third-party-findings.md).
#
# usage: [VARIANTS="paged ragged varctx"] ci/aiter-builds.sh OUT_DIR TREE [--level quick|full] [--device DEV]
#                                                                       [--path P]...
#   TREE   a directory containing aiter/ (e.g. a ROCm/aiter checkout); compared against the installed build,
#          or against BASE=DIR (another directory containing aiter/, e.g. an unpacked wheel) when set
# Writes OUT_DIR/{installed,tree}-VARIANT.json, OUT_DIR/diff.txt (`parity diff` of the two paged reports:
# what ci/compare-builds.sh prints, without running the builds a second time) and OUT_DIR/summary.txt.
set -uo pipefail

[[ $# -ge 2 ]] || { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
out="$1" tree="$(cd "$2" && pwd)"; shift 2
repo="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$out"
cd "$repo"
py="${PYTHON:-python}"
env_cpu=()
if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  env_cpu=(TRITON_INTERPRET=1)  # Triton must see it before it is imported
fi

declare -A factory=([paged]=aiter [ragged]=parity.backends.aiter:make_ragged_backend
                    [varctx]=parity.backends.aiter:make_varctx_backend)
for build in installed tree; do
  for variant in ${VARIANTS:-paged ragged varctx}; do
    dest="$out/$build-$variant.json"
    aiter_env=()  # installed: the package, whatever the caller's environment says
    [[ $build == installed && -n "${BASE:-}" ]] && aiter_env=(PARITY_AITER_PATH="$(cd "$BASE" && pwd)")
    [[ $build == tree ]] && aiter_env=(PARITY_AITER_PATH="$tree")
    echo "== $build $variant" >&2
    # exit 1 (cells failed) is a finding; a build without the variant leaves no results, also a finding
    env -u PARITY_AITER_PATH "${env_cpu[@]}" "${aiter_env[@]}" "$py" -m parity run --backend "${factory[$variant]}" --out "$dest" \
        --quiet --no-progress "$@" || true
  done
done

echo "== parity diff installed-paged tree-paged" >&2
"$py" -m parity diff "$out/installed-paged.json" "$out/tree-paged.json" --json "$out/diff.json" > "$out/diff.txt" 2>&1
echo "parity diff exit $?" >> "$out/diff.txt"

"$py" - "$out" > "$out/summary.txt" <<'PY'
import collections, json, pathlib, sys
out = pathlib.Path(sys.argv[1])
for f in sorted(out.glob("*-*.json")):
    r = json.loads(f.read_text())
    for spec, info in r.get("backends", {}).items():
        print(f"{f.stem}: {info.get('status')} {info.get('version', '')} {info.get('message', '')}".rstrip())
    counts = collections.Counter((x["path"], x["status"]) for x in r.get("results", []))
    for (path, status), n in sorted(counts.items()):
        print(f"  {path:10s} {status:5s} {n}")
diff = (out / "diff.txt").read_text().splitlines()
print("\n".join(line for line in diff if line.startswith(("verdict", "regressions", "fixed", "parity diff exit"))))
PY
cat "$out/summary.txt"
