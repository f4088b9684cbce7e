"""Argument mapping of the third-party adapters (aiter loader, vLLM; DeepGEMM: test_deepgemm_adapter.py) against their documented
signatures, on the CPU, with fakes: a fake records what it was given and computes its answer from
those arguments alone, so a swapped or misread argument shows up as a failed parity cell."""
import sys
import textwrap
import types

import pytest
from fake_kernels import paged_logits
import torch

from parity.problem import layouts
from parity.backends import aiter as aiter_mod
from parity.backends import vllm_ops
from parity.judge.buffers import guarded_buffer
from parity.problem.cases import IndexerCase, build_inputs
from parity.problem.lengths import valid_lengths
from parity.judge.checks import TOLERANCES
from parity.run.harness import run_cell
from parity.judge.topk import compare_topk, topk_reference

CASE = IndexerCase(batch=2, next_n=2, heads=8, block_size=64, max_model_len=300, context="random")


def fake_deep_gemm(name="fp8_paged_mqa_logits", accepts_2d=True):
    calls = []
    mod = types.ModuleType("deep_gemm")
    mod.__file__ = "<fake deep_gemm>"

    def get_paged_mqa_logits_metadata(context_lens, block_kv, num_sms):
        if context_lens.dim() == 2 and not accepts_2d:
            raise RuntimeError("Assertion error: context_lens.dim() == 1")
        calls.append(("meta", context_lens.clone(), block_kv, num_sms))
        return torch.zeros(num_sms + 1, 2, dtype=torch.int32)

    def logits_fn(q, kv_cache, weights, context_lens, block_table, schedule_meta, max_context_len, clean_logits):
        calls.append(("logits", q, kv_cache, block_table, schedule_meta.shape, max_context_len, clean_logits))
        q = q[0] if isinstance(q, tuple) else q
        n = q.shape[1]
        rows = context_lens.reshape(-1) if context_lens.dim() == 2 else valid_lengths(context_lens, n)
        padded = torch.empty(q.shape[0] * n, max_context_len + 64)  # DeepGEMM aligns its own row stride
        padded[:, :max_context_len] = paged_logits(q, kv_cache, weights, block_table, rows, max_context_len)
        return padded[:, :max_context_len]

    mod.get_paged_mqa_logits_metadata = get_paged_mqa_logits_metadata
    mod.get_num_sms = lambda: 4
    setattr(mod, name, logits_fn)
    return mod, calls


def on_cpu(backend):
    backend.unsupported = lambda path, inputs: None if path in backend.paths else "no such path"
    return backend


# --- vLLM ------------------------------------------------------------------------------------------

def fake_c_ops(with_topk_tokens=True):
    seen = {}

    def top_k_per_row_decode(logits, next_n, seq_lens, topk_indices, num_rows, stride0, stride1, topk_tokens=2048):
        seen.update(stride0=stride0, stride1=stride1, num_rows=num_rows, k=topk_tokens)
        flat = logits.as_strided((num_rows, logits.shape[1]), (stride0, stride1), logits.storage_offset())
        topk_indices.copy_(topk_reference(flat, seq_lens, next_n, topk_indices.shape[1]).to(torch.int32))

    if not with_topk_tokens:
        def old(logits, next_n, seq_lens, topk_indices, num_rows, stride0, stride1):
            top_k_per_row_decode(logits, next_n, seq_lens, topk_indices, num_rows, stride0, stride1)
        return types.SimpleNamespace(top_k_per_row_decode=old), seen
    return types.SimpleNamespace(top_k_per_row_decode=top_k_per_row_decode), seen


def test_vllm_topk_reads_a_padded_view_through_its_strides():
    inp = build_inputs(CASE)
    ops, seen = fake_c_ops()
    backend = vllm_ops.make_backend(deep_gemm_utils=fake_deep_gemm()[0], c_ops=ops)
    buf = guarded_buffer((inp.rows,), CASE.max_model_len, "padded", "cpu")
    ref = paged_logits(inp.q_fp8, inp.kv_cache, inp.weights, inp.block_tables,
                       valid_lengths(inp.context_lens, 2), CASE.max_model_len)
    buf.view.copy_(ref)
    got = backend.topk_decode(buf.view, inp.context_lens, 2, 16)
    assert seen == {"stride0": CASE.max_model_len + 256, "stride1": 1, "num_rows": inp.rows, "k": 16}
    assert compare_topk(got, ref.double(), inp.context_lens, 2, 16, *TOLERANCES["e4m3fn"]).ok


def test_vllm_old_topk_op_selects_2048_only():
    ops, _ = fake_c_ops(with_topk_tokens=False)
    backend = vllm_ops.make_backend(deep_gemm_utils=fake_deep_gemm()[0], c_ops=ops)
    logits = torch.randn(4, 3000)
    assert backend.topk_decode(logits, torch.tensor([3000, 2500], dtype=torch.int32), 2, 2048).shape == (4, 2048)
    with pytest.raises(ValueError, match="k=16"):
        backend.topk_decode(logits, torch.tensor([3000, 2500], dtype=torch.int32), 2, 16)


def test_vllm_fused_uses_its_deep_gemm_wrapper():
    backend = on_cpu(vllm_ops.make_backend(deep_gemm_utils=fake_deep_gemm()[0], c_ops=fake_c_ops()[0]))
    assert run_cell(backend, "fused", "padded", CASE, "cpu")["status"] == "pass"
    missing = vllm_ops.VllmBackend(None, None, "vllm not importable: ModuleNotFoundError")
    assert "not importable" in missing.unsupported("fused", build_inputs(CASE))
    with pytest.raises(RuntimeError, match="not importable"):
        missing.topk_decode(torch.zeros(2, 8), torch.tensor([8], dtype=torch.int32), 2, 4)


# --- aiter: finding a build and loading its files without the package --------------------------------

FAKE_KERNELS = '''
CALLS = []
class _Kernel:
    def __getitem__(self, grid):
        return lambda *args, **kw: CALLS.append((grid, args, kw))
_deepgemm_fp8_paged_mqa_logits = _Kernel()
_gluon_deepgemm_fp8_paged_mqa_logits_preshuffle = _Kernel()
'''
FAKE_WRAPPER = '''
from aiter.ops.triton._triton_kernels.pa_mqa_logits import _deepgemm_fp8_paged_mqa_logits
from aiter import dtypes
{extra}
def deepgemm_fp8_paged_mqa_logits(q_fp8, kv_cache, weights, out_logits, context_lens, kv_indices, max_model_len,
                                  Preshuffle=False, KVBlockSize=1):
    assert kv_cache.shape[1] == KVBlockSize
    _deepgemm_fp8_paged_mqa_logits[(q_fp8.shape[0],)](q_fp8, kv_cache, out_logits, kv_indices, dtypes.fp8,
                                                      max_model_len, KVBlockSize=KVBlockSize)
'''


def fake_tree(root, extra=""):
    k = root / "aiter/ops/triton/_triton_kernels"
    k.mkdir(parents=True)
    (k / "pa_mqa_logits.py").write_text(FAKE_KERNELS)
    (root / "aiter/ops/triton/pa_mqa_logits.py").write_text(textwrap.dedent(FAKE_WRAPPER.format(extra=extra)))
    (root / "aiter/_version.py").write_text("__version__ = '9.9.9'\n")
    return root


def test_find_build_paths(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="aiter_path=.*no aiter/ directory"):
        aiter_mod.find_build(str(tmp_path))
    fake_tree(tmp_path)
    assert aiter_mod.find_build(str(tmp_path / "aiter")).root == tmp_path.resolve()  # the package dir itself
    monkeypatch.setenv(aiter_mod.ENV_PATH, str(tmp_path))
    build = aiter_mod.find_build()
    assert (build.found_by, build.version) == (aiter_mod.ENV_PATH, "9.9.9")


def test_loader_shims_aiter_and_passes_paged_cache_by_signature(tmp_path):
    backend = aiter_mod.AiterBackend(aiter_mod.find_build(str(fake_tree(tmp_path))))
    assert "aiter" not in sys.modules and backend.paths == ("fused", "preshuffle")
    inp = build_inputs(IndexerCase(block_size=16, fp8="e4m3fnuz"))
    out = torch.full((inp.rows, inp.max_model_len), float("-inf"))
    backend.run("fused", inp, out)
    calls = backend._loaded.kernels.CALLS
    grid, args, kw = calls[-1]
    assert args[1] is inp.kv_cache and args[2] is out and args[3] is inp.block_tables
    assert args[4] is torch.float8_e4m3fnuz and kw == {"KVBlockSize": 16}
    reason = backend.unsupported("preshuffle", inp)
    assert reason.startswith(aiter_mod.NOT_RUNNABLE) or backend.mode == "rocm"


def test_loader_names_an_import_it_cannot_satisfy(tmp_path):
    fake_tree(tmp_path, extra="from aiter.jit.core import compile_ops")
    (tmp_path / "aiter/jit").mkdir()  # a real tree has the package dirs; the missing module is named
    with pytest.raises(RuntimeError, match=r"imports aiter\.jit\.core,"):
        aiter_mod.AiterBackend(aiter_mod.find_build(str(tmp_path)))
    assert not any(n == "aiter" or n.startswith("aiter.") for n in sys.modules)


def test_per_token_view_holds_the_same_keys():
    inp = build_inputs(IndexerCase(batch=2, next_n=1, block_size=16, context="random"))
    cache, kv_indices = aiter_mod.per_token_view(inp)
    keys, scales = layouts.split_kv_cache(inp.kv_cache, inp.q_fp8.dtype)
    tok_keys, tok_scales = layouts.split_kv_cache(cache, inp.q_fp8.dtype)
    assert cache.shape[1:] == (1, 1, 132)
    for b, ctx in enumerate(inp.context_lens.tolist()):
        t = torch.arange(ctx)
        blk = inp.block_tables[b, t // 16].long()
        slot = kv_indices[b, :ctx].long()
        assert torch.equal(tok_keys[slot, 0].view(torch.uint8), keys[blk, t % 16].view(torch.uint8))
        assert torch.equal(tok_scales[slot, 0], scales[blk, t % 16])
