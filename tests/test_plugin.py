"""The pytest plugin as a user meets it: installed with the package, run from a directory that is
not this checkout, with the backend given as ``--backend X`` or ``--backend=X``."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import venv
import pytest

from xdist_runs import CHECKOUT, clean_env

MY_BACKEND = textwrap.dedent('''
    from parity.backends.torch_ref import TorchBackend

    def make_backend():
        b = TorchBackend()
        b.name = "mybuild"
        return b
''')


def _quick(python, cwd) -> int:
    """Cells of one path and buffer at the quick level, as the parity that ``python`` imports in ``cwd`` has them."""
    proc = subprocess.run([python, "-c", "from parity.problem.grids import quick_cases; print(len(quick_cases()))"], cwd=cwd,
                          env=clean_env(), capture_output=True, text=True, timeout=120)
    return int(proc.stdout.strip())


def _pytest(python, cwd, *args, timeout=300):
    return subprocess.run([python, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args], cwd=cwd, env=clean_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def user_repo(tmp_path):
    repo = tmp_path / "kernel-team-repo"
    repo.mkdir()
    (repo / "my_backend.py").write_text(MY_BACKEND)
    return repo


@pytest.mark.parametrize("form", ["space", "equals"])
def test_matrix_runs_outside_the_checkout(user_repo, form):
    backend = str(user_repo / "my_backend.py")
    args = ["--backend", backend] if form == "space" else [f"--backend={backend}"]
    proc = _pytest(sys.executable, user_repo, "-m", "parity", *args, "-k", "fused-exact", "-rs")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert f"{_quick(sys.executable, user_repo)} passed" in proc.stdout.splitlines()[-1], proc.stdout[-500:]


def test_requested_backend_that_does_not_load_fails_the_matrix(user_repo):
    proc = _pytest(sys.executable, user_repo, "-m", "parity", "--backend", "no_such_pkg.mod:factory",
                   "-k", "fused-exact-B1-n1")
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "backend 'no_such_pkg.mod:factory' unavailable" in proc.stdout


def test_bad_device_is_a_usage_error(user_repo):
    proc = _pytest(sys.executable, user_repo, "-m", "parity", "--device", "tpu")
    assert proc.returncode == 4 and "--device 'tpu'" in proc.stderr


def test_the_matrix_runs_under_strict_markers_without_xdist(user_repo):
    """The plugin groups a case's cells for xdist's loadgroup; without xdist that mark is unknown."""
    backend = str(user_repo / "my_backend.py")
    proc = _pytest(sys.executable, user_repo, "-p", "no:xdist", "--strict-markers", "-m", "parity",
                   "--backend", backend, "-k", "fused-exact-B1-n1")
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-1000:]


def test_a_run_that_does_not_ask_for_the_matrix_does_not_get_it(user_repo):
    (user_repo / "test_theirs.py").write_text("def test_theirs():\n    assert 1 + 1 == 2\n")
    proc = _pytest(sys.executable, user_repo)
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1].startswith("1 passed"), proc.stdout[-500:]


@pytest.mark.slow
def test_installed_package_brings_the_plugin(tmp_path, user_repo):
    """pip install of the checkout (not editable) into a fresh environment that borrows torch and
    pytest from this one: the entry point alone must make the options and the matrix appear."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = str(env_dir / "bin" / "python")
    # a copy of the sources: building in place would leave build/ and *.egg-info in the checkout
    src = tmp_path / "src"
    shutil.copytree(CHECKOUT, src, ignore=shutil.ignore_patterns(".git", "build", "third_party", ".whl", "*.egg-info",
                                                                 ".pytest_cache", "__pycache__", "runs", "reports"))
    install = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
                              "--no-build-isolation", str(src)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    where = subprocess.run([python, "-c", "import parity; print(parity.__file__)"], cwd=user_repo,
                           capture_output=True, text=True, timeout=120)
    assert str(env_dir) in where.stdout, where.stdout + where.stderr  # the installed copy, not the checkout
    for args in (["--backend", "my_backend.py"], ["--backend=my_backend.py"]):
        proc = _pytest(python, user_repo, "-m", "parity", *args, "-k", "stage1-padded")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
        assert proc.stdout.splitlines()[-1].startswith(f"{_quick(python, user_repo)} passed"), proc.stdout[-500:]


# Records, in the process it names, whether hypothesis is imported when the terminal summary starts
# (before hypothesis' own summary hook, which imports it) and whether hypothesis' plugin is still there.
HYPOTHESIS_PROBE = textwrap.dedent('''
    import json, os, sys
    import pytest

    @pytest.hookimpl(tryfirst=True)
    def pytest_terminal_summary(config):
        me = os.environ.get("PYTEST_XDIST_WORKER", "controller" if getattr(config.option, "dist", "no") != "no"
                            else "main")
        with open(os.environ["PROBE_OUT"], "a") as f:
            f.write(json.dumps({"process": me, "imported": "hypothesis" in sys.modules,
                                "plugin": config.pluginmanager.get_plugin("hypothesispytest") is not None}) + "\\n")
''')
needs_hypothesis = pytest.mark.skipif(importlib.util.find_spec("hypothesis") is None
                                      or importlib.util.find_spec("xdist") is None,
                                      reason="hypothesis and pytest-xdist not installed")


def _probe(user_repo, tmp_path, *args):
    (user_repo / "hypothesis_probe.py").write_text(HYPOTHESIS_PROBE)
    out = tmp_path / "probe.jsonl"
    os.environ["PROBE_OUT"] = str(out)
    try:
        proc = _pytest(sys.executable, user_repo, "-p", "hypothesis_probe", "-m", "parity", "--backend", "torch",
                       "-k", "fused-exact-B1-n1", *args)
    finally:
        del os.environ["PROBE_OUT"]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return {r["process"]: r for r in map(json.loads, out.read_text().splitlines())}


@needs_hypothesis
def test_a_run_without_hypothesis_tests_does_not_import_it_at_the_end(user_repo, tmp_path):
    seen = _probe(user_repo, tmp_path)
    assert seen["main"] == {"process": "main", "imported": False, "plugin": False}


@needs_hypothesis
def test_a_run_that_used_hypothesis_keeps_its_summary(user_repo, tmp_path):
    (user_repo / "test_prop.py").write_text(textwrap.dedent('''
        import pytest
        from hypothesis import given, strategies as st

        @pytest.mark.parity
        @given(st.integers())
        def test_prop(x):
            assert x == x
    '''))
    seen = _probe(user_repo, tmp_path, "-k", "fused-exact-B1-n1 or test_prop")
    assert seen["main"] == {"process": "main", "imported": True, "plugin": True}


@needs_hypothesis
def test_xdist_controller_imports_hypothesis_while_workers_run(user_repo, tmp_path):
    seen = _probe(user_repo, tmp_path, "-n", "1")
    assert seen["controller"] == {"process": "controller", "imported": True, "plugin": True}
    assert seen["gw0"]["imported"] is False and seen["gw0"]["plugin"] is False
