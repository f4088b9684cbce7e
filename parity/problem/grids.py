"""The case grids of the parity levels: quick (CI on a CPU), full (every named edge at DeepSeek-V3.2's
shape), stress (the bug classes seen in the wild), and how many times each cell calls a backend."""
from __future__ import annotations

from parity.problem import layouts
from parity.problem.cases import CONTEXT_PATTERNS, IndexerCase


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
        *fp4_quick_cases(),
    ]


def fp4_quick_cases() -> list[IndexerCase]:
    """MXFP4 inputs (DeepSeek-V4's indexer cache): a row ending at max_model_len before another, and
    head_dim 64 (two of the word's four scales) with DeepGEMM's 2-D per-row lengths at H=64."""
    C = IndexerCase
    return [
        C(batch=2, next_n=2, block_size=64, max_model_len=300, context="ctx_eq_max_first", key_format="mxfp4"),
        C(batch=2, next_n=3, heads=64, head_dim=64, block_size=16, max_model_len=200, context="ctx_eq_max",
          row_lens="per_row", key_format="mxfp4"),
    ]


def fp4_full_cases() -> list[IndexerCase]:
    """MXFP4 at DeepSeek-V4's indexer shape (H=64, D=128) over the block sizes the FP4 kernels take (64 and
    32: DeepGEMM and FlashInfer on SM100; 1 and 16: ours), next_n 1-4, per-row lengths, bf16 logits and
    dummy rows; lengths kept short, since the Triton interpreter's time grows with them."""
    C = IndexerCase
    F = dict(heads=64, key_format="mxfp4", topk=128)
    return [
        C(batch=3, next_n=1, block_size=64, max_model_len=520, context="ctx_eq_max", **F),
        C(batch=3, next_n=2, block_size=32, max_model_len=520, context="ctx_eq_max_first", **F),
        C(batch=2, next_n=4, block_size=64, max_model_len=320, context="near_max", **F),
        C(batch=3, next_n=2, block_size=1, max_model_len=130, context="random", **F),
        C(batch=3, next_n=2, block_size=64, max_model_len=320, context="random", row_lens="per_row", **F),
        C(batch=3, next_n=2, block_size=64, max_model_len=320, context="ctx_eq_max_first", logits_dtype="bfloat16",
          **F),
        C(batch=4, next_n=2, block_size=64, max_model_len=320, context="dummy_rows", **F),
        C(batch=2, next_n=3, block_size=16, max_model_len=300, context="block_multiple_minus1", head_dim=64, **F),
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
        # next_n 4 at the indexer's shape with 2-D lengths and bf16 logits: the Hopper kernels' next_n 4 forms
        # read each row's limit, and store bf16, in code of their own
        C(batch=3, next_n=4, heads=64, block_size=64, max_model_len=1000, context="random", row_lens="per_row",
          topk=128),
        C(batch=3, next_n=4, heads=64, block_size=64, max_model_len=1000, context="near_max",
          logits_dtype="bfloat16", topk=128),
    ]
    return quick_cases() + extra + fp4_full_cases()


def stress_cases() -> list[IndexerCase]:
    """The bugs this kernel has had in the wild, one group per class (docs/stress-level.md).
    Cases marked gpu_only are skipped on the CPU with the reason; the rest fit the 2-core CI machine."""
    C = IndexerCase
    H = dict(heads=64, topk=128)
    out = []
    # Empty and dummy rows: CUDA-graph capture pads a batch with context_len 0 and 1 sequences
    # (DeepGEMM #353: all lengths 0; #344: fewer work items than SMs; vLLM #51970, #51972).
    out += [C(batch=4, next_n=2, block_size=64, max_model_len=320, context="dummy_rows", **H),
            C(batch=3, next_n=1, block_size=1, max_model_len=130, context="dummy_rows"),
            C(batch=4, next_n=2, block_size=64, max_model_len=256, context="all_dummy", **H),
            C(batch=2, next_n=3, block_size=16, context="all_dummy"),
            C(batch=1, next_n=4, block_size=64, context="all_dummy")]
    # 32-bit offsets (aiter's varctx path wrote zeros at block index >= 254201; aiter #5614): the
    # sequences' blocks above 2**31 bytes of cache; on the CPU a small proxy with the same shape.
    top = -(-(2**31) // layouts.block_bytes(64, 128))  # 254201: the first block whose byte offset needs 32 bits
    out += [C(batch=2, next_n=2, block_size=64, max_model_len=1024, context="ctx_eq_max", block_id_floor=top + 8,
              gpu_only=True, **H),
            C(batch=2, next_n=2, block_size=16, max_model_len=300, context="ctx_eq_max", block_id_floor=600)]
    # Batch over 64 (aiter's regression tests for a stride fault with batch > 64).
    out += [C(batch=65, next_n=1, block_size=16, max_model_len=48, context="random"),
            C(batch=96, next_n=2, block_size=64, max_model_len=80, context="random"),
            C(batch=128, next_n=1, block_size=1, max_model_len=24, context="random"),
            C(batch=256, next_n=2, block_size=64, max_model_len=256, context="random", gpu_only=True, **H)]
    # DeepSeek-V3.2's max_model_len 163840 and beyond 2**18 (vLLM #46074: an off-by-one in the
    # indexer's block-table buffer above ~325K); near-max contexts.
    out += [C(batch=2, next_n=2, block_size=64, max_model_len=163840, context="near_max", gpu_only=True,
              heads=64, topk=2048),
            C(batch=1, next_n=1, block_size=64, max_model_len=2**18 + 64 * 1000 + 7, context="ctx_eq_max",
              gpu_only=True, heads=64, topk=2048),
            C(batch=2, next_n=2, block_size=16, max_model_len=1000, context="near_max")]
    # Per-row context lengths (DeepGEMM's 2-D context_lens; aiter #5238).
    out += [C(batch=3, next_n=2, block_size=64, max_model_len=320, context="random", row_lens="per_row", **H),
            C(batch=2, next_n=4, block_size=16, max_model_len=200, context="ctx_eq_max", row_lens="per_row")]
    # bf16 logits (DeepGEMM's logits_dtype): its own tolerance, guard bands in bf16.
    out += [C(batch=3, next_n=2, block_size=64, max_model_len=320, context="ctx_eq_max_first",
              logits_dtype="bfloat16", **H),
            C(batch=2, next_n=1, block_size=1, max_model_len=130, context="ctx_eq_max", logits_dtype="bfloat16")]
    # Near-ties at the k-th place (vLLM's top-k test makes them on purpose).
    out += [C(batch=2, next_n=2, block_size=64, max_model_len=1000, context="random", topk_mode="near_ties", **H),
            C(batch=2, next_n=1, block_size=16, max_model_len=600, context="ctx_eq_max", topk_mode="near_ties",
              topk=64)]
    # Odd next_n (an out-of-bounds read with odd next_n, DeepGEMM #324): next_n = 3 at H=64.
    out += [C(batch=3, next_n=3, block_size=64, max_model_len=320, context="ctx_eq_max_first", **H),
            C(batch=2, next_n=3, block_size=16, max_model_len=300, context="near_max", **H),
            C(batch=2, next_n=3, block_size=1, max_model_len=130, context="block_multiple_plus1", **H)]
    # MXFP4 (aiter #4028: row * stride of the output overflowed int32, silently dropping rows past 2 GiB
    # of logits): a CPU proxy whose output passes 2**15 bytes; and DeepSeek-V3.2's max_model_len in FP4.
    out += [C(batch=3, next_n=2, block_size=64, max_model_len=2000, context="ctx_eq_max", key_format="mxfp4"),
            C(batch=2, next_n=2, block_size=64, max_model_len=163840, context="near_max", gpu_only=True,
              key_format="mxfp4", heads=64, topk=2048)]
    return out


# Run-to-run determinism: how many times each cell calls the backend (every run bitwise equal to the
# first). DeepGEMM's own test replays its kernel 20 times.
REPEATS = {"quick": 2, "full": 2, "stress": 20}
LEVELS = tuple(REPEATS)
# On the CPU, programs of interpreted Triton and torch's CPU ops run in a fixed order: there is no
# race for 20 calls to find, and 20 interpreted calls a cell would make the CPU stress run take an hour.
CPU_REPEATS = 2


def repeats_for(level: str, device: str) -> int:
    return REPEATS[level] if not str(device).startswith("cpu") else min(REPEATS[level], CPU_REPEATS)


def cases_for_level(level: str) -> list[IndexerCase]:
    if level not in LEVELS:
        raise ValueError(f"parity level must be one of {LEVELS}, got {level!r}")
    return {"quick": quick_cases, "full": full_cases, "stress": stress_cases}[level]()
