"""The benchmark's read floor reads exactly what the logits kernels must: every key byte and scale of every
block in the block tables, once (under the Triton interpreter on the CPU)."""
import pytest
import torch

from parity.perf import bench, bench_table

pytest.importorskip("triton")
from parity.kernels.gather_read import gather_read  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _bytes_sum(inp, table) -> int:
    blocks = inp.kv_cache.view(torch.uint8).reshape(inp.kv_cache.shape[0], -1)
    return int(blocks[table.reshape(-1).long()].to(torch.int64).sum())


@pytest.mark.parametrize("programs", [1, 5, 1000])
def test_reads_every_block_of_the_tables_once(programs):
    inp = bench.make_inputs(bench.Shape(3, 1, 256, heads=8, head_dim=128), DEVICE,
                            gen=torch.Generator(device=DEVICE).manual_seed(0))
    out = torch.zeros(1000, dtype=torch.int32, device=DEVICE)
    gather_read(inp.kv_cache, inp.block_tables, out, programs=programs)
    got = int(out.to(torch.int64).sum())
    assert got == _bytes_sum(inp, inp.block_tables)
    # the sum tells blocks apart: reading block 0 in place of the first entry would not match
    other = inp.block_tables.clone()
    other.view(-1)[0] = (int(other.view(-1)[0]) + 1) % inp.kv_cache.shape[0]
    assert got != _bytes_sum(inp, other)


def _words_sum(inp, table) -> int:
    words = inp.kv_cache.view(torch.uint8).reshape(inp.kv_cache.shape[0], -1).view(torch.int32)
    return int(words[table.reshape(-1).long()].to(torch.int64).sum()) % 2**32


@pytest.mark.parametrize("programs", [1, 5])
def test_tma_variant_reads_every_block_once(programs):
    """The bulk-copy variant reads the same keys and scales: its (wrapping) sum of int32 words matches the
    blocks of the tables, and not the tables with one entry moved to another block."""
    inp = bench.make_inputs(bench.Shape(3, 1, 256, heads=8, head_dim=128), DEVICE,
                            gen=torch.Generator(device=DEVICE).manual_seed(0))
    out = torch.zeros(8, dtype=torch.int32, device=DEVICE)
    gather_read(inp.kv_cache, inp.block_tables, out, programs=programs, tma=True)
    got = int(out[:programs].to(torch.int64).sum()) % 2**32
    assert got == _words_sum(inp, inp.block_tables)
    other = inp.block_tables.clone()
    other.view(-1)[-1] = (int(other.view(-1)[-1]) + 1) % inp.kv_cache.shape[0]
    assert got != _words_sum(inp, other)


def test_refuses_shapes_it_cannot_tile():
    inp = bench.make_inputs(bench.Shape(1, 1, 48, heads=8, head_dim=96, block_size=16), "cpu",
                            gen=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="power-of-two key and scale bytes"):
        gather_read(inp.kv_cache, inp.block_tables, torch.zeros(4, dtype=torch.int32), programs=2)
    inp = bench.make_inputs(bench.Shape(1, 1, 48, heads=8, head_dim=128, block_size=16), "cpu",
                            gen=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="tma=True"):  # 16 tokens x 132 bytes: not whole rows of 128 bytes
        gather_read(inp.kv_cache, inp.block_tables, torch.zeros(4, dtype=torch.int32), programs=2, tma=True)


def test_markdown_shows_the_read_floor_where_measured():
    rows = [{"backend": "a", "path": "fused", "shape": "B1-n1-ctx64", "us": 10.0, "eager_us": 12.0, "gbps": 1.0,
             "floor_us": 5.0, "x_floor": 2.0, "pct_floor": 50.0, "read_us": 8.0, "x_read": 1.25},
            {"backend": "b", "path": "fused", "shape": "B1-n1-ctx64", "us": 20.0, "eager_us": 20.0, "gbps": 1.0,
             "floor_us": 5.0, "x_floor": 4.0, "pct_floor": 25.0}]
    text = bench_table.markdown(rows, 1000.0, "dev", launch_us=2.5)
    assert "| 8.0 | 1.25 |" in text and "| - | - |" in text and "2.5 us per launch" in text
