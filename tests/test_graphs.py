"""CUDA/HIP graphs: capture buckets 1, 2, 4 (ascending) with every buffer strategy, then replay the
small buckets after the large one was captured (GPU only; the recommendation logic runs anywhere)."""
import json
import os

import pytest
import torch

from parity.contract.graphs import recommend, replay_verdict, run_all, strategy_grid, to_markdown

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="graph capture needs a CUDA/HIP GPU; none here")

STABLE = ("exact", "padded", "fresh-per-call", "cached-at-least-rows(reserve_rows=8)")  # allocate per call, or never move
REALLOCATING = ("cached-exact-rows", "cached-at-least-rows")


@pytest.fixture(scope="module")
def measured():
    from parity.backends import load_backend

    result = run_all(load_backend("triton"), "cuda")  # our Triton kernel: no host sync inside run()
    print("\n" + to_markdown(result))
    if os.environ.get("PARITY_GRAPHS_JSON"):  # for the GPU script's report
        with open(os.environ["PARITY_GRAPHS_JSON"], "w") as fh:
            json.dump(result, fh, indent=1)
    return {r["strategy"]: r for r in result["strategies"]}, result


@gpu
@pytest.mark.parametrize("name", STABLE)
def test_stable_strategies_replay_safely(name, measured):
    row = measured[0][name]
    assert row["graph_safe"], row["summary"]
    assert all(r["logits_right"] for r in row["details"]["replays"])


@gpu
@pytest.mark.parametrize("name", REALLOCATING)
def test_reallocating_cache_replays_into_memory_it_no_longer_owns(name, measured):
    row = measured[0][name]
    d = row["details"]
    assert not row["graph_safe"], "the hazard was not reproduced: " + row["summary"]
    assert d["buckets_replaying_into_dropped_buffers"] == [1, 2]  # only the largest capture still owns its buffer
    # The demonstration proper: replaying an early bucket overwrote sentinel-filled tensors that now
    # own the freed block, or tensors another graph reads (its logits come out wrong).
    assert d["victim_elements_overwritten"] > 0 or d["owned_buckets_with_wrong_logits"], row["summary"]


@gpu
def test_recommendation_is_graph_safe(measured):
    rec = measured[1]["recommendation"]
    assert rec["strategy"] in STABLE, rec


def _row(name, safe, nbytes, ms, buffers=1):
    return {"strategy": name, "graph_safe": safe, "eager_ms_per_layer": ms, "summary": "",
            "details": {"buffer_bytes_total": nbytes, "distinct_buffers": buffers, "victim_elements_overwritten": 0}}


def test_recommend_never_picks_an_unsafe_strategy():
    rows = [_row("cheap-but-unsafe", False, 10, 0.001), _row("fresh", True, 300, 0.02, 3), _row("reserved", True, 200, 0.03)]
    rec = recommend(rows)
    assert rec["strategy"] == "reserved"
    assert "cheap-but-unsafe" in rec["why"] and "200 bytes" in rec["why"]
    assert recommend([_row("x", False, 1, 1.0)])["strategy"] is None
    table = to_markdown({"device": "d", "buckets": [1, 2, 4], "case": "c", "strategies": rows, "recommendation": rec})
    assert "| cheap-but-unsafe | NO |" in table and "recommended: reserved" in table


def _replay(bucket, owns=True, right=True, overwritten=0):
    return {"bucket": bucket, "logits_right": right, "victim_elements_overwritten": overwritten,
            "strategy_still_owns_buffer": owns}


@pytest.mark.parametrize("replays, overwritten, dropped, hit", [
    ([_replay(1), _replay(2), _replay(4)], 0, [], []),  # a stable strategy: the verdict that must pass
    ([_replay(1, owns=None), _replay(2, owns=None), _replay(4, owns=None)], 0, [], []),  # stateless: owns nothing
    ([_replay(1, owns=False), _replay(2, owns=False), _replay(4)], 0, [1, 2], []),  # dropped, no victim hit this run
    ([_replay(1, owns=False, overwritten=96), _replay(2), _replay(4)], 96, [1], []),
    ([_replay(1), _replay(2), _replay(4, right=False)], 0, [], [4]),  # an earlier replay hit its inputs
])
def test_replay_verdict(replays, overwritten, dropped, hit):
    f = replay_verdict("s", [1, 2, 4], replays, overwritten, {0x1000: 64})
    assert f.ok == (not dropped and not hit and not overwritten)
    assert f.details["buckets_replaying_into_dropped_buffers"] == dropped
    assert f.details["owned_buckets_with_wrong_logits"] == hit
    assert f.details["victim_elements_overwritten"] == overwritten


def test_which_strategies_drop_the_buffer_an_earlier_bucket_was_handed():
    """The ownership signal the replay verdict reads, on the CPU: after buckets 1, 2, 4 (next_n 2), does
    the strategy's buffer still hold the storage each bucket was handed? The views are kept alive so
    that a freed block cannot come back at the same address and pass for the same storage."""
    q = torch.zeros(1, dtype=torch.float32)
    owns = {}
    for label, strategy in strategy_grid(8).items():
        handed = [strategy(q, 2 * b, 100) for b in (1, 2, 4)]
        owner = getattr(strategy, "buf", None)
        owns[label] = None if owner is None else [
            v.untyped_storage().data_ptr() == owner.untyped_storage().data_ptr() for v in handed]
    assert {label for label, o in owns.items() if o is None} == {"exact", "padded", "fresh-per-call"}
    assert owns["cached-exact-rows"] == owns["cached-at-least-rows"] == [False, False, True]
    assert owns["cached-at-least-rows(reserve_rows=8)"] == [True, True, True]
