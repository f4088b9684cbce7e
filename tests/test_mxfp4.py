"""The MXFP4 format (parity.problem.mxfp4) against bytes worked out by hand from the published facts (SPEC
section 10): the E2M1 table, the nibble order, UE8M0's bias, the scale word's byte order and the
block-planar cache."""
import pytest
import torch

from parity.problem import mxfp4
from parity.problem.cases import IndexerCase, build_inputs, validate_inputs
from parity.problem.reference import reference_logits

# code -> value, written out: sign in bit 3, magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6; -0 decodes to 0
TABLE = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def test_e2m1_table_has_no_nan_no_inf_and_no_negative_zero():
    got = mxfp4.e2m1_decode(torch.arange(16))
    assert got.tolist() == TABLE
    assert torch.isfinite(got).all() and not torch.signbit(got[8])


def test_encode_rounds_to_nearest_with_ties_to_the_even_code():
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.1, -0.25, 7.0, -7.0, -3.2, 0.0])
    #                 0     1.0   1.0   2.0   2.0  4.0  4.0   -0    -0     6    -6    -3
    assert mxfp4.e2m1_encode(x).tolist() == [0, 2, 2, 4, 4, 6, 6, 0, 0, 7, 15, 13, 0]
    with pytest.raises(ValueError, match="NaN"):
        mxfp4.e2m1_encode(torch.tensor([float("nan")]))


def test_element_2j_sits_in_the_low_nibble_of_byte_j():
    codes = torch.tensor([[1, 2, 15, 5]])  # 0.5, 1.0, -6.0, 3.0
    packed = mxfp4.pack_nibbles(codes)
    assert packed.tolist() == [[0x21, 0x5F]]
    assert mxfp4.unpack_nibbles(packed).tolist() == codes.tolist()


def test_ue8m0_is_a_biased_power_of_two_and_0xff_is_refused():
    got = mxfp4.ue8m0_decode(torch.tensor([127, 128, 126, 0, 254]), torch.float64)
    assert got.tolist() == [1.0, 2.0, 0.5, 2.0**-127, 2.0**127]
    with pytest.raises(ValueError, match="NaN"):
        mxfp4.ue8m0_decode(torch.tensor([255]))


def test_scale_word_byte_k_scales_group_k_little_endian():
    word = mxfp4.scale_words(torch.tensor([[126, 127, 128, 129]], dtype=torch.uint8))
    assert word.dtype == torch.int32 and word.item() == 0x81807F7E - 2**32  # top bit set: negative int32
    assert word.view(torch.uint8).tolist() == [126, 127, 128, 129]  # bytes in memory, lowest first
    assert mxfp4.scale_bytes(word).tolist() == [[126, 127, 128, 129]]
    # head_dim 64: two groups, bytes 2 and 3 are 1.0
    assert mxfp4.scale_words(torch.tensor([[130, 125]], dtype=torch.uint8)).item() == 0x7F7F7D82


def test_quantize_a_row_by_hand():
    x = torch.zeros(1, 64)
    x[0, 0], x[0, 1], x[0, 2] = 12.0, -3.0, 0.9  # group 0: amax 12, scale 12 / 6 = 2 (byte 128)
    x[0, 32] = 7.0  # group 1: 7 / 6 rounds up to 2; 7 / 2 = 3.5 is a tie, to 4.0 (code 6)
    packed, words = mxfp4.quantize(x)
    assert packed.shape == (1, 32) and words.shape == (1,)
    assert packed[0, :2].tolist() == [0xB7, 0x01]  # 6.0 = 7 low, -1.5 = 0b1011 high; 0.45 -> 0.5 = 1
    assert packed[0, 16].item() == 0x06 and int(packed[0, 2:16].sum()) == 0 and int(packed[0, 17:].sum()) == 0
    assert words.item() == 0x7F7F8080
    back = mxfp4.dequantize(packed, words)
    assert back[0, :3].tolist() == [12.0, -3.0, 1.0] and back[0, 32].item() == 8.0


def test_quantize_keeps_each_value_within_half_a_step_of_its_group():
    x = torch.randn(64, 128, generator=torch.Generator().manual_seed(0)) * 5
    packed, words = mxfp4.quantize(x)
    back = mxfp4.dequantize(packed, words)
    scale = mxfp4.ue8m0_decode(mxfp4.scale_bytes(words), torch.float64).repeat_interleave(32, dim=1)
    # the widest gap of the E2M1 grid is 4 -> 6: half of it, times the scale
    assert ((back - x.double()).abs() <= 1.0 * scale).all()
    assert (x.double().abs().reshape(64, 4, 32).amax(-1) <= 6 * scale[:, ::32]).all()


def test_cache_is_block_planar_68_bytes_a_token():
    packed = torch.arange(4 * 64, dtype=torch.int32).to(torch.uint8).view(4, 64)  # 4 tokens, D = 128
    words = torch.tensor([0x7F7F7F7F, 0x80808080 - 2**32, 0x01020304, 0x7E7E7E7E], dtype=torch.int32)
    cache = mxfp4.pack_kv_cache(packed, words, block_size=2)
    assert cache.shape == (2, 2, 1, 68) and cache.dtype == torch.uint8
    block1 = cache[1].reshape(-1)
    assert block1[:64].tolist() == packed[2].tolist() and block1[64:128].tolist() == packed[3].tolist()
    assert block1[128:132].tolist() == [4, 3, 2, 1] and block1[132:136].tolist() == [0x7E] * 4
    values, back = mxfp4.split_kv_cache(cache)
    assert torch.equal(values.reshape(4, 64), packed) and torch.equal(back.reshape(-1), words)


def test_reference_reads_the_dequantized_values():
    """The float64 reference of an mxfp4 case equals a hand-rolled sum over the decoded bytes."""
    case = IndexerCase(batch=1, next_n=1, heads=2, block_size=4, max_model_len=9, context="ctx_eq_max",
                       key_format="mxfp4", head_dim=64)
    inp = build_inputs(case)
    validate_inputs(inp)
    got = reference_logits(inp)[0]
    nb, bs = inp.kv_cache.shape[:2]
    flat = inp.kv_cache.reshape(nb, -1)
    want = []
    for t in range(9):
        blk, j = int(inp.block_tables[0, t // bs]), t % bs
        kbytes = flat[blk, j * 32:(j + 1) * 32].tolist()
        kword = flat[blk, bs * 32 + 4 * j: bs * 32 + 4 * j + 4].tolist()
        total = 0.0
        for h in range(2):
            qbytes, qword = inp.q_fp8[0, 0, h].tolist(), inp.q_sf[0, 0, h:h + 1].view(torch.uint8).tolist()
            dot = 0.0
            for d in range(64):
                kc = (kbytes[d // 2] >> (4 * (d % 2))) & 15
                qc = (qbytes[d // 2] >> (4 * (d % 2))) & 15
                dot += TABLE[kc] * 2.0 ** (kword[d // 32] - 127) * TABLE[qc] * 2.0 ** (qword[d // 32] - 127)
            total += float(inp.weights[0, h]) * max(dot, 0.0)
        want.append(total)
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=0)


@pytest.mark.parametrize("head_dim", [48, 256])
def test_head_dim_outside_one_scale_word_is_refused(head_dim):
    with pytest.raises(ValueError, match="head_dim"):
        mxfp4.quantize(torch.zeros(2, head_dim))


# --- the derived tolerance (parity.judge.checks.TOLERANCES["mxfp4"], docs/fp4.md) --------------

def test_every_product_and_every_group_partial_is_exact_in_float32():
    """The premise of the bound: E2M1 x E2M1 is a multiple of 1/4 of magnitude <= 36, so any sum of 32 of
    them (|sum| < 2**11) fits float32's 24 bits, whatever the order; times a power of two it stays exact."""
    table = torch.tensor(TABLE, dtype=torch.float64)
    products = (table[:, None] * table[None, :]).reshape(-1)
    assert torch.equal(products.float().double(), products) and (products * 4 == (products * 4).round()).all()
    g = torch.Generator().manual_seed(1)
    parts = products[torch.randint(0, 256, (2000, 32), generator=g)]
    partial32 = torch.zeros(2000, dtype=torch.float32)
    for d in torch.randperm(32, generator=g).tolist():  # any order of accumulation
        partial32 += parts[:, d].float()
    assert torch.equal(partial32.double(), parts.sum(1))
    scaled = parts.sum(1) * 2.0**-90
    assert torch.equal(scaled.float().double(), scaled)


def test_the_tolerance_covers_the_worst_fp32_kernel_and_what_ours_do():
    from parity.backends import load_backend
    from parity.judge.checks import TOLERANCES, mxfp4_rounding_bound
    from parity.problem.reference import reference_head_logits

    assert mxfp4_rounding_bound(128, 64) <= TOLERANCES["mxfp4"][0] < 2 * mxfp4_rounding_bound(128, 64)
    case = IndexerCase(batch=2, next_n=2, heads=64, max_model_len=300, key_format="mxfp4")
    inp = build_inputs(case)
    ref, mag = reference_head_logits(inp).sum(0), reference_head_logits(inp, magnitude=True).sum(0)
    out = torch.full((inp.rows, inp.max_model_len), float("-inf"))
    load_backend("torch").run("fused", inp, out)
    inside = torch.isfinite(ref)
    err = ((out.double() - ref)[inside].abs() / mag[inside])
    assert float(err.max()) < mxfp4_rounding_bound(128, 64)


def test_pairs_swapped_in_both_operands_leave_the_dot_unchanged():
    """Why the planted nibble fault swaps the keys only: a permutation applied to q and k alike is harmless."""
    from dataclasses import replace

    from parity.backends.faults_fp4 import _swap_nibbles
    case = IndexerCase(batch=2, next_n=2, key_format="mxfp4")
    inp = build_inputs(case)
    nb, bs, _, width = inp.kv_cache.shape
    flat = inp.kv_cache.reshape(nb, -1).clone()
    flat[:, : bs * 64] = _swap_nibbles(flat[:, : bs * 64])
    both = replace(inp, q_fp8=_swap_nibbles(inp.q_fp8), kv_cache=flat.view_as(inp.kv_cache))
    assert torch.equal(reference_logits(both), reference_logits(inp))
