"""The top-k consumer reference and the tie-aware comparison (SPEC section 6).

Expected selections are written by hand or computed with numpy from the causal rule, never by
``topk_reference`` itself."""
import numpy as np
import pytest
import torch

from parity.backends.base import SimpleBackend
from parity.backends.torch_ref import TorchBackend
from parity.judge.buffers import guarded_buffer
from parity.problem.cases import IndexerCase
from parity.run.harness import run_cell
from parity.judge.topk import DEFAULT_TOPK, compare_topk, topk_reference


def numpy_topk(logits: np.ndarray, context_lens, next_n: int, k: int) -> np.ndarray:
    """Independent selection: row r of sequence r // next_n sees ctx - next_n + r % next_n + 1 positions."""
    out = np.full((logits.shape[0], k), -1, dtype=np.int64)
    for r in range(logits.shape[0]):
        L = int(context_lens[r // next_n]) - next_n + r % next_n + 1
        if L <= k:
            out[r, :L] = np.arange(L)
        else:
            out[r] = np.sort(np.argsort(-logits[r, :L], kind="stable")[:k])
    return out


def test_hand_made_row():
    logits = torch.tensor([[0.5, 3.0, -1.0, 2.0, 7.0, 1.0, 100.0, 100.0]])  # columns 6, 7 past context_len
    got = topk_reference(logits, torch.tensor([6], dtype=torch.int32), next_n=1, k=3)
    assert got.tolist() == [[1, 3, 4]]


def test_random_rows_match_numpy():
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(6, 40, generator=gen)
    ctx = [40, 25]
    got = topk_reference(logits, torch.tensor(ctx, dtype=torch.int32), next_n=3, k=7)
    assert np.array_equal(got.numpy(), numpy_topk(logits.numpy(), ctx, 3, 7))


def test_default_k_is_index_topk():
    assert DEFAULT_TOPK == 2048
    logits = torch.randn(2, 3000)
    got = topk_reference(logits, torch.tensor([3000], dtype=torch.int32), next_n=2)
    assert got.shape == (2, 2048)
    assert np.array_equal(got.numpy(), numpy_topk(logits.numpy(), [3000], 2, 2048))


def test_fewer_valid_than_k_gives_prefix_then_minus_one():
    # Descending logits: an order-by-logit answer would differ from the op's plain 0..len-1.
    logits = torch.tensor([[1.0, 9.0, 5.0, 0.0], [1.0, 9.0, 5.0, 0.0]])
    got = topk_reference(logits, torch.tensor([3], dtype=torch.int32), next_n=2, k=4)
    assert got.tolist() == [[0, 1, -1, -1], [0, 1, 2, -1]]


def test_causal_bounds_per_row():
    next_n, ctx = 3, [5, 7]
    logits = torch.arange(8, dtype=torch.float32).repeat(6, 1)
    lens = [5 - 3 + 1, 5 - 3 + 2, 5 - 3 + 3, 7 - 3 + 1, 7 - 3 + 2, 7 - 3 + 3]  # 3, 4, 5, 5, 6, 7
    for r, L in enumerate(lens):
        logits[r, L:] = 1e6  # bait past the row's causal bound
    got = topk_reference(logits, torch.tensor(ctx, dtype=torch.int32), next_n, k=2)
    assert got.tolist() == [[1, 2], [2, 3], [3, 4], [3, 4], [4, 5], [5, 6]]


def _pitched(logits: torch.Tensor, pad: int) -> torch.Tensor:
    rows, cols = logits.shape
    storage = torch.full((rows, cols + pad), 1e30)  # padding holds bait a stride-blind reader picks
    storage[:, :cols] = logits
    return storage[:, :cols]


@pytest.mark.parametrize("layout", ["padded", "transposed", "explicit_strides"])
def test_strided_views(layout):
    gen = torch.Generator().manual_seed(3)
    rows, cols, next_n, k, ctx = 4, 50, 2, 5, [50, 31]
    logits = torch.randn(rows, cols, generator=gen)
    want = numpy_topk(logits.numpy(), ctx, next_n, k)
    lens = torch.tensor(ctx, dtype=torch.int32)
    if layout == "padded":
        view = _pitched(logits, 256)
        assert view.stride(0) == cols + 256
        got = topk_reference(view, lens, next_n, k)
        # Same storage read with a stride that ignores the pad: a different (wrong) answer.
        assert not np.array_equal(topk_reference(view, lens, next_n, k, stride0=cols).numpy(), want)
    elif layout == "transposed":
        view = logits.T.contiguous().T
        assert view.stride() == (1, rows)
        got = topk_reference(view, lens, next_n, k)
    else:  # a raw buffer whose tensor shape says nothing of the row pitch, as a pointer + strides op sees it
        pitch = cols + 13
        flat = torch.full((rows * pitch,), 1e30)
        flat.view(rows, pitch)[:, :cols] = logits
        got = topk_reference(flat[: rows * cols].view(rows, cols), lens, next_n, k, stride0=pitch, stride1=1)
    assert np.array_equal(got.numpy(), want)


def test_bad_arguments_are_named():
    lens = torch.tensor([4], dtype=torch.int32)
    with pytest.raises(ValueError, match="logits must be a 2-D"):
        topk_reference(torch.zeros(8), lens, 1, 2)
    with pytest.raises(ValueError, match="k must be >= 1"):
        topk_reference(torch.zeros(1, 4), lens, 1, 0)
    with pytest.raises(ValueError, match="rows"):
        topk_reference(torch.zeros(3, 4), lens, 2, 2)
    with pytest.raises(ValueError, match="stride0"):
        topk_reference(torch.zeros(2, 4), lens, 2, 2, stride0=100)
    with pytest.raises(ValueError, match="selected must be"):
        compare_topk(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 4), lens, 1, 2, 1e-3, 0.0)


# --- the tie-aware comparison -----------------------------------------------------------------------

REF = torch.tensor([[5.0, 4.0, 3.0, 3.0, 1.0, 0.0]], dtype=torch.float64)
LENS = torch.tensor([6], dtype=torch.int32)


def test_exact_tie_swap_passes():
    # k=3: positions 2 and 3 tie at the k-th value; the reference keeps 2, a backend may keep 3.
    f = compare_topk(torch.tensor([[0, 1, 3]]), REF, LENS, 1, 3, rtol=1e-3, atol=0.0)
    assert f.ok, f.summary
    assert f.details["tie_swaps"] == 1 and f.details["mean_recall"] == pytest.approx(2 / 3)


def test_swap_a_backend_within_value_tolerance_can_make_passes():
    # Row max 5, rtol 1e-3: each logit may be off by 5e-3. Positions 1.5 tolerances apart swap when
    # both are off by 0.8 of it in opposite directions; a value-check-clean backend must not fail top-k.
    ref = torch.tensor([[5.0, 4.0, 3.0, 3.0 - 7.5e-3, 1.0]], dtype=torch.float64)
    backend = ref.clone()
    backend[0, 2] -= 4e-3
    backend[0, 3] += 4e-3
    assert ((backend - ref).abs() <= 5e-3).all()
    lens = torch.tensor([5], dtype=torch.int32)
    selected = topk_reference(backend, lens, 1, 3)
    assert selected.tolist() == [[0, 1, 3]]
    assert compare_topk(selected, ref, lens, 1, 3, rtol=1e-3, atol=0.0).ok


def test_swap_beyond_the_tie_band_fails():
    ref = torch.tensor([[5.0, 4.0, 3.0, 3.0 - 12.5e-3, 1.0]], dtype=torch.float64)  # 2.5 tolerances below
    f = compare_topk(torch.tensor([[0, 1, 3]]), ref, torch.tensor([5], dtype=torch.int32), 1, 3, rtol=1e-3, atol=0.0)
    assert not f.ok
    assert f.details["non_tie_per_row"][0] | {"kth_value": 0} == {
        "count": 1, "added": [3], "dropped": [], "kth_value": 0, "selected": 3, "expected": 3}


def test_the_band_widens_with_the_magnitude_the_value_check_allows():
    """check_values bounds a logit by rtol * max(row max, its magnitude |w| (|q|.|k|) scale): where the summed
    terms are large, a swap a value-clean backend can make is wider than twice the row-max tolerance. The
    same swap fails without the magnitude and passes with it; a magnitude too small to cover it still fails."""
    ref = torch.tensor([[5.0, 4.0, 3.0, 3.0 - 12.5e-3, 1.0]], dtype=torch.float64)  # 2.5 row-max tolerances
    lens, swap = torch.tensor([5], dtype=torch.int32), torch.tensor([[0, 1, 3]])
    assert not compare_topk(swap, ref, lens, 1, 3, rtol=1e-3, atol=0.0).ok
    mag = torch.full_like(ref, 5.0)
    mag[0, 2:4] = 7.0  # each of the two may be off by 7e-3: 14e-3 apart ties
    assert compare_topk(swap, ref, lens, 1, 3, rtol=1e-3, atol=0.0, magnitude=mag).ok
    mag[0, 2:4] = 6.0  # 12e-3: not enough
    assert not compare_topk(swap, ref, lens, 1, 3, rtol=1e-3, atol=0.0, magnitude=mag).ok
    with pytest.raises(ValueError, match="magnitude must have ref_logits' shape"):
        compare_topk(swap, ref, lens, 1, 3, rtol=1e-3, atol=0.0, magnitude=mag[:, :3])


@pytest.mark.parametrize("selected,why", [
    ([[1, 4, 2]], "the best position swapped for a far lower one"),
    ([[0, 0, 1]], "a duplicate index"),
    ([[0, 1, -1]], "one missing"),
])
def test_planted_non_tie_disagreement_is_caught(selected, why):
    f = compare_topk(torch.tensor(selected), REF, LENS, 1, 3, rtol=1e-3, atol=0.0)
    assert not f.ok, why
    assert f.details["rows"] == [0]


def test_short_rows_allow_no_swaps():
    # 3 valid positions, k=4: all three must be chosen; a position past the causal bound is not a tie
    # even when its logit would be one.
    ref = torch.tensor([[2.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    ref[0, 3] = float("-inf")
    lens = torch.tensor([3], dtype=torch.int32)
    assert compare_topk(torch.tensor([[0, 1, 2, -1]]), ref, lens, 1, 4, 1e-3, 0.0).ok
    f = compare_topk(torch.tensor([[0, 1, 3, -1]]), ref, lens, 1, 4, 1e-3, 0.0)
    assert not f.ok
    assert (f.details["non_tie_per_row"][0]["added"], f.details["non_tie_per_row"][0]["dropped"]) == ([3], [2])


# --- through the harness: every cell runs the check ------------------------------------------------

CASE = IndexerCase(batch=2, next_n=2, heads=4, block_size=16, max_model_len=200, context="ctx_eq_max", topk=16)


class PromotesOneLogit(SimpleBackend):
    """The torch backend, but in one row the lowest valid logit is raised above the row's maximum:
    a position far from the k-th value enters the top-k and pushes the k-th one out."""

    def __init__(self):
        super().__init__(name="planted:promotes_one_logit", paths=("fused",))
        self.inner = TorchBackend()
        self.planted = None

    def run(self, path, inputs, out):
        self.inner.run(path, inputs, out)
        lens = inputs.context_lens.long().repeat_interleave(inputs.next_n)
        lens = lens - inputs.next_n + torch.arange(inputs.next_n).repeat(inputs.batch) + 1
        r = int(torch.nonzero(lens > 4 * inputs.case.topk)[0])
        row = out[r, : int(lens[r])]
        p = int(torch.argmin(row))
        row[p] = row.max() + 1 + row.abs().max()
        self.planted = (r, p)


def _finding(result, check):
    return next(f for f in result["findings"] if f["check"] == check)


def test_harness_topk_passes_for_the_torch_backend():
    f = _finding(run_cell(TorchBackend(), "fused", "padded", CASE, "cpu"), "topk")
    assert f["ok"], f["summary"]
    assert f["details"]["mean_recall"] == 1.0


def test_harness_catches_a_planted_non_tie_swap():
    backend = PromotesOneLogit()
    result = run_cell(backend, "fused", "padded", CASE, "cpu")
    r, p = backend.planted
    f = _finding(result, "topk")
    assert result["status"] == "fail"
    assert not f["ok"], f["summary"]
    assert f["details"]["rows"] == [r]
    row = f["details"]["non_tie_per_row"][r]
    # p entered; the k-th value it pushed out sits at the tie value, so only p counts.
    assert row["count"] == 1 and row["added"] == [p] and row["dropped"] == []
    assert f["details"]["non_tie_counts"][r] == 1 and sum(f["details"]["non_tie_counts"]) == 1


# --- vLLM's op: the installed build, else one compiled from a vLLM source tree ($PARITY_VLLM_SRC) --------

_CONSUMER: dict = {}


def _vllm_topk():
    """The installed vLLM's op, else the one built from a source tree. A tree that is given and does not
    build fails the tests with the compiler's message (a broken build is a finding, not a skip); the
    build, or its failure, is reused by every test."""
    if not torch.cuda.is_available():
        pytest.skip("vLLM's top_k_per_row_decode is a CUDA op: no GPU here")
    if "consumer" not in _CONSUMER:
        try:
            _CONSUMER["consumer"] = _resolve_vllm_topk()
        except Exception as exc:  # noqa: BLE001  (pytest.skip is not an Exception: it is not cached)
            _CONSUMER["consumer"] = exc
    if isinstance(_CONSUMER["consumer"], Exception):
        raise _CONSUMER["consumer"]
    return _CONSUMER["consumer"]


def _resolve_vllm_topk():
    from parity.backends import vllm_ops, vllm_topk_ext

    backend = vllm_ops.make_backend()
    if not backend.topk_reason:
        return backend
    src = vllm_topk_ext.source_tree()
    if src is None:
        pytest.skip(f"{backend.topk_reason}; no vLLM source tree either (${vllm_topk_ext.ENV})")
    return vllm_topk_ext.load(src)


# The op picks its algorithm by column count: insertion sort below 12288, radix sort below 200000, two
# passes (ten blocks per row, then a merge) beyond.
@pytest.mark.parametrize("cols", [5000, 20000, 200_000])
@pytest.mark.parametrize("buffer", ["exact", "padded"])
def test_vllm_top_k_per_row_decode_matches_the_reference(buffer, cols):
    consumer = _vllm_topk()
    next_n, k = 2, 2048
    ctx = torch.tensor([cols, cols // 2 + 7, 1500], dtype=torch.int32)  # the last one shorter than k
    gen = torch.Generator().manual_seed(11 + cols)
    logits = torch.randn(3 * next_n, cols, generator=gen)
    buf = guarded_buffer((3 * next_n,), cols, buffer, "cuda")
    buf.view.copy_(logits)
    got = consumer.topk_decode(buf.view, ctx.cuda(), next_n, k)
    assert got.shape == (3 * next_n, k)
    f = compare_topk(got, logits.double(), ctx, next_n, k, rtol=1e-6, atol=0.0)
    assert f.ok, f.summary
    assert f.details["min_recall"] > 0.999


def test_a_backend_within_the_value_bound_passes_top_k_through_the_harness():
    """Exact logits, each moved by 0.9 of check_values' bound (rtol x max(row max, magnitude)), down for the
    reference's top-k and up for the rest: the values check passes it, so the top-k check must too (its band
    used the row max alone and failed it)."""
    from parity.backends.torch_ref import TorchBackend
    from parity.judge import checks
    from parity.problem.cases import IndexerCase
    from parity.problem.reference import reference_head_logits
    from parity.run.harness import run_cell

    case = IndexerCase()

    class WithinTheBound(TorchBackend):
        def run(self, path, inputs, out):
            super().run(path, inputs, out)
            ref = reference_head_logits(inputs).sum(0)
            mag = reference_head_logits(inputs, magnitude=True).sum(0)
            rtol = checks.TOLERANCES[case.input_format][0]
            for r, n in enumerate(inputs.row_lens.tolist()):
                if n > case.topk:
                    row = ref[r, :n]
                    allow = 0.9 * rtol * torch.maximum(row.abs().max(), mag[r, :n])
                    top = torch.zeros(n, dtype=torch.bool)
                    top[torch.topk(row, case.topk).indices] = True
                    out[r, :n] = (row + torch.where(top, -allow, allow)).float()

    result = run_cell(WithinTheBound(), "fused", "exact", case)
    found = {f["check"]: f for f in result["findings"]}
    assert found["values"]["ok"] and found["topk"]["ok"], found["topk"]["summary"]
    assert found["topk"]["details"]["tie_swaps"] > 0  # the bound was used: swaps the row max alone refused
