"""CUDA/HIP graphs: capture buckets 1, 2, 4 (ascending), then replay the small ones (GPU only)."""
import pytest
import torch

from parity import strategies
from parity.graphs import graph_replay_hazard

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="graph capture needs a CUDA/HIP GPU")


@pytest.fixture(scope="module")
def triton_backend():
    from parity.backends import load_backend

    return load_backend("triton")  # capturable: no host synchronisation inside run()


@pytest.mark.parametrize("strategy", [
    strategies.FreshPerCall(),
    strategies.CachedAtLeastRows(reserve_rows=8),  # never shrinks, never moves
], ids=lambda s: f"{s.name}-{getattr(s, 'reserve_rows', '')}")
def test_stable_strategies_replay_safely(strategy, triton_backend):
    f = graph_replay_hazard(strategy, triton_backend)
    assert f.ok, f.summary


@pytest.mark.parametrize("strategy", [strategies.CachedAtLeastRows(), strategies.CachedExactRows()],
                         ids=lambda s: s.name)
def test_reallocating_cache_replays_into_memory_it_no_longer_owns(strategy, triton_backend):
    f = graph_replay_hazard(strategy, triton_backend)
    assert not f.ok, "the hazard was not reproduced: " + f.summary
    assert f.details["victim_elements_overwritten"] > 0 or not all(
        r["logits_right"] for r in f.details["replays"].values())
