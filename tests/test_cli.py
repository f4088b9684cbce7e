"""The CLI: JSON report, user backends from a file, crash/hang isolation, and the build diff."""
import json
import subprocess
import sys
import textwrap

import pytest

from parity.cli import main

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
    assert len(report["results"]) == 24 and all(r["status"] == "pass" for r in report["results"])
    checks = {f["check"] for f in report["results"][0]["findings"]}
    assert checks == {"oob", "mask", "values", "topk", "determinism", "inputs"}
    assert "| torch | fused | exact | 12 | 0 |" in capsys.readouterr().out


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


def test_diff_rejects_a_non_report(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{}")
    assert main(["diff", str(p), str(p)]) == 2


def test_unknown_backend_is_reported_not_raised(tmp_path):
    code, report = _run(tmp_path, "no_such_pkg.mod:factory", "missing")
    assert code == 0 and report["backends"]["no_such_pkg.mod:factory"]["status"] == "unavailable"


def test_crashing_and_hanging_backends_do_not_stop_the_run(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "parity", "run", "--backend", "fault:aborts", "--backend",
                           "fault:hangs", "--backend", "torch", "--path", "fused", "--buffer", "exact",
                           "--timeout", "25", "--no-progress", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    report = json.loads(out.read_text())
    assert proc.returncode == 1
    assert report["backends"]["fault:aborts"]["status"] == "crashed"
    assert "SIGABRT" in report["backends"]["fault:aborts"]["message"]
    assert report["backends"]["fault:hangs"]["status"] == "hung"
    assert sum(r["status"] == "pass" for r in report["results"] if r["backend"] == "torch") == 12


@pytest.mark.parametrize("argv", [["run", "--level", "huge"], ["run", "--path", "nope"]])
def test_bad_cli_arguments_are_named(argv, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert argv[1].lstrip("-") in capsys.readouterr().err


def test_selftest_catches_everything(capsys):
    assert main(["selftest"]) == 0
    out = capsys.readouterr().out
    assert "MISSED" not in out and out.strip().splitlines()[-1].startswith("caught ")
