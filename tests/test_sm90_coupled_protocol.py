"""The synchronisation protocol of the coupled four-warpgroup program (parity.kernels.paged_mqa_logits_sm90_wg4c),
checked on a model: the kernel cannot run without a GPU of compute capability 9.0, and a hang or a q read while it
is overwritten would cost a GPU call to find. The model plays the kernel's order of waits, arrivals and copies:
- 4 load warps, load warp W copying the tiles numbered W mod 4 into its warpgroup's slots;
- load warp 0 also copying each sequence's q into one of two buffers (the second right after its first tile);
- 4 compute warpgroups, each waiting for every q;
- mbarriers with the PTX phase-parity rule.

Copies land and the eight parties run in random orders. The checks: no deadlock; every tile is computed once, by
its warpgroup, from a slot that holds it; a q buffer is not overwritten while a warpgroup still reads it. Two
planted faults show the model sees what the kernel's docstring warns of: a warpgroup that skips the wait for a
sequence it has no tile of, and a q buffer handed back after one arrival instead of four.

What the model does not check is the kernel's code itself: its logits are checked on a GPU (test_sm90_gpu.py)."""
import random

import pytest

WGS = 4


class Barrier:
    """An mbarrier: a phase completes when ``count`` arrivals and every expected byte are in; a wait on parity p
    passes once the phase of that parity has completed (``mbarrier.try_wait.parity``)."""

    def __init__(self, count):
        self.count, self.arrived, self.pending, self.phase = count, 0, 0, 0

    def _complete(self):
        if self.arrived == self.count and self.pending == 0:
            self.phase, self.arrived = self.phase + 1, 0

    def arrive(self):
        self.arrived += 1
        self._complete()

    def expect(self, n):  # mbarrier.expect: an arrival, and n bytes to come
        self.pending += n
        self.arrive()

    def land(self, n):
        self.pending -= n
        self._complete()

    def passed(self, parity):
        return (self.phase & 1) != parity


def turn(c0, n, w):
    """The kernel's ``_turn``: warpgroup w's first tile of a segment of n tiles starting at the share's c0-th, and
    how many of them it takes."""
    j0 = (w - c0 % WGS + WGS) % WGS
    return j0, max(n - j0 + WGS - 1, 0) // WGS


def play(segments, slots, rng, skip_wait_without_tiles=False, q_arrivals=WGS):
    """One share of ``segments`` (tile counts, in sequence order) under a random schedule; raises on a fault."""
    full, empty = [Barrier(1) for _ in range(WGS * slots)], [Barrier(1) for _ in range(WGS * slots)]
    q_full, q_empty = [Barrier(1) for _ in range(2)], [Barrier(q_arrivals) for _ in range(2)]
    slot_holds, q_holds, landing, computed = [None] * (WGS * slots), [None, None], [], []

    def copy(bar, into, index, what):
        into[index] = None  # being overwritten
        bar.expect(1)
        landing.append((bar, into, index, what))

    def issue_q(seq, q_n):
        qs = q_n % 2
        yield lambda: q_empty[qs].passed(((q_n // 2) & 1) ^ 1)
        copy(q_full[qs], q_holds, qs, seq)

    def load_warp(w):
        c0 = c = q_n = q_used = 0
        for seq, n in enumerate(segments):
            if n == 0:
                continue
            j0, count = turn(c0, n, w)
            ahead = w == 0 and q_used == 0
            nxt = seq + 1 < len(segments) and segments[seq + 1] > 0
            if w == 0 and q_n == q_used:
                yield from issue_q(seq, q_n)
                q_n += 1
            if ahead and count == 0 and nxt:
                yield from issue_q(seq + 1, q_n)
                q_n += 1
            q_used += 1
            for i in range(count):
                slot = w * slots + c % slots
                yield lambda slot=slot, c=c: empty[slot].passed(((c // slots) & 1) ^ 1)
                copy(full[slot], slot_holds, slot, (seq, j0 + WGS * i))
                c += 1
                if ahead and i == 0 and nxt:
                    yield from issue_q(seq + 1, q_n)
                    q_n += 1
            c0 += n

    def warpgroup(w):
        c0 = c = q_n = 0
        for seq, n in enumerate(segments):
            if n == 0:
                continue
            j0, count = turn(c0, n, w)
            qs = q_n % 2
            if count or not skip_wait_without_tiles:
                yield lambda qs=qs, q_n=q_n: q_full[qs].passed((q_n // 2) & 1)
            for i in range(count):
                slot, tile = w * slots + c % slots, (seq, j0 + WGS * i)
                yield lambda slot=slot, c=c: full[slot].passed((c // slots) & 1)
                yield None  # the product reads the slot and q: anything may happen meanwhile
                assert slot_holds[slot] == tile, f"warpgroup {w} read {slot_holds[slot]} for tile {tile}"
                assert q_holds[qs] == seq, f"warpgroup {w} read q {q_holds[qs]} for sequence {seq}"
                computed.append((w, tile))
                empty[slot].arrive()
                c += 1
            q_empty[qs].arrive()
            q_n, c0 = q_n + 1, c0 + n

    parties = {("load", w): load_warp(w) for w in range(WGS)} | {("compute", w): warpgroup(w) for w in range(WGS)}
    waits = dict.fromkeys(parties)
    while parties or landing:
        ready = [p for p in parties if waits[p] is None or waits[p]()]
        if landing and (not ready or rng.random() < 0.3):
            bar, into, index, what = landing.pop(rng.randrange(len(landing)))
            into[index] = what
            bar.land(1)
            continue
        assert ready, f"deadlock: {sorted(parties)} wait"
        p = rng.choice(ready)
        try:
            waits[p] = next(parties[p])
        except StopIteration:
            del parties[p], waits[p]
    first = [sum(segments[:s]) for s in range(len(segments))]
    assert sorted(computed) == sorted(((first[s] + j) % WGS, (s, j)) for s, n in enumerate(segments)
                                      for j in range(n)), "a tile computed twice, never, or by another warpgroup"


def _shares(trials, seed=0):
    rng = random.Random(seed)
    for _ in range(trials):  # 1-7 sequences of 0 (no tile in the share) to 40 tiles, 2-5 slots
        segments = [rng.choice([0, 0, 1, 2, 3, 5, 8, 13, 40]) for _ in range(rng.randint(1, 7))]
        yield segments, rng.choice([2, 3, 4, 5]), rng


def test_the_protocol_runs_every_tile_once_without_a_hang_or_a_q_overwritten_while_read():
    for segments, slots, rng in _shares(1500):
        play(segments, slots, rng)


@pytest.mark.parametrize("fault", [dict(skip_wait_without_tiles=True), dict(q_arrivals=1)])
def test_the_model_catches_a_q_buffer_handed_back_too_early(fault):
    with pytest.raises(AssertionError, match="read q"):
        for segments, slots, rng in _shares(1500):
            play(segments, slots, rng, **fault)
