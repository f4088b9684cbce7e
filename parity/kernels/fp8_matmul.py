"""The fallback probe of the benchmark's compute floor: a plain fp8 matrix product in Triton, for devices
where ``torch._scaled_mm`` is missing or refuses (older torch, a ROCm build without hipBLASLt fp8).

Only its speed is used; its values are checked by a test so that a probe which computes nothing cannot
pass for a fast one. ``b`` is given as ``(N, K)``, K contiguous, the operand layout fp8 tensor-core
instructions take without a transpose.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def fp8_matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K,
                      BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, NUM_STAGES: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), tl.float32)
    for k0 in tl.range(0, K, BK, num_stages=NUM_STAGES):
        a = tl.load(a_ptr + rm[:, None].to(tl.int64) * K + (k0 + rk)[None, :])
        b = tl.load(b_ptr + rn[None, :].to(tl.int64) * K + (k0 + rk)[:, None])
        acc = tl.dot(a, b, acc)
    tl.store(c_ptr + rm[:, None].to(tl.int64) * N + rn[None, :], acc.to(tl.bfloat16))


def fp8_matmul(a, b_nk, c, block_m: int = 128, block_n: int = 128, block_k: int = 128,
               num_warps: int = 8, num_stages: int = 3) -> None:
    """``c = a @ b_nk.T`` in bf16 with fp32 accumulation. ``a`` ``(M, K)`` and ``b_nk`` ``(N, K)`` fp8,
    contiguous; M, N, K multiples of the blocks (a probe, not a general GEMM: no edge masking)."""
    import torch

    M, K = a.shape
    N = b_nk.shape[0]
    if b_nk.shape[1] != K or tuple(c.shape) != (M, N) or c.dtype != torch.bfloat16:
        raise ValueError(f"fp8_matmul wants a (M, K), b_nk (N, K), c (M, N) bf16; got a {tuple(a.shape)}, "
                         f"b_nk {tuple(b_nk.shape)}, c {tuple(c.shape)} {c.dtype}")
    if M % block_m or N % block_n or K % block_k:
        raise ValueError(f"fp8_matmul needs M, N, K multiples of {block_m}, {block_n}, {block_k}; got {M}, {N}, {K}")
    if not (a.is_contiguous() and b_nk.is_contiguous() and c.is_contiguous()):
        raise ValueError("fp8_matmul needs contiguous a, b_nk and c")
    fp8_matmul_kernel[(M // block_m, N // block_n)](a, b_nk, c, M, N, K, BM=block_m, BN=block_n, BK=block_k,
                                                    NUM_STAGES=num_stages, num_warps=num_warps)
