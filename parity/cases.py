"""Indexer cases and the real inputs built from them: fp8 q, a block-paged fp8 key cache with
per-token scales, weights, context_lens and shuffled block tables (SPEC section 1)."""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field, replace

import torch

from parity import layouts

# Context-length patterns. Each names the edge it exercises; the builder turns it into context_lens.
CONTEXT_PATTERNS = (
    "random",  # uniform in [next_n, max_model_len]
    "ctx_eq_max",  # last row at max_model_len: an unmasked tail store leaves the allocation
    "ctx_eq_max_first",  # first row at max_model_len: an unmasked tail store lands in the next row
    "ctx_eq_next_n",  # shortest legal sequence: only the causal diagonal is valid
    "block_multiple",
    "block_multiple_plus1",
    "block_multiple_minus1",
    "near_max",  # within one 256-column chunk of max_model_len
)


@dataclass(frozen=True)
class IndexerCase:
    batch: int = 3
    next_n: int = 2
    heads: int = 8
    head_dim: int = 128
    block_size: int = 64
    max_model_len: int = 500
    context: str = "random"
    fp8: str = "e4m3fn"
    seed: int = 0
    topk: int = 64

    def __post_init__(self):
        def need(ok, what):
            if not ok:
                raise ValueError(f"IndexerCase.{what}")

        need(self.batch >= 1, f"batch must be >= 1, got {self.batch}")
        need(1 <= self.next_n <= 4, f"next_n must be in 1..4, got {self.next_n}")
        need(self.heads >= 1, f"heads must be >= 1, got {self.heads}")
        need(self.head_dim % 16 == 0, f"head_dim must be a multiple of 16, got {self.head_dim}")
        need(self.block_size >= 1, f"block_size must be >= 1, got {self.block_size}")
        need(self.max_model_len >= self.next_n, f"max_model_len must be >= next_n, got {self.max_model_len}")
        need(self.context in CONTEXT_PATTERNS, f"context must be one of {CONTEXT_PATTERNS}, got {self.context!r}")
        need(self.fp8 in layouts.FP8_DTYPES, f"fp8 must be one of {sorted(layouts.FP8_DTYPES)}, got {self.fp8!r}")
        need(self.topk >= 1, f"topk must be >= 1, got {self.topk}")

    @property
    def rows(self) -> int:
        return self.batch * self.next_n

    @property
    def id(self) -> str:
        parts = [f"B{self.batch}", f"n{self.next_n}", f"bs{self.block_size}", self.context]
        if self.heads != 8:
            parts.append(f"H{self.heads}")
        if self.max_model_len != 500:
            parts.append(f"mml{self.max_model_len}")
        if self.fp8 != "e4m3fn":
            parts.append(self.fp8)
        if self.seed:
            parts.append(f"s{self.seed}")
        return "-".join(parts)


@dataclass
class IndexerInputs:
    """What a paged-MQA-logits kernel receives. ``kv_cache`` is in the plain layout;
    ``kv_cache_preshuffled`` holds the same cache in the preshuffled tile order (None when block_size
    is not a multiple of 16)."""

    q_fp8: torch.Tensor  # (B, next_n, H, D) fp8
    kv_cache: torch.Tensor  # (num_blocks, block_size, 1, D + 4) uint8
    weights: torch.Tensor  # (B * next_n, H) float32
    context_lens: torch.Tensor  # (B,) int32
    block_tables: torch.Tensor  # (B, max_blocks) int32
    max_model_len: int
    kv_cache_preshuffled: torch.Tensor | None = None
    case: IndexerCase | None = field(default=None, repr=False)

    @property
    def batch(self) -> int:
        return self.q_fp8.shape[0]

    @property
    def next_n(self) -> int:
        return self.q_fp8.shape[1]

    @property
    def heads(self) -> int:
        return self.q_fp8.shape[2]

    @property
    def head_dim(self) -> int:
        return self.q_fp8.shape[3]

    @property
    def block_size(self) -> int:
        return self.kv_cache.shape[1]

    @property
    def rows(self) -> int:
        return self.batch * self.next_n

    @property
    def device(self) -> torch.device:
        return self.q_fp8.device

    def to(self, device) -> "IndexerInputs":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(
            self,
            q_fp8=mv(self.q_fp8),
            kv_cache=mv(self.kv_cache),
            weights=mv(self.weights),
            context_lens=mv(self.context_lens),
            block_tables=mv(self.block_tables),
            kv_cache_preshuffled=mv(self.kv_cache_preshuffled),
        )


def validate_inputs(inp: IndexerInputs) -> None:
    """Reject malformed inputs with an error naming the argument and what was expected."""
    q, kv = inp.q_fp8, inp.kv_cache
    if q.dim() != 4 or q.dtype not in layouts.FP8_DTYPES.values():
        raise ValueError(f"q_fp8 must be fp8 (e4m3fn/e4m3fnuz) of shape (B, next_n, H, D), got {q.dtype} {tuple(q.shape)}")
    B, next_n, H, D = q.shape
    layouts.check_kv_cache(kv)
    if kv.shape[3] != D + layouts.SCALE_BYTES:
        raise ValueError(f"kv_cache last dim must be head_dim + 4 = {D + 4}, got {kv.shape[3]}")
    if inp.weights.dtype != torch.float32 or tuple(inp.weights.shape) != (B * next_n, H):
        raise ValueError(f"weights must be float32 of shape ({B * next_n}, {H}), got {inp.weights.dtype} {tuple(inp.weights.shape)}")
    cl, bt = inp.context_lens, inp.block_tables
    if cl.dtype != torch.int32 or tuple(cl.shape) != (B,):
        raise ValueError(f"context_lens must be int32 of shape ({B},), got {cl.dtype} {tuple(cl.shape)}")
    if bt.dtype != torch.int32 or bt.dim() != 2 or bt.shape[0] != B:
        raise ValueError(f"block_tables must be int32 of shape ({B}, max_blocks), got {bt.dtype} {tuple(bt.shape)}")
    mml = inp.max_model_len
    if not isinstance(mml, int) or mml < next_n:
        raise ValueError(f"max_model_len must be an int >= next_n ({next_n}), got {mml!r}")
    lens = cl.cpu()
    if (lens > mml).any():
        b = int(torch.nonzero(lens > mml)[0])
        raise ValueError(f"context_lens[{b}] = {int(lens[b])} exceeds max_model_len = {mml}")
    if (lens < next_n).any():
        b = int(torch.nonzero(lens < next_n)[0])
        raise ValueError(f"context_lens[{b}] = {int(lens[b])} is below next_n = {next_n}")
    bs = kv.shape[1]
    need_blocks = (lens + bs - 1) // bs
    if int(need_blocks.max()) > bt.shape[1]:
        raise ValueError(f"block_tables has {bt.shape[1]} columns; context_lens need up to {int(need_blocks.max())}")
    tables = bt.cpu()
    for b in range(B):
        used = tables[b, : int(need_blocks[b])]
        if ((used < 0) | (used >= kv.shape[0])).any():
            raise ValueError(f"block_tables[{b}] holds ids outside [0, num_blocks={kv.shape[0]}): {used.tolist()}")
    if not torch.isfinite(inp.weights).all():
        raise ValueError("weights contain NaN/inf")
    if not torch.isfinite(q.float()).all():
        raise ValueError("q_fp8 contains NaN")
    _, scales = layouts.split_kv_cache(kv, q.dtype)
    if not torch.isfinite(scales).all():
        raise ValueError("kv_cache scales contain NaN/inf")


def context_lens_for(case: IndexerCase, gen: torch.Generator) -> list[int]:
    B, n, mml, bs = case.batch, case.next_n, case.max_model_len, case.block_size

    def clamp(x):
        return max(n, min(mml, x))

    rand = [int(torch.randint(n, mml + 1, (1,), generator=gen)) for _ in range(B)]
    mult = max(1, (mml // 2) // bs) * bs  # a block multiple inside the row
    pattern = {
        "random": rand,
        "ctx_eq_max": rand[:-1] + [mml],
        "ctx_eq_max_first": [mml] + rand[1:],
        "ctx_eq_next_n": [n] + rand[1:-1] + ([n] if B > 1 else []),
        "block_multiple": [clamp(mult * (1 + b % 2)) for b in range(B)],
        "block_multiple_plus1": [clamp(mult * (1 + b % 2) + 1) for b in range(B)],
        "block_multiple_minus1": [clamp(mult * (1 + b % 2) - 1) for b in range(B)],
        "near_max": [clamp(mml - int(torch.randint(0, 256, (1,), generator=gen))) for _ in range(B)],
    }[case.context]
    return pattern[:B]


def build_inputs(case: IndexerCase, device="cpu") -> IndexerInputs:
    """Fresh random inputs for ``case`` (deterministic per seed, never zeros)."""
    gen = torch.Generator().manual_seed(case.seed * 1_000_003 + zlib.crc32(case.id.encode()))
    fp8 = layouts.fp8_dtype(case.fp8)
    B, n, H, D, bs = case.batch, case.next_n, case.heads, case.head_dim, case.block_size
    lens = context_lens_for(case, gen)
    max_blocks = math.ceil(case.max_model_len / bs)
    used_blocks = [math.ceil(c / bs) for c in lens]
    spare = 3
    num_blocks = sum(used_blocks) + spare
    physical = torch.randperm(num_blocks, generator=gen).to(torch.int32)
    block_tables = torch.zeros(B, max_blocks, dtype=torch.int32)
    at = 0
    for b, nb in enumerate(used_blocks):
        block_tables[b, :nb] = physical[at : at + nb]
        at += nb
    # Every token slot holds real data, unused and spare ones too: a kernel that reads past
    # context_len picks up finite garbage, which the value checks then see.
    k = torch.randn(num_blocks * bs, D, generator=gen) * (1 + 3 * torch.rand(num_blocks * bs, 1, generator=gen))
    k_fp8, scales = layouts.quantize_per_token(k, fp8)
    kv_cache = layouts.pack_kv_cache(k_fp8, scales, bs)
    q = torch.randn(B, n, H, D, generator=gen) * 2
    q_fp8 = q.clamp(-layouts.fp8_max(fp8), layouts.fp8_max(fp8)).to(fp8)
    weights = torch.randn(B * n, H, generator=gen) * H**-0.5
    pre = layouts.preshuffle_kv_cache(kv_cache) if bs % layouts.PRESHUFFLE_TILE == 0 and D % 16 == 0 else None
    inp = IndexerInputs(
        q_fp8=q_fp8,
        kv_cache=kv_cache,
        weights=weights,
        context_lens=torch.tensor(lens, dtype=torch.int32),
        block_tables=block_tables,
        max_model_len=case.max_model_len,
        kv_cache_preshuffled=pre,
        case=case,
    )
    return inp.to(device) if str(device) != "cpu" else inp


def valid_lengths(context_lens: torch.Tensor, next_n: int) -> torch.Tensor:
    """Per output row, the number of leading valid positions under the causal rule of SPEC section 1:
    row (b, i) may see ``t <= context_len[b] - next_n + i``."""
    i = torch.arange(next_n, device=context_lens.device)
    return (context_lens.view(-1, 1).long() - next_n + i + 1).reshape(-1)


# --- grids ------------------------------------------------------------------------------------

def quick_cases() -> list[IndexerCase]:
    """Small cases covering every edge pattern, four of them at H=64; fast enough for the Triton interpreter."""
    C = IndexerCase
    return [
        C(batch=3, next_n=2, block_size=64, context="ctx_eq_max"),
        C(batch=3, next_n=2, block_size=64, context="ctx_eq_max_first"),
        C(batch=2, next_n=4, block_size=16, context="ctx_eq_next_n"),
        C(batch=1, next_n=1, block_size=64, context="random"),
        C(batch=4, next_n=1, block_size=1, max_model_len=130, context="random"),
        C(batch=2, next_n=3, block_size=16, context="block_multiple"),
        C(batch=2, next_n=2, block_size=64, context="block_multiple_plus1"),
        C(batch=2, next_n=2, block_size=64, context="block_multiple_minus1"),
        C(batch=3, next_n=4, block_size=64, context="near_max", max_model_len=300),
        C(batch=2, next_n=2, block_size=16, context="random", fp8="e4m3fnuz"),
        C(batch=2, next_n=1, block_size=64, context="ctx_eq_max", max_model_len=1000, fp8="e4m3fnuz"),
        C(batch=3, next_n=2, block_size=16, context="random", max_model_len=777, seed=1),
        # DeepSeek-V3.2's real head count: builds whose stage1 wants H % 32 or H % 64 == 0 (aiter)
        # must be exercised at quick level too, at block sizes 64 and 1, with rows ending at max_model_len.
        C(batch=2, next_n=1, heads=64, block_size=64, max_model_len=320, context="ctx_eq_max_first"),
        C(batch=2, next_n=2, heads=64, block_size=1, max_model_len=130, context="ctx_eq_max"),
        C(batch=2, next_n=3, heads=64, block_size=64, max_model_len=320, context="ctx_eq_max"),
        C(batch=2, next_n=4, heads=64, block_size=1, max_model_len=130, context="ctx_eq_max_first"),
    ]


def full_cases() -> list[IndexerCase]:
    """The quick grid plus every named edge at DSv3.2 shape (H=64, D=128) and larger lengths."""
    C = IndexerCase
    extra = []
    for bs in (1, 16, 64):
        for n in (1, 2, 4):
            for ctx in CONTEXT_PATTERNS:
                mml = 130 if bs == 1 else 1000
                extra.append(C(batch=3, next_n=n, heads=64, block_size=bs, max_model_len=mml, context=ctx, topk=128))
    extra += [
        C(batch=1, next_n=4, heads=64, block_size=64, max_model_len=4097, context="ctx_eq_max", topk=2048),
        C(batch=5, next_n=2, heads=64, block_size=64, max_model_len=2600, context="random", topk=2048, fp8="e4m3fnuz"),
    ]
    return quick_cases() + extra


def cases_for_level(level: str) -> list[IndexerCase]:
    if level not in ("quick", "full"):
        raise ValueError(f"parity level must be 'quick' or 'full', got {level!r}")
    return quick_cases() if level == "quick" else full_cases()
