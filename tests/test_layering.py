"""The package's layers (pyproject's [tool.importlinter]) and what backend authors import.

The contract is enforced by import-linter over the real tree; the planted test proves the contract
breaks when a bottom-layer module imports from the top, so a green run means something."""
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports")
    assert exe, "import-linter is a dev dependency: pip install -e '.[dev]'"
    return subprocess.run([exe, "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"})


def test_layers_kept():
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_a_bottom_layer_importing_the_runner_breaks_the_contract(tmp_path):
    for part in ("parity", "evals"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    cases = tmp_path / "parity" / "problem" / "cases.py"
    cases.write_text(cases.read_text() + "\nfrom parity.run import harness  # planted upward import\n")
    r = _lint(tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "parity.problem.cases -> parity.run.harness" in r.stdout


OLD_STYLE_BACKEND = '''
    # A backend file as the README of the flat layout described it: the old module paths.
    from parity.backends import SimpleBackend
    from parity.cases import IndexerInputs
    from parity import layouts
    from parity.backends.torch_ref import TorchBackend


    class Wrapped(SimpleBackend):
        def __init__(self):
            super().__init__(name="oldstyle", paths=("fused",), device_types=("cpu",))
            self.inner = TorchBackend()

        def run(self, path, inputs: IndexerInputs, out):
            assert layouts.fp8_dtype("e4m3fn") is not None
            self.inner.run(path, inputs, out)


    def make_backend():
        return Wrapped()
'''


def test_old_style_backend_file_still_loads_and_runs(tmp_path):
    f = tmp_path / "old_backend.py"
    f.write_text(textwrap.dedent(OLD_STYLE_BACKEND))
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, "-m", "parity", "run", "--backend", str(f), "--path", "fused",
                        "--buffer", "exact", "--in-process", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "oldstyle" in out.read_text()


def test_public_names_from_the_package_root():
    code = ("import sys, parity; assert 'torch' not in sys.modules; "
            "from parity import SimpleBackend, IndexerInputs, IndexerCase, load_backend, run_cell; "
            "import parity.problem.cases as c; assert IndexerInputs is c.IndexerInputs; "
            "import parity.cases as old; assert old is c; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
