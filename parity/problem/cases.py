"""Indexer cases and the real inputs built from them: fp8 q, a block-paged fp8 key cache with
per-token scales (or, for ``key_format="mxfp4"``, E2M1 q and keys with UE8M0 group scales: SPEC
section 10, :mod:`parity.problem.mxfp4`), weights, context_lens and shuffled block tables (SPEC section 1)."""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field, replace

import torch

from parity.problem import layouts, mxfp4
from parity.problem.lengths import per_row_lengths, row_lengths

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
# Rows CUDA-graph capture pads a decode batch with: sequences of context_len 0 and 1 (for next_n > 1
# a context shorter than next_n leaves some speculative rows with no valid position at all).
DUMMY_PATTERNS = (
    "dummy_rows",  # 0 and 1 among real sequences, one of them at max_model_len
    "all_dummy",  # a whole batch of them
)
ROW_LENS = ("causal", "per_row")
LOGITS_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
TOPK_MODES = ("random", "near_ties")
# fp8: e4m3 q and keys, one float32 scale per token (DeepSeek-V3.2). mxfp4: E2M1 q and keys, one UE8M0
# scale per 32 elements (DeepSeek-V4's indexer cache, DeepGEMM's fp8_fp4_paged_mqa_logits with FP4 inputs).
KEY_FORMATS = ("fp8", "mxfp4")


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
    # per_row: each speculative row has its own valid length (DeepGEMM's 2-D context_lens), drawn
    # uniformly in [0, context_len] with the last row at context_len, as DeepGEMM's test draws them.
    row_lens: str = "causal"
    logits_dtype: str = "float32"
    # near_ties: in the last row of each sequence, a group of keys whose logits are a few float32 ulps
    # from the k-th largest, so that top-k membership at the k-th place is a coin toss.
    topk_mode: str = "random"
    # The sequences' blocks get physical ids >= block_id_floor, below which the cache holds filler
    # blocks: with ids above 2**31 / bytes per block a 32-bit byte offset wraps.
    block_id_floor: int = 0
    gpu_only: bool = False  # too large for a CPU run (the reason is in cpu_reason)
    # The number format of q and the key cache (KEY_FORMATS); ``fp8`` picks its flavour.
    key_format: str = "fp8"

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
        patterns = CONTEXT_PATTERNS + DUMMY_PATTERNS
        need(self.context in patterns, f"context must be one of {patterns}, got {self.context!r}")
        need(self.row_lens in ROW_LENS, f"row_lens must be one of {ROW_LENS}, got {self.row_lens!r}")
        need(self.logits_dtype in LOGITS_DTYPES,
             f"logits_dtype must be one of {sorted(LOGITS_DTYPES)}, got {self.logits_dtype!r}")
        need(self.topk_mode in TOPK_MODES, f"topk_mode must be one of {TOPK_MODES}, got {self.topk_mode!r}")
        need(self.block_id_floor >= 0, f"block_id_floor must be >= 0, got {self.block_id_floor}")
        need(self.fp8 in layouts.FP8_DTYPES, f"fp8 must be one of {sorted(layouts.FP8_DTYPES)}, got {self.fp8!r}")
        need(self.topk >= 1, f"topk must be >= 1, got {self.topk}")
        need(self.key_format in KEY_FORMATS, f"key_format must be one of {KEY_FORMATS}, got {self.key_format!r}")
        if self.key_format == "mxfp4":
            need(self.fp8 == "e4m3fn", f"fp8 names the flavour of fp8 keys; with key_format 'mxfp4' it must stay "
                                       f"'e4m3fn', got {self.fp8!r}")
            need(self.head_dim in mxfp4.HEAD_DIMS,
                 f"head_dim must be one of {mxfp4.HEAD_DIMS} for key_format 'mxfp4' (at most 4 groups of 32 per "
                 f"scale word), got {self.head_dim}")
            need(self.topk_mode == "random", "topk_mode 'near_ties' plants fp8 keys; it has no mxfp4 form")

    @property
    def rows(self) -> int:
        return self.batch * self.next_n

    @property
    def id(self) -> str:
        parts = [f"B{self.batch}", f"n{self.next_n}", f"bs{self.block_size}", self.context]
        if self.heads != 8:
            parts.append(f"H{self.heads}")
        if self.head_dim != 128:
            parts.append(f"D{self.head_dim}")
        if self.max_model_len != 500:
            parts.append(f"mml{self.max_model_len}")
        if self.fp8 != "e4m3fn":
            parts.append(self.fp8)
        if self.key_format != "fp8":
            parts.append(self.key_format)
        if self.seed:
            parts.append(f"s{self.seed}")
        if self.row_lens != "causal":
            parts.append("perrow")
        if self.logits_dtype != "float32":
            parts.append({"bfloat16": "bf16"}[self.logits_dtype])
        if self.topk_mode != "random":
            parts.append("ties")
        if self.block_id_floor:
            parts.append(f"blk{self.block_id_floor}")
        return "-".join(parts)

    @property
    def input_format(self) -> str:
        """What the inputs are, as the tolerances know them: the fp8 flavour, or ``mxfp4``."""
        return self.fp8 if self.key_format == "fp8" else self.key_format

    @property
    def cache_bytes(self) -> int:
        used = sum(math.ceil(self.max_model_len / self.block_size) for _ in range(self.batch))
        return (self.block_id_floor + used + 3) * cache_block_bytes(self.key_format, self.block_size, self.head_dim)

    def cpu_reason(self) -> str | None:
        """Why this case runs on a GPU only, or None."""
        if not self.gpu_only:
            return None
        return (f"GPU-only case: B={self.batch}, max_model_len={self.max_model_len}, "
                f"cache {self.cache_bytes / 2**30:.2f} GiB; too large for the CPU run")


def cache_block_bytes(key_format: str, block_size: int, head_dim: int) -> int:
    """Bytes of one cache block: 132 a token for fp8 at head_dim 128, 68 for mxfp4."""
    if key_format == "mxfp4":
        return mxfp4.block_bytes(block_size, head_dim)
    return layouts.block_bytes(block_size, head_dim)


@dataclass
class IndexerInputs:
    """What a paged-MQA-logits kernel receives. ``kv_cache`` is in the plain layout;
    ``kv_cache_preshuffled`` holds the same cache in the preshuffled tile order (None when block_size
    is not a multiple of 16).

    With ``key_format="mxfp4"``, ``q_fp8`` holds q's packed E2M1 bytes (uint8 ``(B, next_n, H, D/2)``),
    ``q_sf`` its int32 scale words ``(B, next_n, H)``, and ``kv_cache`` is the MXFP4 cache ``(num_blocks,
    block_size, 1, D/2 + 4)`` (:mod:`parity.problem.mxfp4`); there is no preshuffled form."""

    q_fp8: torch.Tensor  # (B, next_n, H, D) fp8, or (B, next_n, H, D/2) uint8 E2M1 pairs (mxfp4)
    kv_cache: torch.Tensor  # (num_blocks, block_size, 1, D + 4) uint8 (mxfp4: D/2 + 4)
    weights: torch.Tensor  # (B * next_n, H) float32
    context_lens: torch.Tensor  # (B,) int32
    block_tables: torch.Tensor  # (B, max_blocks) int32
    max_model_len: int
    kv_cache_preshuffled: torch.Tensor | None = None
    case: IndexerCase | None = field(default=None, repr=False)
    # (B, next_n) int32: each row's own valid length (DeepGEMM's 2-D context_lens); None: the causal
    # diagonal context_len - next_n + i + 1. context_lens stays each sequence's length (the row max).
    context_lens_2d: torch.Tensor | None = None
    logits_dtype: torch.dtype = torch.float32  # what the caller's output buffer holds
    key_format: str = "fp8"  # KEY_FORMATS
    q_sf: torch.Tensor | None = None  # (B, next_n, H) int32 UE8M0 scale words of q (mxfp4 only)

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
        return self.q_fp8.shape[3] * (2 if self.key_format == "mxfp4" else 1)

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
            context_lens_2d=mv(self.context_lens_2d),
            q_sf=mv(self.q_sf),
        )

    @property
    def row_lens(self) -> torch.Tensor:
        """Valid positions per output row ``(B * next_n,)`` int64 (0 for a row with none)."""
        return row_lengths(self.context_lens, self.next_n, self.context_lens_2d)


def validate_inputs(inp: IndexerInputs) -> None:
    """Reject malformed inputs with an error naming the argument and what was expected."""
    q, kv = inp.q_fp8, inp.kv_cache
    if inp.key_format not in KEY_FORMATS:
        raise ValueError(f"key_format must be one of {KEY_FORMATS}, got {inp.key_format!r}")
    if inp.key_format == "mxfp4":
        mxfp4.check_q(inp.q_fp8, inp.q_sf)
    elif q.dim() != 4 or q.dtype not in layouts.FP8_DTYPES.values():
        raise ValueError(f"q_fp8 must be fp8 (e4m3fn/e4m3fnuz) of shape (B, next_n, H, D), got {q.dtype} {tuple(q.shape)}")
    B, next_n, H, D = (*q.shape[:3], inp.head_dim)
    layouts.check_kv_cache(kv)
    width = mxfp4.token_bytes(D) if inp.key_format == "mxfp4" else D + layouts.SCALE_BYTES
    if kv.shape[3] != width:
        what = "head_dim / 2 + 4" if inp.key_format == "mxfp4" else "head_dim + 4"
        raise ValueError(f"kv_cache last dim must be {what} = {width} ({inp.key_format}), got {kv.shape[3]}")
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
    if (lens < 0).any():
        b = int(torch.nonzero(lens < 0)[0])
        raise ValueError(f"context_lens[{b}] = {int(lens[b])} is negative")
    if inp.context_lens_2d is not None:
        c2 = inp.context_lens_2d
        if c2.dtype != torch.int32 or tuple(c2.shape) != (B, next_n):
            raise ValueError(f"context_lens_2d must be int32 of shape ({B}, {next_n}), got {c2.dtype} {tuple(c2.shape)}")
        c2 = c2.cpu()
        if (c2 < 0).any() or (c2 > lens.view(-1, 1)).any():
            b = int(torch.nonzero(((c2 < 0) | (c2 > lens.view(-1, 1))).any(1))[0])
            raise ValueError(f"context_lens_2d[{b}] = {c2[b].tolist()} must lie in [0, context_lens[{b}] = {int(lens[b])}]")
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
    if inp.key_format == "fp8" and not torch.isfinite(q.float()).all():
        raise ValueError("q_fp8 contains NaN")
    used = torch.cat([tables[b, : int(need_blocks[b])] for b in range(B)]).long().unique()
    if used.numel():  # only the blocks in use: a cache can be gigabytes of blocks nobody reads
        if inp.key_format == "mxfp4":
            _, words = mxfp4.split_kv_cache(kv[used.to(kv.device)])
            if (mxfp4.scale_bytes(words) == mxfp4.UE8M0_NAN).any():
                raise ValueError("kv_cache scale words hold a UE8M0 NaN (0xFF) in the blocks block_tables use")
        else:
            _, scales = layouts.split_kv_cache(kv[used.to(kv.device)], q.dtype)
            if not torch.isfinite(scales).all():
                raise ValueError("kv_cache scales contain NaN/inf in the blocks block_tables use")



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
        "dummy_rows": ([0, 1, mml] + rand[3:])[:B] if B >= 3 else [0, mml][:B],
        "all_dummy": [b % 2 for b in range(B)],
    }[case.context]
    return pattern[:B]


FILLER_KEY_BYTE = 0x38  # e4m3fn 1.0 (fnuz 0.5): a kernel that reads a filler block gets finite garbage
FILLER_E2M1_PAIR = 0x22  # two E2M1 1.0 codes


def build_inputs(case: IndexerCase, device="cpu", compact: bool = False) -> IndexerInputs:
    """Fresh random inputs for ``case`` (deterministic per seed, never zeros). ``compact`` leaves out
    the filler blocks below ``case.block_id_floor``: the same logits, from a cache a CPU can hold."""
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
    q = torch.randn(B, n, H, D, generator=gen) * 2
    weights = torch.randn(B * n, H, generator=gen) * H**-0.5
    context_lens = torch.tensor(lens, dtype=torch.int32)
    lens_2d = per_row_lengths(lens, n, gen) if case.row_lens == "per_row" else None
    q_sf, pre = None, None
    if case.key_format == "mxfp4":
        kv_cache = mxfp4.pack_kv_cache(*mxfp4.quantize(k), bs)
        q_packed, q_words = mxfp4.quantize(q.reshape(-1, D))
        q_fp8, q_sf = q_packed.view(B, n, H, D // 2), q_words.view(B, n, H)
        # bf16-representable weights: DeepGEMM's SM100 FP4 path and aiter's take bf16 weights, so an
        # adapter handing them bf16 loses nothing, and the reference sees the weights the kernel sees.
        weights = weights.bfloat16().float()
    else:
        k_fp8, scales = layouts.quantize_per_token(k, fp8)
        q_fp8 = q.clamp(-layouts.fp8_max(fp8), layouts.fp8_max(fp8)).to(fp8)
        if case.topk_mode == "near_ties":
            _plant_near_ties(case, k_fp8, scales, q_fp8, weights, block_tables,
                             row_lengths(context_lens, n, lens_2d))
        kv_cache = layouts.pack_kv_cache(k_fp8, scales, bs)
        shufflable = bs % layouts.PRESHUFFLE_TILE == 0 and D % 16 == 0
        pre = layouts.preshuffle_kv_cache(kv_cache) if shufflable else None
    floor = 0 if compact else case.block_id_floor
    inp = IndexerInputs(
        q_fp8=q_fp8, kv_cache=kv_cache, weights=weights, context_lens=context_lens,
        block_tables=block_tables, max_model_len=case.max_model_len, kv_cache_preshuffled=pre, case=case,
        context_lens_2d=lens_2d, logits_dtype=LOGITS_DTYPES[case.logits_dtype], key_format=case.key_format,
        q_sf=q_sf)
    inp = inp.to(device) if str(device) != "cpu" else inp
    if floor:
        inp = replace(inp, kv_cache=_above_filler(inp.kv_cache, floor, case.key_format),
                      kv_cache_preshuffled=None if pre is None else _above_filler(inp.kv_cache_preshuffled, floor,
                                                                                  case.key_format),
                      block_tables=inp.block_tables + floor)
    return inp


def _above_filler(cache: torch.Tensor, floor: int, key_format: str = "fp8") -> torch.Tensor:
    """``cache``'s blocks moved to ids ``floor + i``, built in place on the cache's device; the
    blocks below hold filler keys with scale 1.0."""
    nb, bs, _, width = cache.shape
    key_bytes = width - layouts.SCALE_BYTES  # fp8: D bytes a token; mxfp4: D / 2
    big = torch.empty(floor + nb, bs * width, dtype=torch.uint8, device=cache.device)
    if key_format == "mxfp4":
        big[:floor, : bs * key_bytes] = FILLER_E2M1_PAIR
        big[:floor, bs * key_bytes:] = mxfp4.UE8M0_ONE  # every byte of every scale word: 1.0
    else:
        big[:floor, : bs * key_bytes] = FILLER_KEY_BYTE
        big[:floor, bs * key_bytes:] = torch.ones(bs, dtype=torch.float32, device=cache.device).view(torch.uint8)
    big[floor:] = cache.reshape(nb, bs * width)
    return big.view(floor + nb, bs, 1, width)


def _plant_near_ties(case: IndexerCase, k_fp8: torch.Tensor, scales: torch.Tensor, q_fp8: torch.Tensor,
                     weights: torch.Tensor, block_tables: torch.Tensor, row_lens: torch.Tensor) -> None:
    """In the last row of each sequence, copy the key ranked k-th onto keys ranked below it, the j-th
    copy with a scale j float32 ulps larger: a group of logits at the k-th place a few ulps apart,
    far inside any kernel's rounding, so which of them a kernel ranks k-th is a coin toss."""
    n, bs, k = case.next_n, case.block_size, case.topk
    for b in range(case.batch):
        r = b * n + n - 1
        L = int(row_lens[r])
        if L <= k + 1:
            continue
        blocks = block_tables[b, : math.ceil(L / bs)].long()
        slots = (blocks.view(-1, 1) * bs + torch.arange(bs)).reshape(-1)[:L]  # cache rows of tokens 0..L-1
        keys = k_fp8[slots].double() * scales[slots].double().view(-1, 1)
        logits = (weights[r].double().view(-1, 1) * (q_fp8[b, n - 1].double() @ keys.T).clamp_min(0)).sum(0)
        order = torch.argsort(-logits, stable=True)
        kth, below = int(slots[order[k - 1]]), slots[order[k + 1 : k + 1 + max(2, k // 4)]]
        for j, s_ in enumerate(below.tolist(), 1):
            k_fp8[s_] = k_fp8[kth]
            scales[s_] = (scales[kth : kth + 1].view(torch.int32) + j).view(torch.float32)[0]
