"""Fake aiter builds, written into a directory by :func:`make_tree`, laid out like two real releases:

* ``"0.1.7"``: wrapper ``aiter/ops/triton/pa_mqa_logits.py``, kernels ``_triton_kernels/pa_mqa_logits.py``,
  a per-token cache (``kv_indices`` are token slots), ChunkK 64, unmasked chunk stores, and the causal
  rule ``t <= context_len - i``.
* ``"main"`` (ROCm/aiter at e4048607): wrapper ``aiter/ops/triton/attention/pa_mqa_logits.py``, kernels
  under ``_triton_kernels/attention/``, Gluon kernels in ``gluon/pa_mqa_logits.py``; paged cache with
  ``KVBlockSize``; ChunkK 256; SplitKV from the CU count; fused stores masked by ``max_model_len``,
  stage1 stores unmasked; the causal rule ``t <= context_len - next_n + i`` for the paged kernels and
  ``t <= context_len - i`` for the ragged ones; the fused wrapper returns a value read from its launch,
  and given a ``VarCtxSchedule`` launches ``TotalCuCount * WavePerEU`` programs on its Triton path.

The kernels and wrappers are ours: one Triton kernel whose constexpr switches reproduce those
store/mask behaviours, and wrappers with the builds' signatures (facts, not code). ``rocm=True``
also writes the ``aiter`` package modules the wrappers import, so the tree imports as a package.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

KERNELS = '''
import triton
import triton.language as tl


@triton.jit
def _deepgemm_fp8_paged_mqa_logits(Q, s_qb, s_qn, s_qh, K, s_kblk, s_ktok, S, s_sblk, s_stok, lens, prefix, idx, s_idx,
                           W, s_w, Out, s_oh, s_orow, max_model_len, batch, next_n, split_kv,
                           HEADS: tl.constexpr, D: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr,
                           STAGE1: tl.constexpr, RAGGED: tl.constexpr, MASK_STORE: tl.constexpr,
                           SPEC_RULE: tl.constexpr):
    pid = tl.program_id(0)
    i = pid % next_n
    b = (pid // next_n) % batch
    split = pid // (next_n * batch)
    start = 0
    if RAGGED:
        start = tl.load(prefix + b)
        ctx = tl.load(prefix + b + 1) - start
    else:
        ctx = tl.load(lens + b)
    per = tl.cdiv(tl.cdiv(ctx, CHUNK), split_kv) * CHUNK
    lo = split * per
    hi = tl.minimum(ctx, lo + per)
    if SPEC_RULE:
        last = ctx - next_n + i
    else:
        last = ctx - i
    row = b * next_n + i
    h = tl.arange(0, HEADS)
    d = tl.arange(0, D)
    for c0 in range(lo, hi, CHUNK):
        t = c0 + tl.arange(0, CHUNK)
        live = t < ctx
        if RAGGED:
            blk = tl.load(idx + start + t, mask=live, other=0)
            off = t * 0
        else:
            blk = tl.load(idx + b * s_idx + t // BLOCK, mask=live, other=0)
            off = t % BLOCK
        k = tl.load(K + blk[:, None] * s_kblk + off[:, None] * s_ktok + d[None, :], mask=live[:, None], other=0.0)
        s = tl.load(S + blk * s_sblk + off * s_stok, mask=live, other=0.0)
        q = tl.load(Q + b * s_qb + i * s_qn + h[:, None] * s_qh + d[None, :])
        w = tl.load(W + row * s_w + h)
        qk = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32))) * s[None, :]
        qk = tl.maximum(qk, 0.0) * w[:, None]
        qk = tl.where((t <= last)[None, :], qk, float("-inf"))
        if STAGE1:
            ptr = Out + h[:, None] * s_oh + row * s_orow + t[None, :]
            if MASK_STORE:
                tl.store(ptr, qk, mask=(t < max_model_len)[None, :])
            else:
                tl.store(ptr, qk)
        else:
            ptr = Out + row * s_orow + t
            if MASK_STORE:
                tl.store(ptr, tl.sum(qk, axis=0), mask=t < max_model_len)
            else:
                tl.store(ptr, tl.sum(qk, axis=0))
'''

# Shared by both layouts' wrappers: argument plumbing into the one fake kernel.
LAUNCH = '''
def _args(q, keys, scales, lens, prefix, idx, w, out, mml, split, chunk, block, stage1, ragged, masked, spec,
          **options):
    B, n, H, D = q.shape
    o_h, o_row = (out.stride(0), out.stride(1)) if stage1 else (0, out.stride(0))
    args = (q, q.stride(0), q.stride(1), q.stride(2), keys, keys.stride(0), keys.stride(1), scales, scales.stride(0),
            scales.stride(1), lens, prefix, idx, idx.stride(0), w, w.stride(0), out, o_h, o_row, mml, B, n, split)
    return args, dict(HEADS=H, D=D, CHUNK=chunk, BLOCK=block, STAGE1=stage1, RAGGED=ragged, MASK_STORE=masked,
                      SPEC_RULE=spec, **options)


def _per_token(kv, D):
    flat = kv.reshape(kv.shape[0], -1)
    return flat[:, :D].view(dtypes.fp8)[:, None, :], flat[:, D:].view(torch.float32)


def _paged(kv, D):
    nb, bs = kv.shape[0], kv.shape[1]
    flat = kv.reshape(nb, -1)
    return flat[:, : bs * D].view(dtypes.fp8).view(nb, bs, D), flat[:, bs * D :].view(torch.float32)
'''

WRAPPER_017 = '''
import torch

from aiter.ops.triton._triton_kernels.pa_mqa_logits import _deepgemm_fp8_paged_mqa_logits
from aiter.ops.triton._triton_kernels.pa_mqa_logits import _deepgemm_fp8_paged_mqa_logits as _deepgemm_fp8_paged_mqa_logits_stage1
from aiter import dtypes
{launch}

def deepgemm_fp8_paged_mqa_logits_stage1(q_fp8, kv_cache_fp8, weights, out_qk, context_lens, kv_indices, max_model_len):
    B, n, H, D = q_fp8.shape
    assert H % 32 == 0
    keys, scales = _per_token(kv_cache_fp8, D)
    a, kw = _args(q_fp8, keys, scales, context_lens, context_lens, kv_indices, weights, out_qk, max_model_len, 5, 64, 1,
                  True, False, False, False)
    _deepgemm_fp8_paged_mqa_logits_stage1[(B * n * 5,)](*a, **kw)


def deepgemm_fp8_paged_mqa_logits(q_fp8, kv_cache_fp8, weights, out_logits, context_lens, kv_indices, max_model_len,
                                  ChunkK=64, SplitKV=5):
    B, n, H, D = q_fp8.shape
    keys, scales = _per_token(kv_cache_fp8, D)
    a, kw = _args(q_fp8, keys, scales, context_lens, context_lens, kv_indices, weights, out_logits, max_model_len,
                  SplitKV, ChunkK, 1, False, False, False, False)
    _deepgemm_fp8_paged_mqa_logits[(B * n * SplitKV,)](*a, **kw)
'''

WRAPPER_MAIN = '''
import torch

from aiter import dtypes
from aiter.jit.utils.chip_info import get_gfx
from aiter.ops.triton._triton_kernels.attention.pa_mqa_logits import _deepgemm_fp8_paged_mqa_logits
from aiter.ops.triton._triton_kernels.attention.pa_mqa_logits import _deepgemm_fp8_paged_mqa_logits as _deepgemm_fp8_paged_mqa_logits_stage1
from aiter.ops.triton._triton_kernels.attention.pa_mqa_logits import _deepgemm_fp8_paged_mqa_logits as _deepgemm_fp8_paged_mqa_logits_ragged_k
from aiter.ops.triton._triton_kernels.attention.pa_mqa_logits import _deepgemm_fp8_paged_mqa_logits as _deepgemm_fp8_paged_mqa_logits_stage1_ragged_k
from aiter.ops.triton.gluon.pa_mqa_logits import _gluon_deepgemm_fp8_paged_mqa_logits_preshuffle
from aiter.ops.triton.utils.device_info import get_num_sms
{extra}
enable_gluon_pa_mqa_logits = get_gfx() in ("gfx942", "gfx950")
{launch}

def deepgemm_fp8_paged_mqa_logits_ragged_k(q_fp8, kv_cache_fp8, weights, out_logits, prefix_sum_context_lens,
                                           kv_indices, max_model_len, ChunkK=64, SplitKV=5):
    B, n, H, D = q_fp8.shape
    keys, scales = _per_token(kv_cache_fp8, D)
    a, kw = _args(q_fp8, keys, scales, prefix_sum_context_lens, prefix_sum_context_lens, kv_indices, weights,
                  out_logits, max_model_len, SplitKV, ChunkK, 1, False, True, True, False)
    _deepgemm_fp8_paged_mqa_logits_ragged_k[(B * n * SplitKV,)](*a, **kw)


def deepgemm_fp8_paged_mqa_logits_stage1_ragged_k(q_fp8, kv_cache_fp8, weights, out_qk, prefix_sum_context_lens,
                                                  kv_indices, max_model_len):
    B, n, H, D = q_fp8.shape
    assert H % 32 == 0
    keys, scales = _per_token(kv_cache_fp8, D)
    a, kw = _args(q_fp8, keys, scales, prefix_sum_context_lens, prefix_sum_context_lens, kv_indices, weights, out_qk,
                  max_model_len, 5, 64, 1, True, True, False, False)
    _deepgemm_fp8_paged_mqa_logits_stage1_ragged_k[(B * n * 5,)](*a, **kw)


def deepgemm_fp8_paged_mqa_logits_stage1(q_fp8, kv_cache_fp8, weights, out_qk, context_lens, kv_indices,
                                         max_model_len, ChunkQ=64, ChunkK=256, TotalCuCount=None, WavePerEU=2):
    if TotalCuCount is None:
        TotalCuCount = get_num_sms()
    B, n, H, D = q_fp8.shape
    split = (max(1, TotalCuCount // (B * n * (H // ChunkQ))) + 4) // 5 * 5 * WavePerEU
    assert H % ChunkQ == 0
    keys, scales = _paged(kv_cache_fp8, D)
    a, kw = _args(q_fp8, keys, scales, context_lens, context_lens, kv_indices, weights, out_qk, max_model_len, split,
                  ChunkK, kv_cache_fp8.shape[1], True, False, False, True, waves_per_eu=WavePerEU)
    _deepgemm_fp8_paged_mqa_logits_stage1[(B * n * split,)](*a, **kw)


def deepgemm_fp8_paged_mqa_logits_schedule(batch_size, next_n, context_lens, max_model_len, ChunkK=256,
                                           TotalCuCount=None, WavePerEU=2):
    return torch.ones(1, dtype=torch.int32, device=context_lens.device)  # read only by Gluon kernels


def deepgemm_fp8_paged_mqa_logits(q_fp8, kv_cache, weights, out_logits, context_lens, kv_indices, max_model_len,
                                  Preshuffle=False, KVBlockSize=1, ChunkK=256, TotalCuCount=None, WavePerEU=2,
                                  VarCtxSchedule=None):
    if TotalCuCount is None:
        TotalCuCount = get_num_sms()
    B, n, H, D = q_fp8.shape
    assert kv_cache.shape[1] == KVBlockSize
    split = (max(1, TotalCuCount // (B * n)) + 4) // 5 * 5 * WavePerEU
    if enable_gluon_pa_mqa_logits:
        return _gluon_deepgemm_fp8_paged_mqa_logits_preshuffle(q_fp8)
    assert not Preshuffle, "Preshuffle mode is only supported on gluon kernel."
    keys, scales = _paged(kv_cache, D)
    {before}
    a, kw = _args(q_fp8, keys, scales, context_lens, context_lens, kv_indices, weights, out_logits, max_model_len,
                  split, ChunkK, KVBlockSize, False, False, True, True, waves_per_eu=WavePerEU)
    # With a VarCtx schedule the grid is one program per CU wave, the work split stays SplitKV per row.
    grid = (TotalCuCount * WavePerEU,) if VarCtxSchedule is not None else (B * n * split,)
    kernel = _deepgemm_fp8_paged_mqa_logits[grid](*a, **kw)
    {after}
    return kernel.hash
'''

GLUON_MAIN = '''
from aiter.ops.triton.gluon.pa_decode_gluon import get_cdna_version

_CDNA = get_cdna_version()


def _gluon_deepgemm_fp8_paged_mqa_logits_preshuffle(*args):
    raise RuntimeError("an AMD-only kernel was called")
'''

# rocm=True: the package modules that the stand-ins replace elsewhere, as a ROCm install has them.
ROCM_MODULES = {
    "aiter/__init__.py": "from aiter import dtypes  # noqa: F401\n",
    "aiter/dtypes.py": "import torch\nfp8 = torch.float8_e4m3fn\n",
    "aiter/jit/__init__.py": "",
    "aiter/jit/utils/__init__.py": "",
    "aiter/jit/utils/chip_info.py": "def get_gfx():\n    return 'gfx90a'  # an AMD arch without aiter's Gluon kernels\n",
    "aiter/ops/__init__.py": "",
    "aiter/ops/triton/__init__.py": "",
    "aiter/ops/triton/_triton_kernels/__init__.py": "",
    "aiter/ops/triton/_triton_kernels/attention/__init__.py": "",
    "aiter/ops/triton/attention/__init__.py": "",
    "aiter/ops/triton/gluon/__init__.py": "",
    "aiter/ops/triton/gluon/pa_decode_gluon.py": "def get_cdna_version():\n    return 4\n",
    "aiter/ops/triton/utils/__init__.py": "",
    "aiter/ops/triton/utils/device_info.py": "CALLS = []\n\ndef get_num_sms():\n    CALLS.append(1)\n    return 8\n",
}


def make_tree(root: Path, layout: str, version: str = "9.9.9", extra: str = "", before: str = "",
              after: str = "", rocm: bool = False) -> Path:
    """Write a fake aiter build under ``root`` (``root/aiter/...``); ``extra``/``before``/``after`` are
    source lines put at the top of the main wrapper module and around its fused launch."""
    root = Path(root)
    files = {}
    if layout == "0.1.7":
        files["aiter/ops/triton/_triton_kernels/pa_mqa_logits.py"] = KERNELS
        files["aiter/ops/triton/pa_mqa_logits.py"] = WRAPPER_017.format(launch=LAUNCH)
    elif layout == "main":
        files["aiter/ops/triton/_triton_kernels/attention/pa_mqa_logits.py"] = KERNELS
        files["aiter/ops/triton/attention/pa_mqa_logits.py"] = WRAPPER_MAIN.format(
            launch=LAUNCH, extra=extra, before=before or "pass", after=after or "pass")
        files["aiter/ops/triton/gluon/pa_mqa_logits.py"] = GLUON_MAIN
        files["aiter/ops/triton/utils/device_info.py"] = "raise ImportError('needs rocminfo')\n"
    else:
        raise ValueError(f"layout must be '0.1.7' or 'main', got {layout!r}")
    files["aiter/_version.py"] = f"__version__ = '{version}'\n"
    if rocm:
        files.update(ROCM_MODULES)
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root
