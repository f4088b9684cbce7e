"""The tuning sweep's own sanity check runs every config it names through the suite's mask and value
checks (the Triton interpreter without a GPU)."""
import pytest

pytest.importorskip("triton")
from parity.perf import tune  # noqa: E402
from parity.perf.bench import Shape, rotation_sets  # noqa: E402


def test_sweep_check_passes_every_config_through_the_suite_checks():
    lines = tune.check("cpu", Shape(2, 3, 200, heads=8)).splitlines()
    assert len(lines) == 5
    for line in lines:
        assert "mask matches" in line and "values within" in line, line


def test_sweep_times_each_config_through_the_bench_call(monkeypatch, capsys):
    """The sweep builds each config's call the way the bench does; a drift of either API shows as NaN."""
    calls = []

    def fake_graph_ms(call, n_sets, device):
        call(0)  # the real capture runs the call once per set
        calls.append(n_sets)
        return 0.01

    monkeypatch.setattr(tune, "graph_time_ms", fake_graph_ms)
    assert tune.main(["--device", "cpu", "--no-check", "--shape", "B1-n1-ctx128", "--block-t", "64", "--ctas", "2",
                      "--warps", "4", "--stages", "2"]) == 0
    out = capsys.readouterr().out
    rotated = rotation_sets(Shape(1, 1, 128), "fused")
    assert rotated > 4 and calls == [rotated, rotated], out  # the benchmark's rotation, past L2
    assert "fused   10.0 us" in out and "nan" not in out, out
