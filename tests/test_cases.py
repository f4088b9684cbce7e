"""Cases carry the named edges, inputs are real (fp8, shuffled blocks), and bad inputs are named."""
from dataclasses import replace

import pytest
import torch

from parity.cases import CONTEXT_PATTERNS, IndexerCase, build_inputs, full_cases, quick_cases, validate_inputs


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
