"""Kernels compiled before the first cell (parity.run.harness.precompile) are the ones the cells launch: the
precompile hook sees, for every cell, the arguments run_cell passes (on a GPU that means the same Triton
specialization, so no cell compiles again: the gpu test counts compiles)."""
import pytest

pytest.importorskip("triton.runtime._async_compile")
import torch  # noqa: E402

from parity.run import harness  # noqa: E402
from parity.backends.torch_ref import TorchBackend  # noqa: E402
from parity.problem.grids import cases_for_level  # noqa: E402
from logging_backend import write_logging_backend  # noqa: E402


def _launch(path, inputs, out):
    return (path, inputs.case.id, tuple(out.shape), out.stride(), out.dtype, out.data_ptr() % 16, inputs.max_model_len,
            tuple(inputs.block_tables.shape), inputs.kv_cache_preshuffled is not None)


class Spy(TorchBackend):
    def __init__(self, fail_path=None):
        super().__init__()
        self.fail_path = fail_path
        self.compiled, self.launched = [], []

    def precompile(self, path, inputs, out):
        if path == self.fail_path:
            raise RuntimeError("compile failed")
        self.compiled.append(_launch(path, inputs, out))

    def run(self, path, inputs, out):
        self.launched.append(_launch(path, inputs, out))
        return super().run(path, inputs, out)


def _cells():
    cases = [c for c in cases_for_level("quick") if c.heads <= 16][:4]
    return [(p, b, c) for c in cases for p in ("stage1", "fused", "preshuffle") for b in ("exact", "padded")]


def test_precompile_sees_each_cell_launch_exactly_as_run_cell_makes_it():
    spy, cells = Spy(), _cells()
    submitted = harness.precompile(spy, cells, "cpu", threads=2)
    for path, buf, case in cells:
        harness.run_cell(spy, path, buf, case, "cpu", repeats=1)
    assert submitted == len(spy.compiled) > 0
    assert set(spy.compiled) == set(spy.launched), set(spy.compiled) ^ set(spy.launched)


class SpyWithVariants(Spy):
    def variant(self, path, inputs, out):  # kernels differ by path and row pitch here, not by case
        return path, out.stride()


def test_workers_sharing_a_cache_compile_each_kernel_once_between_them():
    cells = _cells()
    workers = [SpyWithVariants() for _ in range(2)]
    counts = [harness.precompile(w, cells, "cpu", threads=2, share=(k, 2)) for k, w in enumerate(workers)]
    mine = [{(c[0], c[3]) for c in w.compiled} for w in workers]
    every = mine[0] | mine[1]
    assert counts == [len(w.compiled) for w in workers] and all(counts)
    assert abs(counts[0] - counts[1]) <= 1, f"uneven shares {counts}"
    assert len(workers[0].compiled) + len(workers[1].compiled) == len(every), "a kernel compiled twice"
    alone = SpyWithVariants()
    harness.precompile(alone, cells, "cpu", threads=2)
    assert {(c[0], c[3]) for c in alone.compiled} == every and len(alone.compiled) == len(every) < len(cells)


def test_a_failing_precompile_is_left_to_its_cell():
    spy = Spy(fail_path="fused")
    submitted = harness.precompile(spy, _cells(), "cpu", threads=2)
    assert submitted == len(spy.compiled) > 0
    assert {c[0] for c in spy.compiled} == {"stage1", "preshuffle"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_after_precompile_no_cell_compiles_a_kernel(tmp_path, monkeypatch):
    import triton

    from parity.backends.triton_kernels import make_backend

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))  # cold: every kernel is compiled in this test
    compiles = []
    monkeypatch.setattr(triton.knobs.compilation, "listener", lambda **kw: compiles.append(kw.get("cache_hit")))
    backend, cells = make_backend(), [(p, b, c) for c in cases_for_level("full")[:12]
                                      for p in ("stage1", "fused", "preshuffle") for b in ("exact", "padded")]
    # Two halves, as two xdist workers split them: together they leave no kernel to compile in a cell.
    submitted = sum(harness.precompile(backend, cells, "cuda", threads=8, share=(k, 2)) for k in range(2))
    before = len(compiles)
    results = [harness.run_cell(backend, p, b, c, "cuda", repeats=1) for p, b, c in cells]
    assert submitted > 0 and before > 0
    assert len(compiles) == before, f"{len(compiles) - before} kernels compiled again inside the cells"
    assert all(r["status"] in ("pass", "skip") for r in results), [r["id"] for r in results if r["status"] not in
                                                                   ("pass", "skip")]


def test_the_cli_child_precompiles_its_cells_before_the_first(tmp_path, monkeypatch):
    """``parity run`` on a (stand-in) GPU: the child process hands its cells to the precompile hook first."""
    import json

    from parity.run import devices
    from parity.cli import main

    log = tmp_path / "events.txt"
    backend = write_logging_backend(tmp_path / "logged.py", log, "run {path}", "compile {path}")
    monkeypatch.setenv(devices.FAKE_ENV, "1")
    out = tmp_path / "r.json"
    code = main(["run", "--backend", str(backend), "--device", "cuda", "--path", "fused", "--buffer", "exact",
                 "--shard", "1/8", "--out", str(out), "--no-progress", "--quiet"])
    events = log.read_text().split("\n")[:-1]
    ran = sum(r["status"] != "skip" for r in json.loads(out.read_text())["results"])
    assert code == 0 and ran > 0
    assert events == ["compile fused"] * ran + ["run fused"] * (2 * ran), events


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_the_pytest_plugin_precompiles_the_collected_cells_before_the_first(tmp_path, xdist):
    """In each process that runs cells (xdist workers too: their own hook runs the test loop, so the
    precompile must come before it, at the end of collection)."""
    import collections
    import os
    import subprocess
    import sys
    from pathlib import Path

    from parity.run import devices

    log = tmp_path / "events.txt"
    backend = write_logging_backend(tmp_path / "logged.py", log, "{os.getpid()} run {inputs.case.id}",
                                    "{os.getpid()} compile {inputs.case.id}")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}, devices.FAKE_ENV: "2"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-m", "parity", *xdist,
                           "--device", "cuda", f"--backend={backend}", "-k", "fused-exact and (B1-n1 or B2-n4)"],
                          cwd=Path(__file__).resolve().parent.parent, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    by_pid = collections.defaultdict(list)
    for line in log.read_text().splitlines():
        pid, what, case = line.split()
        by_pid[pid].append((what, case))
    assert len(by_pid) == (2 if xdist else 1), dict(by_pid)
    for events in by_pid.values():
        compiled = [c for w, c in events if w == "compile"]
        ran = [c for w, c in events if w == "run"]
        assert ran and set(ran) <= set(compiled) and events[:len(compiled)] == [("compile", c) for c in compiled]
