"""python -m parity.perf.runs: one backend's ratio to another over several bench runs, and the runs that keep every
shape at or under a bar (exit 1 when one does not, 2 when a file is unusable)."""
import json

import pytest

from parity.perf import runs


def _run(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text(json.dumps({"device": "dev", "rows": rows}))
    return str(path)


def _rows(b128_triton):
    return [
        {"backend": "triton", "path": "fused", "shape": "B64-n2-ctx8192", "us": 24.5},
        {"backend": "deepgemm", "path": "fused", "shape": "B64-n2-ctx8192", "us": 25.0},
        {"backend": "triton", "path": "fused", "shape": "B128-n2-ctx8192", "us": b128_triton},
        {"backend": "deepgemm", "path": "fused", "shape": "B128-n2-ctx8192", "us": 44.0},
        {"backend": "triton", "path": "fused", "shape": "B64-n4-ctx8192", "us": 38.0},
        {"backend": "deepgemm", "path": "fused", "shape": "B64-n4-ctx8192", "skipped": "next_n 4"},
        {"backend": "deepgemm:split", "path": "fused", "shape": "B64-n4-ctx8192", "us": 50.0},
        {"backend": "triton", "path": "preshuffle", "shape": "B64-n2-ctx8192", "us": 99.0},  # another path
    ]


def test_each_shape_takes_the_first_reference_with_a_row_and_its_own_path():
    got = runs.ratios(_rows(44.0), "triton", ["deepgemm", "deepgemm:split"])
    assert got == {"B64-n2-ctx8192": (24.5 / 25.0, "deepgemm"), "B128-n2-ctx8192": (1.0, "deepgemm"),
                   "B64-n4-ctx8192": (38.0 / 50.0, "deepgemm:split")}
    assert runs.ratios(_rows(44.0), "triton", ["deepgemm"], path="preshuffle") == {}


def test_a_run_with_a_shape_over_the_bar_is_named_and_fails(tmp_path, capsys):
    level = _run(tmp_path, "level.json", _rows(44.0))  # 1.000: at the bar
    over = _run(tmp_path, "over.json", _rows(44.616))  # 1.014
    assert runs.main([level, over]) == 1
    out = capsys.readouterr().out
    assert "| B128-n2-ctx8192 | deepgemm | 1.000 | **1.014** | 1.000-1.014 |" in out
    assert "| B64-n4-ctx8192 | deepgemm:split | 0.760 | 0.760 | 0.760-0.760 |" in out
    assert "at or under 1 at every shape: 1 of 2 runs; over it: over.json" in out
    assert runs.main([level, over, "--bar", "1.02"]) == 0


@pytest.mark.parametrize("content, why", [
    ("{not json", "not a bench report"), (json.dumps({"rows": []}), "no fused shape with rows of both"),
    (json.dumps([]), "not a bench report"), (json.dumps({"rows": [3]}), "'rows' is not a list of objects"),
    (json.dumps({"rows": [{"backend": "triton", "shape": "B1", "us": 0}]}), "row 0 is not a timed row"),
    (json.dumps({"rows": [{"backend": "triton", "us": 3.0}]}), "row 0 is not a timed row"),
])
def test_a_file_that_is_not_a_usable_run_is_refused(tmp_path, capsys, content, why):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert runs.main([str(bad)]) == 2
    assert why in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--bar", "0"), ("--bar", "nan"), ("--mean-bar", "nan"), ("--bar", "inf")])
def test_a_bar_that_is_not_a_positive_number_is_refused(tmp_path, capsys, flag, value):
    """NaN is never "over" anything: a --bar nan would pass every shape of a slow candidate."""
    assert runs.main([_run(tmp_path, "a.json", _rows(44.0)), flag, value]) == 2
    assert f"{flag} must be a finite number > 0, got {float(value)}" in capsys.readouterr().err


def test_runs_of_the_same_file_name_are_told_apart_by_their_path(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = _run(tmp_path / "a", "bench.json", _rows(44.0)), _run(tmp_path / "b", "bench.json", _rows(44.0))
    assert runs.main([first, second]) == 0
    assert f"| shape | against | {first} | {second} | range |" in capsys.readouterr().out


def test_shapes_are_kept_by_glob_and_the_mean_bar_asks_for_a_real_gain(tmp_path, capsys):
    # triton / deepgemm at B64-n2 0.980, B128-n2 0.998 (run a) and 0.990 (run b); B64-n4 0.760 is left out
    a, b = _run(tmp_path, "a.json", _rows(43.912)), _run(tmp_path, "b.json", _rows(43.56))
    kept = ["--shape", "B64-n2-*", "--shape", "B128-n2-*"]
    assert runs.main([a, b, *kept, "--mean-bar", "0.99"]) == 0  # mean (0.98 + 0.998 + 0.98 + 0.99) / 4 = 0.987
    out = capsys.readouterr().out
    assert "B64-n4" not in out and "mean over 4 shape-runs: 0.9870 (at or under 0.99)" in out
    assert runs.main([a, b, *kept, "--mean-bar", "0.985"]) == 1  # every shape under 1, the mean not under the bar
    assert "mean over 4 shape-runs: 0.9870 (over 0.985)" in capsys.readouterr().out
    assert runs.main([a, b, "--mean-bar", "0.985"]) == 0  # with B64-n4 (0.76) the mean is 0.911


def test_a_glob_that_keeps_no_shape_is_refused(tmp_path, capsys):
    assert runs.main([_run(tmp_path, "a.json", _rows(44.0)), "--shape", "B256-*"]) == 2
    assert "no fused shape matching B256-* with rows of both" in capsys.readouterr().err
    assert runs.main([_run(tmp_path, "a.json", _rows(44.0)), "--mean-bar", "-1"]) == 2
    assert "--mean-bar must be a finite number > 0, got -1.0" in capsys.readouterr().err
