"""fp8 paged key cache: quantization, block packing and the preshuffled tile order (SPEC sections 1-2).

A block of the cache holds ``block_size * head_dim`` fp8 key bytes, token-major, followed by
``block_size`` float32 scales. The ``(num_blocks, block_size, 1, head_dim + 4)`` shape callers pass
around is only a view of those bytes: keys and scales are NOT interleaved per token.
"""
from __future__ import annotations

import torch

FP8_DTYPES = {"e4m3fn": torch.float8_e4m3fn, "e4m3fnuz": torch.float8_e4m3fnuz}
SCALE_BYTES = 4
PRESHUFFLE_TILE = 16  # tokens x bytes of one matrix-core tile


def fp8_dtype(flavour: str) -> torch.dtype:
    if flavour not in FP8_DTYPES:
        raise ValueError(f"fp8 flavour must be one of {sorted(FP8_DTYPES)}, got {flavour!r}")
    return FP8_DTYPES[flavour]


def fp8_max(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).max)


def quantize_per_token(k: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``scale = amax(|k|) / fp8_max`` per token, ``k_fp8 = k / scale``; returns (k_fp8, scale fp32)."""
    if k.dim() != 2:
        raise ValueError(f"k must be (tokens, head_dim), got shape {tuple(k.shape)}")
    amax = k.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12).float()
    scale = amax / fp8_max(dtype)
    return (k.float() / scale).to(dtype), scale.squeeze(-1)


def block_bytes(block_size: int, head_dim: int) -> int:
    return block_size * (head_dim + SCALE_BYTES)


def pack_kv_cache(k_fp8: torch.Tensor, scales: torch.Tensor, block_size: int) -> torch.Tensor:
    """Pack ``(num_blocks * block_size, D)`` fp8 keys and their fp32 scales into the uint8 cache
    ``(num_blocks, block_size, 1, D + 4)``; token ``j`` of physical block ``p`` is row ``p * block_size + j``."""
    tokens, head_dim = k_fp8.shape
    if tokens % block_size:
        raise ValueError(f"k_fp8 rows ({tokens}) must be a multiple of block_size ({block_size})")
    if scales.shape != (tokens,) or scales.dtype != torch.float32:
        raise ValueError(f"scales must be float32 of shape ({tokens},), got {scales.dtype} {tuple(scales.shape)}")
    return pack_planar(k_fp8.view(torch.uint8), scales.view(torch.uint8).reshape(tokens, SCALE_BYTES), block_size)


def split_kv_cache(kv_cache: torch.Tensor, fp8: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`pack_kv_cache`: ``(num_blocks, block_size, D)`` fp8 keys and ``(num_blocks, block_size)`` scales."""
    check_kv_cache(kv_cache)
    keys, scale_bytes = split_planar(kv_cache)
    return keys.view(fp8), scale_bytes.view(torch.float32).squeeze(-1)


def pack_planar(values: torch.Tensor, scale_bytes: torch.Tensor, block_size: int) -> torch.Tensor:
    """The block-planar cache both key formats use (fp8 and MXFP4): per block, every token's value bytes
    ``(tokens, W)`` uint8, then every token's 4 scale bytes ``(tokens, 4)`` uint8; viewed as
    ``(num_blocks, block_size, 1, W + 4)``. Callers check their own shapes and dtypes."""
    tokens, width = values.shape
    num_blocks = tokens // block_size
    keys = values.contiguous().reshape(num_blocks, block_size * width)
    sc = scale_bytes.contiguous().reshape(num_blocks, block_size * SCALE_BYTES)
    return torch.cat([keys, sc], dim=1).view(num_blocks, block_size, 1, width + SCALE_BYTES)


def split_planar(kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`pack_planar`: ``(num_blocks, block_size, W)`` value bytes and
    ``(num_blocks, block_size, 4)`` scale bytes, both contiguous uint8."""
    num_blocks, block_size, _, width = kv_cache.shape
    w = width - SCALE_BYTES
    flat = kv_cache.reshape(num_blocks, block_size * width)
    values = flat[:, : block_size * w].contiguous().view(num_blocks, block_size, w)
    scale_bytes = flat[:, block_size * w :].contiguous().view(num_blocks, block_size, SCALE_BYTES)
    return values, scale_bytes


def check_kv_cache(kv_cache: torch.Tensor) -> None:
    if kv_cache.dtype != torch.uint8 or kv_cache.dim() != 4 or kv_cache.shape[2] != 1:
        raise ValueError(
            "kv_cache must be uint8 of shape (num_blocks, block_size, 1, head_dim + 4), "
            f"got {kv_cache.dtype} {tuple(kv_cache.shape)}"
        )


def preshuffle_offsets(block_size: int, head_dim: int, device=None) -> torch.Tensor:
    """``offsets[t, d]`` = byte position of key byte (t, d) inside a preshuffled block (SPEC section 2)."""
    if block_size % PRESHUFFLE_TILE or head_dim % PRESHUFFLE_TILE:
        raise ValueError(
            f"preshuffle needs block_size and head_dim multiples of {PRESHUFFLE_TILE}, got {block_size}, {head_dim}"
        )
    t = torch.arange(block_size, device=device).view(-1, 1)
    d = torch.arange(head_dim, device=device).view(1, -1)
    tile = PRESHUFFLE_TILE
    return (t // tile) * tile * head_dim + (d // tile) * tile * tile + (t % tile) * tile + (d % tile)


def preshuffle_kv_cache(kv_cache: torch.Tensor) -> torch.Tensor:
    """Plain -> preshuffled: key bytes of each block move to their tile order, scales stay put."""
    check_kv_cache(kv_cache)
    num_blocks, block_size, _, width = kv_cache.shape
    head_dim = width - SCALE_BYTES
    flat = kv_cache.reshape(num_blocks, block_size * width)
    keys = flat[:, : block_size * head_dim]
    out = flat.clone()
    offs = preshuffle_offsets(block_size, head_dim, kv_cache.device).reshape(-1)
    out[:, offs] = keys
    return out.view_as(kv_cache)


def unshuffle_kv_cache(kv_cache: torch.Tensor) -> torch.Tensor:
    """Preshuffled -> plain."""
    check_kv_cache(kv_cache)
    num_blocks, block_size, _, width = kv_cache.shape
    head_dim = width - SCALE_BYTES
    flat = kv_cache.reshape(num_blocks, block_size * width)
    out = flat.clone()
    offs = preshuffle_offsets(block_size, head_dim, kv_cache.device).reshape(-1)
    out[:, : block_size * head_dim] = flat[:, offs]
    return out.view_as(kv_cache)
