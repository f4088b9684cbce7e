"""Backends that misbehave in ways a crash check keyed on the exit status would miss: each is run in its
own process beside torch, and must come out as what it did, with torch's cells kept."""
import json
import subprocess
import sys
import textwrap

import pytest

CASES = ("B1-n1-bs64-random", "B4-n1-bs1-random-mml130", "B2-n2-bs16-random-e4m3fnuz")

PLANTED = {  # name: what it does in the cells of B4 (the second case) or at import
    "exits0": "os._exit(0)",  # status 0 from inside a cell: the cells after it must not vanish
    "sysexit0": "raise SystemExit(0)",
    "float64": "return torch.zeros(out.shape, dtype=torch.float64)",  # copy_ would have cast it silently
    "unsupported_raises": None,
    "describe_raises_late": None,
    "segv_at_import": None,
    "hangs_at_import": None,
}

TEMPLATE = textwrap.dedent('''
    import os, signal, time
    import torch
    from parity.backends.torch_ref import TorchBackend
    {at_import}

    class Planted(TorchBackend):
        described = 0

        def run(self, path, inputs, out):
            if inputs.case.batch == 4:
                {in_cell}
            return super().run(path, inputs, out)

        def unsupported(self, path, inputs):
            if {unsupported_raises} and inputs.case.batch == 4:
                raise RuntimeError("planted: cannot tell")
            return super().unsupported(path, inputs)

        def describe(self):
            Planted.described += 1
            if {describe_raises} and Planted.described > 1:
                raise RuntimeError("planted: describe after the cells")
            return super().describe()

    def make_backend():
        b = Planted()
        b.name = "{name}"
        return b
''')


def _planted(tmp_path, name, action):
    at_import = {"segv_at_import": "os.kill(os.getpid(), signal.SIGSEGV)",
                 "hangs_at_import": "time.sleep(10 ** 6)"}.get(name, "")
    src = TEMPLATE.format(at_import=at_import, in_cell=action or "pass", name=name,
                          unsupported_raises=name == "unsupported_raises",
                          describe_raises=name == "describe_raises_late")
    path = tmp_path / f"{name}.py"
    path.write_text(src)
    return str(path)


def _argv(out, *extra):
    return [sys.executable, "-m", "parity", "run", "--device", "cpu", "--path", "fused", "--buffer", "exact",
            "--no-progress", "--out", str(out), *extra, *[a for case in CASES for a in ("--case", case)]]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One run of torch and every planted backend but the hanging one, and beside it one run of that
    backend alone with a short --timeout (a short one for all would race 8 processes importing torch)."""
    tmp = tmp_path_factory.mktemp("misbehaving")
    specs = {name: _planted(tmp, name, action) for name, action in PLANTED.items()}
    out, out_hang = tmp / "r.json", tmp / "hang.json"
    main = subprocess.Popen(_argv(out, "--backend", "torch", *[a for name, spec in specs.items()
                                                               if name != "hangs_at_import"
                                                               for a in ("--backend", spec)]),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    hang = subprocess.Popen(_argv(out_hang, "--timeout", "10", "--backend", specs["hangs_at_import"]),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = main.communicate(timeout=240)[0]
    hang_log = hang.communicate(timeout=240)[0]
    report = json.loads(out.read_text())
    by_name = {name: report["backends"][spec] for name, spec in specs.items() if name != "hangs_at_import"}
    by_name["hangs_at_import"] = json.loads(out_hang.read_text())["backends"][specs["hangs_at_import"]]
    cells = {}
    for r in report["results"]:
        cells.setdefault(r["backend"], {})[r["case"]["id"]] = r
    return (main.returncode, log), (hang.returncode, hang_log), by_name, cells


def test_the_runs_are_unusable_and_torch_is_kept(run):
    (code, log), (hang_code, hang_log), _, cells = run
    assert code == 2, log[-3000:]  # a backend asked for never loaded
    assert hang_code == 2, hang_log[-3000:]  # the only backend never loaded: nothing judged
    assert [cells["torch"][c]["status"] for c in CASES] == ["pass"] * 3


@pytest.mark.parametrize("name", ["exits0", "sysexit0"])
def test_a_clean_exit_inside_a_cell_is_a_crash_in_that_cell(run, name):
    _, _, info, cells = run
    assert info[name]["status"] == "crashed", info[name]
    assert info[name]["cell"] == f"{name}-fused-exact-{CASES[1]}"
    assert "exit code 0 before its run was over" in info[name]["message"]
    assert cells[name][CASES[1]]["status"] == "error"
    assert [cells[name][c]["status"] for c in (CASES[0], CASES[2])] == ["pass", "pass"]  # resumed after it


def test_an_answer_of_another_dtype_is_an_error_not_a_cast(run):
    _, _, info, cells = run
    finding = cells["float64"][CASES[1]]["findings"][0]
    assert cells["float64"][CASES[1]]["status"] == "error"
    assert "torch.float64" in finding["summary"] and "expected torch.float32" in finding["summary"]
    assert info["float64"]["status"] == "ok"


def test_unsupported_that_raises_errors_its_cell_only(run):
    _, _, info, cells = run
    assert info["unsupported_raises"]["status"] == "ok"
    assert "unsupported() raised: RuntimeError: planted: cannot tell" in \
        cells["unsupported_raises"][CASES[1]]["findings"][0]["summary"]
    assert [cells["unsupported_raises"][c]["status"] for c in (CASES[0], CASES[2])] == ["pass", "pass"]


def test_describe_that_raises_after_the_cells_is_recorded_not_a_crash(run):
    _, _, info, cells = run
    assert info["describe_raises_late"]["status"] == "ok"
    assert "planted: describe after the cells" in info["describe_raises_late"]["describe_error"]
    assert [cells["describe_raises_late"][c]["status"] for c in CASES] == ["pass"] * 3


def test_dying_or_hanging_while_loading_says_how(run):
    _, _, info, _ = run
    assert info["segv_at_import"]["status"] == "unavailable"
    assert "SIGSEGV" in info["segv_at_import"]["message"]
    assert info["hangs_at_import"]["status"] == "unavailable"
    assert info["hangs_at_import"]["message"].startswith("hung while loading")
