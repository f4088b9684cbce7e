"""The FP4 adapters (FlashInfer's fp4_paged_mqa_logits, aiter's FlyDSL pa_mqa_logits_fp4) against fakes of
each release (tests/fake_fp4.py), on the CPU; DeepGEMM's FP4 call is in test_deepgemm_adapter.py. No
machine here has the SM100 or gfx950 these kernels need: with the hardware check left on, every cell
must skip and say so."""
from dataclasses import replace

import pytest
import torch
from fake_fp4 import fake_aiter_flydsl, fake_flashinfer

from parity.backends import flashinfer, load_backend
from parity.backends.aiter import fp4 as aiter_fp4
from parity.problem.cases import IndexerCase, build_inputs
from parity.run.harness import failed_checks, run_cell

F = dict(heads=64, key_format="mxfp4", topk=128)
SM100 = (10, 0)


# --- FlashInfer --------------------------------------------------------------------------------------

FI_CASES = [
    IndexerCase(batch=3, next_n=2, block_size=64, max_model_len=300, context="ctx_eq_max_first", **F),
    IndexerCase(batch=4, next_n=3, block_size=32, max_model_len=200, context="dummy_rows", **F),
    IndexerCase(batch=2, next_n=4, block_size=64, max_model_len=130, context="ctx_eq_max", logits_dtype="bfloat16",
                **F),
]


@pytest.mark.parametrize("generation", ["first", "latest"])
@pytest.mark.parametrize("case", FI_CASES, ids=lambda c: c.id)
def test_flashinfer_passes_against_each_release(generation, case):
    mod, calls = fake_flashinfer(generation)
    backend = flashinfer.make_backend(module=mod, arch=SM100)
    result = run_cell(backend, "fused", "padded", case, "cpu")
    assert result["status"] == "pass", failed_checks(result)
    assert calls[-1]["output_dtype"] == build_inputs(case).logits_dtype and calls[-1]["seq_lens"].dim() == 1


def test_flashinfer_names_the_arguments_of_the_release_it_finds():
    assert flashinfer.make_backend(module=fake_flashinfer("first")[0]).names == {
        "q_sf": "sf_q", "seq_lens": "context_lens", "block_tables": "block_table", "max_seq_len": "max_context_len"}
    odd = fake_flashinfer()[0]
    odd.fp4_paged_mqa_logits = lambda q, scales, kv_fused, weights, lens, table, n, *, output_dtype=None: None
    reason = flashinfer.make_backend(module=odd).reason
    assert "a signature this adapter does not know" in reason and "scales" in reason


def test_flashinfer_skips_without_sm100_and_outside_its_shapes():
    mod, _ = fake_flashinfer()
    inp = build_inputs(FI_CASES[0])
    assert "needs SM100" in flashinfer.make_backend(module=mod).unsupported("fused", inp)  # CPU inputs
    assert "needs SM100" in flashinfer.make_backend(module=mod, arch=(9, 0)).unsupported("fused", inp)
    result = run_cell(flashinfer.make_backend(module=mod), "fused", "exact", FI_CASES[0], "cpu")
    assert result["status"] == "skip" and "needs SM100" in result["reason"]
    at100 = flashinfer.make_backend(module=mod, arch=SM100)
    assert "heads in (64,), got 8" in at100.unsupported("fused", build_inputs(IndexerCase(key_format="mxfp4")))
    assert "no per-row lengths" in at100.unsupported("fused", build_inputs(replace(FI_CASES[0], row_lens="per_row")))
    assert "flashinfer not importable" in load_backend("flashinfer").unsupported("fused", inp) or \
        "needs SM100" in load_backend("flashinfer").unsupported("fused", inp)


def test_flashinfer_junk_past_the_rows_is_judged_by_the_consumer_rule():
    # The fake leaves junk past each row's length, as FlashInfer may; the adapter copies it as it is.
    mod, _ = fake_flashinfer()
    backend = flashinfer.make_backend(module=mod, arch=SM100)
    assert run_cell(backend, "fused", "exact", FI_CASES[1], "cpu")["status"] == "pass"
    result = run_cell(backend, "fused", "exact", FI_CASES[1], "cpu", consumer="unbounded")
    assert result["status"] == "fail" and any(c.startswith("mask") for c in failed_checks(result))


def test_the_flashinfer_fake_refuses_what_flashinfer_refuses():
    mod, _ = fake_flashinfer()
    inp = build_inputs(FI_CASES[0])
    args = (inp.q_fp8, inp.q_sf, inp.kv_cache, inp.weights, inp.block_tables, inp.context_lens, inp.max_model_len)
    with pytest.raises(ValueError, match="requires q.dtype == uint8"):
        mod.fp4_paged_mqa_logits(inp.q_fp8.view(torch.int8), *args[1:])
    with pytest.raises(ValueError, match="is_kv_sf_interleaved=True requires block_size == 128"):
        mod.fp4_paged_mqa_logits(*args, is_kv_sf_interleaved=True)
    with pytest.raises(ValueError, match="seq_lens must be an int32 1-D"):
        mod.fp4_paged_mqa_logits(*args[:5], inp.context_lens.view(3, 1), args[6])


# --- aiter FlyDSL --------------------------------------------------------------------------------------

AITER_CASES = [
    IndexerCase(batch=2, next_n=2, block_size=64, max_model_len=300, context="ctx_eq_max_first", **F),
    IndexerCase(batch=2, next_n=3, block_size=64, max_model_len=200, context="dummy_rows", **F),
]


@pytest.mark.parametrize("generation", ["4028", "decode"])
@pytest.mark.parametrize("case", AITER_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("buffer", ["exact", "padded"])
def test_aiter_fp4_passes_against_each_release(generation, case, buffer):
    mod, calls = fake_aiter_flydsl(generation)
    result = run_cell(aiter_fp4.make_backend(module=mod, on_gfx950=True), "fused", buffer, case, "cpu")
    assert result["status"] == "pass", failed_checks(result)
    if generation == "4028":
        assert calls[-1]["parallel_unit_num"] % case.next_n == 0


def test_aiter_fp4_layouts_by_hand():
    """One block of 64 tokens, D = 128: token t's chunk c bytes at [c, t], its scale byte at
    (t % 16) * 4 + t // 16 of chunk c's 64; q's head 16 * mi + m scale at [c, m, mi]."""
    case = IndexerCase(batch=1, next_n=1, block_size=64, max_model_len=64, context="ctx_eq_max", **F)
    inp = build_inputs(case)
    kv, kvs = aiter_fp4.to_kv_layout(inp)
    assert kv.shape == (inp.kv_cache.shape[0], 1, 4, 64, 16) and kvs.shape == (inp.kv_cache.shape[0], 1, 4, 64)
    block = inp.kv_cache[0].reshape(-1)
    t, c = 37, 2
    assert kv[0, 0, c, t].tolist() == block[t * 64 + c * 16: t * 64 + c * 16 + 16].tolist()
    assert int(kvs[0, 0, c, (t % 16) * 4 + t // 16]) == int(block[64 * 64 + 4 * t + c])
    qs = aiter_fp4.to_q_scale(inp)
    assert qs.shape == (1, 1, 1, 4, 16, 4)
    h = 16 * 3 + 5
    assert int(qs[0, 0, 0, c, 5, 3]) == int(inp.q_sf[0, 0, h:h + 1].view(torch.uint8)[c])


def test_aiter_fp4_skips_without_gfx950_and_outside_its_shapes():
    mod, _ = fake_aiter_flydsl()
    inp = build_inputs(AITER_CASES[0])
    assert "needs gfx950" in aiter_fp4.make_backend(module=mod).unsupported("fused", inp)
    result = run_cell(aiter_fp4.make_backend(module=mod), "fused", "exact", AITER_CASES[0], "cpu")
    assert result["status"] == "skip" and "needs gfx950" in result["reason"]
    on = aiter_fp4.make_backend(module=mod, on_gfx950=True)
    assert "kv_block_size 64" in on.unsupported("fused", build_inputs(replace(AITER_CASES[0], block_size=32)))
    assert "multiple of 128" in on.unsupported("fused", build_inputs(replace(AITER_CASES[0], head_dim=64)))
    assert "float32 logits only" in on.unsupported("fused", build_inputs(replace(AITER_CASES[0],
                                                                                 logits_dtype="bfloat16")))
    unknown = fake_aiter_flydsl()[0]
    unknown.flydsl_pa_mqa_logits_fp4 = lambda q_packed, q_scale, kv_cache, kv_scale, block_tables, weights, \
        context_lens, out_logits, *, block_k=256: out_logits
    assert "signature this adapter does not know" in aiter_fp4.make_backend(module=unknown).reason


def test_aiter_fp4_scales_written_token_major_are_caught():
    """#4028's cache writer put the scales in token order while the kernel reads them interleaved."""
    mod, _ = fake_aiter_flydsl()
    backend = aiter_fp4.make_backend(module=mod, on_gfx950=True)
    real = aiter_fp4.to_kv_layout

    def token_major(inputs):
        kv, kvs = real(inputs)
        t = torch.arange(64)
        return kv, kvs[..., (t % 16) * 4 + t // 16].contiguous()  # undo the interleave

    aiter_fp4.to_kv_layout = token_major
    try:
        result = run_cell(backend, "fused", "exact", AITER_CASES[0], "cpu")
    finally:
        aiter_fp4.to_kv_layout = real
    assert result["status"] == "fail" and any(c.startswith("values") for c in failed_checks(result))
