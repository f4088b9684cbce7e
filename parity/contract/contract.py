"""Checks of a logits-buffer strategy (parity.contract.strategies or a user's own allocator): the rows it
returns, the device it allocates on, and what a buffer reused across layers leaks."""
from __future__ import annotations

import torch

from parity.backends.base import Backend
from parity.problem.cases import IndexerCase, build_inputs
from parity.judge import consumers
from parity.judge.checks import Finding, check_mask, check_values
from parity.problem.reference import reference_logits

DSV32_LAYERS = 61


def check_rows(strategy, q_fp8: torch.Tensor, max_model_len: int, batches=(4, 2, 1, 3, 4)) -> Finding:
    """Every call returns exactly ``(rows, max_model_len)`` float32 with unit column stride, whatever
    was asked before: a consumer that takes ``shape[0]`` as the row count must not see extra rows."""
    bad = []
    for rows in batches:
        out = strategy(q_fp8, rows, max_model_len)
        if tuple(out.shape) != (rows, max_model_len) or out.dtype != torch.float32 or out.stride(-1) != 1 \
                or out.stride(0) < max_model_len:
            bad.append({"asked_rows": rows, "shape": list(out.shape), "strides": list(out.stride()),
                        "dtype": str(out.dtype)})
    ok = not bad
    return Finding("strategy-rows", ok, "shape matches every request" if ok else
                   f"{len(bad)} calls returned the wrong shape: {bad[:3]}", {"bad": bad})


def check_device(strategy, q_fp8: torch.Tensor, max_model_len: int = 64) -> Finding:
    """The buffer lands on ``q_fp8.device``; a default-device allocation fails on TP ranks > 0."""
    out = strategy(q_fp8, 2, max_model_len)
    ok = out.device == q_fp8.device
    return Finding("strategy-device", ok, f"allocated on {out.device}" + ("" if ok else f", expected {q_fp8.device}"),
                   {"got": str(out.device), "want": str(q_fp8.device)})


def check_layer_reuse(strategy, backend: Backend, case: IndexerCase, layers: int = DSV32_LAYERS,
                      device: str = "cpu", path: str = "fused") -> Finding:
    """Call the backend through the strategy once per layer with fresh inputs and context lengths
    (a new seed per layer) and compare each result with its own reference: a value left by an
    earlier call where the current call writes nothing shows up as a mask or value mismatch.
    Judged for an unbounded reader (the whole row): a value an earlier layer left past the current
    row's length is harmless to a length-bounded one, and this check says where it is not."""
    leaks, prev = [], None
    for layer in range(layers):
        c = IndexerCase(**{**case.__dict__, "seed": case.seed + layer})
        inputs = build_inputs(c, device)
        out = strategy(inputs.q_fp8, inputs.rows, inputs.max_model_len)
        backend.run(path, inputs, out)
        ref = reference_logits(build_inputs(c, "cpu"))
        ctx = inputs.context_lens.cpu().long().repeat_interleave(inputs.next_n)
        lens = inputs.row_lens.cpu()
        mask = check_mask(out, ref, lens, consumers.UNBOUNDED)
        values = check_values(out, ref, ctx, c.input_format)
        got = out.detach().cpu()
        stale = torch.isfinite(got) & ~torch.isfinite(ref)  # the whole row: what an unbounded reader ranks
        if not (mask.ok and values.ok) or bool(stale.any()):
            same = prev is not None and prev.shape == got.shape
            leaks.append({"layer": layer, "mask": mask.summary, "values": values.summary,
                          "finite_where_invalid": int(stale.sum()),
                          "equal_to_previous_call": int((stale & (got == prev)).sum()) if same else 0,
                          "valid_lengths": lens.tolist()})
        prev = got.clone()
    ok = not leaks
    name = getattr(strategy, "name", getattr(strategy, "__name__", type(strategy).__name__))
    return Finding("stale-data", ok, f"{name}: {layers} layer calls, no stale values" if ok else
                   f"{name}: stale values from earlier calls in {len(leaks)} of {layers} layers; first: {leaks[0]}",
                   {"layers": layers, "leaks": leaks[:8], "leaky_layers": [leak["layer"] for leak in leaks]})
