"""Scaling out: each xdist worker on its own GPU, the CLI over the GPUs of a host, and the float64
reference computed once per case and shared on disk (shards over machines: test_shards.py).

Without GPUs the device tests run on stand-in GPUs (``PARITY_FAKE_GPUS``, see parity.run.devices): what
they prove is the plumbing (worker -> device, the device current at each launch); the ``gpu``
variants prove the same on real GPUs and skip without two."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from parity.run import devices, harness, shards

from parity.problem import refcache
from parity.problem.cases import IndexerCase
from parity.problem.grids import cases_for_level
from parity.cli import main
from logging_backend import write_logging_backend
from xdist_runs import CHECKOUT, cells_by_worker, clean_env, plugin_args

two_gpus = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                              reason="needs two GPUs")


# --- each worker on its own device -------------------------------------------------------------

def _assert_each_worker_on_its_own_device(cells, output_device):
    workers = {c["worker"] for c in cells}
    assert workers == {"gw0", "gw1"}, f"both workers must run cells, got {workers}"
    for c in cells:
        want = f"cuda:{int(c['worker'][2:])}"
        assert c["device"] == want, c
        assert c["worker_current"] == want, f"worker {c['worker']} not pinned to {want} between cells"
        assert c["ran_on_current"] == want, f"{c['id']} launched with {c['ran_on_current']} current, not {want}"
        assert c["ran_on_output"] == output_device(want), c


def test_each_xdist_worker_launches_on_its_own_stand_in_gpu(tmp_path):
    """Two workers, two (stand-in) GPUs: every cell launched with its worker's GPU current."""
    cells = cells_by_worker(tmp_path, clean_env(**{devices.FAKE_ENV: "2"}), "--backend", "torch",
                             "-k", "fused-exact and (B1-n1-bs64 or B4-n1-bs1 or B2-n4-bs16 or B3-n4-bs64)")
    assert len(cells) == 4
    _assert_each_worker_on_its_own_device(cells, lambda want: "cpu")


@pytest.mark.gpu
@two_gpus
def test_each_xdist_worker_launches_on_its_own_gpu(tmp_path):
    cells = cells_by_worker(tmp_path, clean_env(), "--backend", "torch", "--backend", "triton", "-k", "exact")
    _assert_each_worker_on_its_own_device(cells, lambda want: want)


def test_a_cell_on_an_explicit_device_launches_with_that_device_current(monkeypatch):
    monkeypatch.setenv(devices.FAKE_ENV, "3")
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw4")
    assert devices.worker_device("cuda") == "cuda:1" and devices.worker_device("cuda:2") == "cuda:2"
    assert devices.worker_device("cpu") == "cpu"
    seen = []

    class Spy:
        name = "spy"

        def run(self, path, inputs, out):
            seen.append(devices.current_device("cuda"))

    devices.pin("cuda:1")
    probe = devices.OnDevice(Spy(), "cuda:2")
    probe.run("fused", None, torch.empty(1))
    assert seen == ["cuda:2"] and probe.ran_on() == {"current": ["cuda:2"], "output": ["cpu"]}
    assert devices.current_device("cuda") == "cuda:1", "the worker's own device is current again after the cell"


def test_loadgroup_keeps_the_cells_of_a_case_in_one_worker(tmp_path):
    """A case's reference and kernels are built once, by the one worker that runs all of its cells."""
    cells = cells_by_worker(tmp_path, clean_env(**{devices.FAKE_ENV: "2"}), "--backend", "torch", "--dist", "loadgroup",
                            "-k", "B1-n1-bs64 or B2-n4-bs16 or B4-n1-bs1 or B3-n4-bs64")
    workers_of: dict[str, set] = {}
    for c in cells:
        case = c["id"].split("[", 1)[1].split("-", 3)[3]  # test_parity[torch-fused-exact-<case>]
        workers_of.setdefault(case, set()).add(c["worker"])
    assert len(workers_of) == 4 and len(cells) > 12, (len(workers_of), len(cells))
    assert all(len(w) == 1 for w in workers_of.values()), workers_of


def test_n_auto_gives_a_gpu_matrix_run_a_worker_per_gpu(tmp_path):
    """xdist's ``-n auto`` is a worker per core; on a GPU host that is many processes per GPU."""
    (tmp_path / "workers_probe.py").write_text(textwrap.dedent('''
        import json, os
        import pytest

        def pytest_xdist_setupnodes(config, specs):  # the count is all this test needs: start none
            with open(os.environ["PROBE_OUT"], "a") as f:
                f.write(json.dumps(len(specs)) + "\\n")
            pytest.exit("workers counted", returncode=0)
    '''))
    probe = tmp_path / "workers.jsonl"
    env = clean_env(PROBE_OUT=str(probe), PYTHONPATH=os.pathsep.join([str(tmp_path), str(CHECKOUT)]),
                    **{devices.FAKE_ENV: "3"})
    base = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "workers_probe", *plugin_args(), "-q",
            "-n", "auto", "-m", "parity", "--backend", "torch", "-k", "fused-exact-B1-n1-bs64-random"]
    for device in (["--device", "cuda"], [], ["--device", "cuda:0", "--device", "cuda:2"], ["--device", "cpu"]):
        proc = subprocess.run([*base, *device], cwd=CHECKOUT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    import types
    from xdist.plugin import pytest_xdist_auto_num_workers as xdist_auto

    cores = xdist_auto(types.SimpleNamespace(option=types.SimpleNamespace(numprocesses="auto")))
    seen = [json.loads(line) for line in probe.read_text().splitlines()]
    assert seen == [3, 3, 2, cores], "a worker per stand-in GPU, per named GPU; a CPU run keeps one per core"


def test_the_processes_of_a_host_share_its_cores_up_to_the_thread_cap(monkeypatch):
    monkeypatch.delenv(devices.THREADS_ENV, raising=False)
    for cores, share, want in ((64, 1, 8), (64, 8, 8), (64, 16, 4), (32, 2, 8), (16, 1, 8), (2, 1, 2), (2, 4, 1)):
        monkeypatch.setattr(os, "cpu_count", lambda: cores)
        assert devices.cpu_threads(share) == want, (cores, share)
    monkeypatch.setenv(devices.THREADS_ENV, "40")
    assert devices.cpu_threads(4) == 40, "the variable overrides the split and the cap"
    monkeypatch.setenv(devices.THREADS_ENV, "0")
    with pytest.raises(ValueError, match="PARITY_CPU_THREADS must be a positive number of threads, got '0'"):
        devices.cpu_threads()


def test_a_bad_thread_count_is_a_usage_error_of_pytest_and_of_the_cli(tmp_path):
    env = clean_env(**{devices.THREADS_ENV: "many"})
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *plugin_args(), "-m", "parity",
                           "--device", "cpu", "-k", "B1-n1"], cwd=CHECKOUT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 4 and "PARITY_CPU_THREADS must be a positive number" in proc.stderr, proc.stderr[-1500:]
    cli = subprocess.run([sys.executable, "-m", "parity", "run", "--backend", "torch", "--device", "cpu",
                          "--out", str(tmp_path / "r.json")], cwd=CHECKOUT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert cli.returncode == 2 and "PARITY_CPU_THREADS must be a positive number" in cli.stderr + cli.stdout


def test_a_matrix_process_runs_torch_on_the_capped_thread_count(tmp_path):
    (tmp_path / "threads_probe.py").write_text(textwrap.dedent('''
        import json, os
        import torch

        def pytest_collection_finish(session):
            with open(os.environ["PROBE_OUT"], "w") as f:
                json.dump(torch.get_num_threads(), f)
    '''))
    probe = tmp_path / "threads.json"
    env = clean_env(PROBE_OUT=str(probe), PYTHONPATH=os.pathsep.join([str(tmp_path), str(CHECKOUT)]),
                    **{devices.THREADS_ENV: "3"})
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "threads_probe",
                           *plugin_args(), "-m", "parity", "--device", "cpu", "--backend", "torch", "--co", "-q"],
                          cwd=CHECKOUT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-1500:]
    assert json.loads(probe.read_text()) == 3


# --- the CLI over the GPUs of a host -----------------------------------------------------------

def _run_cli(tmp_path, name, *args):
    out = tmp_path / f"{name}.json"
    code = main(["run", "--out", str(out), "--no-progress", "--quiet", *args])
    return code, json.loads(out.read_text())


def test_cli_children_on_several_gpus_share_the_cores(tmp_path, monkeypatch):
    """One child per GPU: each gets its share of the host's cores for torch's CPU threads (the float64
    reference, the checks), not torch's default of every core, which several children oversubscribe."""
    monkeypatch.setenv(devices.FAKE_ENV, "2")
    log = tmp_path / "threads.txt"
    backend = write_logging_backend(tmp_path / "counts_threads.py", log, "{torch.get_num_threads()}")
    code, report = _run_cli(tmp_path, "threads", "--device", "cuda", "--backend", str(backend), "--path", "fused",
                            "--buffer", "exact", "--shard", "1/4")
    assert code == 0 and {r["device"] for r in report["results"]} == {"cuda:0", "cuda:1"}
    assert set(log.read_text().split()) == {str(devices.cpu_threads(2))}
    assert devices.cpu_threads(2) < (os.cpu_count() or 1) or os.cpu_count() == 1, "never a thread per core"


def test_cli_spreads_a_backend_over_the_gpus_and_a_crash_on_one_keeps_the_others(tmp_path, monkeypatch):
    """Two (stand-in) GPUs, one child process each, whole cases each; the backend aborts in one case:
    that GPU's process is reported crashed with its cell, a fresh one resumes after it, and every cell
    of the other GPU is kept."""
    monkeypatch.setenv(devices.FAKE_ENV, "2")
    cases = cases_for_level("quick")
    victim = cases[5].id
    backend = tmp_path / "dies_on_one_case.py"
    backend.write_text(textwrap.dedent(f'''
        import os
        from parity.backends.torch_ref import TorchBackend

        class DiesOnOneCase(TorchBackend):
            def run(self, path, inputs, out):
                if inputs.case.id == {victim!r}:
                    os.abort()
                return super().run(path, inputs, out)

        def make_backend():
            return DiesOnOneCase()
    '''))
    code, report = _run_cli(tmp_path, "crash", "--device", "cuda", "--backend", str(backend), "--path", "fused",
                            "--buffer", "exact")
    info = report["backends"][str(backend)]
    assert code == 1 and info["status"] == "crashed"
    assert info["cell"] == f"torch-fused-exact-{victim}" and "SIGABRT" in info["message"]
    crashed_gpu = info["message"].split(": ")[0]
    assert crashed_gpu in ("cuda:0", "cuda:1"), info["message"]
    ran = {}
    for r in report["results"]:
        if r["case"]["id"] == victim:
            assert r["status"] == "error" and "SIGABRT" in r["findings"][0]["summary"], r
            continue
        assert r["status"] == "pass" and r["ran_on"]["current"] == [r["device"]], r["id"]
        ran.setdefault(r["device"], []).append(r["case"]["id"])
    # The split is whole cases: the crashed GPU's cases up to the victim, and the other GPU's all.
    from parity.run.runner import _case_weight

    parts = [[c.id for _, _, c in part] for part in
             shards.split_by_case([("fused", "exact", c) for c in cases], _case_weight, 2)]
    assert sorted(parts[0] + parts[1]) == sorted(c.id for c in cases) and all(parts)
    doomed = parts[0] if victim in parts[0] else parts[1]
    other = "cuda:1" if crashed_gpu == "cuda:0" else "cuda:0"
    assert ran.get(crashed_gpu, []) == [c for c in doomed if c != victim]  # resumed after the crash
    assert sorted(ran[other]) == sorted(parts[1] if doomed is parts[0] else parts[0])


# --- the reference, once per case --------------------------------------------------------------

def test_reference_is_computed_once_per_case_and_shared_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv(refcache.ENV, str(tmp_path))
    calls = []
    real = harness.reference_head_logits
    monkeypatch.setattr(harness, "reference_head_logits", lambda *a, **k: calls.append(1) or real(*a, **k))
    case = IndexerCase(batch=2, next_n=2, max_model_len=200)
    harness._reference.cache_clear()
    first = harness._reference(case)
    harness._reference.cache_clear()  # another process: nothing in memory, the file on disk
    again = harness._reference(case)
    assert len(calls) == 2, "heads and magnitudes, computed once"
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    inp = harness.build_inputs(case, "cpu")
    assert torch.equal(first[0], real(inp)), "what the cache returns is the float64 reference itself"
    files = list(tmp_path.glob("ref-*/*.pt"))
    assert len(files) == 1 and not list(tmp_path.glob("ref-*/.tmp-*"))
    harness._reference.cache_clear()
    harness._reference(IndexerCase(batch=2, next_n=2, max_model_len=200, seed=3))
    assert len(list(tmp_path.glob("ref-*/*.pt"))) == 2, "keyed by every field of the case"
    harness._reference.cache_clear()


def test_a_damaged_cache_file_is_recomputed_not_trusted(tmp_path, monkeypatch):
    monkeypatch.setenv(refcache.ENV, str(tmp_path))
    case = IndexerCase(batch=1, next_n=1, max_model_len=100)
    compute = lambda c: {"x": torch.arange(3.0)}  # noqa: E731
    refcache.cached(case, compute)
    (path,) = tmp_path.glob("ref-*/*.pt")
    path.write_bytes(b"not a tensor file")
    assert torch.equal(refcache.cached(case, compute)["x"], torch.arange(3.0))
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.arange(3.0)), "rewritten"


def test_a_change_to_the_code_starts_a_new_cache_version(tmp_path, monkeypatch):
    monkeypatch.setenv(refcache.ENV, str(tmp_path))
    case = IndexerCase(batch=1, next_n=1, max_model_len=100)

    def one(c):
        return {"x": torch.ones(1)}

    def two(c):
        return {"x": torch.ones(1) * 2}

    assert refcache.cached(case, one)["x"].item() == 1 and refcache.cached(case, two)["x"].item() == 2
    assert len(list(tmp_path.glob("ref-*"))) == 2
    monkeypatch.setenv(refcache.ENV, "off")
    assert refcache.cache_root() is None and refcache.cached(case, two)["x"].item() == 2
