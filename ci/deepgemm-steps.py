"""One step of the DeepGEMM bisection per process (ci/deepgemm-diagnose.sh runs them), so a crash names
its step. Ends with ``STEP <name> OK|RAISED <detail>``; a crash ends with no such line.

    python ci/deepgemm-steps.py {import,num_sms,assert,meta1d,meta2d,cublaslt,jit_gemm,logits,parity}

Steps, in the order the host code is exercised:
  import    import deep_gemm; the libraries it mapped (which libstdc++, libcudart, libnvrtc, libcuda)
  num_sms   get_num_sms(): DeviceRuntime (cudaGetDeviceProperties, cuBLASLt handle), no tensor argument
  assert    set_num_sms(10**6): a DG_HOST_ASSERT throwing through pybind11, no tensor, no JIT
  meta1d    get_paged_mqa_logits_metadata on (B,) lens: a Tensor argument; 2-D-only releases must raise
  meta2d    the same on (B, next_n) lens, current device and stream set: JIT front end, nvcc, load, launch
  cublaslt  cublaslt_gemm_nt: Tensor arguments and a library call, no JIT
  jit_gemm  bf16_gemm_nt: another JIT kernel (is it the JIT in general or the paged MQA path?)
  logits    fp8(_fp4)_paged_mqa_logits, B=4 next_n=2 H=64 D=128 block 64, against parity.problem.reference, 20
            bitwise replays, what it leaves past each row's length without clean_logits
  parity    the adapter through the harness: a few H=64 cells of the full grid (deepgemm, deepgemm:split)
"""
from __future__ import annotations

import faulthandler
import os
import sys
import traceback

faulthandler.enable()
try:  # run the native backtrace handler (LD_PRELOADed by the diagnostic) before faulthandler's
    import ctypes

    ctypes.CDLL(None).segv_backtrace_install()
except (AttributeError, OSError):
    pass

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import torch  # noqa: E402

DEV = torch.device("cuda", 0)


def say(*a):
    print(*a, flush=True)


def maps(patterns=("libstdc++", "libgcc_s", "libcudart", "libnvrtc", "libcuda.so", "libcublasLt", "_C.",
                   "libtorch_python", "libc10.so")):
    seen = []
    with open("/proc/self/maps") as fh:
        for line in fh:
            path = line.split()[-1] if len(line.split()) >= 6 else ""
            if any(p in path for p in patterns) and path not in seen:
                seen.append(path)
    return seen


def lens_2d(B=4, n=2, ctx=(700, 129, 64, 1000)):
    c = torch.tensor(ctx[:B], dtype=torch.int32, device=DEV)
    return c, (c.view(-1, 1) - n + torch.arange(n, device=DEV, dtype=torch.int32) + 1).contiguous()


def step_import(dg):
    say("deep_gemm", dg.__file__, getattr(dg, "__version__", "?"))
    say("api:", [n for n in ("fp8_fp4_paged_mqa_logits", "fp8_paged_mqa_logits", "get_paged_mqa_logits_metadata",
                             "cublaslt_gemm_nt", "bf16_gemm_nt") if hasattr(dg, n)])
    say("doc:", (getattr(dg, "get_paged_mqa_logits_metadata", None).__doc__ or "").strip().splitlines()[:1])
    for p in maps():
        say("mapped:", p)
    return f"{getattr(dg, '__version__', '?')} at {os.path.dirname(dg.__file__)}"


def step_num_sms(dg):
    return f"get_num_sms() = {dg.get_num_sms()} (torch: {torch.cuda.get_device_properties(DEV).multi_processor_count})"


def step_assert(dg):
    try:
        dg.set_num_sms(10**6)
    except RuntimeError as exc:
        return f"raised as it should: {str(exc).splitlines()[0][:160]}"
    raise AssertionError("set_num_sms(10**6) did not raise")


def _meta(dg, lens):
    torch.cuda.set_device(DEV)
    with torch.cuda.stream(torch.cuda.current_stream(DEV)):
        meta = dg.get_paged_mqa_logits_metadata(lens, 64, dg.get_num_sms())
    torch.cuda.synchronize()
    return f"schedule {tuple(meta.shape)} {meta.dtype}, first rows {meta[:3].tolist()}, last {meta[-1].tolist()}"


def step_meta1d(dg):
    return _meta(dg, lens_2d()[0])


def step_meta2d(dg):
    return _meta(dg, lens_2d()[1])


def _gemm_nt(fn, m, n, k, limit):
    """d = a @ b.T in bf16 through ``fn``, against torch's float32 product."""
    a, b = torch.randn(m, k, device=DEV, dtype=torch.bfloat16), torch.randn(n, k, device=DEV, dtype=torch.bfloat16)
    d = torch.empty(m, n, device=DEV, dtype=torch.bfloat16)
    fn(a, b, d)
    err = (d.float() - a.float() @ b.float().T).abs().max().item()
    assert err < limit, f"max error {err}"
    return f"max abs error {err:.3g}"


def step_cublaslt(dg):  # a host call into cuBLASLt: no JIT
    return _gemm_nt(dg.cublaslt_gemm_nt, 128, 64, 256, 0.5)


def step_jit_gemm(dg):  # DeepGEMM's JIT, without the attention code
    return _gemm_nt(dg.bf16_gemm_nt, 256, 256, 512, 1.0)


def step_logits(dg):
    from parity.problem.cases import IndexerCase, build_inputs
    from parity.problem.lengths import valid_lengths
    from parity.problem.reference import reference_logits

    inp = build_inputs(IndexerCase(batch=4, next_n=2, heads=64, block_size=64, max_model_len=1000,
                                   context="random"), DEV)
    rows = valid_lengths(inp.context_lens, 2).to(torch.int32)
    ref = reference_logits(inp).to(DEV).float()
    notes = []
    for two_d in (True, False):
        lens = rows.view(4, 2).contiguous() if two_d else inp.context_lens.contiguous()
        try:
            meta = dg.get_paged_mqa_logits_metadata(lens, 64, dg.get_num_sms())
        except RuntimeError as exc:
            notes.append(f"{'2-D' if two_d else '1-D'} lens rejected: {str(exc).splitlines()[0][:100]}")
            continue
        calls = [("fp8_paged_mqa_logits", inp.q_fp8, ())] if hasattr(dg, "fp8_paged_mqa_logits") else []
        if hasattr(dg, "fp8_fp4_paged_mqa_logits"):
            calls += [("fp8_fp4_paged_mqa_logits", (inp.q_fp8, None), (torch.float32,)),
                      ("fp8_fp4_paged_mqa_logits", (inp.q_fp8, None), (torch.bfloat16,))]
        for name, q, extra in calls:
            for clean in (False, True):
                try:
                    out = getattr(dg, name)(q, inp.kv_cache, inp.weights, lens, inp.block_tables, meta,
                                            inp.max_model_len, clean, *extra)
                    torch.cuda.synchronize()
                except RuntimeError as exc:
                    notes.append(f"{name}{list(extra)} lens={'2-D' if two_d else '1-D'} clean={clean}: raised "
                                 f"{str(exc).splitlines()[0][:90]}")
                    continue
                pos = torch.arange(inp.max_model_len, device=DEV)
                valid = pos[None, :] < rows.view(-1, 1)
                got = out.float()
                diff = (got - ref).abs()[valid].max().item()
                scale = ref[valid].abs().max().item()
                beyond = got[~valid]
                junk = int((beyond != float("-inf")).sum())
                again = [getattr(dg, name)(q, inp.kv_cache, inp.weights, lens, inp.block_tables, meta,
                                           inp.max_model_len, clean, *extra).float() for _ in range(20)]
                same = all(torch.equal(a[valid], got[valid]) for a in again)  # DeepGEMM's test masks too
                notes.append(f"{name}{[str(e) for e in extra]} lens={'2-D' if two_d else '1-D'} clean={clean}: "
                             f"max |err| {diff:.3g} (ref max {scale:.3g}), stride {out.stride(0)}, "
                             f"{junk}/{beyond.numel()} past-length positions not -inf, 20 replays bitwise "
                             f"{'equal' if same else 'DIFFER'} on valid positions")
    for n in notes:
        say("  ", n)
    return f"{len(notes)} calls, see lines above"


def step_parity(dg):
    from parity.backends import load_backend
    from parity.problem.cases import IndexerCase
    from parity.run.harness import failed_checks, run_cell

    cases = [IndexerCase(batch=3, next_n=n, heads=64, block_size=64, max_model_len=1000, context=c, topk=128)
             for n in (1, 2, 4) for c in ("random", "ctx_eq_max", "block_multiple_plus1")]
    tally = {}
    for spec in ("deepgemm", "deepgemm:split"):
        backend = load_backend(spec)
        for case in cases:
            for buf in ("exact", "padded"):
                r = run_cell(backend, "fused", buf, case, "cuda")
                tally[r["status"]] = tally.get(r["status"], 0) + 1
                say("  ", r["id"], r["status"], r.get("reason", "") or "; ".join(failed_checks(r))[:200])
        say("   describe:", backend.describe())
    return str(tally)


STEPS = {n[5:]: f for n, f in globals().items() if n.startswith("step_")}

if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    if name not in STEPS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(STEPS)}}}")
    say(f"--- step {name}: DG_JIT_USE_NVRTC={os.environ.get('DG_JIT_USE_NVRTC', '0')} "
        f"DG_JIT_CACHE_DIR={os.environ.get('DG_JIT_CACHE_DIR', '')}")
    try:
        import deep_gemm

        detail = STEPS[name](deep_gemm)
    except Exception as exc:  # noqa: BLE001  (a Python-level failure is a result too)
        traceback.print_exc()
        say(f"STEP {name} RAISED {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300])
        sys.exit(1)
    say(f"STEP {name} OK {detail}")
