# Shared by the GPU scripts (source it after setting PY). Those machines have no network.

# The matrix's pytest plugin by name where the package is on PYTHONPATH but not installed (then its
# pytest11 entry point is absent), nothing where it is installed (naming it twice would register it
# twice). Sets the array PLUGIN.
parity_plugin_args() {
  PLUGIN=()
  "$PY" -c 'import importlib.metadata as m, sys; sys.exit(0 if any(e.value == "parity.pytest_plugin"
    for e in m.entry_points(group="pytest11")) else 1)' || PLUGIN=(-p parity.pytest_plugin)
}

# ensure_xdist LOG: pytest-xdist, execnet and pytest-split from the wheels in .whl/ where they are
# missing; fails, saying how to carry them, where they cannot be installed.
ensure_xdist() {
  local missing
  missing=$("$PY" -c 'import importlib.util as u; print(" ".join(n for m, n in (("xdist", "pytest-xdist"),
    ("execnet", "execnet"), ("pytest_split", "pytest-split")) if u.find_spec(m) is None))')
  [ -z "$missing" ] && return 0
  # shellcheck disable=SC2086
  "$PY" -m pip install -q --no-index --find-links .whl $missing >> "$1" 2>&1 && return 0
  echo "cannot install $missing from .whl/ (carry it: pip download pytest-xdist execnet pytest-split -d .whl --no-deps)" \
    | tee -a "$1"
  return 1
}

# build_deepgemm SRC OUT_DIR SUMMARY: DeepGEMM from the source tree SRC with ci/build-deepgemm.sh --direct
# --std c++20 --reuse (about 60 s; none where an up-to-date build is there), its log in OUT_DIR/dg-build.txt,
# one line in SUMMARY; on success its directory is put on PYTHONPATH. Returns the build's exit status.
build_deepgemm() {
  local src="$1" out="$2" summary="$3" t0=$SECONDS rc line
  timeout 180 ci/build-deepgemm.sh "$src" --direct --std c++20 --reuse > "$out/dg-build.txt" 2>&1
  rc=$?
  line="$(tail -n 1 "$out/dg-build.txt")"
  echo "deepgemm build ($([ -e "$src/.git" ] && git -C "$src" rev-parse --short HEAD || echo "tree $src")): exit $rc" \
    "after $((SECONDS - t0)) s" | tee -a "$summary"
  [ $rc -eq 0 ] && [[ "$line" == PYTHONPATH=* ]] && export PYTHONPATH="${line#PYTHONPATH=}:$PYTHONPATH"
  return $rc
}
