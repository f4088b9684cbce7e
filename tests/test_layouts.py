"""fp8 cache layouts: round trips, and a wrong layout is caught by the reference comparison."""
import pytest
import torch

from parity.problem import layouts
from parity.backends.torch_ref import TorchBackend
from parity.problem.cases import IndexerCase, build_inputs
from parity.problem.reference import gather_keys


@pytest.mark.parametrize("block_size", [1, 16, 64])
@pytest.mark.parametrize("flavour", ["e4m3fn", "e4m3fnuz"])
def test_pack_split_round_trip(block_size, flavour):
    fp8 = layouts.fp8_dtype(flavour)
    k = torch.randn(block_size * 3, 128) * 5
    k_fp8, scales = layouts.quantize_per_token(k, fp8)
    cache = layouts.pack_kv_cache(k_fp8, scales, block_size)
    assert cache.shape == (3, block_size, 1, 132) and cache.dtype == torch.uint8
    keys, sc = layouts.split_kv_cache(cache, fp8)
    assert torch.equal(keys.reshape(-1, 128).view(torch.uint8), k_fp8.view(torch.uint8))
    assert torch.equal(sc.reshape(-1), scales)
    # Scales follow all keys of the block: bytes [block_size*D, block_size*(D+4)) of each block.
    flat = cache.reshape(3, -1)
    assert torch.equal(flat[1, block_size * 128:].view(torch.float32), scales[block_size:2 * block_size])
    # Per-token quantization: amax maps to the fp8 maximum, dequantized keys stay close.
    assert torch.allclose(k_fp8.float().abs().amax(1), torch.full((block_size * 3,), layouts.fp8_max(fp8)))
    assert torch.allclose(k_fp8.float() * scales[:, None], k, rtol=0.07, atol=1e-3)


def test_preshuffle_offsets_match_spec_formula():
    offs = layouts.preshuffle_offsets(64, 128)
    for t, d in [(0, 0), (1, 0), (0, 1), (15, 15), (16, 0), (0, 16), (37, 101), (63, 127)]:
        want = (t // 16) * 16 * 128 + (d // 16) * 256 + (t % 16) * 16 + (d % 16)
        assert int(offs[t, d]) == want
    assert torch.equal(torch.sort(offs.reshape(-1)).values, torch.arange(64 * 128))  # a permutation


@pytest.mark.parametrize("block_size", [16, 64])
def test_preshuffle_round_trip_keeps_scales(block_size):
    inp = build_inputs(IndexerCase(block_size=block_size))
    pre = layouts.preshuffle_kv_cache(inp.kv_cache)
    assert not torch.equal(pre, inp.kv_cache)
    assert torch.equal(layouts.unshuffle_kv_cache(pre), inp.kv_cache)
    nb = pre.shape[0]
    assert torch.equal(pre.reshape(nb, -1)[:, block_size * 128:], inp.kv_cache.reshape(nb, -1)[:, block_size * 128:])


def test_preshuffle_rejects_block_size_not_multiple_of_16():
    cache = torch.zeros(2, 8, 1, 132, dtype=torch.uint8)
    with pytest.raises(ValueError, match="multiples of 16"):
        layouts.preshuffle_kv_cache(cache)


def test_wrong_layout_is_caught():
    """The plain cache handed to the preshuffle reader must not reproduce the reference."""
    inp = build_inputs(IndexerCase(batch=2, next_n=1, block_size=64))
    inp.kv_cache_preshuffled = inp.kv_cache  # mislabelled layout
    out = torch.full((2, inp.max_model_len), float("-inf"))
    TorchBackend().run("preshuffle", inp, out)
    good = torch.full_like(out, float("-inf"))
    TorchBackend().run("fused", inp, good)
    assert not torch.allclose(out, good, equal_nan=True)


def test_gather_keys_follows_shuffled_block_table():
    inp = build_inputs(IndexerCase(batch=2, next_n=1, block_size=16))
    keys, scales = layouts.split_kv_cache(inp.kv_cache, inp.q_fp8.dtype)
    k, s = gather_keys(inp, 1)
    t = int(inp.context_lens[1]) - 1
    blk = int(inp.block_tables[1, t // 16])
    assert torch.equal(k[t], keys[blk, t % 16].double()) and float(s[t]) == float(scales[blk, t % 16])
