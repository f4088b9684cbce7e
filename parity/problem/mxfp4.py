"""The MXFP4 indexer format (DeepSeek-V4's cache; DeepGEMM's ``fp8_fp4_paged_mqa_logits`` with FP4 inputs):
E2M1 values packed two to a byte, one UE8M0 scale per 32 elements, four scales to an int32 word.

* E2M1 (4 bits): bit 3 the sign, bits 0-2 index the magnitudes ``0, 0.5, 1, 1.5, 2, 3, 4, 6``. There is
  no inf and no NaN; the code ``0b1000`` is -0 and decodes to 0.
* Packing: byte ``j`` holds element ``2j`` in its low nibble and element ``2j + 1`` in its high nibble.
* UE8M0: an unsigned byte ``e`` is the scale ``2**(e - 127)`` (a float32 exponent field with no sign
  or mantissa); ``0xFF`` is NaN in the OCP MX format and is not an input.
* A scale word: the int32 whose byte ``k`` (little-endian, ``(word >> 8k) & 0xFF``) scales elements
  ``[32k, 32k + 32)``. ``head_dim`` 128 fills the four bytes; at 64 bytes 2 and 3 are 1.0 (``0x7F``)
  and cover no element.
* q: ``(B, next_n, H, D/2)`` packed bytes (uint8 here; DeepGEMM takes the same bytes as int8) with
  ``q_sf`` int32 ``(B, next_n, H)``.
* Key cache: uint8 ``(num_blocks, block_size, 1, D/2 + 4)``, 68 bytes a token at D = 128, block-planar
  as the fp8 cache is: a block's ``block_size * D/2`` value bytes, token-major, then its
  ``block_size`` scale words, one per token. The 4-D shape is a view: nothing is interleaved per token.

The quantizer follows the published recipe (scale = ``amax / 6`` rounded up to a power of two, the
exponent kept in ``[1, 254]``), rounding each value to the nearest E2M1 magnitude (ties to the even
code). Any rounding rule gives valid inputs: the reference works on the dequantized values.
"""
from __future__ import annotations

import torch

from parity.problem import layouts

GROUP = 32  # elements per UE8M0 scale
SCALES_PER_WORD = 4  # UE8M0 bytes per int32 scale word
SCALE_WORD_BYTES = 4
UE8M0_BIAS = 127
UE8M0_NAN = 0xFF
UE8M0_ONE = UE8M0_BIAS  # the byte of scale 1.0 (padding of head_dim 64)
E2M1_MAX = 6.0
# code & 7 -> magnitude (the sign is bit 3)
E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
HEAD_DIMS = (64, 128)  # what one scale word covers: D / 32 <= 4 groups, DeepGEMM takes 64 and 128


def check_head_dim(head_dim: int) -> None:
    if head_dim % GROUP or not 1 <= head_dim // GROUP <= SCALES_PER_WORD:
        raise ValueError(f"MXFP4 head_dim must be a multiple of {GROUP} with at most {SCALES_PER_WORD} groups "
                         f"(one int32 scale word), got {head_dim}")


def check_q(q: torch.Tensor, q_sf: torch.Tensor | None) -> None:
    """q as the format has it, else a ValueError naming the argument: packed bytes (B, next_n, H, D/2) and
    their scale words (B, next_n, H), no NaN scale."""
    if q.dim() != 4 or q.dtype != torch.uint8:
        raise ValueError("q_fp8 must be uint8 E2M1 pairs of shape (B, next_n, H, head_dim / 2) for key_format "
                         f"'mxfp4', got {q.dtype} {tuple(q.shape)}")
    check_head_dim(2 * q.shape[3])
    if q_sf is None or q_sf.dtype != torch.int32 or tuple(q_sf.shape) != tuple(q.shape[:3]):
        got = "None" if q_sf is None else f"{q_sf.dtype} {tuple(q_sf.shape)}"
        raise ValueError(f"q_sf must be int32 UE8M0 scale words of shape {tuple(q.shape[:3])} for key_format "
                         f"'mxfp4', got {got}")
    if (scale_bytes(q_sf.cpu()) == UE8M0_NAN).any():
        raise ValueError("q_sf holds a UE8M0 NaN (0xFF)")


def random_words(shape: tuple, device=None, generator=None) -> torch.Tensor:
    """int32 scale words of random UE8M0 exponents around 1.0 (2**-8 .. 2**7), four to a word."""
    exps = torch.randint(119, 135, (*shape, 4), device=device, generator=generator, dtype=torch.int32)
    return exps.to(torch.uint8).view(torch.int32).view(shape)


def random_cache(num_blocks: int, block_size: int, head_dim: int, device=None, generator=None) -> torch.Tensor:
    """A cache of random keys without a quantizer pass: every byte is a valid pair of E2M1 codes, so random
    bytes are random values; the scales are :func:`random_words`."""
    half = head_dim // 2
    # Written in place rather than through pack_kv_cache: a cache of gigabytes would be held twice by its
    # concatenation.
    cache = torch.empty(num_blocks, block_size * token_bytes(head_dim), dtype=torch.uint8, device=device)
    cache[:, : block_size * half] = torch.randint(0, 256, (num_blocks, block_size * half), device=device,
                                                  generator=generator, dtype=torch.int32).to(torch.uint8)
    words = random_words((num_blocks, block_size), device, generator)
    cache[:, block_size * half:] = words.view(torch.uint8).view(num_blocks, block_size * SCALE_WORD_BYTES)
    return cache.view(num_blocks, block_size, 1, token_bytes(head_dim))


def e2m1_table(dtype=torch.float32, device=None) -> torch.Tensor:
    """``table[code]`` for the 16 codes: the magnitudes, then their negatives (-0 is 0)."""
    mags = torch.tensor(E2M1_MAGNITUDES, dtype=dtype, device=device)
    return torch.cat([mags, -mags]) + 0.0  # + 0.0 turns -0.0 into 0.0


def e2m1_decode(codes: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """4-bit codes (any integer dtype, values 0..15) -> their values."""
    return e2m1_table(dtype, codes.device)[codes.long() & 0xF]


def e2m1_encode(x: torch.Tensor) -> torch.Tensor:
    """Values already divided by their scale -> uint8 codes of the nearest E2M1 value (ties to the even
    code, |x| > 6 saturates to 6). NaN is refused: E2M1 has no code for it."""
    if torch.isnan(x).any():
        raise ValueError("e2m1_encode: x contains NaN (E2M1 has no NaN code)")
    mags = torch.tensor(E2M1_MAGNITUDES, dtype=torch.float64, device=x.device)
    ax = x.double().abs().clamp(max=E2M1_MAX)
    dist = (ax[..., None] - mags).abs()
    best = dist.min(dim=-1, keepdim=True).values
    # among equally near magnitudes the even code (its mantissa bit 0) wins
    tie_break = torch.arange(8, device=x.device) % 2 * 1e-9
    code = torch.argmin(torch.where(dist == best, tie_break, float("inf")), dim=-1)
    negative = (x < 0) & (code != 0)
    return (code | (negative.long() << 3)).to(torch.uint8)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """``(..., D)`` codes -> ``(..., D/2)`` uint8, element 2j in the low nibble of byte j."""
    if codes.shape[-1] % 2:
        raise ValueError(f"pack_nibbles needs an even last dimension, got {tuple(codes.shape)}")
    c = codes.to(torch.uint8) & 0xF
    return c[..., 0::2] | (c[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """``(..., D/2)`` bytes -> ``(..., D)`` uint8 codes (inverse of :func:`pack_nibbles`)."""
    b = packed.contiguous().view(torch.uint8)
    return torch.stack([b & 0xF, b >> 4], dim=-1).reshape(*b.shape[:-1], b.shape[-1] * 2)


def ue8m0_decode(exponents: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """UE8M0 bytes -> ``2**(e - 127)`` (exact in float32 and float64, 2**-127 included)."""
    e = exponents.long()
    if (e == UE8M0_NAN).any():
        raise ValueError("UE8M0 scale byte 0xFF is NaN, not a scale")
    return torch.ldexp(torch.ones(e.shape, dtype=torch.float64, device=e.device), e - UE8M0_BIAS).to(dtype)


def scale_bytes(words: torch.Tensor) -> torch.Tensor:
    """int32 scale words ``(...)`` -> their four UE8M0 bytes ``(..., 4)``, byte k scaling group k."""
    w = words.contiguous().to(torch.int64) & 0xFFFFFFFF
    return torch.stack([(w >> (8 * k)) & 0xFF for k in range(SCALES_PER_WORD)], dim=-1).to(torch.uint8)


def scale_words(exponents: torch.Tensor) -> torch.Tensor:
    """``(..., G)`` UE8M0 bytes, G <= 4 -> int32 words ``(...)``; missing groups get 1.0 (``0x7F``)."""
    G = exponents.shape[-1]
    if G > SCALES_PER_WORD:
        raise ValueError(f"a scale word holds {SCALES_PER_WORD} scales, got {G}")
    full = torch.full((*exponents.shape[:-1], SCALES_PER_WORD), UE8M0_ONE, dtype=torch.int64,
                      device=exponents.device)
    full[..., :G] = exponents.long()
    word = sum(full[..., k] << (8 * k) for k in range(SCALES_PER_WORD))
    return torch.where(word >= 2**31, word - 2**32, word).to(torch.int32)


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, D)`` -> packed values ``(N, D/2)`` uint8 and scale words ``(N,)`` int32: per 32-element group,
    scale = ``amax / 6`` rounded up to a power of two (exponent clamped to [1, 254])."""
    if x.dim() != 2:
        raise ValueError(f"x must be (tokens, head_dim), got shape {tuple(x.shape)}")
    N, D = x.shape
    check_head_dim(D)
    groups = x.float().reshape(N, D // GROUP, GROUP)
    amax = groups.abs().amax(dim=-1).clamp_min(1e-30)
    e = torch.ceil(torch.log2(amax.double() / E2M1_MAX)).long() + UE8M0_BIAS
    e = e.clamp(1, 254)
    scale = ue8m0_decode(e, torch.float64)
    codes = e2m1_encode(groups.double() / scale[..., None]).reshape(N, D)
    return pack_nibbles(codes), scale_words(e.to(torch.uint8))


def dequantize(packed: torch.Tensor, words: torch.Tensor, dtype=torch.float64) -> torch.Tensor:
    """Packed values ``(..., D/2)`` and their scale words ``(...)`` -> ``(..., D)`` values in ``dtype``."""
    codes = unpack_nibbles(packed)
    D = codes.shape[-1]
    check_head_dim(D)
    values = e2m1_decode(codes, dtype)
    scales = ue8m0_decode(scale_bytes(words)[..., : D // GROUP], dtype)  # (..., G)
    return (values.reshape(*values.shape[:-1], D // GROUP, GROUP) * scales[..., None]).reshape(values.shape)


def token_bytes(head_dim: int) -> int:
    """Cache bytes of one token: the packed values and one scale word (68 at head_dim 128)."""
    return head_dim // 2 + SCALE_WORD_BYTES


def block_bytes(block_size: int, head_dim: int) -> int:
    return block_size * token_bytes(head_dim)


def pack_kv_cache(packed: torch.Tensor, words: torch.Tensor, block_size: int) -> torch.Tensor:
    """``(num_blocks * block_size, D/2)`` packed keys and their ``(tokens,)`` int32 scale words -> the
    uint8 cache ``(num_blocks, block_size, 1, D/2 + 4)``: per block, the values, then the words."""
    tokens, half = packed.shape
    if tokens % block_size:
        raise ValueError(f"packed rows ({tokens}) must be a multiple of block_size ({block_size})")
    if words.shape != (tokens,) or words.dtype != torch.int32:
        raise ValueError(f"words must be int32 of shape ({tokens},), got {words.dtype} {tuple(words.shape)}")
    return layouts.pack_planar(packed.view(torch.uint8), words.view(torch.uint8).reshape(tokens, SCALE_WORD_BYTES),
                               block_size)


def split_kv_cache(kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`pack_kv_cache`: ``(num_blocks, block_size, D/2)`` packed values and
    ``(num_blocks, block_size)`` int32 scale words."""
    if kv_cache.dtype != torch.uint8 or kv_cache.dim() != 4 or kv_cache.shape[2] != 1:
        raise ValueError("MXFP4 kv_cache must be uint8 of shape (num_blocks, block_size, 1, head_dim/2 + 4), "
                         f"got {kv_cache.dtype} {tuple(kv_cache.shape)}")
    values, scale_bytes = layouts.split_planar(kv_cache)
    return values, scale_bytes.view(torch.int32).squeeze(-1)


def head_dim_of(kv_cache: torch.Tensor) -> int:
    return 2 * (kv_cache.shape[-1] - SCALE_WORD_BYTES)
