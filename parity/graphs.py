"""CUDA/HIP graph capture with a logits-buffer strategy: does replaying an early capture still write
where the strategy now hands out logits, and only there?

Servers capture batch buckets in ascending order, each after an eager warm-up. A cache that
reallocates for a larger bucket frees the buffer an earlier graph recorded; the allocator hands that
memory to the next tensor, and replaying the earlier graph writes into it.
"""
from __future__ import annotations

import torch

from parity.backends.base import Backend
from parity.buffers import fill_sentinel, sentinel_mask
from parity.cases import IndexerCase, build_inputs
from parity.checks import Finding, check_mask, check_values
from parity.reference import reference_logits


def graph_replay_hazard(strategy, backend: Backend, buckets=(1, 2, 4), device: str = "cuda", path: str = "fused",
                        case: IndexerCase | None = None) -> Finding:
    """Capture ``backend`` writing through ``strategy`` for each batch bucket, then allocate
    sentinel-filled tensors where freed buffers were and replay every bucket but the largest.
    Fails when a replay changes those tensors (it wrote memory it no longer owns) or when the
    logits it produced are wrong."""
    if not torch.cuda.is_available():
        raise RuntimeError("graph capture needs a CUDA/HIP device")
    base = case or IndexerCase(next_n=2, heads=64, max_model_len=2000, context="random")
    captured = {}
    for b in sorted(buckets):
        c = IndexerCase(**{**base.__dict__, "batch": b, "seed": base.seed + b})
        inputs = build_inputs(c, device)

        def step(inputs=inputs):
            out = strategy(inputs.q_fp8, inputs.rows, inputs.max_model_len)
            backend.run(path, inputs, out)
            return out.clone(), out.data_ptr()  # the clone stands for the top-k consumer inside the graph

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # eager warm-up: compiles kernels; cached strategies allocate here
            step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            result, ptr = step()
        captured[b] = (graph, c, result, ptr)
    torch.cuda.synchronize()
    # Tensors of every captured buffer's size: the caching allocator gives them freed blocks first.
    victims = []
    for b, (_, c, _, _) in captured.items():
        for _ in range(2):
            v = torch.empty(c.batch * c.next_n * (c.max_model_len + 256), dtype=torch.float32, device=device)
            fill_sentinel(v)
            victims.append(v)
    torch.cuda.synchronize()
    replays = {}
    for b in sorted(buckets)[:-1]:
        graph, c, result, ptr = captured[b]
        graph.replay()
        torch.cuda.synchronize()
        ref = reference_logits(build_inputs(c, "cpu"))
        ctx = build_inputs(c, "cpu").context_lens.long().repeat_interleave(c.next_n)
        right = check_mask(result, ref, ctx).ok and check_values(result, ref, ctx, c.fp8).ok
        replays[b] = {"logits_right": right, "buffer_ptr": ptr}
    overwritten = sum(int((~sentinel_mask(v)).sum()) for v in victims)
    ok = overwritten == 0 and all(r["logits_right"] for r in replays.values())
    name = getattr(strategy, "name", getattr(strategy, "__name__", type(strategy).__name__))
    ptrs = {b: hex(captured[b][3]) for b in captured}
    summary = (f"{name}: replays after capturing buckets {sorted(buckets)} write only their own buffers" if ok else
               f"{name}: replaying earlier buckets wrote {overwritten} elements of memory now owned by other "
               f"tensors; logits right per bucket: { {b: r['logits_right'] for b, r in replays.items()} }")
    return Finding("graph-replay", ok, summary, {"victim_elements_overwritten": overwritten, "replays": replays,
                                                  "buffer_ptrs": ptrs,
                                                  "reallocations": getattr(strategy, "reallocations", None)})
