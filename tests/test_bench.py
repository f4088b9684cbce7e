"""``python -m parity bench`` on the CPU: a smoke run of one tiny shape, the roofline's arithmetic against
hand-computed figures, and the prepare/run_prepared protocol with fake backends."""
import json

import pytest
import torch

from parity.perf import bench, bench_table, timing
from parity.perf import roofline as roofline_mod
from parity.perf.roofline import roofline


def test_bench_cpu_smoke(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = bench.main(["--device", "cpu", "--backend", "torch", "--path", "fused", "--rep-ms", "5",
                     "--out", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    (row,) = data["rows"]
    shape = bench.Shape(*bench.CPU_SHAPES[0])
    assert row["backend"] == "torch" and row["path"] == "fused" and row["shape"] == shape.id
    assert row["us"] > 0 and data["copy_gbps"] > 0
    # the floor is bytes over bandwidth, whatever the kernel did
    assert abs(row["floor_us"] - shape.bytes_moved("fused") / (data["copy_gbps"] * 1e3)) < 1e-6 * row["floor_us"]
    # no fp8 matrix unit on the CPU: the compute floor, and so the roofline, are marked n/a, not made up
    assert data["fp8_tflops"] is None and data["fp8_method"].startswith("n/a")
    assert (row["flop_us"], row["roof_us"], row["x_roof"]) == (None, None, None)
    text = capsys.readouterr().out
    assert "| torch | fused | " + shape.id in text
    assert "fp8 matrix throughput n/a" in text and "| n/a | n/a | n/a |" in text


def test_bytes_moved_counts_keys_scales_and_logits():
    s = bench.Shape(batch=2, next_n=3, context=1000, heads=4, head_dim=32)
    assert s.bytes_moved("fused") == 2 * 1000 * (32 + 4) + 2 * 3 * 1000 * 4
    assert s.bytes_moved("stage1") == 2 * 1000 * (32 + 4) + 4 * 2 * 3 * 1000 * 4


def test_make_inputs_are_valid_and_preshuffled():
    from parity.problem.cases import validate_inputs
    from parity.problem.layouts import unshuffle_kv_cache

    inp = bench.make_inputs(bench.Shape(batch=2, next_n=2, context=100, heads=8, head_dim=32, block_size=16),
                            "cpu", gen=torch.Generator().manual_seed(0))
    validate_inputs(inp)
    assert torch.equal(unshuffle_kv_cache(inp.kv_cache_preshuffled), inp.kv_cache)


def test_mxfp4_shapes_move_68_bytes_a_key_and_keep_the_ids_of_fp8():
    s = bench.Shape(64, 2, 8192, key_format="mxfp4")
    assert s.id == "B64-n2-ctx8192-mxfp4" and bench.Shape(64, 2, 8192).id == "B64-n2-ctx8192"
    logits = 64 * 2 * 8192 * 4
    assert s.bytes_moved("fused") == 64 * 8192 * 68 + logits
    assert bench.Shape(64, 2, 8192).bytes_moved("fused") == 64 * 8192 * 132 + logits
    assert s.flops("fused") == bench.Shape(64, 2, 8192).flops("fused")  # the same products


def test_mxfp4_inputs_are_valid_and_run():
    from parity.backends import load_backend
    from parity.problem.cases import validate_inputs
    from parity.judge.checks import check_values
    from parity.problem.reference import reference_head_logits, reference_logits

    inp = bench.make_inputs(bench.Shape(batch=2, next_n=2, context=100, heads=8, head_dim=128, block_size=16,
                                        key_format="mxfp4"), "cpu", gen=torch.Generator().manual_seed(0))
    validate_inputs(inp)
    assert inp.kv_cache.shape[1:] == (16, 1, 68) and inp.kv_cache_preshuffled is None
    out = torch.full((4, 100), float("-inf"))
    load_backend("torch").run("fused", inp, out)
    mag = reference_head_logits(inp, magnitude=True).sum(0)
    ctx = inp.context_lens.repeat_interleave(2)
    assert check_values(out, reference_logits(inp), ctx, "mxfp4", magnitude=mag).ok


def test_formats_flavour_each_shape_and_globs_reach_both():
    class A:
        quick, shapes, formats = True, None, "fp8,mxfp4"
    shapes = bench.select_shapes(A, "cuda")
    assert [s.id for s in shapes[:2]] == ["B1-n2-ctx8192", "B1-n2-ctx8192-mxfp4"] and len(shapes) == 2 * len(bench.QUICK)
    A.shapes = "B64-n2-ctx8192-mxfp4"
    assert [s.id for s in bench.select_shapes(A, "cuda")] == ["B64-n2-ctx8192-mxfp4"]
    A.formats = "fp4"
    with pytest.raises(ValueError, match="--formats"):
        bench.select_shapes(A, "cuda")


def test_fp8_ratio_pairs_the_same_backend_path_and_size():
    timing = dict(eager_us=1.0, gbps=1.0, floor_us=1.0, x_floor=1.0)
    rows = [{"backend": "triton", "path": "fused", "shape": "B8-n2-ctx8192", "us": 30.0, **timing},
            {"backend": "triton", "path": "fused", "shape": "B8-n2-ctx8192-mxfp4", "us": 20.0, **timing},
            {"backend": "torch", "path": "fused", "shape": "B8-n2-ctx8192-mxfp4", "us": 50.0, **timing},
            {"backend": "triton", "path": "stage1", "shape": "B8-n2-ctx8192-mxfp4", "skipped": "memory"}]
    bench_table.add_fp8_ratios(rows)
    assert rows[1]["vs_fp8"] == 1.5 and "vs_fp8" not in rows[0] and "vs_fp8" not in rows[2]
    text = bench_table.markdown(rows, 1000.0, "cpu")
    assert "| triton | fused | B8-n2-ctx8192-mxfp4 | 20.0 |" in text and "| 1.50 |" in text


def test_unknown_shape_pattern_is_an_error(capsys):
    assert bench.main(["--device", "cpu", "--backend", "torch", "--shapes", "B3-n9-*"]) == 2
    assert "matches no shape id" in capsys.readouterr().err


# --- the roofline: hand-computed figures, never ones the code under test produced -------------------

def test_flops_count_every_fp8_product_of_the_path():
    # B64-n4-ctx8192 at H=64, D=128: 2 * 256 rows * 8192 * 64 * 128
    s = bench.Shape(64, 4, 8192)
    assert s.flops("fused") == s.flops("preshuffle") == s.flops("stage1") == 34_359_738_368
    assert bench.Shape(batch=2, next_n=3, context=10, heads=4, head_dim=8).flops("fused") == 2 * 6 * 10 * 4 * 8


def test_compute_binds_at_b64_n4_when_the_fp8_peak_is_989_tflops():
    s = bench.Shape(64, 4, 8192)
    assert s.bytes_moved("fused") == 64 * 8192 * 132 + 256 * 8192 * 4 == 77_594_624
    r = roofline(s.bytes_moved("fused"), s.flops("fused"), gbps=3000.0, tflops=989.0)
    assert r.bytes_us == pytest.approx(25.864875, rel=1e-6)  # 77594624 B / 3000 GB/s
    assert r.compute_us == pytest.approx(34.741899, rel=1e-6)  # 34.36 GFLOP / 989 TFLOP/s
    assert r.bound == "compute" and r.roof_us == r.compute_us
    assert r.x_roof(48.7) == pytest.approx(1.401766, rel=1e-5)


def test_bytes_bind_when_the_fp8_peak_is_higher():
    r = roofline(77_594_624, 34_359_738_368, gbps=3000.0, tflops=1500.0)
    assert r.compute_us == pytest.approx(22.906492, rel=1e-6)
    assert r.bound == "bytes" and r.roof_us == pytest.approx(25.864875, rel=1e-6)
    tie = roofline(3_000_000, 2_000_000_000, gbps=3000.0, tflops=2000.0)  # 1 us each: bytes win ties
    assert tie.bytes_us == pytest.approx(1.0) and tie.compute_us == pytest.approx(1.0) and tie.bound == "bytes"


def test_unknown_compute_throughput_leaves_the_roofline_unknown():
    r = roofline(1000, 10**9, gbps=1.0, tflops=None)
    assert r.bytes_us == pytest.approx(1.0)
    assert (r.compute_us, r.roof_us, r.bound, r.x_roof(5.0)) == (None, None, None, None)
    with pytest.raises(ValueError, match="gbps"):
        roofline(1, 1, gbps=0.0, tflops=1.0)
    with pytest.raises(ValueError, match="tflops"):
        roofline(1, 1, gbps=1.0, tflops=-1.0)


def test_bench_rows_carry_both_floors(tmp_path, monkeypatch):
    # CPU shape B2-n2-ctx512, H=64, D=128: 143360 bytes at 1 GB/s = 143.36 us; 33554432 FLOP at
    # 0.001 TFLOP/s = 33554.432 us, so compute binds.
    monkeypatch.setattr(bench, "copy_bandwidth", lambda device: 1.0)
    out = tmp_path / "bench.json"
    assert bench.main(["--device", "cpu", "--backend", "torch", "--path", "fused", "--rep-ms", "5",
                       "--fp8-tflops", "0.001", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    (row,) = data["rows"]
    assert data["fp8_tflops"] == 0.001 and "--fp8-tflops" in data["fp8_method"]
    assert row["floor_us"] == pytest.approx(143.36)
    assert row["flop_us"] == pytest.approx(33554.432)
    assert row["roof_us"] == pytest.approx(33554.432) and row["bound"] == "compute"
    assert row["x_roof"] == pytest.approx(row["us"] / 33554.432)
    assert bench.main(["--device", "cpu", "--fp8-tflops", "0"]) == 2


def test_fp8_throughput_falls_back_to_the_triton_probe_then_to_na(monkeypatch):
    def refuses(device, time_ms):
        raise RuntimeError("no fp8 GEMM here")

    monkeypatch.setattr(roofline_mod, "scaled_mm_tflops", refuses)
    monkeypatch.setattr(roofline_mod, "triton_dot_tflops", lambda device, time_ms: roofline_mod.Throughput(7.0, "dot"))
    assert roofline_mod.fp8_tflops("meta", None) == roofline_mod.Throughput(7.0, "dot")
    monkeypatch.setattr(roofline_mod, "triton_dot_tflops", refuses)
    got = roofline_mod.fp8_tflops("meta", None)
    assert got.tflops is None and got.method.count("no fp8 GEMM here") == 2


def test_scaled_mm_probe_counts_2n3_flop_per_call():
    # a clock that says every call took 1 ms: 2 * 32^3 FLOP / 1 ms = 6.5536e-5 TFLOP/s
    got = roofline_mod.scaled_mm_tflops("cpu", lambda fn, device: (fn(), 1.0)[1], sizes=(32,))
    assert got.tflops == pytest.approx(6.5536e-5)
    assert "torch._scaled_mm" in got.method and "32x32x32" in got.method


def test_triton_fp8_probe_computes_the_product():
    pytest.importorskip("triton")
    from parity.kernels.fp8_matmul import fp8_matmul

    gen = torch.Generator().manual_seed(1)
    a = torch.randn(32, 64, generator=gen).to(torch.float8_e4m3fn)
    b_nk = torch.randn(16, 64, generator=gen).to(torch.float8_e4m3fn)
    c = torch.empty(32, 16, dtype=torch.bfloat16)
    fp8_matmul(a, b_nk, c, block_m=16, block_n=16, block_k=32, num_warps=4, num_stages=2)
    want = (a.double() @ b_nk.double().T).to(torch.bfloat16)
    assert torch.allclose(c.float(), want.float(), rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match="multiples"):
        fp8_matmul(a, b_nk, c, block_m=64)


# --- the prepare / run_prepared protocol (DeepGEMM's schedule made outside the timed region) --------

class PreparedFake:
    """Records what was prepared and what each timed call was given; ``run`` must never be timed."""
    paths = ("fused",)

    def __init__(self, name, fail=False):
        self.name, self.fail = name, fail
        self.prepared, self.ran = [], []

    def unsupported(self, path, inputs):
        return None

    def prepare(self, path, inputs):
        if self.fail:
            raise RuntimeError("schedule refused")
        handle = ("handle", len(self.prepared))
        self.prepared.append((path, inputs, handle))
        return handle

    def run_prepared(self, handle, out):
        self.ran.append((handle, out.data_ptr()))

    def run(self, path, inputs, out):
        raise AssertionError("run must not be timed when prepare/run_prepared exist")


class AllocatesItsOwnOutput(PreparedFake):
    """DeepGEMM's shape of the protocol: ``run_prepared(handle)`` returns the kernel's own output."""

    def run_prepared(self, handle):
        self.ran.append((handle, None))
        return [torch.zeros(1)]


def test_prepared_backends_time_run_prepared_only():
    with_out, own_out = PreparedFake("fake"), AllocatesItsOwnOutput("fake-own")
    shape = bench.Shape(1, 1, 64, heads=8, head_dim=32, block_size=16)
    rows = bench.bench_shape(shape, {"fake": with_out, "fake-own": own_out}, ["fused"], "cpu", 10.0, False, 0, 5)
    assert [r["backend"] for r in rows] == ["fake", "fake-own"]
    for row, fake in zip(rows, (with_out, own_out)):
        assert row["us"] > 0 and row["prepared"] is True
        # prepared once per rotating set, outside the timed loop; every timed call got one of those handles
        assert len(fake.prepared) == row["sets"] and len({id(p[1]) for p in fake.prepared}) == row["sets"]
        assert len(fake.ran) > len(fake.prepared)
        assert {h for h, _ in fake.ran} == {p[2] for p in fake.prepared}
    assert len({ptr for _, ptr in with_out.ran}) == rows[0]["sets"]  # each set's own out buffer
    assert "fake, fake-own: run_prepared only" in bench_table.markdown(rows, 10.0, "cpu")


def test_a_prepare_that_raises_is_a_skipped_row():
    (row,) = bench.bench_shape(bench.Shape(1, 1, 64, heads=8, head_dim=32, block_size=16),
                               {"bad": PreparedFake("bad", fail=True)}, ["fused"], "cpu", 10.0, False, 0, 5, None)
    assert "us" not in row and row["skipped"].startswith("error: RuntimeError: schedule refused")


def test_serving_shapes_have_rows_wider_than_their_contexts():
    """A server's call: logits rows max_model_len wide, contexts far shorter; in the full set, and by glob."""
    class A:
        quick, shapes, formats = False, None, "fp8"
    ids = [s.id for s in bench.select_shapes(A, "cuda")]
    assert "B64-n2-ctx8192-mml163840" in ids and len(ids) == len(bench.FULL) + len(bench.SERVING)
    A.shapes = "*-mml*"
    assert [s.id for s in bench.select_shapes(A, "cuda")] == [f"B{b}-n{n}-ctx{c}-mml163840" for b, n, c in bench.SERVING]
    shape = bench.Shape(2, 2, 256, max_model_len=1024)
    inp = bench.make_inputs(shape, "cpu")
    assert inp.max_model_len == 1024 and inp.context_lens.tolist() == [256, 256]
    from parity.backends import load_backend

    rows = bench.bench_shape(shape, {"torch": load_backend("torch")}, ["fused"], "cpu", 100.0, False, 1, 1)
    assert rows[0]["shape"] == "B2-n2-ctx256-mml1024" and "us" in rows[0], rows


def test_the_read_floor_rotates_over_the_most_sets_of_any_path(monkeypatch):
    """stage1's outputs are H times the fused path's, so it rotates over fewer sets (B64-n2-ctx8192: 1
    against 4); the read floor (the same bytes for every path) is timed over the most sets any path gets and
    given to every row of the shape."""
    shape = bench.Shape(1, 1, 64, heads=8, head_dim=32, block_size=16)
    monkeypatch.setattr(bench, "rotation_sets", lambda shape, path: {"stage1": 1, "fused": 3}[path])
    seen = []

    def fake_floor(sets, device):
        seen.append(len(sets))
        return 1.0 * len(sets)  # us: which sets the floor came from shows in its value

    monkeypatch.setattr(bench, "read_floor_us", fake_floor)
    monkeypatch.setattr(bench, "interleaved_graph_rounds", lambda calls, n, device, reps: dict.fromkeys(calls))
    from parity.backends import load_backend

    rows = bench.bench_shape(shape, {"torch": load_backend("torch")}, ["stage1", "fused"], "cpu", 100.0, True, 0, 1)
    assert [r["sets"] for r in rows] == [1, 3], rows
    assert seen == [3] and [r["read_us"] for r in rows] == [3.0, 3.0], (seen, rows)
    assert all(r["x_read"] == r["us"] / r["read_us"] for r in rows)


def test_graphs_are_replayed_in_turn_with_the_order_rotating(monkeypatch):
    """Every backend of a shape is captured first, then replayed one after the other, round after round, the
    first of a round moving on each time; a capture that fails leaves that backend untimed (None)."""
    def capture(call, device, n):
        if call == "syncs":
            raise RuntimeError("operation not permitted when stream is capturing")
        return call

    replays = []
    per_replay = {"a": 4.0, "b": 8.0, "c": 12.0}
    monkeypatch.setattr(timing, "_capture", capture)
    monkeypatch.setattr(timing, "_replay_ms", lambda graph, device: replays.append(graph) or per_replay[graph])
    calls = {"a": "a", "syncs": "syncs", "b": "b", "c": "c"}
    got = timing.interleaved_graph_rounds(calls, 2, "cuda", reps=3)
    assert got == {"a": [2.0] * 3, "syncs": None, "b": [4.0] * 3, "c": [6.0] * 3}, got  # ms a call, round by round
    assert replays == ["a", "b", "c", "b", "c", "a", "c", "a", "b"], replays


def test_gpu_state_reads_nvidia_smi_and_gives_none_on_what_it_cannot_parse(monkeypatch):
    import subprocess

    def fake_run(replies):
        return lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, stdout=replies.pop(0), stderr="")

    # with the clock event reasons, then an nvidia-smi without them (its first query fails), then output that
    # does not parse, twice each
    monkeypatch.setattr(subprocess, "run", fake_run(["1530, 296.1, 52, 0x0000000000000084\n", "",
                                                     "1875, 176.43, 49\n", "[N/A], [N/A], 40, 0x0\n",
                                                     "[N/A], [N/A], 40\n", "", ""]))
    assert timing.gpu_state("cuda") == {"sm_mhz": 1530, "power_w": 296.1, "temp_c": 52,
                                        "clock_events": ["power cap", "hw power brake"]}
    assert timing.gpu_state("cuda") == {"sm_mhz": 1875, "power_w": 176.43, "temp_c": 49}
    assert timing.gpu_state("cuda") is None and timing.gpu_state("cuda") is None
    assert timing.gpu_state("cpu") is None


def test_each_timed_row_carries_the_gpu_state_after_its_path_and_the_table_says_it(monkeypatch):
    shape = bench.Shape(1, 1, 64, heads=8, head_dim=32, block_size=16)
    state = {"sm_mhz": 1755, "power_w": 412.0, "temp_c": 61, "clock_events": ["sw thermal"]}
    monkeypatch.setattr(bench, "gpu_state", lambda device: state)
    monkeypatch.setattr(bench, "read_floor_us", lambda sets, device: None)
    from parity.backends import load_backend

    rows = bench.bench_shape(shape, {"torch": load_backend("torch")}, ["fused"], "cpu", 100.0, True, 0, 1)
    assert rows[0]["gpu_state"] == state, rows
    table = bench_table.markdown(rows, 100.0, "cpu")
    assert "B1-n1-ctx64 fused 1755 MHz 412 W 61 C (sw thermal)" in table, table


def test_the_paired_ratio_range_is_the_10th_to_90th_percentile_of_the_ratios_round_by_round():
    # nine rounds at 2x and one at 4x: inclusive percentiles over 10 ratios, p90 = 2 + 0.1 * (4 - 2)
    low, high = timing.paired_ratio_range([2.0] * 9 + [4.0], [1.0] * 10)
    assert low == pytest.approx(2.0) and high == pytest.approx(2.2)
    assert timing.paired_ratio_range([2.0] * 4, [1.0] * 4) is None  # too few rounds for percentiles
    assert timing.paired_ratio_range([2.0] * 6, [1.0] * 5) is None  # rounds that do not pair
    assert timing.paired_ratio_range(None, [1.0] * 6) is None  # a row timed eagerly


def test_speedups_carry_their_spread_round_by_round(monkeypatch):
    """Two backends graph-timed side by side: each row's us is the median of its rounds, and its speedup over
    the other carries the 10th-90th percentile of their ratio a round, in the JSON and in the table."""
    from parity.backends import load_backend

    shape = bench.Shape(1, 1, 64, heads=8, head_dim=32, block_size=16)
    ms = {"a": [0.010, 0.010, 0.010, 0.010, 0.012], "b": [0.020, 0.020, 0.020, 0.020, 0.020]}
    monkeypatch.setattr(bench, "interleaved_graph_rounds", lambda calls, n, device, reps: {k: ms[k] for k in calls})
    monkeypatch.setattr(bench, "read_floor_us", lambda sets, device: None)
    monkeypatch.setattr(bench, "gpu_state", lambda device: None)
    rows = bench.bench_shape(shape, {"a": load_backend("torch"), "b": load_backend("torch")}, ["fused"], "cpu",
                             100.0, True, 0, 1, reps=5)
    a, b = rows
    assert a["us"] == pytest.approx(10.0) and b["us"] == pytest.approx(20.0) and a["timing"] == "graph"
    assert a["rounds_us"] == pytest.approx([10.0, 10.0, 10.0, 10.0, 12.0])
    # a against b a round: 2, 2, 2, 2, 20/12; inclusive p10 = 20/12 + 0.4 * (2 - 20/12), p90 = 2
    low, high = a["speedup_range"]["b"]
    assert a["speedup_vs"]["b"] == pytest.approx(2.0)
    assert low == pytest.approx(20 / 12 + 0.4 * (2 - 20 / 12)) and high == pytest.approx(2.0)
    assert b["speedup_range"]["a"] == pytest.approx([0.5, 0.5 + 0.6 * 0.1])
    table = bench_table.markdown(rows, 100.0, "dev")
    assert f"b 2.00x ({low:.2f}-2.00)" in table and "10th-90th percentile" in table


def test_bench_checks_out_before_the_run_and_makes_its_folders(tmp_path, capsys):
    from parity.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["bench", "--device", "cpu", "--backend", "torch", "--out", str(blocker / "r.json")]) == 2
    assert "is not a writable directory" in capsys.readouterr().err
    out = tmp_path / "new" / "dir" / "r.json"
    assert main(["bench", "--device", "cpu", "--backend", "torch", "--path", "fused", "--rep-ms", "5",
                 "--warmup-ms", "0", "--reps", "1", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["rows"]


def test_a_requested_backend_that_does_not_load_is_exit_2_after_the_others_ran(tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = bench.main(["--device", "cpu", "--backend", "torch", "--backend", "no_such_pkg.mod:make", "--path", "fused",
                     "--rep-ms", "5", "--warmup-ms", "0", "--reps", "1", "--out", str(out)])
    err = capsys.readouterr().err
    data = json.loads(out.read_text())
    assert rc == 2 and "not benchmarked, unavailable: no_such_pkg.mod:make" in err, err
    assert any(r["backend"] == "torch" and "us" in r for r in data["rows"])  # the others still ran
    assert "no_such_pkg.mod:make" in data["unavailable"]


def test_bench_refuses_fewer_than_one_round(capsys):
    assert bench.main(["--device", "cpu", "--backend", "torch", "--reps", "0"]) == 2
    assert "--reps must be >= 1 round, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--fp8-tflops", "nan"], "--fp8-tflops must be a finite number > 0, got nan"),
    (["--device", "tpu"], "--device 'tpu' is not a device the suite runs on"),
    (["--warmup-ms", "-1"], "--warmup-ms must be a finite number >= 0 of milliseconds, got -1.0"),
    (["--rep-ms", "inf"], "--rep-ms must be a finite number > 0 of milliseconds, got inf"),
    (["--rep-ms", "0"], "--rep-ms must be a finite number > 0 of milliseconds, got 0.0"),
    (["--out", "."], "--out '.' is a directory; expected a file to write"),
])
def test_bench_refuses_a_bad_number_or_device_through_the_cli(argv, message, capsys):
    from parity.cli import main

    assert main(["bench", "--backend", "torch", *argv]) == 2
    assert message in capsys.readouterr().err
