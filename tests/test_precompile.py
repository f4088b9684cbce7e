"""Kernels compiled before the first cell (parity.harness.precompile) are the ones the cells launch: the
precompile hook sees, for every cell, the arguments run_cell passes (on a GPU that means the same Triton
specialization, so no cell compiles again: the gpu test counts compiles)."""
import pytest

pytest.importorskip("triton.runtime._async_compile")
import torch  # noqa: E402

from parity import harness  # noqa: E402
from parity.backends.torch_ref import TorchBackend  # noqa: E402
from parity.grids import cases_for_level  # noqa: E402


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
    submitted = harness.precompile(backend, cells, "cuda", threads=8)
    before = len(compiles)
    results = [harness.run_cell(backend, p, b, c, "cuda", repeats=1) for p, b, c in cells]
    assert submitted > 0 and before > 0
    assert len(compiles) == before, f"{len(compiles) - before} kernels compiled again inside the cells"
    assert all(r["status"] in ("pass", "skip") for r in results), [r["id"] for r in results if r["status"] not in
                                                                   ("pass", "skip")]


def test_the_cli_child_precompiles_its_cells_before_the_first(tmp_path, monkeypatch):
    """``parity run`` on a (stand-in) GPU: the child process hands its cells to the precompile hook first."""
    import json
    import textwrap

    from parity import devices
    from parity.cli import main

    log = tmp_path / "events.txt"
    backend = tmp_path / "logged.py"
    backend.write_text(textwrap.dedent(f'''
        from parity.backends.torch_ref import TorchBackend

        class Logged(TorchBackend):
            def precompile(self, path, inputs, out):
                open({str(log)!r}, "a").write("compile " + path + "\\n")

            def run(self, path, inputs, out):
                open({str(log)!r}, "a").write("run " + path + "\\n")
                return super().run(path, inputs, out)

        def make_backend():
            b = Logged()
            b.name = "logged"
            return b
    '''))
    monkeypatch.setenv(devices.FAKE_ENV, "1")
    out = tmp_path / "r.json"
    code = main(["run", "--backend", str(backend), "--device", "cuda", "--path", "fused", "--buffer", "exact",
                 "--shard", "1/8", "--out", str(out), "--no-progress", "--quiet"])
    events = log.read_text().split("\n")[:-1]
    ran = sum(r["status"] != "skip" for r in json.loads(out.read_text())["results"])
    assert code == 0 and ran > 0
    assert events == ["compile fused"] * ran + ["run fused"] * (2 * ran), events


def test_the_pytest_plugin_precompiles_the_collected_cells_before_the_first(tmp_path):
    import os
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    from parity import devices

    log = tmp_path / "events.txt"
    backend = tmp_path / "logged.py"
    backend.write_text(textwrap.dedent(f'''
        from parity.backends.torch_ref import TorchBackend

        class Logged(TorchBackend):
            def precompile(self, path, inputs, out):
                open({str(log)!r}, "a").write("compile " + inputs.case.id + "\\n")

            def run(self, path, inputs, out):
                open({str(log)!r}, "a").write("run " + inputs.case.id + "\\n")
                return super().run(path, inputs, out)

        def make_backend():
            return Logged()
    '''))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}, devices.FAKE_ENV: "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-m", "parity",
                           "--device", "cuda", f"--backend={backend}", "-k", "fused-exact and B1-n1"],
                          cwd=Path(__file__).resolve().parent.parent, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    events = log.read_text().split("\n")[:-1]
    cases = sorted({e.split()[1] for e in events})
    assert cases and events == [f"compile {c}" for c in cases] + [f"run {c}" for c in cases for _ in range(2)], events
