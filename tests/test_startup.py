"""What a parity process pays before its first cell, where the GPUs do not divide it: the xdist
controller imports no torch and asks the CUDA driver about --device beside its workers' start, and
every process opens its GPU's context while torch imports (docs/scale-out.md)."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from parity.run import devices
from xdist_runs import CHECKOUT, cells_by_worker, clean_env, plugin_args


def test_the_xdist_controller_imports_no_torch_and_checks_the_device_by_the_driver(tmp_path):
    """The controller runs no cell: torch (seconds with a CUDA build) would only delay its workers."""
    (tmp_path / "controller_probe.py").write_text(textwrap.dedent('''
        import json, os, sys

        def pytest_xdist_setupnodes(config, specs):  # called in the controller only
            with open(os.environ["PROBE_OUT"], "w") as f:
                json.dump({"torch": "torch" in sys.modules}, f)
    '''))
    env = clean_env(**{devices.FAKE_ENV: "2", "PROBE_OUT": str(tmp_path / "probe.json"),
                  "PYTHONPATH": os.pathsep.join([str(tmp_path), str(CHECKOUT)])})
    cells = cells_by_worker(tmp_path, env, "-p", "controller_probe", "--backend", "torch",
                             "-k", "fused-exact and (B1-n1-bs64 or B2-n4-bs16)")
    assert len(cells) == 2
    assert json.loads((tmp_path / "probe.json").read_text()) == {"torch": False}
    bad = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *plugin_args(), "-n", "2",
                          "-m", "parity", "--device", "cuda:2"], cwd=CHECKOUT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 4 and "--device 'cuda:2': only 2 GPU(s) visible" in bad.stderr, bad.stderr[-2000:]


def test_the_controllers_driver_check_runs_while_its_workers_start(tmp_path):
    """cuInit takes the controller 0.45 s on an H100 host: the workers must not wait for it, and a
    --device it rejects must still stop the run with that message (and exit 4)."""
    (tmp_path / "slow_driver.py").write_text(textwrap.dedent('''
        import json, os, time
        import parity.pytest_plugin as plugin

        def slow_count():
            time.sleep(3.0)  # margin for a loaded 2-core machine: the workers' setup must still come first
            with open(os.environ["PROBE_OUT"] + ".driver", "w") as f:
                json.dump(time.time(), f)
            return 2

        plugin._driver_gpu_count = slow_count  # the probe loads before the parity plugin configures

        def pytest_xdist_setupnodes(config, specs):
            with open(os.environ["PROBE_OUT"] + ".spawn", "w") as f:
                json.dump(time.time(), f)
    '''))
    probe = tmp_path / "probe"
    env = clean_env(**{"PROBE_OUT": str(probe), "PYTHONPATH": os.pathsep.join([str(tmp_path), str(CHECKOUT)])})
    base = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "slow_driver", *plugin_args(),
            "-n", "2", "-m", "parity", "--backend", "torch"]
    bad = subprocess.run([*base, "--device", "cuda:2"], cwd=CHECKOUT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 4 and "--device 'cuda:2': only 2 GPU(s) visible" in bad.stderr, bad.stderr[-2000:]
    assert Path(f"{probe}.spawn").exists(), "the controller waited for the driver before it set up any worker"
    spawned = json.loads(Path(f"{probe}.spawn").read_text())
    checked = json.loads(Path(f"{probe}.driver").read_text())
    assert spawned < checked - 0.5, f"workers set up {checked - spawned:.2f} s before the driver answered"
    malformed = subprocess.run([*base, "--device", "gpu0"], cwd=CHECKOUT, env=env, capture_output=True, text=True,
                               timeout=120)
    assert malformed.returncode == 4 and "expected cpu, cuda or cuda:N" in malformed.stderr
    assert "bringing up nodes" not in malformed.stdout, "a malformed --device is refused before any worker starts"


class _FakeDriver:
    """libcuda.so.1 as ctypes sees it: records which device's primary context was retained."""

    def __init__(self, gpus: int):
        self.gpus, self.retained = gpus, []

    def cuInit(self, flags):
        return 0

    def cuDeviceGetCount(self, ref):
        ref._obj.value = self.gpus
        return 0

    def cuDeviceGet(self, ref, index):
        ref._obj.value = 100 + index  # a handle is not the index
        return 0

    def cuDevicePrimaryCtxRetain(self, ref, handle):
        self.retained.append(handle.value - 100)
        return 0


def test_each_process_opens_the_context_of_the_gpu_it_will_run_on_while_torch_imports(monkeypatch):
    import ctypes

    from parity import pytest_plugin

    driver = _FakeDriver(gpus=2)
    monkeypatch.setattr(ctypes, "CDLL", lambda name: driver)
    monkeypatch.setenv(devices.FAKE_ENV, "2")  # worker_device's count: the same two GPUs
    for worker, device, want in (("gw3", "cuda", 1), ("gw0", "cuda", 0), ("gw1", "cuda:0", 0), ("", "cuda:1", 1)):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        assert pytest_plugin._open_gpu_early(device) == want, (worker, device)
        assert devices.worker_device(device) == f"cuda:{want}", "the context opened is where the cells run"
    assert driver.retained == [1, 0, 0, 1]
    assert pytest_plugin._open_gpu_early("cuda:2") is None, "no GPU 2 of 2: left to torch to report"

    def no_driver(name):
        raise OSError("libcuda.so.1: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", no_driver)
    assert pytest_plugin._open_gpu_early("cuda") is None
