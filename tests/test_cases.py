"""Cases carry the named edges, inputs are real (fp8, shuffled blocks), and bad inputs are named."""
from dataclasses import replace

import pytest
import torch

from parity.problem.cases import CONTEXT_PATTERNS, IndexerCase, build_inputs, validate_inputs
from parity.problem.grids import full_cases, quick_cases, stress_cases


def test_quick_grid_size_and_edges():
    quick = quick_cases()
    assert len(quick) >= 12
    assert {c.context for c in quick} == set(CONTEXT_PATTERNS)
    assert {1, 16, 64} <= {c.block_size for c in quick}
    assert {"e4m3fn", "e4m3fnuz"} <= {c.fp8 for c in quick}


def test_full_grid_covers_every_edge():
    full = full_cases()
    assert {(c.block_size, c.next_n) for c in full} >= {(bs, n) for bs in (1, 16, 64) for n in (1, 2, 4)}
    assert any(c.batch == 1 for c in full) and any(c.max_model_len % 64 for c in full)
    assert any(c.heads == 64 and c.head_dim == 128 for c in full)
    # the indexer's shape (H=64, D=128, fp8) with 2-D lengths and with bf16 logits at every next_n the Hopper
    # kernels' forms take apart (2 and 4), in the full level or the stress level
    fp8_h64 = [c for c in full + stress_cases() if c.heads == 64 and c.head_dim == 128 and c.key_format == "fp8"]
    for n in (2, 4):
        assert any(c.next_n == n and c.row_lens == "per_row" for c in fp8_h64), n
        assert any(c.next_n == n and c.logits_dtype == "bfloat16" for c in fp8_h64), n


@pytest.mark.parametrize("case", quick_cases(), ids=lambda c: c.id)
def test_inputs_are_real(case):
    inp = build_inputs(case)
    validate_inputs(inp)
    lens = inp.context_lens.tolist()
    assert all(case.next_n <= n <= case.max_model_len for n in lens)
    if case.context == "ctx_eq_max":
        assert lens[-1] == case.max_model_len
    if case.context == "ctx_eq_next_n":
        assert lens[0] == case.next_n
    if case.context.startswith("block_multiple"):
        off = {"block_multiple": 0, "block_multiple_plus1": 1, "block_multiple_minus1": -1}[case.context]
        assert all((n - off) % case.block_size == 0 for n in lens)
    assert inp.q_fp8.float().abs().sum() > 0 and inp.kv_cache.float().sum() > 0
    used = torch.cat([inp.block_tables[b, : -(-n // case.block_size)] for b, n in enumerate(lens)])
    assert used.unique().numel() == used.numel()  # no block shared between sequences
    assert inp.kv_cache.shape[0] > used.numel()  # spare blocks exist


def test_block_tables_are_shuffled():
    inp = build_inputs(IndexerCase(batch=3, next_n=1, block_size=16, context="ctx_eq_max"))
    row = inp.block_tables[-1, : 500 // 16]
    assert not torch.equal(row, torch.sort(row).values)


def test_seeds_give_fresh_data_and_are_reproducible():
    a, b = build_inputs(IndexerCase(seed=0)), build_inputs(IndexerCase(seed=1))
    assert not torch.equal(a.kv_cache[:2], b.kv_cache[:2])
    assert torch.equal(build_inputs(IndexerCase(seed=1)).kv_cache, b.kv_cache)


@pytest.mark.parametrize("field,value", [("next_n", 5), ("block_size", 0), ("context", "nope"), ("fp8", "e5m2"),
                                         ("head_dim", 100)])
def test_bad_case_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        IndexerCase(**{field: value})


def _bad(**changes):
    inp = build_inputs(IndexerCase(batch=2, next_n=2, context="ctx_eq_max_first"))
    return replace(inp, **{k: v(inp) for k, v in changes.items()})


@pytest.mark.parametrize("changes,message", [
    ({"q_fp8": lambda i: i.q_fp8.float()}, "q_fp8 must be fp8"),
    ({"q_fp8": lambda i: i.q_fp8[0]}, "q_fp8 must be fp8"),
    ({"weights": lambda i: i.weights.double()}, "weights must be float32"),
    ({"context_lens": lambda i: torch.tensor([501, 4], dtype=torch.int32)}, r"context_lens\[0\] = 501 exceeds max_model_len"),
    ({"context_lens": lambda i: torch.tensor([10, -1], dtype=torch.int32)}, r"context_lens\[1\] = -1 is negative"),
    ({"context_lens_2d": lambda i: torch.tensor([[3, 501], [0, 0]], dtype=torch.int32)},
     r"context_lens_2d\[0\] = \[3, 501\] must lie in \[0, context_lens\[0\]"),
    ({"context_lens_2d": lambda i: torch.zeros(2, 3, dtype=torch.int32)}, r"context_lens_2d must be int32 of shape \(2, 2\)"),
    ({"context_lens": lambda i: i.context_lens.long()}, "context_lens must be int32"),
    ({"block_tables": lambda i: i.block_tables + 1000}, "block_tables.*outside"),
    ({"kv_cache": lambda i: i.kv_cache[..., :100]}, "kv_cache last dim"),
    ({"weights": lambda i: i.weights.masked_fill(torch.ones_like(i.weights, dtype=torch.bool), float("nan"))}, "NaN"),
])
def test_bad_inputs_are_named(changes, message):
    with pytest.raises(ValueError, match=message):
        validate_inputs(_bad(**changes))


# --- the stress level: one group of cases per bug class seen in the wild -----------------------------

def test_stress_grid_covers_every_class():
    stress = stress_cases()
    lens = {c.id: build_inputs(c, compact=True).context_lens.tolist() for c in stress if not c.gpu_only}
    assert any(0 in v and 1 in v for v in lens.values()) and any(set(v) <= {0, 1} for v in lens.values())
    assert {65, 96, 128, 256} <= {c.batch for c in stress}
    big = [c for c in stress if c.block_id_floor * (c.block_size * (c.head_dim + 4)) >= 2**31]
    assert big and all(c.gpu_only for c in big)
    assert 163840 in {c.max_model_len for c in stress} and any(c.max_model_len > 2**18 for c in stress)
    assert any(c.row_lens == "per_row" for c in stress) and any(c.logits_dtype == "bfloat16" for c in stress)
    assert any(c.topk_mode == "near_ties" for c in stress)
    assert {1, 16, 64} <= {c.block_size for c in stress if c.next_n == 3 and c.heads == 64}


def test_rows_with_no_valid_position_are_legal_and_empty():
    case = IndexerCase(batch=4, next_n=2, context="dummy_rows")
    inp = build_inputs(case)
    validate_inputs(inp)
    assert inp.context_lens.tolist()[:3] == [0, 1, case.max_model_len]
    assert inp.row_lens.tolist()[:4] == [0, 0, 0, 1]  # context 1, next_n 2: only the last row sees position 0


def test_per_row_lengths_are_drawn_within_each_context_and_end_at_it():
    inp = build_inputs(IndexerCase(batch=5, next_n=3, row_lens="per_row"))
    c2, ctx = inp.context_lens_2d, inp.context_lens
    assert c2.dtype == torch.int32 and tuple(c2.shape) == (5, 3)
    assert bool((c2 >= 0).all() and (c2 <= ctx[:, None]).all()) and c2[:, -1].tolist() == ctx.tolist()
    assert inp.row_lens.tolist() == c2.reshape(-1).tolist()


def test_high_block_ids_move_the_blocks_not_the_logits():
    from parity.problem.reference import reference_logits

    case = IndexerCase(batch=2, next_n=2, block_size=16, context="ctx_eq_max", block_id_floor=600)
    high, compact = build_inputs(case), build_inputs(case, compact=True)
    used = high.block_tables[:, : -(-case.max_model_len // 16)]
    assert int(used.min()) >= 600 and high.kv_cache.shape[0] == compact.kv_cache.shape[0] + 600
    validate_inputs(high)
    assert torch.equal(reference_logits(high), reference_logits(compact))


def test_near_ties_sit_at_the_kth_place():
    from parity.problem.reference import reference_logits

    case = IndexerCase(batch=2, next_n=2, heads=64, max_model_len=1000, topk_mode="near_ties", topk=64)
    ref = reference_logits(build_inputs(case))
    for r in (1, 3):  # the last row of each sequence
        v = ref[r][torch.isfinite(ref[r])].sort(descending=True).values
        kth = v[case.topk - 1]
        tied = (v - kth).abs() <= 1e-5 * kth.abs()  # a few float32 ulps
        assert int(tied.sum()) >= case.topk // 4 and bool(tied[case.topk]), (r, v[case.topk - 3:case.topk + 3])


# --- MXFP4 inputs -----------------------------------------------------------------------------------

def test_the_fp8_ids_stay_as_they_were():
    """The key format joined IndexerCase without renaming a single fp8 cell."""
    assert [c.id for c in quick_cases()[:3]] == ["B3-n2-bs64-ctx_eq_max", "B3-n2-bs64-ctx_eq_max_first",
                                                 "B2-n4-bs16-ctx_eq_next_n"]
    assert all("mxfp4" not in c.id for c in quick_cases() if c.key_format == "fp8")
    assert IndexerCase(key_format="mxfp4", head_dim=64).id == "B3-n2-bs64-random-D64-mxfp4"


@pytest.mark.parametrize("fields,message", [
    ({"key_format": "fp4"}, "key_format must be one of"),
    ({"key_format": "mxfp4", "fp8": "e4m3fnuz"}, "fp8 names the flavour of fp8 keys"),
    ({"key_format": "mxfp4", "head_dim": 256}, "head_dim must be one of"),
    ({"key_format": "mxfp4", "topk_mode": "near_ties"}, "near_ties"),
])
def test_bad_mxfp4_case_names_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        IndexerCase(**fields)


def test_mxfp4_inputs_are_packed_e2m1_with_block_planar_scales():
    case = IndexerCase(batch=2, next_n=3, heads=16, block_size=16, key_format="mxfp4", context="ctx_eq_max_first")
    inp = build_inputs(case)
    validate_inputs(inp)
    assert inp.q_fp8.dtype == torch.uint8 and tuple(inp.q_fp8.shape) == (2, 3, 16, 64)
    assert inp.q_sf.dtype == torch.int32 and tuple(inp.q_sf.shape) == (2, 3, 16)
    assert inp.kv_cache.shape[1:] == (16, 1, 68) and inp.head_dim == 128 and inp.kv_cache_preshuffled is None
    assert torch.equal(inp.weights, inp.weights.bfloat16().float())  # what a bf16-weight kernel sees
    assert case.cache_bytes < IndexerCase(batch=2, next_n=3, heads=16, block_size=16).cache_bytes


def _bad_fp4(**changes):
    inp = build_inputs(IndexerCase(batch=2, next_n=2, key_format="mxfp4"))
    return replace(inp, **{k: v(inp) for k, v in changes.items()})


@pytest.mark.parametrize("changes,message", [
    ({"q_sf": lambda i: None}, r"q_sf must be int32 UE8M0 scale words of shape \(2, 2, 8\)"),
    ({"q_sf": lambda i: i.q_sf.float()}, "q_sf must be int32"),
    ({"q_fp8": lambda i: i.q_fp8.view(torch.int8)}, "q_fp8 must be uint8 E2M1 pairs"),
    ({"q_sf": lambda i: torch.full_like(i.q_sf, -1)}, r"q_sf holds a UE8M0 NaN \(0xFF\)"),
    ({"kv_cache": lambda i: i.kv_cache[..., :36]}, r"kv_cache last dim must be head_dim / 2 \+ 4 = 68"),
    ({"kv_cache": lambda i: i.kv_cache.clone().fill_(0xFF)}, "kv_cache scale words hold a UE8M0 NaN"),
])
def test_bad_mxfp4_inputs_are_named(changes, message):
    with pytest.raises(ValueError, match=message):
        validate_inputs(_bad_fp4(**changes))


def test_mxfp4_blocks_above_a_floor_keep_the_logits():
    from parity.problem.reference import reference_logits

    case = IndexerCase(batch=2, next_n=2, block_size=16, context="ctx_eq_max", block_id_floor=40, key_format="mxfp4")
    high, compact = build_inputs(case), build_inputs(case, compact=True)
    validate_inputs(high)
    assert high.kv_cache.shape[0] == compact.kv_cache.shape[0] + 40
    assert torch.equal(reference_logits(high), reference_logits(compact))


def test_the_grids_carry_fp4_cells():
    quick = [c for c in quick_cases() if c.key_format == "mxfp4"]
    full = [c for c in full_cases() if c.key_format == "mxfp4"]
    assert quick and {64, 128} <= {c.head_dim for c in quick} and len(quick) <= 3  # CI runs these interpreted
    assert {1, 16, 32, 64} <= {c.block_size for c in full} and {1, 2, 3, 4} <= {c.next_n for c in full}
    assert any(c.heads == 64 and c.head_dim == 128 for c in full)
    assert {"per_row"} <= {c.row_lens for c in full} and {"bfloat16"} <= {c.logits_dtype for c in full}
    assert "dummy_rows" in {c.context for c in full}
