"""Buffer strategies across layers and steps: exact rows, the input's device, no stale data."""
import pytest
import torch

from parity.contract import strategies
from parity.backends.torch_ref import TorchBackend
from parity.problem.cases import IndexerCase, build_inputs
from parity.contract.contract import check_device, check_layer_reuse, check_rows

ALL = sorted(strategies.STRATEGIES)
CASE = IndexerCase(batch=2, next_n=2, heads=4, max_model_len=300, context="random")


class ReturnsCachedRows(strategies.CachedAtLeastRows):
    """Planted: hands out the whole cached buffer, not [:rows]."""

    def __call__(self, q_fp8, rows, max_model_len):
        super().__call__(q_fp8, rows, max_model_len)
        return self.buf[:, :max_model_len]


class NoRefill(strategies.CachedAtLeastRows):
    """Planted: reuses the buffer without restoring the -inf prefill."""

    def __call__(self, q_fp8, rows, max_model_len):
        if self.buf is None or self.buf.shape[0] < rows:
            self.buf = torch.full((rows, max_model_len + self.pad), float("-inf"), device=q_fp8.device)
        return self.buf[:rows, :max_model_len]


def default_device_exact(q_fp8, rows, max_model_len):
    """Planted: allocates on the default device, whatever q's device is."""
    return torch.full((rows, max_model_len), float("-inf"))


def q_on_meta():
    return torch.empty(2, 2, 4, 128, dtype=torch.float8_e4m3fn, device="meta")


@pytest.mark.parametrize("name", ALL)
def test_strategy_returns_exactly_the_rows_asked(name):
    assert check_rows(strategies.make_strategy(name), torch.empty(1, dtype=torch.float8_e4m3fn), 100).ok


def test_cache_returning_more_rows_is_caught():
    f = check_rows(ReturnsCachedRows(), torch.empty(1, dtype=torch.float8_e4m3fn), 100)
    assert not f.ok and f.details["bad"][0] == {"asked_rows": 2, "shape": [4, 100], "strides": [356, 1],
                                                "dtype": "torch.float32"}


@pytest.mark.parametrize("name", ALL)
def test_strategy_allocates_on_the_device_of_q(name):
    # 'meta' stands in for "a GPU that is not the default one": any default-device allocation misses it.
    assert check_device(strategies.make_strategy(name), q_on_meta()).ok


def test_default_device_allocation_is_caught():
    f = check_device(default_device_exact, q_on_meta())
    assert not f.ok and f.details == {"got": "cpu", "want": "meta"}


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs to put q on a non-default one")
@pytest.mark.parametrize("name", ALL)
def test_strategy_on_second_gpu(name):
    q = torch.empty(1, dtype=torch.float8_e4m3fn, device="cuda:1")
    assert check_device(strategies.make_strategy(name), q).ok
    assert not check_device(default_device_exact, q).ok


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: q on cuda while the default device is cpu")
@pytest.mark.parametrize("name", ALL)
def test_strategy_on_the_gpu_of_q(name):
    q = torch.empty(1, dtype=torch.float8_e4m3fn, device=f"cuda:{torch.cuda.device_count() - 1}")
    assert check_device(strategies.make_strategy(name), q).ok
    assert not check_device(default_device_exact, q).ok


def test_layer_inputs_really_shrink_somewhere():
    """The stale-data test needs a row whose valid length drops from one layer to the next."""
    lens = [build_inputs(IndexerCase(**{**CASE.__dict__, "seed": CASE.seed + layer})).context_lens.tolist()
            for layer in range(61)]
    assert any(b < a for prev, cur in zip(lens, lens[1:]) for a, b in zip(prev, cur))


@pytest.mark.parametrize("name", ALL)
def test_no_stale_values_across_61_layers(name):
    """A kernel relying on the -inf prefill (writes only valid positions) through each strategy."""
    f = check_layer_reuse(strategies.make_strategy(name), TorchBackend(clean_logits=False), CASE)
    assert f.ok, f.summary


def test_reused_buffer_without_prefill_leaks_earlier_layers():
    f = check_layer_reuse(NoRefill(), TorchBackend(clean_logits=False), CASE)
    first = f.details["leaks"][0]
    assert not f.ok and first["finite_where_invalid"] > 0
    assert first["equal_to_previous_call"] > 0  # the leaked values are the previous layer's logits
    # Exactly the layers where some row is shorter than it was at an earlier layer: there an earlier
    # layer's value lies past the row's end, and the kernel (valid positions only) leaves it.
    lens = [build_inputs(IndexerCase(**{**CASE.__dict__, "seed": CASE.seed + layer})).row_lens.tolist()
            for layer in range(61)]
    longest = [max(col) for col in zip(*lens[:1])]
    shrunk = []
    for layer in range(1, 61):
        if any(now < before for now, before in zip(lens[layer], longest)):
            shrunk.append(layer)
        longest = [max(a, b) for a, b in zip(longest, lens[layer])]
    assert shrunk and f.details["leaky_layers"] == shrunk


def test_clean_logits_kernel_needs_no_prefill():
    """The same leaky cache is harmless when the kernel writes -inf itself (clean logits)."""
    assert check_layer_reuse(NoRefill(), TorchBackend(clean_logits=True), CASE, layers=8).ok


def test_cached_at_least_rows_reallocates_only_when_it_must():
    s = strategies.CachedAtLeastRows(reserve_rows=0)
    q = torch.empty(1, dtype=torch.float8_e4m3fn)
    ptrs = [s(q, r, 50).data_ptr() for r in (1, 2, 2, 1, 4, 3)]
    assert s.reallocations == 2 and ptrs[1] == ptrs[2] == ptrs[3] and ptrs[4] == ptrs[5] != ptrs[0]
    reserved = strategies.CachedAtLeastRows(reserve_rows=4)
    assert len({reserved(q, r, 50).data_ptr() for r in (1, 2, 4)}) == 1 and reserved.reallocations == 0


@pytest.mark.parametrize("bad", [dict(rows=0), dict(max_model_len=0)])
def test_bad_arguments_are_named(bad):
    args = {"q_fp8": torch.empty(1), "rows": 2, "max_model_len": 10, **bad}
    with pytest.raises(ValueError, match="rows and max_model_len must be >= 1"):
        strategies.padded(**args)
    with pytest.raises(ValueError, match="buffer strategy must be one of"):
        strategies.make_strategy("huge")
