"""The logits of the Gluon kernels for Hopper on a GPU of compute capability 9.0 (skipped elsewhere): a prepared
call against an unprepared one, bit for bit, and the four-warpgroup program (the H200's) against the
warp-specialized form, each judged against the float64 reference."""
import pytest
import torch


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                    reason="runs the sm90 kernels: needs a GPU of compute capability 9.0")
@pytest.mark.parametrize("batch,context,max_model_len", [(1, 700, 8192), (8, 8192, 8192), (64, 8192, 163840),
                                                         (130, 3000, 16384), (128, 4096, 163840)])
@pytest.mark.parametrize("name", ["triton:sm90", "triton:sm90-ws", "triton:sm90-wg4"])
def test_a_prepared_call_writes_what_a_call_does(name, batch, context, max_model_len):
    """The schedule ``prepare`` computes once is the share each program computes for itself: the logits of
    ``run_prepared`` equal those of ``run`` bit for bit, every position either writes (a tile left out or
    written twice shows against the sentinel), with lengths that differ per sequence and a batch of more
    than one chunk of the schedule's 128 lengths."""
    from parity.backends import load_backend
    from parity.perf.bench import Shape, make_inputs

    gen = torch.Generator(device="cuda").manual_seed(batch)
    inputs = make_inputs(Shape(batch, 2, context, max_model_len=max_model_len), "cuda", gen=gen)
    inputs.context_lens.copy_(torch.randint(1, context + 1, (batch,), device="cuda", generator=gen))
    backend = load_backend(name)
    outs = [torch.full((batch * 2, max_model_len), 12345.0, device="cuda") for _ in range(2)]
    backend.run("fused", inputs, outs[0])
    prepared = backend.prepare("fused", inputs)
    assert prepared.schedule is not None, "the call ran no sm90 kernel"
    backend.run_prepared(prepared, outs[1])
    torch.cuda.synchronize()
    assert torch.equal(outs[0], outs[1])


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                    reason="runs the sm90 kernels: needs a GPU of compute capability 9.0")
@pytest.mark.parametrize("next_n", [2, 4])
@pytest.mark.parametrize("batch,context,max_model_len,row_lens", [
    (64, 8192, 8192, "causal"), (130, 3000, 16384, "causal"), (8, 8192, 163840, "causal"),
    (130, 3000, 16384, "per_row"),  # DeepGEMM's 2-D context_lens: each row's limit read from memory
])
def test_the_four_warpgroup_program_writes_what_the_warp_specialized_form_does(next_n, batch, context,
                                                                                max_model_len, row_lens):
    """One m64n128 product over two rows, against one m64n64 a row (``triton:sm90-ws``), at every size: the
    same positions written and the same -inf, and both forms' values right by the checks every backend is
    judged by (``parity.judge.checks`` against the float64 reference). The two sum each logit's heads in
    different orders, so their values are not compared with each other: on the H200 (2026-12-04) 2-11 of 1-4
    million logits were more than 1e-6 apart at next_n 2, at most 2.7e-6."""
    import dataclasses

    from parity.backends import load_backend
    from parity.judge import checks
    from parity.perf.bench import Shape, make_inputs
    from parity.problem.lengths import per_row_lengths
    from parity.problem.reference import reference_logits

    gen = torch.Generator(device="cuda").manual_seed(batch)
    inputs = make_inputs(Shape(batch, next_n, context, max_model_len=max_model_len), "cuda", gen=gen)
    inputs.context_lens.copy_(torch.randint(1, context + 1, (batch,), device="cuda", generator=gen))
    if row_lens == "per_row":
        lens_2d = per_row_lengths(inputs.context_lens.tolist(), next_n, torch.Generator().manual_seed(batch))
        inputs = dataclasses.replace(inputs, context_lens_2d=lens_2d.to("cuda"))
    outs = []
    for name, form in (("triton:sm90-wg4", "wg4"), ("triton:sm90-ws", "ws")):
        backend = load_backend(name)
        assert backend._sm90_plan("fused", inputs)[1] == form
        outs.append(torch.full((batch * next_n, max_model_len), 12345.0, device="cuda"))
        backend.run("fused", inputs, outs[-1])
    torch.cuda.synchronize()
    for other in outs[1:]:
        assert torch.equal(outs[0] == 12345.0, other == 12345.0) and torch.equal(outs[0].isinf(), other.isinf())
    ref = reference_logits(inputs)
    ends = inputs.context_lens.clamp(max=max_model_len).repeat_interleave(next_n).cpu()
    for out in outs:
        got = out.masked_fill(out == 12345.0, float("-inf")).cpu()  # past each row's context: never written
        mask = checks.check_mask(got, ref, torch.isfinite(ref).sum(1))
        values = checks.check_values(got, ref, ends, "e4m3fn")
        assert mask.ok and values.ok, (mask.summary, values.summary)
