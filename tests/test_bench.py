"""Smoke test of ``python -m parity bench`` on the CPU: one tiny shape through the torch backend."""
import json

import torch

from parity import bench


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
    assert "| torch | fused | " + shape.id in capsys.readouterr().out


def test_bytes_moved_counts_keys_scales_and_logits():
    s = bench.Shape(batch=2, next_n=3, context=1000, heads=4, head_dim=32)
    assert s.bytes_moved("fused") == 2 * 1000 * (32 + 4) + 2 * 3 * 1000 * 4
    assert s.bytes_moved("stage1") == 2 * 1000 * (32 + 4) + 4 * 2 * 3 * 1000 * 4


def test_make_inputs_are_valid_and_preshuffled():
    from parity.cases import validate_inputs
    from parity.layouts import unshuffle_kv_cache

    inp = bench.make_inputs(bench.Shape(batch=2, next_n=2, context=100, heads=8, head_dim=32, block_size=16),
                            "cpu", gen=torch.Generator().manual_seed(0))
    validate_inputs(inp)
    assert torch.equal(unshuffle_kv_cache(inp.kv_cache_preshuffled), inp.kv_cache)


def test_unknown_shape_pattern_is_an_error(capsys):
    assert bench.main(["--device", "cpu", "--backend", "torch", "--shapes", "B3-n9-*"]) == 2
    assert "matches no shape id" in capsys.readouterr().err
