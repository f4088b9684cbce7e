"""A prepared Triton call plans its launch once: ``run_prepared`` into the same buffer launches the plan again,
and plans anew where the buffer differs or where the plan would hand the kernel a copy of an input (whose later
values the kernel would not see). The planning is replaced by a counter on the CPU; on an H200 the kernel
reads values written into its inputs after the plan."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from parity.backends import triton_kernels as tk  # noqa: E402
from parity.backends.triton_sm90 import Prepared, launch_reusable  # noqa: E402
from parity.problem.cases import IndexerCase, build_inputs  # noqa: E402


def _inputs(**change):
    inputs = build_inputs(IndexerCase(batch=2, next_n=2, max_model_len=128, block_size=64, heads=64), "cpu")
    for name, value in change.items():
        setattr(inputs, name, value)
    return inputs


def _counting(monkeypatch, backend):
    """``backend`` whose planning counts its calls and whose kernel records each launch's output buffer."""
    plans, launches = [], []

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **consts: launches.append(args[0])

    def launch(path, inputs, out, prepared=None):
        plans.append(out)
        return Kernel(), (1,), (out,), {}, None

    monkeypatch.setattr(backend, "_launch", launch)
    return plans, launches


def test_a_prepared_call_into_the_same_buffer_is_planned_once(monkeypatch):
    backend = tk.TritonBackend()
    plans, launches = _counting(monkeypatch, backend)
    prepared = Prepared("fused", _inputs(), torch.zeros(4, 8, dtype=torch.int32), 4)
    out, other = torch.empty(4, 128), torch.empty(4, 128)
    for _ in range(3):
        backend.run_prepared(prepared, out)
    assert len(plans) == 1 and launches == [out] * 3
    backend.run_prepared(prepared, other)  # another buffer: planned anew, and kept for it
    backend.run_prepared(prepared, other)
    assert len(plans) == 2 and launches[-2:] == [other, other]
    backend.run_prepared(prepared, out.view(8, 64))  # the same memory seen with other strides: planned anew
    assert len(plans) == 3


@pytest.mark.parametrize("why", ["no schedule", "q not contiguous", "weights not contiguous",
                                 "weights not 16-byte aligned", "cache not contiguous"])
def test_a_launch_that_copies_an_input_or_runs_no_sm90_kernel_is_planned_every_call(monkeypatch, why):
    base = _inputs()
    B, n, H, D = base.q_fp8.shape
    inputs = {
        "no schedule": base,
        "q not contiguous": _inputs(q_fp8=base.q_fp8.transpose(2, 3).contiguous().transpose(2, 3)),
        "weights not contiguous": _inputs(weights=base.weights.t().contiguous().t()),
        "weights not 16-byte aligned": _inputs(weights=torch.zeros(B * n * H + 1)[1:].view(B * n, H)),
        "cache not contiguous": _inputs(kv_cache=base.kv_cache.transpose(0, 1).contiguous().transpose(0, 1)),
    }[why]
    schedule = None if why == "no schedule" else torch.zeros(4, 8, dtype=torch.int32)
    backend = tk.TritonBackend()
    plans, _ = _counting(monkeypatch, backend)
    prepared = Prepared("fused", inputs, schedule, 4)
    out = torch.empty(4, 128)
    for _ in range(3):
        backend.run_prepared(prepared, out)
    assert len(plans) == 3, why


def test_inputs_as_the_cases_build_them_keep_their_launch():
    """The rule passes the inputs a server hands over (contiguous, aligned): the memo is not dead code."""
    inputs = _inputs()
    assert launch_reusable(inputs, "fused")
    assert not launch_reusable(_inputs(kv_cache_preshuffled=None), "preshuffle")


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                    reason="runs the sm90 kernels: needs a GPU of compute capability 9.0")
@pytest.mark.parametrize("name,batch", [("triton:sm90", 64), ("triton:sm90-ws", 8), ("triton:sm90-wg4", 8)])
def test_a_launch_planned_once_reads_what_its_inputs_hold_when_it_runs(name, batch):
    """New q, weights and keys written into the prepared inputs' own tensors after the first call: the second
    call's logits are those a fresh call computes from the new values, bit for bit."""
    from parity.backends import load_backend
    from parity.perf.bench import Shape, make_inputs

    gen = torch.Generator(device="cuda").manual_seed(batch)
    inputs = make_inputs(Shape(batch, 2, 4096), "cuda", gen=gen)
    fresh = make_inputs(Shape(batch, 2, 4096), "cuda", gen=gen)
    backend = load_backend(name)
    prepared = backend.prepare("fused", inputs)
    assert prepared.schedule is not None and launch_reusable(inputs, "fused"), "the call ran no sm90 kernel"
    out, want = (torch.full((batch * 2, 4096), 12345.0, device="cuda") for _ in range(2))
    backend.run_prepared(prepared, out)
    assert prepared.launch is not None, "the launch was not kept"
    for t in ("q_fp8", "weights", "kv_cache"):
        getattr(inputs, t).copy_(getattr(fresh, t))
    backend.run_prepared(prepared, out)
    backend.run("fused", inputs, want)
    torch.cuda.synchronize()
    assert torch.equal(out, want)
