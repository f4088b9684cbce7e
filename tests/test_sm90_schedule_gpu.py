"""The share of a call each program of the Hopper kernels takes (``paged_mqa_logits_sm90_schedule_kernel``, the
code the kernels run themselves), against a plain-Python split written here from the rule, over batches that
cross its 128-length chunks, empty and over-long sequences, and grids from 1 to 528 programs. The logits tests
reach the schedule only through the tiles a case happens to have; this one checks every share's five numbers and
that the shares cover every tile of the batch once. Gluon does not run in Triton's interpreter: skipped without a
GPU of compute capability 9.0."""
import random

import pytest
import torch

BLOCK_T = 64


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def expected_shares(ctx: list[int], max_model_len: int, programs: int, balanced: bool) -> list[tuple]:
    """(lo, hi, first sequence, tiles before it, sequences touched) per program. Tiles are numbered sequence
    after sequence; balanced: a sequence has the tiles of its keys up to max_model_len, else every sequence
    counts cdiv(max_model_len, BLOCK_T); each program takes [p * total // P, (p + 1) * total // P)."""
    per_seq = cdiv(max_model_len, BLOCK_T)
    sizes = [cdiv(min(c, max_model_len), BLOCK_T) if balanced else per_seq for c in ctx]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    total = sum(sizes)
    rows = []
    for p in range(programs):
        lo, hi = p * total // programs, (p + 1) * total // programs
        if balanced:
            done = [i for i in range(len(ctx)) if starts[i] + sizes[i] <= lo]
            first, before = len(done), sum(sizes[i] for i in done)
            touched = sum(1 for s in starts if s < hi) - first
        else:
            first, before = lo // per_seq, lo // per_seq * per_seq
            touched = (hi - 1) // per_seq - lo // per_seq + 1
        rows.append((lo, hi, first, before, touched if hi > lo else 0))
    return rows


def covered_tiles(rows: list[tuple], ctx: list[int], max_model_len: int, balanced: bool) -> list[tuple]:
    """Every (sequence, tile of that sequence) each share computes, by walking its sequences from the first as
    the kernels do."""
    per_seq = cdiv(max_model_len, BLOCK_T)
    sizes = [cdiv(min(c, max_model_len), BLOCK_T) if balanced else per_seq for c in ctx]
    tiles = []
    for lo, hi, first, before, touched in rows:
        start = before
        for b in range(first, first + touched):
            tiles += [(b, t - start) for t in range(start, start + sizes[b]) if lo <= t < hi]
            start += sizes[b]
    return tiles


def every_tile(ctx: list[int], max_model_len: int, balanced: bool) -> list[tuple]:
    per_seq = cdiv(max_model_len, BLOCK_T)
    return [(b, j) for b, c in enumerate(ctx)
            for j in range(cdiv(min(c, max_model_len), BLOCK_T) if balanced else per_seq)]


def lengths(batch: int, max_model_len: int, rng: random.Random) -> list[int]:
    pool = [0, 1, BLOCK_T, BLOCK_T + 1, max_model_len, max_model_len + 5]  # empty, edges, past the window
    return [rng.choice(pool) if rng.random() < 0.3 else rng.randint(0, max_model_len) for _ in range(batch)]


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                    reason="runs the sm90 schedule kernel: needs a GPU of compute capability 9.0")
@pytest.mark.parametrize("balanced", [True, False])
@pytest.mark.parametrize("max_model_len", [8192, 163840])
@pytest.mark.parametrize("batch", [1, 3, 127, 128, 129, 300])
def test_each_program_takes_the_share_the_rule_gives(batch, max_model_len, balanced):
    from parity.kernels.paged_mqa_logits_sm90 import SCHEDULE_STRIDE, paged_mqa_logits_sm90_schedule_kernel

    rng = random.Random(batch * 7 + max_model_len + balanced)
    for programs in (1, 5, 132, 528):
        ctx = lengths(batch, max_model_len, rng)
        per_seq = cdiv(max_model_len, BLOCK_T)
        schedule = torch.full((programs, SCHEDULE_STRIDE.value), -7, dtype=torch.int32, device="cuda")
        paged_mqa_logits_sm90_schedule_kernel[(programs,)](
            torch.tensor(ctx, dtype=torch.int32, device="cuda"), schedule, batch, batch * per_seq, per_seq,
            max_model_len, BLOCK_T=BLOCK_T, BALANCED=balanced, num_warps=4)
        got = [tuple(r[:5]) for r in schedule.cpu().tolist()]
        want = expected_shares(ctx, max_model_len, programs, balanced)
        bad = [(p, g, w) for p, (g, w) in enumerate(zip(got, want)) if g != w]
        assert not bad, f"{programs} programs, lengths {ctx[:8]}...: (program, got, want) {bad[:4]}"
        assert sorted(covered_tiles(got, ctx, max_model_len, balanced)) == every_tile(ctx, max_model_len, balanced)


def test_the_cover_check_catches_a_share_one_tile_off():
    """The check above can fail: a share that ends one tile late computes a tile twice, one that starts on the
    wrong sequence computes the wrong tiles."""
    ctx = lengths(129, 8192, random.Random(3))
    rows = expected_shares(ctx, 8192, 5, True)
    assert sorted(covered_tiles(rows, ctx, 8192, True)) == every_tile(ctx, 8192, True)
    lo, hi, first, before, touched = rows[1]
    late = rows[:1] + [(lo, hi + 1, first, before, touched + 1)] + rows[2:]
    assert sorted(covered_tiles(late, ctx, 8192, True)) != every_tile(ctx, 8192, True)
    shifted = rows[:1] + [(lo, hi, first + 1, before, touched)] + rows[2:]
    assert sorted(covered_tiles(shifted, ctx, 8192, True)) != every_tile(ctx, 8192, True)
