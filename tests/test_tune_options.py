"""The tuning sweep's options are checked before a kernel is compiled: a mistyped shape was a
traceback from a regex that did not match, a bad list one from int() mid-sweep."""
from __future__ import annotations

import pytest

from parity.perf import tune


@pytest.mark.parametrize("argv, message", [
    (["--shape", "B64-ctx8192"], "--shape: expected B<batch>-n<next_n>-ctx<context>"),
    (["--shape", "B0-n2-ctx8192"], "each >= 1"),
    (["--block-t", "64,x"], "--block-t: expected comma-separated integers >= 16, got '64,x'"),
    (["--warps", "0"], "--warps: expected comma-separated integers >= 1, got '0'"),
    (["--flat", "-1"], "--flat: expected comma-separated integers >= 0"),
    (["--top", "0"], "--top: expected comma-separated integers >= 1, got '0'"),
    (["--top", "3,4"], "--top: expected one integer >= 1"),
    (["--device", "cuda:99"], "--device: expected cpu, or cuda or cuda:N of this machine's"),
    (["--device", "tpu"], "--device: expected cpu, or cuda or cuda:N"),
])
def test_tune_names_a_bad_option_before_any_work(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(tune, "check", lambda *a: pytest.fail("ran before the options were checked"))
    with pytest.raises(SystemExit) as exc:
        tune.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err, err


def test_tune_reads_a_good_shape_and_lists():
    shape = tune._shape("B8-n4-ctx512")
    assert (shape.batch, shape.next_n, shape.context) == (8, 4, 512)
    assert tune._ints(16)("64,128") == [64, 128] and tune._count("5") == 5


@pytest.mark.parametrize("argv, message", [
    (["--deadline-s", "inf"], "--deadline-s: expected a finite number of seconds > 0, got 'inf'"),
    (["--deadline-s", "0"], "--deadline-s: expected a finite number of seconds > 0"),
    (["--profile", "--profile-shapes", "B64-n2-ctx8192,B64n2"], "--profile-shapes: expected B<batch>-n<next_n>"),
])
def test_kernel_study_names_a_bad_option(argv, message, capsys):
    from parity.perf import kernel_study

    with pytest.raises(SystemExit) as exc:
        kernel_study.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err, err


def test_kernel_study_names_an_unmatched_pattern_before_looking_for_a_gpu(capsys, monkeypatch):
    from parity.perf import kernel_study

    monkeypatch.setattr(kernel_study, "study", lambda *a: pytest.fail("studied with a bad pattern"))
    assert kernel_study.main(["--shapes", "B3-n9-*"]) == 2
    assert "--shapes 'B3-n9-*' matches no shape id" in capsys.readouterr().err


def test_kernel_study_profiles_the_shapes_it_was_given(monkeypatch):
    from parity.perf import kernel_study

    seen = []
    monkeypatch.setattr(kernel_study.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(kernel_study, "profile", lambda variants, shapes: seen.append((sorted(variants), shapes)))
    assert kernel_study.main(["--profile", "--variants", "default,ws",
                              "--profile-shapes", "B128-n2-ctx8192,B64-n2-ctx32768"]) == 0
    assert seen == [(["default", "ws"], ["B128-n2-ctx8192", "B64-n2-ctx32768"])]
