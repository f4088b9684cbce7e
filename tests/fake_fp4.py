"""Fakes of the third-party FP4 indexer kernels, for the adapter tests on the CPU. Each declares its
release's signature, raises what that release's host code raises (checks read in its sources: FlashInfer's
``_check_fp4_paged_mqa_logits_supported``, aiter's wrapper and kernel-build asserts), and computes its
answer from the arguments alone, reading them as the kernel addresses them: a misread argument or layout
shows up as a failed parity cell."""
import math
import types

import torch
from fake_kernels import decode_mxfp4, paged_logits_fp4

from parity.problem.lengths import valid_lengths

JUNK = 7.0


# --- FlashInfer fp4_paged_mqa_logits ------------------------------------------------------------------

def _flashinfer_checks(q, q_sf, kv_fused, weights, block_tables, seq_lens, sf_vec_size, output_dtype, epi_dtype,
                       is_kv_sf_interleaved):
    name = "fp4_paged_mqa_logits"
    if q.dim() != 4:
        raise ValueError(f"{name}: q must be 4-D [batch_size, next_n, num_heads, head_dim/2 packed]")
    if kv_fused.dim() != 4 or kv_fused.dtype != torch.uint8:
        raise ValueError(f"{name}: kv_fused must be 4-D uint8 [num_blocks, block_size, 1, head_dim/2 + 4]")
    B, n, H, half = q.shape
    D, bs = 2 * half, kv_fused.shape[1]
    if tuple(weights.shape) != (B * n, H) or weights.dtype != torch.float32:
        raise ValueError(f"{name}: weights must be float32 [{B * n}, {H}]")
    if q.dtype != torch.uint8:
        raise ValueError(f"{name} requires q.dtype == uint8 (packed FP4 e2m1, two per byte); got {q.dtype}")
    if q_sf.dtype != torch.int32 or tuple(q_sf.shape) != (B, n, H):
        raise ValueError(f"{name}: q_sf must be an int32 [B={B}, next_n={n}, H={H}] tensor")
    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    if output_dtype not in dtypes or epi_dtype not in dtypes:
        raise ValueError(f"{name} supports output/epi dtype in {{float32, float16, bfloat16}}")
    if D != 128 or H != 64:
        raise ValueError(f"{name} requires head_dim == 128 and num_heads == 64; got {D}, {H}")
    if sf_vec_size != 32:
        raise ValueError(f"{name}: sf_vec_size must be 32 (MXFP4 block scaling)")
    if not 1 <= n <= 4:
        raise ValueError(f"{name} supports next_n in 1..4; got next_n={n}")
    if bs not in (32, 64, 128):
        raise ValueError(f"{name}: block_size must be 32, 64 or 128; got {bs}")
    if is_kv_sf_interleaved and bs != 128:
        raise ValueError(f"{name}: is_kv_sf_interleaved=True requires block_size == 128")
    if kv_fused.shape[2] != 1 or kv_fused.shape[-1] != half + 4:
        raise ValueError(f"{name}: kv_fused must be [num_blocks, block_size, 1, {half + 4}]")
    # (the release also wants every tensor on q's CUDA device; the fake runs where the CPU run does)
    if seq_lens.dtype != torch.int32 or seq_lens.dim() != 1 or seq_lens.shape[0] != B:
        raise ValueError(f"{name}: seq_lens must be an int32 1-D [batch_size] tensor")
    if block_tables.dtype != torch.int32 or block_tables.dim() != 2 or block_tables.shape[0] != B:
        raise ValueError(f"{name}: block_tables must be an int32 2-D [batch_size, max_blocks] tensor")
    if block_tables.shape[1] > 1 and block_tables.stride(1) != 1:
        raise ValueError(f"{name}: block_tables' innermost stride must be 1")


def _flashinfer_compute(calls, q, q_sf, kv_fused, weights, block_tables, seq_lens, max_seq_len, output_dtype):
    B, n = q.shape[:2]
    calls.append({"output_dtype": output_dtype, "seq_lens": seq_lens.clone(), "max_seq_len": max_seq_len})
    padded = math.ceil(max_seq_len / 256) * 256  # its own storage: columns rounded up, written unconditionally
    storage = torch.full((B * n, padded), float("nan"), dtype=output_dtype)
    rows = valid_lengths(seq_lens, n)
    logits = paged_logits_fp4(q, q_sf, kv_fused, weights, block_tables, rows, max_seq_len, masked=False)
    past = torch.arange(max_seq_len)[None, :] >= rows.view(-1, 1)
    written = (seq_lens.long() > 0).repeat_interleave(n)  # rows of a length-0 request are never written
    storage[written, :max_seq_len] = logits.masked_fill(past, JUNK)[written].to(output_dtype)
    return storage[:, :max_seq_len]


def fake_flashinfer(generation: str = "latest"):
    """generation: 'first' (the #4365 merge: sf_q, context_lens, block_table, max_context_len) or 'latest'
    (q_sf, block_tables, seq_lens, max_seq_len: the table now before the lengths)."""
    calls = []
    mod = types.ModuleType("flashinfer")
    mod.__file__, mod.__version__ = f"<fake flashinfer {generation}>", "0.6.fake"

    if generation == "first":
        def fp4_paged_mqa_logits(q, sf_q, kv_fused, weights, context_lens, block_table, max_context_len, *,
                                 sf_vec_size=32, output_dtype=torch.bfloat16, epi_dtype=torch.float32,
                                 num_epi_subtiles=1, is_kv_sf_interleaved=False, schedule_meta=None, out=None):
            _flashinfer_checks(q, sf_q, kv_fused, weights, block_table, context_lens, sf_vec_size, output_dtype,
                               epi_dtype, is_kv_sf_interleaved)
            return _flashinfer_compute(calls, q, sf_q, kv_fused, weights, block_table, context_lens,
                                       max_context_len, output_dtype)
    else:
        def fp4_paged_mqa_logits(q, q_sf, kv_fused, weights, block_tables, seq_lens, max_seq_len, *,
                                 sf_vec_size=32, output_dtype=torch.bfloat16, epi_dtype=torch.float32,
                                 is_kv_sf_interleaved=False, schedule_meta=None, out=None):
            _flashinfer_checks(q, q_sf, kv_fused, weights, block_tables, seq_lens, sf_vec_size, output_dtype,
                               epi_dtype, is_kv_sf_interleaved)
            return _flashinfer_compute(calls, q, q_sf, kv_fused, weights, block_tables, seq_lens, max_seq_len,
                                       output_dtype)
    mod.fp4_paged_mqa_logits = fp4_paged_mqa_logits
    return mod, calls


# --- aiter FlyDSL pa_mqa_logits_fp4 -------------------------------------------------------------------

def _aiter_build_asserts(heads, head_dim, block_k, kv_block_size, num_warps):
    """build_pa_mqa_logits_fp4_module's asserts."""
    assert head_dim % 128 == 0, f"head_dim must be a multiple of 128 (MFMA K), got {head_dim}"
    assert heads % 16 == 0, f"heads must be a multiple of 16, got {heads}"
    n_tiles = block_k // 16
    assert n_tiles % num_warps == 0, f"block_k={block_k} -> N_TILES must be a multiple of num_warps"
    assert kv_block_size % 16 == 0 and block_k % kv_block_size == 0, "kv_block_size"
    ntpw = n_tiles // num_warps
    assert ntpw == 4, "packed kvs assumes NTPW=4"
    assert -(-ntpw // (kv_block_size // 16)) == 1, "packed kvs assumes N_PHYS=1 (NTPW nts share one phys)"
    assert heads // 16 <= 8, "m_tiles > 8 not supported. Use heads <= 128."


def _aiter_kernel(q, q_scale, kv_cache, kv_scale, block_tables, weights, context_lens, out, next_n, kv_block_size,
                  weight_scale, rows_of):
    """What the kernel reads and writes, address by address (aiter/ops/flydsl/kernels/pa_mqa_logits_fp4.py):
    16-byte K chunks, one dword of four token-tiles' scales, q scales by [kt, chunk, head % 16, head // 16],
    bf16 weights, stores only inside each row's causal window, at row * out.stride(0)."""
    assert kv_cache.dtype == torch.uint8 and kv_scale.dtype == torch.uint8 and q_scale.dtype == torch.uint8
    assert q.dtype in (torch.uint8, torch.int8) and weights.dtype == torch.bfloat16
    assert block_tables.dtype == torch.int32 and block_tables.is_contiguous() and context_lens.dtype == torch.int32
    assert out.dtype == torch.float32 and out.stride(-1) == 1
    H, half = q.shape[-2], q.shape[-1]
    kt = 2 * half // 128
    bs = kv_block_size
    kvf, kvsf = kv_cache.reshape(-1), kv_scale.reshape(-1)
    stride_block, stride_sblock = kt * 4 * bs * 16, kt * 4 * bs
    for b in range(context_lens.shape[0]):
        ctx = int(context_lens[b])
        for i in range(next_n):
            row, end = rows_of(b, i), ctx - (next_n - 1 - i)
            if end <= 0:
                continue
            t = torch.arange(end)
            phys = block_tables[b, t // bs].long()
            tb = t % bs
            keys, kexp = [], []
            for k in range(kt):
                for c in range(4):
                    base = phys * stride_block + k * 4 * bs * 16 + c * bs * 16 + tb * 16
                    keys.append(kvf[base[:, None] + torch.arange(16)])  # (end, 16) bytes
                    s = phys * stride_sblock + k * 4 * bs + c * bs + (tb % 16) * 4 + (tb // 16) % 4
                    kexp.append(kvsf[s].long())
            kb = torch.cat(keys, dim=1)  # (end, D/2)
            kwords = torch.stack(kexp, dim=1)  # (end, 4 * kt) exponents
            qrow = q[row] if q.dim() == 3 else q[b, i]
            qs = q_scale[row] if q_scale.dim() == 5 else q_scale[b, i]  # (kt, 4, 16, pad)
            h = torch.arange(H)
            qexp = qs[:, :, h % 16, h // 16].permute(2, 0, 1).reshape(H, 4 * kt).long()
            kv = _decode_chunks(kb, kwords)
            qv = _decode_chunks(qrow, qexp)
            dots = (qv @ kv.T).relu()  # (H, end)
            w = weights[row].float()
            out[row, :end] = (w[:, None] * dots).sum(0) * weight_scale


def _decode_chunks(packed, exps):
    """Packed bytes (..., D/2) and one UE8M0 byte per 32 elements (..., D/32) -> float32 (..., D)."""
    words = torch.zeros(*exps.shape[:-1], dtype=torch.int32)
    vals = decode_mxfp4(packed, words.fill_(0x7F7F7F7F))  # scale 1.0; the chunk scales follow
    group = torch.arange(vals.shape[-1]) // 32
    return vals * torch.pow(2.0, (exps[..., group] - 127).float())


def fake_aiter_flydsl(generation: str = "4028"):
    """generation: '4028' (flydsl_pa_mqa_logits_fp4, q (B, next_n, H, D/2)) or 'decode'
    (flydsl_pa_mqa_logits_fp4_decode, q (B * next_n, H, D/2))."""
    calls = []
    mod = types.ModuleType("aiter.ops.flydsl")
    mod.__file__ = f"<fake aiter.ops.flydsl {generation}>"

    if generation == "4028":
        def flydsl_pa_mqa_logits_fp4(q_fp4, q_scale, kv_cache, kv_scale, block_tables, weights, context_lens,
                                     max_seq_len, *, weight_scale=1.0, next_n=1, block_k=256, kv_block_size=64,
                                     num_warps=4, parallel_unit_num=512, out=None, cta_info=None, total_ctas=None,
                                     stream=None):
            batch, q_next_n, heads, packed = q_fp4.shape
            if q_next_n != next_n:
                raise ValueError(f"q_fp4 next_n dim ({q_next_n}) != next_n arg ({next_n}).")
            if (cta_info is None) != (total_ctas is None):
                raise ValueError("Pass both cta_info and total_ctas, or neither.")
            if parallel_unit_num % next_n:
                raise ValueError(f"parallel_unit_num={parallel_unit_num} must be a multiple of next_n={next_n}")
            if parallel_unit_num // next_n < batch:
                raise ValueError("compute_varctx_schedule: parallel_unit_num//next_n < batches would drop batches.")
            _aiter_build_asserts(heads, packed * 2, block_k, kv_block_size, num_warps)
            if out is None:
                out = torch.full((batch * next_n, max_seq_len), float("-inf"))
            else:
                out.fill_(float("-inf"))
            calls.append({"next_n": next_n, "parallel_unit_num": parallel_unit_num, "out_ptr": out.data_ptr()})
            _aiter_kernel(q_fp4, q_scale, kv_cache, kv_scale, block_tables, weights, context_lens, out, next_n,
                          kv_block_size, weight_scale, lambda b, i: b * next_n + i)
            return out
        mod.flydsl_pa_mqa_logits_fp4 = flydsl_pa_mqa_logits_fp4
    else:
        def flydsl_pa_mqa_logits_fp4_decode(q_fp4, q_scale, kv_cache, kv_scale, block_tables, weights, context_lens,
                                            max_seq_len, *, next_n_max, cu_seq_q=None, split_ctx_len=None,
                                            weight_scale=1.0, block_k=256, kv_block_size=64, num_warps=4,
                                            parallel_unit_num=None, out=None, stream=None):
            if q_fp4.ndim != 3:
                raise ValueError("flydsl_pa_mqa_logits_fp4_decode expects packed q_fp4 [total_q, heads, head_dim/2], "
                                 f"got shape {tuple(q_fp4.shape)}.")
            total_q, heads, packed = q_fp4.shape
            batch = context_lens.shape[0]
            if next_n_max <= 0:
                raise ValueError(f"next_n_max must be positive, got {next_n_max}.")
            if cu_seq_q is None and total_q != batch * next_n_max:
                raise ValueError(f"fixed decode expects total_q=batch*next_n_max={batch * next_n_max}, got {total_q}.")
            _aiter_build_asserts(heads, packed * 2, block_k, kv_block_size, num_warps)
            if out is None:
                out = torch.full((total_q, max_seq_len), float("-inf"))
            calls.append({"next_n_max": next_n_max, "out_ptr": out.data_ptr()})
            _aiter_kernel(q_fp4, q_scale, kv_cache, kv_scale, block_tables, weights, context_lens, out, next_n_max,
                          kv_block_size, weight_scale, lambda b, i: b * next_n_max + i)
            return out
        mod.flydsl_pa_mqa_logits_fp4_decode = flydsl_pa_mqa_logits_fp4_decode
    return mod, calls
