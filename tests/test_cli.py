"""The CLI: JSON report, user backends from a file, crash/hang isolation, and the build diff."""
import json
import subprocess
import sys
import textwrap

import pytest

from parity.cli import main
from parity.problem.grids import quick_cases

USER_BACKEND = textwrap.dedent('''
    from parity.backends.faults import UnmaskedChunkStore
    from parity.backends.torch_ref import TorchBackend

    def make_backend():
        b = {cls}()
        b.name = "mybuild"
        return b
''')


def _user_backend(tmp_path, cls, name):
    path = tmp_path / f"{name}.py"
    path.write_text(USER_BACKEND.format(cls=cls))
    return str(path)


def _run(tmp_path, backend, name, *extra):
    out = tmp_path / f"{name}.json"
    code = main(["run", "--in-process", "--backend", backend, "--path", "fused", "--out", str(out),
                 "--no-progress", *extra])
    return code, json.loads(out.read_text())


def test_run_writes_report_with_versions_and_findings(tmp_path, capsys):
    code, report = _run(tmp_path, "torch", "torch")
    assert code == 0
    assert report["environment"]["torch"] and report["backends"]["torch"]["status"] == "ok"
    assert len(report["results"]) == 2 * len(quick_cases()) and all(r["status"] == "pass" for r in report["results"])
    checks = {f["check"] for f in report["results"][0]["findings"]}
    assert checks == {"oob", "mask", "values", "topk", "determinism", "inputs"}
    assert f"| torch | fused | exact | {len(quick_cases())} | 0 |" in capsys.readouterr().out


def test_user_backend_file_and_build_diff(tmp_path, capsys):
    good = _user_backend(tmp_path, "TorchBackend", "good")
    bad = _user_backend(tmp_path, "UnmaskedChunkStore", "bad")
    code_a, a = _run(tmp_path, good, "a")
    code_b, b = _run(tmp_path, bad, "b")
    assert code_a == 0 and code_b == 1
    assert {r["backend"] for r in a["results"]} == {"mybuild"} == {r["backend"] for r in b["results"]}
    capsys.readouterr()
    assert main(["diff", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 1
    text = capsys.readouterr().out
    assert "verdict: REGRESSION" in text and "mybuild-fused-exact-B3-n2-bs64-ctx_eq_max: pass -> fail" in text
    assert "changed overshoot (cols)" in text
    assert main(["diff", str(tmp_path / "b.json"), str(tmp_path / "a.json")]) == 0
    assert "fixed (B better)" in capsys.readouterr().out


def test_case_globs_pick_cells_and_a_glob_that_matches_nothing_is_a_usage_error(tmp_path, capsys):
    code, report = _run(tmp_path, "torch", "fp4", "--buffer", "exact", "--case", "*-mxfp4*")
    fp4 = [c.id for c in quick_cases() if c.key_format == "mxfp4"]
    assert code == 0 and fp4 and sorted(r["case"]["id"] for r in report["results"]) == sorted(fp4)
    assert all(r["status"] == "pass" for r in report["results"])
    out = tmp_path / "none.json"
    assert main(["run", "--in-process", "--backend", "torch", "--case", "B99-*", "--out", str(out)]) == 2
    assert "--case B99-* matches no case id of level quick" in capsys.readouterr().err and not out.exists()
    # beside a pattern that matches: still refused, naming only the one that matched nothing
    assert main(["run", "--in-process", "--backend", "torch", "--case", "*-mxfp4*", "--case", "B99-*",
                 "--out", str(out)]) == 2
    assert "--case B99-* matches no case id" in capsys.readouterr().err and not out.exists()
    assert main(["selftest", "--match", "unmasked_chunk_store", "--match", "no_such_fault"]) == 2
    assert "--match no_such_fault matches no planted fault" in capsys.readouterr().err


def test_diff_rejects_a_non_report(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{}")
    assert main(["diff", str(p), str(p)]) == 2


# --- verdicts a CI can trust (exit 0 clean, 1 findings, 2 unusable) -------------------------------

SKIPS_EVERYTHING = textwrap.dedent('''
    from parity.backends import SimpleBackend

    class OnlyOnMars(SimpleBackend):
        def unsupported(self, path, inputs):
            return "runs on Mars only"

    def make_backend():
        return OnlyOnMars(name="mars")
''')

ONLY_H64 = textwrap.dedent('''
    from parity.backends.torch_ref import TorchBackend

    class OnlyH64(TorchBackend):
        def unsupported(self, path, inputs):
            return super().unsupported(path, inputs) if inputs.heads == 64 else f"needs 64 heads, got {inputs.heads}"

    def make_backend():
        b = OnlyH64()
        b.name = "only-h64"
        return b
''')


def test_requested_backend_that_does_not_load_is_unusable(tmp_path, capsys):
    code, report = _run(tmp_path, "no_such_pkg.mod:factory", "missing")
    assert code == 2 and report["backends"]["no_such_pkg.mod:factory"]["status"] == "unavailable"
    assert report["verdict"]["exit_code"] == 2
    assert "verdict: UNUSABLE" in capsys.readouterr().err


def test_one_unusable_backend_makes_the_run_unusable_even_when_another_passes(tmp_path):
    out = tmp_path / "mixed.json"
    code = main(["run", "--in-process", "--backend", "torch", "--backend", str(tmp_path / "nope.py"), "--path", "fused",
                 "--buffer", "exact", "--no-progress", "--out", str(out)])
    report = json.loads(out.read_text())
    assert code == 2 and sum(r["status"] == "pass" for r in report["results"]) == len(report["results"]) > 0


def test_requested_backend_that_judges_nothing_is_unusable(tmp_path, capsys):
    path = tmp_path / "mars.py"
    path.write_text(SKIPS_EVERYTHING)
    code, report = _run(tmp_path, str(path), "mars")
    assert code == 2 and all(r["status"] == "skip" for r in report["results"])
    cells = 2 * len(quick_cases())
    assert f"nothing judged: all {cells} cells skipped (first reason: runs on Mars only)" in capsys.readouterr().err


def test_default_backend_that_is_absent_only_skips(tmp_path, monkeypatch):
    from parity import cli

    monkeypatch.setattr(cli, "DEFAULT_BACKENDS", ("torch", "no_such_pkg.mod:factory"))
    out = tmp_path / "defaults.json"
    code = main(["run", "--in-process", "--path", "fused", "--buffer", "exact", "--no-progress", "--out", str(out)])
    report = json.loads(out.read_text())
    assert code == 0 and report["backends"]["no_such_pkg.mod:factory"]["status"] == "unavailable"
    assert any("unavailable" in line for line in report["verdict"]["reasons"])


def test_quick_level_runs_every_path_of_a_backend_that_needs_64_heads(tmp_path):
    path = tmp_path / "h64.py"
    path.write_text(ONLY_H64)
    out = tmp_path / "h64.json"
    code = main(["run", "--in-process", "--backend", str(path), "--no-progress", "--out", str(out)])
    report = json.loads(out.read_text())
    judged = {(r["path"], r["case"]["block_size"]) for r in report["results"] if r["status"] != "skip"}
    assert code == 0
    assert {("stage1", 64), ("stage1", 1), ("fused", 64), ("fused", 1), ("preshuffle", 64)} <= judged
    next_ns = {r["case"]["next_n"] for r in report["results"] if r["status"] == "pass"}
    assert {1, 2, 3, 4} <= next_ns


def _report_of(tmp_path, name, **backend_info):
    """A minimal report: one torch cell that passed, and the given backend entries."""
    code, report = _run(tmp_path, "torch", name, "--buffer", "exact")
    report["results"] = report["results"][:1]
    report["backends"].update(backend_info)
    (tmp_path / f"{name}.json").write_text(json.dumps(report))
    return str(tmp_path / f"{name}.json"), report


def test_diff_against_a_side_that_could_not_be_judged_is_unusable(tmp_path, capsys):
    a, _ = _report_of(tmp_path, "A")
    b, report = _report_of(tmp_path, "B", aiter={"status": "unavailable", "message": "no aiter/ directory"})
    capsys.readouterr()
    assert main(["diff", a, b]) == 2
    text = capsys.readouterr().out
    assert "verdict: UNUSABLE: B: backend aiter unavailable: no aiter/ directory" in text
    assert "regressions (B worse): 0" in text


def test_diff_against_a_crashed_side_names_the_cell(tmp_path, capsys):
    a, _ = _report_of(tmp_path, "A")
    b, _ = _report_of(tmp_path, "B", deepgemm={"status": "crashed", "cell": "deepgemm-fused-exact-B1",
                                             "message": "killed by signal 11 (SIGSEGV)"})
    capsys.readouterr()
    assert main(["diff", a, b]) == 2
    assert "B: backend deepgemm crashed (in cell deepgemm-fused-exact-B1)" in capsys.readouterr().out


def test_diff_when_one_side_has_no_cells_for_a_backend_is_unusable(tmp_path, capsys):
    a, report = _report_of(tmp_path, "A")
    b = tmp_path / "B.json"
    b.write_text(json.dumps({**report, "results": []}))
    capsys.readouterr()
    assert main(["diff", a, str(b)]) == 2
    assert "B: no judged cells for backend torch (A has 1)" in capsys.readouterr().out


def test_diff_lists_a_narrower_grid_apart_from_regressions(tmp_path, capsys):
    code, full = _run(tmp_path, "torch", "wide", "--buffer", "exact")
    narrow = {**full, "results": full["results"][:3]}
    (tmp_path / "narrow.json").write_text(json.dumps(narrow))
    capsys.readouterr()
    assert main(["diff", str(tmp_path / "wide.json"), str(tmp_path / "narrow.json")]) == 0
    text = capsys.readouterr().out
    assert "regressions (B worse): 0" in text and "only in A (not run by B" in text
    assert f"({len(quick_cases()) - 3} of A's not run by B)" in text


@pytest.mark.parametrize("argv, option", [
    (["--pad", "-5"], "--pad"),
    (["--pad", "100000000000"], "--pad"),  # 20 TB of buffer: a crash of the backend's process, not its fault
    (["--out", "."], "--out"),  # a directory
    (["--html", "/proc/nope/x.html"], "--html"),  # cannot be made: found before the run, not after it
    (["--timeout", "0"], "--timeout"),
    (["--timeout", "inf"], "--timeout"),  # a hung backend would hang the run
    (["--device", "tpu"], "--device"),
    (["--device", "cuda:7"], "--device"),
    (["--aiter-path", "/no/such/dir"], "--aiter-path"),
])
def test_bad_options_are_usage_errors_before_anything_runs(tmp_path, capsys, argv, option):
    out = tmp_path / "r.json"
    code = main(["run", "--in-process", "--backend", "torch", "--path", "fused", "--out", str(out), *argv])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert err.startswith(f"parity run: error: {option}"), err


def test_crashing_and_hanging_backends_do_not_stop_the_run(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "parity", "run", "--backend", "fault:aborts", "--backend",
                           "fault:hangs", "--backend", "torch", "--path", "fused", "--buffer", "exact",
                           "--timeout", "15", "--no-progress", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    report = json.loads(out.read_text())
    assert proc.returncode == 1
    assert report["backends"]["fault:aborts"]["status"] == "crashed"
    assert "SIGABRT" in report["backends"]["fault:aborts"]["message"]
    assert report["backends"]["fault:aborts"]["cell"] == "fault:aborts-fused-exact-B3-n2-bs64-ctx_eq_max"
    assert report["backends"]["fault:hangs"]["status"] == "hung"
    assert "in cell fault:hangs-fused-exact-B3-n2-bs64-ctx_eq_max" in report["backends"]["fault:hangs"]["message"]
    assert sum(r["status"] == "pass" for r in report["results"] if r["backend"] == "torch") == len(quick_cases())


@pytest.mark.parametrize("argv", [["run", "--level", "huge"], ["run", "--path", "nope"]])
def test_bad_cli_arguments_are_named(argv, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert argv[1].lstrip("-") in capsys.readouterr().err


def test_selftest_catches_everything(capsys):
    assert main(["selftest"]) == 0
    out = capsys.readouterr().out
    assert "MISSED" not in out and "FALSE ALARM" not in out
    lines = out.strip().splitlines()
    n = len(lines) - 1  # a line a planted fault, then the summary
    assert n > 30 and all(line.startswith("caught  ") for line in lines[:-1])
    assert lines[-1] == f"caught {n}/{n}; the correct kernel passed {n}/{n} of the same cells"


def test_selftest_fails_when_its_correct_kernel_is_not(monkeypatch, capsys):
    """The twin run is real: with a faulty kernel standing in for the correct one, the selftest says so."""
    import parity.selftest as selftest

    real = selftest.load_backend
    monkeypatch.setattr(selftest, "load_backend", lambda name: real("fault:drops_one_head" if name == "torch" else name))
    assert main(["selftest", "--match", "unmasked_chunk_store"]) == 1
    out = capsys.readouterr().out
    assert "FALSE ALARM the correct kernel on the same cell:" in out and "the correct kernel passed 0/" in out


def test_compare_builds_says_unusable_when_a_build_does_not_load(tmp_path):
    broken = tmp_path / "broken"
    (broken / "aiter" / "ops").mkdir(parents=True)
    script = __import__("pathlib").Path(__file__).resolve().parent.parent / "ci" / "compare-builds.sh"
    proc = subprocess.run(["bash", str(script), "--path", "fused", "--out-dir", str(tmp_path / "cmp"), str(broken),
                           str(broken)], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHON": sys.executable})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "verdict: UNUSABLE: A: backend aiter unavailable" in proc.stdout
    assert "aiter None from None" not in proc.stderr and "aiter build not judged (unavailable)" in proc.stderr


CRASHES_ON_ONE_CASE = textwrap.dedent('''
    import os
    from parity.backends.torch_ref import TorchBackend

    class CrashesOnOneCase(TorchBackend):
        """Aborts (as a GPU memory fault does) in the cells of one case, or raises CUDA's sticky error."""
        def run(self, path, inputs, out):
            if inputs.case.context == "ctx_eq_max_first" and inputs.case.batch == 3:
                if os.environ.get("PARITY_TEST_STICKY"):
                    raise RuntimeError("CUDA error: an illegal memory access was encountered")
                os.abort()
            super().run(path, inputs, out)

    def make_backend():
        b = CrashesOnOneCase()
        b.name = "crashy"
        return b
''')


@pytest.mark.parametrize("sticky", [False, True], ids=["abort", "context-lost"])
def test_a_cell_that_crashes_the_process_does_not_take_the_rest_down(tmp_path, monkeypatch, sticky):
    path = tmp_path / "crashy.py"
    path.write_text(CRASHES_ON_ONE_CASE)
    if sticky:
        monkeypatch.setenv("PARITY_TEST_STICKY", "1")
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "parity", "run", "--backend", str(path), "--path", "fused",
                           "--no-progress", "--out", str(out)], capture_output=True, text=True, timeout=300)
    report = json.loads(out.read_text())
    assert proc.returncode == 1, proc.stderr[-2000:]
    by_id = {r["id"]: r for r in report["results"]}
    first = "crashy-fused-exact-B3-n2-bs64-ctx_eq_max_first"
    assert report["backends"][str(path)]["status"] == "crashed" and report["backends"][str(path)]["cell"] == first
    assert by_id[first]["status"] == "error"
    assert "not run: " + first in by_id["crashy-fused-padded-B3-n2-bs64-ctx_eq_max_first"]["findings"][0]["summary"]
    if not sticky:
        assert "SIGABRT" in by_id[first]["findings"][0]["summary"]
    # every other case ran in a fresh process after the crash, and passed
    others = [r for r in report["results"] if "ctx_eq_max_first" not in r["id"] or "B3-n2" not in r["id"]]
    assert len(others) == len(report["results"]) - 2 and all(r["status"] == "pass" for r in others)
