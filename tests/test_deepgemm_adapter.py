"""The DeepGEMM adapter against fakes of each generation of its call (parity.backends.deepgemm.GENERATIONS),
on the CPU. A fake enforces what that release's host code asserts, computes its answer from the
arguments alone, and, like the real kernel without clean_logits, leaves junk past each row's length: a
misread argument or a wrong context_lens layout shows up as a failed parity cell, and the junk as a
finding for an unbounded reader only."""
import types

import pytest
from fake_kernels import paged_logits, paged_logits_fp4
import torch

from parity.backends import deepgemm
from parity.problem.cases import IndexerCase, build_inputs
from parity.problem.lengths import valid_lengths
from parity.run.harness import failed_checks, run_cell

CASE = IndexerCase(batch=2, next_n=2, heads=8, block_size=64, max_model_len=300, context="random")
SM100, SM90 = (10, 0), (9, 0)
JUNK = 7.0  # what the fake leaves past a row's length when it does not clean


def fp4_host_checks(q, q_sf, kv_cache, weights, context_lens, logits_dtype, clean_logits, arch_major):
    """What attention.hpp asserts on the FP4 path (is_fp4) before it launches anything."""
    assert arch_major == 10, "Assertion error: arch_major == 10"
    B, n, H, half = q.shape
    D = half * 2
    assert H in (8, 16, 32, 64) and D in (64, 128), f"num_heads {H}, head_dim {D}"
    assert q.is_contiguous() and q.dtype == torch.int8, "q_fp.scalar_type() == kPackedFP4 (int8)"
    assert tuple(q_sf.shape) == (B, n, H) and q_sf.is_contiguous() and q_sf.dtype == torch.int32, "q_sf"
    nb, block_kv, heads_kv, width = kv_cache.shape
    assert block_kv in (32, 64) and heads_kv == 1 and width == D // 2 + 4, "fp4_with_sf_bytes == head_dim / 2 + 4"
    assert kv_cache.stride(1) == width and kv_cache.stride(3) == 1 and kv_cache.dtype == torch.uint8
    assert kv_cache.stride(0) % 4 == 0
    assert tuple(weights.shape) == (B * n, H) and weights.stride(1) == 1
    assert weights.dtype == torch.float32 or (weights.dtype == torch.bfloat16 and logits_dtype == torch.bfloat16)
    assert context_lens.dim() == 2 and tuple(context_lens.shape) == (B, n) and context_lens.dtype == torch.int32
    assert logits_dtype in (torch.float32, torch.bfloat16) and not clean_logits


def fake_release(generation: str, max_next_n: int | None = None, arch_major: int = 10):
    """generation: '1d' (2025-09), '1d2d' (2025-11), '2d' (2026-04, fp8_fp4_paged_mqa_logits)."""
    calls = []
    mod = types.ModuleType("deep_gemm")
    mod.__file__, mod.__version__ = f"<fake deep_gemm {generation}>", {"1d": "2.1.0", "1d2d": "2.1.1", "2d": "2.6.1"}[generation]

    def get_paged_mqa_logits_metadata(context_lens, block_kv, num_sms, indices=None):
        if generation == "1d" and context_lens.dim() != 1:
            raise RuntimeError("Assertion error (attention.hpp:153): get_shape<1>(context_lens)")
        if generation == "2d" and context_lens.dim() != 2:
            raise RuntimeError("Assertion error (attention.hpp:199): context_lens.dim() == 2")
        assert context_lens.dtype == torch.int32 and context_lens.is_contiguous() and block_kv in (32, 64)
        calls.append(("meta", context_lens.clone()))
        meta = torch.zeros(num_sms + 1, 2, dtype=torch.int32)
        meta[0] = torch.tensor([int(context_lens.sum()), context_lens.numel()])  # ties the schedule to its lens
        return meta

    def logits_fn(q, kv_cache, weights, context_lens, block_table, schedule_meta, max_context_len,
                  clean_logits=False, logits_dtype=torch.float32, indices=None):
        q_sf = None
        if generation == "2d":
            assert isinstance(q, tuple) and len(q) == 2, "fp8_fp4 takes q as (values, scales)"
            q, q_sf = q
        if q_sf is not None:
            fp4_host_checks(q, q_sf, kv_cache, weights, context_lens, logits_dtype, clean_logits, arch_major)
            calls.append(("logits", q.shape[1], True, clean_logits, logits_dtype, "fp4"))
            rows = context_lens.reshape(-1)
            logits = paged_logits_fp4(q, q_sf, kv_cache, weights, block_table, rows, max_context_len, masked=False)
            beyond = torch.arange(max_context_len)[None, :] >= rows.view(-1, 1).long()
            return logits.masked_fill(beyond, JUNK).to(logits_dtype)
        B, n = q.shape[:2]
        assert q.is_contiguous() and weights.is_contiguous() and weights.shape == (B * n, q.shape[2])
        if max_next_n and n > max_next_n:
            raise RuntimeError(f"Assertion error: next_n == 1 or next_n == 2 (got {n})")
        two_d = context_lens.dim() == 2
        if clean_logits and two_d:
            raise RuntimeError("Assertion error (attention.hpp:421): not is_context_lens_2d")
        assert schedule_meta[0].tolist() == [int(context_lens.sum()), context_lens.numel()], "stale schedule"
        calls.append(("logits", n, two_d, clean_logits, logits_dtype))
        rows = context_lens.reshape(-1) if two_d else valid_lengths(context_lens, n)
        aligned = (max_context_len + 255) // 256 * 256
        full = torch.full((B * n, aligned), float("nan"), dtype=logits_dtype)  # DeepGEMM's own row stride
        logits = paged_logits(q, kv_cache, weights, block_table, rows, max_context_len, masked=False)
        beyond = torch.arange(max_context_len)[None, :] >= rows.view(-1, 1).long()
        full[:, :max_context_len] = logits.masked_fill(beyond, float("-inf") if clean_logits else JUNK)
        return full[:, :max_context_len]

    mod.get_paged_mqa_logits_metadata = get_paged_mqa_logits_metadata
    mod.get_num_sms = lambda: 4
    setattr(mod, "fp8_fp4_paged_mqa_logits" if generation == "2d" else "fp8_paged_mqa_logits", logits_fn)
    return mod, calls


def backend_for(generation, arch=SM100, max_next_n=None, **opts):
    mod, calls = fake_release(generation, max_next_n)
    backend = deepgemm.DeepGemmBackend(mod, arch=arch, **opts)
    return backend, calls


@pytest.mark.parametrize("generation,two_d,cleaned", [("1d", False, True), ("1d2d", False, True), ("2d", True, False)])
@pytest.mark.parametrize("buffer", ["exact", "padded"])
def test_each_generation_passes_parity(generation, two_d, cleaned, buffer):
    backend, calls = backend_for(generation)
    result = run_cell(backend, "fused", buffer, CASE, "cpu")
    assert result["status"] == "pass", failed_checks(result)
    inp = build_inputs(CASE)
    lens = next(c[1] for c in calls if c[0] == "meta")
    want = valid_lengths(inp.context_lens, 2).view(2, 2) if two_d else inp.context_lens
    assert torch.equal(lens, want.to(torch.int32))
    assert [c[2:4] for c in calls if c[0] == "logits"] == [(two_d, cleaned)] * 2
    info = backend.describe()
    assert (info["context_lens_2d"], info["clean_logits"], info["q_as_tuple"]) == (two_d, cleaned, generation == "2d")
    assert (deepgemm.NOT_CLEANED in info["caveats"]) == (not cleaned)


def test_noclean_never_asks_deepgemm_to_clean():
    backend, calls = backend_for("1d2d", clean_logits=False)
    assert backend.name == "deepgemm:noclean"
    assert run_cell(backend, "fused", "padded", CASE, "cpu")["status"] == "pass"
    assert {c[3] for c in calls if c[0] == "logits"} == {False}
    assert deepgemm.NOT_CLEANED in backend.describe()["caveats"]


def test_clean_is_refused_where_the_release_cannot_clean():
    backend, _ = backend_for("2d", clean_logits=True)
    assert "rejects clean_logits" in backend.unsupported("fused", build_inputs(CASE))
    backend, calls = backend_for("1d", clean_logits=True)
    assert run_cell(backend, "fused", "exact", CASE, "cpu")["status"] == "pass"
    assert {c[3] for c in calls if c[0] == "logits"} == {True}


@pytest.mark.parametrize("generation,opts,cleans", [("2d", {}, False), ("1d2d", {"clean_logits": False}, False),
                                                    ("1d2d", {"clean_logits": True}, True), ("1d", {}, True)])
def test_the_adapter_leaves_what_deepgemm_left_to_the_consumer_rule(generation, opts, cleans):
    """No -inf is written on the kernel's behalf: without clean_logits the junk past each row's length is
    don't-care for a length-bounded reader and a mask finding for an unbounded one; with it (1-D lengths)
    both pass."""
    for consumer, passes in (("length-bounded", True), ("unbounded", cleans)):
        backend, calls = backend_for(generation, **opts)
        result = run_cell(backend, "fused", "exact", CASE, "cpu", consumer=consumer)
        assert (result["status"] == "pass") is passes, (consumer, failed_checks(result))
        assert {c[3] for c in calls if c[0] == "logits"} == {cleans}
        mask = next(f for f in result["findings"] if f["check"] == "mask")
        junk = mask["details"]["past_valid_len"]
        assert (junk["count"] > 0) is not cleans and junk["rows"] == ([] if cleans else list(range(CASE.rows)))
        if not passes:
            assert failed_checks(result) == [f"mask: {mask['summary']}"] and "unbounded reader needs -inf" in mask["summary"]


def test_a_swapped_argument_fails():
    mod, _ = fake_release("2d")
    real = mod.fp8_fp4_paged_mqa_logits
    mod.fp8_fp4_paged_mqa_logits = lambda q, kv, w, *rest: real(q, kv, w.flip(0), *rest)
    result = run_cell(deepgemm.DeepGemmBackend(mod, arch=SM100), "fused", "exact", CASE, "cpu")
    assert result["status"] == "fail" and any(c.startswith("values") for c in failed_checks(result))


@pytest.mark.parametrize("generation", ["1d", "2d"])
def test_split_runs_next_n_4_as_two_calls_on_sm90(generation):
    case = IndexerCase(batch=2, next_n=4, heads=32, block_size=64, max_model_len=300, context="random")
    backend, _ = backend_for(generation, arch=SM90, max_next_n=2)
    assert "next_n <= 2" in backend.unsupported("fused", build_inputs(case))
    backend, calls = backend_for(generation, arch=SM90, max_next_n=2, split_next_n=True)
    assert backend.unsupported("fused", build_inputs(case)) is None
    result = run_cell(backend, "fused", "padded", case, "cpu")
    assert result["status"] == "pass", failed_checks(result)
    assert [c[1] for c in calls if c[0] == "logits"] == [2, 2, 2, 2]  # two slices, two harness calls


def test_prepare_holds_the_schedule_and_run_prepared_repeats():
    backend, calls = backend_for("2d")
    inp = build_inputs(CASE)
    p = backend.prepare("fused", inp)
    assert [c[0] for c in calls] == ["meta"]
    first = backend.run_prepared(p)
    again = backend.run_prepared(p)
    assert [c[0] for c in calls] == ["meta", "logits", "logits"]
    assert torch.equal(first[0], again[0])
    out = torch.full((inp.rows, inp.max_model_len), float("-inf"))
    backend.finish(p, first, out)
    assert (out[0, int(valid_lengths(inp.context_lens, 2)[0]):] == JUNK).all()  # as the kernel left it


def test_logits_dtype_goes_to_the_fp4_api_only():
    backend, calls = backend_for("2d", logits_dtype="bfloat16")
    inp = build_inputs(CASE)
    out = torch.full((inp.rows, inp.max_model_len), float("-inf"))
    backend.run("fused", inp, out)
    assert calls[-1][4] is torch.bfloat16 and backend.name == "deepgemm:bf16"
    backend, _ = backend_for("1d2d", logits_dtype="bfloat16")
    assert "no logits_dtype" in backend.unsupported("fused", inp)
    with pytest.raises(ValueError, match="logits_dtype must be one of"):
        deepgemm.DeepGemmBackend(None, "x", logits_dtype="fp16")


def test_reasons():
    inp = build_inputs(CASE)
    assert "not importable" in deepgemm.DeepGemmBackend(None, "deep_gemm not importable: X").unsupported("fused", inp)
    assert "NVIDIA" in deepgemm.make_backend(module=fake_release("2d")[0]).unsupported("fused", inp)  # CPU inputs
    empty = types.ModuleType("deep_gemm")
    assert "has no fp8_paged_mqa_logits" in deepgemm.make_backend(module=empty).unsupported("fused", inp)
    backend, _ = backend_for("2d", arch=SM90)
    assert "no stage1 path" in backend.unsupported("stage1", inp)
    assert "heads in (32, 64), got 8" in backend.unsupported("fused", inp)
    big = build_inputs(IndexerCase(heads=64, block_size=16))
    assert "block_kv in (64,), got 16" in backend.unsupported("fused", big)
    assert "sm90 and sm100" in backend_for("2d", arch=(8, 0))[0].unsupported("fused", inp)
    assert "e4m3fn only" in backend.unsupported("fused", build_inputs(IndexerCase(fp8="e4m3fnuz")))


def test_describe_before_any_call_says_who_writes_the_mask():
    assert deepgemm.NOT_CLEANED in backend_for("2d")[0].describe()["caveats"]  # the fp4 API never cleans
    assert deepgemm.NOT_CLEANED in backend_for("1d2d", clean_logits=False)[0].describe()["caveats"]
    assert backend_for("1d2d")[0].describe()["clean_logits"] is None  # learnt at the first call


def test_describe_says_its_stores_are_not_guarded():
    for backend in (backend_for("1d")[0], deepgemm.DeepGemmBackend(None, "missing")):
        info = backend.describe()
        assert info["guarded_stores"] is False and deepgemm.UNGUARDED in info["caveats"]


def test_registered_variants():
    from parity.backends import load_backend
    names = {s: load_backend(s).name for s in ("deepgemm", "deepgemm:noclean", "deepgemm:clean", "deepgemm:split")}
    assert names == {"deepgemm": "deepgemm", "deepgemm:noclean": "deepgemm:noclean",
                     "deepgemm:clean": "deepgemm:clean", "deepgemm:split": "deepgemm:split"}


# --- MXFP4 through fp8_fp4_paged_mqa_logits (sm100 only) ---------------------------------------------

FP4_CASES = [
    IndexerCase(batch=2, next_n=2, heads=8, block_size=64, max_model_len=300, context="ctx_eq_max_first",
                key_format="mxfp4"),
    IndexerCase(batch=3, next_n=3, heads=64, head_dim=64, block_size=32, max_model_len=200, context="random",
                row_lens="per_row", key_format="mxfp4"),
    IndexerCase(batch=2, next_n=1, heads=16, block_size=64, max_model_len=130, context="ctx_eq_max",
                logits_dtype="bfloat16", key_format="mxfp4"),
]


@pytest.mark.parametrize("case", FP4_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("buffer", ["exact", "padded"])
def test_fp4_cells_pass_against_a_fake_that_asserts_what_the_fp4_path_asserts(case, buffer):
    backend, calls = backend_for("2d")
    result = run_cell(backend, "fused", buffer, case, "cpu")
    assert result["status"] == "pass", failed_checks(result)
    assert {c[5] for c in calls if c[0] == "logits"} == {"fp4"}


def test_fp4_skips_say_it_needs_sm100():
    inp = build_inputs(FP4_CASES[0])
    assert "needs SM100" in deepgemm.make_backend(module=fake_release("2d")[0]).unsupported("fused", inp)  # CPU
    assert "needs SM100" in backend_for("2d", arch=SM90)[0].unsupported("fused", inp)
    assert "fp8_fp4_paged_mqa_logits" in backend_for("1d2d")[0].unsupported("fused", inp)
    assert "rejects clean_logits" in backend_for("2d", clean_logits=True)[0].unsupported("fused", inp)
    h128 = build_inputs(IndexerCase(heads=128, key_format="mxfp4", batch=1, next_n=1))
    assert "heads in (8, 16, 32, 64), got 128" in backend_for("2d")[0].unsupported("fused", h128)
    result = run_cell(deepgemm.make_backend(module=fake_release("2d")[0]), "fused", "exact", FP4_CASES[0], "cpu")
    assert result["status"] == "skip" and "needs SM100" in result["reason"]


def test_the_fake_refuses_what_deepgemm_refuses():
    """The fake is only worth its pass if it rejects what the host code rejects: q as uint8, a GPU not sm100."""
    inp = build_inputs(FP4_CASES[0])
    mod, _ = fake_release("2d")
    lens = inp.row_lens.to(torch.int32).view(2, 2)
    meta = mod.get_paged_mqa_logits_metadata(lens, 64, 4)
    args = (inp.kv_cache, inp.weights, lens, inp.block_tables, meta, inp.max_model_len, False, torch.float32)
    with pytest.raises(AssertionError, match="kPackedFP4"):
        mod.fp8_fp4_paged_mqa_logits((inp.q_fp8, inp.q_sf), *args)
    assert mod.fp8_fp4_paged_mqa_logits((inp.q_fp8.view(torch.int8), inp.q_sf), *args).shape == (4, 300)
    sm90, _ = fake_release("2d", arch_major=9)
    with pytest.raises(AssertionError, match="arch_major == 10"):
        sm90.fp8_fp4_paged_mqa_logits((inp.q_fp8.view(torch.int8), inp.q_sf), *args)


def test_a_misread_fp4_scale_fails_the_cell():
    mod, _ = fake_release("2d")
    real = mod.fp8_fp4_paged_mqa_logits
    mod.fp8_fp4_paged_mqa_logits = lambda q, *rest: real((q[0], q[1].roll(1, dims=-1)), *rest)  # heads' words
    result = run_cell(deepgemm.DeepGemmBackend(mod, arch=SM100), "fused", "exact", FP4_CASES[0], "cpu")
    assert result["status"] == "fail" and any(c.startswith("values") for c in failed_checks(result))
