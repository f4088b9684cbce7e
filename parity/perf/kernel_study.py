"""One GPU call's comparison of the Triton kernel's variants with DeepGEMM, for choosing a GPU's config.

    python -m parity.perf.kernel_study --out DIR [--deadline-s 330] [--shapes 'B64-n2-*']
    python -m parity.perf.kernel_study --profile --variants base,tma5   # each kernel run twice, for ncu

Steps, each skipped once the deadline has passed: (1) every variant on the fused path at every shape, with
DeepGEMM where it loads (``deepgemm``; ``deepgemm:split`` at next_n > 2; ``deepgemm-pdl`` with its
programmatic dependent launch switched on); (2) the base and the fastest variant at B64-n2-ctx8192 on the
preshuffle and stage1 paths (the ``ws-probe-*`` variants, measurement probes whose logits are wrong by design,
neither checked nor picked); (3) the bare reads (``parity.kernels.gather_read``, copy and bulk-copy forms,
1-4 programs per multiprocessor). Writes DIR/study.json and DIR/study.md (tables: us, and per variant the
ratio to DeepGEMM; registers, shared memory, compile seconds).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

from parity.perf import bench, timing
from parity.backends import load_backend

# name -> TritonBackend options. "default": the config chosen for the GPU (parity.backends.triton_configs).
# The portable kernel's: "base", the config before the study of 2026-12-04 (copies by cp.async, 3 stages, 3
# programs per multiprocessor); "portable", its H200 config (bulk copies, programmatic launch), "balanced" the
# same splitting the tiles the batch really has by context length; "c4*": 4
# programs per multiprocessor, held to 128 registers (maxnreg; 148 without) or split over two dots of 64
# columns (104 registers). The Gluon kernel's (parity.kernels.paged_mqa_logits_sm90), "sm90*": stages and
# programs per multiprocessor; "-bal": the split by real tile counts (the serving shapes, --shapes '*-mml*').
P = dict(kernel="portable", balanced=False)
ONE_P = 1 << 30  # sm90_ws_min_tiles: the single-partition form at every call
# the Gluon kernel's variants: 3 stages, 3 programs per SM, programmatic launch, the even split unless named -bal.
# The warp-specialized form's own keys are pinned too: left to a GPU's config (the H200's: 4 programs, 2 slots,
# four warpgroups a program at next_n 2 and 4) they would replace what a variant names.
SM90 = dict(kernel="sm90", num_stages=3, ctas_per_sm=3, pdl=True, balanced=False, sm90_max_next_n=2,
            sm90_ws_ctas_per_sm=3, sm90_ws_stages=3, sm90_wg4=False)
PROBED = "ws-n4-bal"  # the variant the ws-probe-* variants leave parts out of
VARIANTS = {
    "base": dict(P, tma=False, num_stages=3, pdl=False, ctas_per_sm=3),
    "default": dict(),
    "portable": dict(P, tma=True, num_stages=3, pdl=True, ctas_per_sm=3),
    # its programs split the tiles the batch really has (for the serving shapes: --shapes '*-mml*')
    "balanced": dict(P, tma=True, num_stages=3, pdl=True, ctas_per_sm=3, balanced=True),
    "c4": dict(P, tma=True, pdl=True, ctas_per_sm=4, maxnreg=128),
    "c4-s4": dict(P, tma=True, pdl=True, ctas_per_sm=4, maxnreg=128, num_stages=4),
    "c4-g2": dict(P, tma=True, pdl=True, ctas_per_sm=4, max_dot_n=64),
    "tma4": dict(P, tma=True, num_stages=4, pdl=False, ctas_per_sm=3),
    "sm90": dict(SM90, sm90_max_next_n=4, sm90_ws_min_tiles=ONE_P),
    "sm90-s4": dict(SM90, num_stages=4, sm90_max_next_n=4, sm90_ws_min_tiles=ONE_P),
    "sm90-s6": dict(SM90, num_stages=6, sm90_max_next_n=4, sm90_ws_min_tiles=ONE_P),
    "sm90-c4": dict(SM90, ctas_per_sm=4, sm90_max_next_n=4, sm90_ws_min_tiles=ONE_P),
    "sm90-bal": dict(SM90, balanced=True, sm90_max_next_n=4, sm90_ws_min_tiles=ONE_P),
    # the warp-specialized form at every call (parity.kernels.paged_mqa_logits_sm90_ws)
    "ws": dict(SM90, sm90_ws_min_tiles=0),
    "ws-s4": dict(SM90, num_stages=4, sm90_ws_stages=4, sm90_ws_min_tiles=0),
    "ws-bal": dict(SM90, balanced=True, sm90_ws_min_tiles=0),
    # 4 programs per SM (64 registers at launch), as many compute warpgroups as DeepGEMM's; 2 slots, so that 4
    # fit in shared memory at next_n 2
    "ws-c4-s2": dict(SM90, num_stages=2, ctas_per_sm=4, sm90_ws_ctas_per_sm=4, sm90_ws_stages=2, sm90_ws_min_tiles=0),
    "ws-c4-s2-bal": dict(SM90, num_stages=2, ctas_per_sm=4, sm90_ws_ctas_per_sm=4, sm90_ws_stages=2, balanced=True,
                         sm90_ws_min_tiles=0),
    # the warp-specialized form at next_n 4 too (2 programs per SM there)
    "ws-n4-bal": dict(SM90, balanced=True, sm90_max_next_n=4, sm90_ws_min_tiles=0),
}
# PROBED's measurement probes (TritonBackend's probe; wrong logits, timings only): what its time is made of.
# The copies alone; everything but the stores; the copies and the stores without the products; one product a
# tile where next_n 2 has two
VARIANTS.update({f"ws-probe-{p}": dict(VARIANTS[PROBED], probe=p)
                 for p in ("reads", "no-stores", "no-products", "one-product")})


def is_probe(options: dict) -> bool:
    """Whether a variant's options (or a backend's ``opts``) make it a probe: its logits are wrong by design,
    so it is neither checked, nor picked as best, nor run off the fused path."""
    return bool(options.get("probe"))
BAR = "B64-n2-ctx8192"


class PdlDeepGemm:
    """DeepGEMM's adapter with its programmatic dependent launch on for the timed call only (a switch of
    DeepGEMM's runtime, off by default, read at each launch)."""

    def __init__(self, inner, switch):
        self.inner, self.switch = inner, switch
        self.paths, self.name = inner.paths, "deepgemm-pdl"

    def unsupported(self, path, inputs):
        return self.inner.unsupported(path, inputs)

    def prepare(self, path, inputs):
        return self.inner.prepare(path, inputs)

    def run_prepared(self, handle):
        self.switch(True)
        try:
            return self.inner.run_prepared(handle)
        finally:
            self.switch(False)

    def describe(self):
        return {**self.inner.describe(), "pdl": True}


def deepgemm_backends(next_n: int) -> dict:
    """The DeepGEMM rows that can run at this next_n (sm90: 1-2 in one call, more split), {} without it."""
    dg = load_backend("deepgemm:split" if next_n > 2 else "deepgemm")
    if getattr(dg, "reason", None):
        return {}
    out = {"deepgemm": dg}
    module = getattr(dg, "dg", None)
    switch = getattr(module, "set_pdl", None) or getattr(getattr(module, "_C", None), "set_pdl", None)
    if callable(switch) and next_n <= 2:
        out["deepgemm-pdl"] = PdlDeepGemm(dg, switch)
    return out


def kernel_facts(backend) -> dict:
    k = getattr(backend, "last_launch", None)
    if k is None:
        return {}
    meta = getattr(k, "metadata", None)
    return {"regs": getattr(k, "n_regs", None), "spills": getattr(k, "n_spills", None),
            "smem": getattr(meta, "shared", None)}


def _small(shape: bench.Shape, path: str, device):
    """An input of the same kernel specialization as ``shape`` (every size a multiple of 16), and its out."""
    small = bench.Shape(16, shape.next_n, 1024)
    inp = bench.make_inputs(small, device)
    lead = (small.heads,) if path == "stage1" else ()
    return inp, torch.full((*lead, small.batch * small.next_n, small.context), float("-inf"), device=device)


def compile_seconds(backend, path: str, shape: bench.Shape, device) -> float:
    """Wall seconds of the first call (Triton compiles then, unless its cache holds the kernel)."""
    inp, out = _small(shape, path, device)
    t0 = time.perf_counter()
    backend.run(path, inp, out)
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def precompile_all(backends: dict, work: list[tuple[str, bench.Shape]], device, threads: int = 16) -> float:
    """Compile every (backend, path, shape) kernel at once in Triton's asynchronous compile mode; seconds."""
    from concurrent.futures import ThreadPoolExecutor

    from triton.runtime._async_compile import AsyncCompileMode

    t0 = time.perf_counter()
    pool = ThreadPoolExecutor(threads)
    try:
        with AsyncCompileMode(pool):
            for be in backends.values():
                for path, shape in work:
                    if is_probe(getattr(be, "opts", {})) and path != "fused":
                        continue  # the probes measure the fused sm90 kernels only
                    inp, out = _small(shape, path, device)
                    be.precompile(path, inp, out)
    except Exception as exc:  # noqa: BLE001  (a kernel that fails compiles again, and raises, in its cell)
        print(f"precompile: {type(exc).__name__}: {exc}", flush=True)
    finally:
        pool.shutdown(wait=True)
    return time.perf_counter() - t0


def check_variants(backends: dict, device, shape: bench.Shape = bench.Shape(8, 2, 4000)) -> dict:
    """Each variant's fused and preshuffle logits against the torch path, through the suite's mask and value
    checks (``parity.perf.tune.check``'s test): a variant's timing counts only where its logits are right."""
    from parity.judge import checks

    inp = bench.make_inputs(shape, device, gen=torch.Generator(device=device).manual_seed(1))
    rows = shape.batch * shape.next_n
    ends = inp.context_lens.clamp(max=inp.max_model_len).repeat_interleave(shape.next_n)
    ref = torch.full((rows, shape.context), float("-inf"), device=device)
    load_backend("torch").run("fused", inp, ref)
    ref = ref.cpu().double()
    verdicts = {}
    for name, be in backends.items():
        if is_probe(getattr(be, "opts", {})):
            verdicts[name] = {"ok": None, "mask": "a probe: wrong logits by design, not checked", "values": ""}
            continue
        for path in ("fused", "preshuffle"):
            got = torch.full((rows, shape.context), float("-inf"), device=device)
            be.run(path, inp, got)
            got = got.cpu()
            mask = checks.check_mask(got, ref, torch.isfinite(ref).sum(1))  # each row's valid prefix
            values = checks.check_values(got, ref, ends, "e4m3fn")
            verdicts[f"{name} {path}"] = {"ok": bool(mask.ok and values.ok), "mask": mask.summary,
                                          "values": values.summary}
    return verdicts


def read_variants(shape: bench.Shape, device) -> list[dict]:
    """The bare read of the shape's keys and scales in every form and program count, graph-timed."""
    from parity.kernels.gather_read import gather_read, tma_ok

    n_sets = bench.rotation_sets(shape, "fused")
    sets = [bench.make_inputs(shape, device) for _ in range(n_sets)]
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    out = torch.zeros(4 * sms, dtype=torch.int32, device=device)
    rows = []
    forms = [("copy", dict(num_stages=3))] + [(f"tma{s}", dict(tma=True, num_stages=s)) for s in (3, 4, 6)]
    for form, kw in forms:
        if kw.get("tma") and not tma_ok(sets[0].kv_cache):
            continue
        for per_sm in (1, 2, 3, 4):
            try:
                ms = timing.replayed_ms(lambda i: gather_read(sets[i % n_sets].kv_cache,
                                                              sets[i % n_sets].block_tables, out, per_sm * sms, **kw),
                                        device, calls=n_sets)
                rows.append({"shape": shape.id, "form": form, "per_sm": per_sm, "us": ms * 1e3})
            except Exception as exc:  # noqa: BLE001
                rows.append({"shape": shape.id, "form": form, "per_sm": per_sm, "error": str(exc)[:200]})
    return rows


def best_at_bar(rows: list[dict], variants: dict) -> str | None:
    """The fastest variant at B64-n2-ctx8192 among those that compute the logits (not a probe)."""
    bar = [r for r in rows if r["shape"] == BAR and "us" in r and r["backend"] in variants
           and not is_probe(variants[r["backend"]])]
    return min(bar, key=lambda r: r["us"])["backend"] if bar else None


def shapes_from(pattern: str | None) -> list[bench.Shape]:
    args = argparse.Namespace(shapes=pattern, quick=True)
    return bench.select_shapes(args, "cuda")


def study(out_dir: str, deadline_s: float, pattern: str | None, variants: dict) -> dict:
    start = time.time()
    late = lambda: time.time() - start > deadline_s  # noqa: E731
    device = "cuda"
    result = {"device": torch.cuda.get_device_name(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "copy_gbps": timing.copy_bandwidth(device), "variants": variants, "rows": [], "facts": {},
              "reads": [], "skipped": []}
    tflops = bench.fp8_tflops(device, timing.time_ms).tflops
    result["fp8_tflops"] = tflops
    triton_bes = {name: load_backend("triton", **opts) for name, opts in variants.items()}
    shapes = shapes_from(pattern)
    bar_shape = bench.Shape(64, 2, 8192)
    for name in ("base", "c4"):  # one kernel's compile time, alone (the hidden cost of a variant)
        if name in triton_bes:
            result["facts"][f"{name} fused n2 (alone)"] = {
                "compile_s": compile_seconds(triton_bes[name], "fused", bar_shape, device),
                **kernel_facts(triton_bes[name])}
    work = [("fused", bench.Shape(1, n, 1024)) for n in sorted({s.next_n for s in shapes})]
    work += [(path, bar_shape) for path in ("preshuffle", "stage1")]
    result["precompile_s"] = precompile_all(triton_bes, work, device)
    print(f"precompiled {len(work) * len(triton_bes)} kernels in {result['precompile_s']:.1f} s", flush=True)
    result["checks"] = check_variants(triton_bes, device)
    print("checks: " + ", ".join(f"{k} {'probe' if v['ok'] is None else 'ok' if v['ok'] else 'FAIL'}"
                                 for k, v in result["checks"].items()),
          flush=True)
    for shape in shapes:
        if late():
            result["skipped"].append(f"fused {shape.id}: deadline")
            continue
        backends = {**triton_bes, **deepgemm_backends(shape.next_n)}
        rows = bench.bench_shape(shape, backends, ["fused"], device, result["copy_gbps"], True, 25, 100, tflops)
        for name, be in triton_bes.items():  # resources of the kernel each variant last ran
            result["facts"].setdefault(f"{name} fused n{shape.next_n}", kernel_facts(be))
        result["rows"] += rows
        print(f"{shape.id}: " + ", ".join(f"{r['backend']} {r['us']:.1f}" for r in rows if "us" in r), flush=True)
    best = result["best_at_bar"] = best_at_bar(result["rows"], variants)
    if best and not late():
        picks = {n: triton_bes[n] for n in dict.fromkeys(["base", best]) if n in triton_bes}
        shape = bench.Shape(64, 2, 8192)
        for path in ("preshuffle", "stage1"):
            result["rows"] += bench.bench_shape(shape, picks, [path], device, result["copy_gbps"], True, 25, 100,
                                                tflops)
            for name, be in picks.items():
                result["facts"][f"{name} {path} n2"] = kernel_facts(be)
    for shape in shapes_from(pattern):
        if late():
            result["skipped"].append(f"reads {shape.id}: deadline")
            continue
        result["reads"] += read_variants(shape, device)
    result["seconds"] = time.time() - start
    os.makedirs(out_dir, exist_ok=True)
    with open(f"{out_dir}/study.json", "w") as f:
        json.dump(result, f, indent=1, default=str)
    with open(f"{out_dir}/study.md", "w") as f:
        f.write(markdown(result))
    return result


def probe_table(rows: list[dict]) -> list[str]:
    """Where the probes ran beside their variant: each fused shape's time taken apart, us: the copies
    alone (``reads``), what the products and epilogues add to them (``no-stores`` - ``reads``), what the
    stores add (the variant - ``no-stores``), beside the read floor and DeepGEMM. [] without the probes."""
    out = []
    for shape in dict.fromkeys(r["shape"] for r in rows if r["path"] == "fused"):
        got = {r["backend"]: r["us"] for r in rows if r["path"] == "fused" and r["shape"] == shape}
        need = (PROBED, "ws-probe-reads", "ws-probe-no-stores")
        if not all(n in got for n in need):
            continue
        kernel, reads, no_stores = (got[n] for n in need)
        read = next((r.get("read_us") for r in rows if r["shape"] == shape and r.get("read_us")), None)
        dg = got.get("deepgemm")
        out.append(f"| {shape} | {'' if read is None else f'{read:.1f}'} | {reads:.1f} | {no_stores - reads:+.1f} "
                   f"| {kernel - no_stores:+.1f} | {kernel:.1f} | {'' if dg is None else f'{dg:.1f}'} |")
    if not out:
        return []
    return ["", f"{PROBED} taken apart by its probes (us; wrong logits by design, timings only):", "",
            "| shape | read floor | copies | + products, epilogues | + stores | = kernel | deepgemm |",
            "|---|---:|---:|---:|---:|---:|---:|", *out]


def markdown(result: dict) -> str:
    rows = [r for r in result["rows"] if "us" in r]
    names = list(dict.fromkeys(r["backend"] for r in rows))
    lines = [f"# Kernel study, {result['device']}, {result['started']}", "",
             f"copy bandwidth {result['copy_gbps']:.0f} GB/s, fp8 {result.get('fp8_tflops')} TFLOP/s; "
             f"best variant at {BAR}: {result.get('best_at_bar')}", "",
             "| path | shape | " + " | ".join(names) + " | read |", "|---|---|" + "---:|" * (len(names) + 1)]
    for key in dict.fromkeys((r["path"], r["shape"]) for r in rows):
        got = {r["backend"]: r for r in rows if (r["path"], r["shape"]) == key}
        dg = got.get("deepgemm", {}).get("us")
        cells = []
        for n in names:
            us = got.get(n, {}).get("us")
            cells.append("" if us is None else f"{us:.1f}" + (f" ({us / dg:.2f})" if dg and n != "deepgemm" else ""))
        read = next((r.get("read_us") for r in got.values() if r.get("read_us")), None)
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + f" | {'' if read is None else f'{read:.1f}'} |")
    lines += ["", f"(ratio to deepgemm in brackets); all variants precompiled in {result.get('precompile_s', 0):.1f} s", "", "| kernel | compile s | regs | spills | smem |",
              "|---|---:|---:|---:|---:|"]
    for k, v in result["facts"].items():
        secs = v.get("compile_s")
        lines.append(f"| {k} | {'' if secs is None else f'{secs:.2f}'} | {v.get('regs')} | {v.get('spills')} "
                     f"| {v.get('smem')} |")
    lines += probe_table(rows)
    lines += ["", "| shape | read form | programs/SM | us |", "|---|---|---:|---:|"]
    for r in result["reads"]:
        lines.append(f"| {r['shape']} | {r['form']} | {r['per_sm']} | {r.get('us', r.get('error'))} |")
    bad = {k: v for k, v in result.get("checks", {}).items() if v["ok"] is False}
    lines += ["", "logits against the torch path (B8-n2-ctx4000, mask and value checks): "
              + ("all variants pass" if result.get("checks") and not bad else
                 "not checked" if not result.get("checks") else
                 "FAIL: " + "; ".join(f"{k}: {v['mask']}, {v['values']}" for k, v in bad.items()))]
    if result["skipped"]:
        lines += ["", "skipped: " + "; ".join(result["skipped"])]
    return "\n".join(lines) + "\n"


PROFILE_CALLS = 2  # calls of each kernel per shape under --profile


def profile(variants: dict, shape_ids: list[str]) -> None:
    """Each named kernel twice per shape (the first compiles), eagerly, for ncu to pick out by name."""
    for sid in shape_ids:
        shape = bench.shape_from_id(sid)
        B, n, ctx = shape.batch, shape.next_n, shape.context
        inp = bench.make_inputs(shape, "cuda")
        out = torch.full((B * n, ctx), float("-inf"), device="cuda")
        backends = {name: load_backend("triton", **opts) for name, opts in variants.items()}
        backends.update({k: v for k, v in deepgemm_backends(n).items() if k == "deepgemm"})
        for name, be in backends.items():
            for _ in range(PROFILE_CALLS):
                be.run("fused", inp, out)
            torch.cuda.synchronize()
            # the launches' label for parity.perf.ncu_dram, which takes their count from it
            print(f"profiled {name} {sid} {PROFILE_CALLS}", flush=True)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):  # NaN or inf: no step would ever be late
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds > 0, got {text!r}")
    return value


def _shape_list(text: str) -> list[str]:
    try:
        for sid in text.split(","):
            bench.shape_from_id(sid)  # names the bad one
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.split(",")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m parity.perf.kernel_study", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=".")
    p.add_argument("--deadline-s", type=_seconds, default=330)
    p.add_argument("--shapes", default=None, help="glob patterns on shape ids (default: the quick shapes)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--profile-shapes", type=_shape_list, default="B64-n2-ctx8192,B64-n2-ctx32768")
    args = p.parse_args(argv)
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        print(f"error: unknown --variants {unknown}; known: {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    try:
        shapes_from(args.shapes)  # a pattern that matches nothing is named now, not after the precompile
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("error: the kernel study times CUDA kernels; torch sees no GPU here", file=sys.stderr)
        return 2
    chosen = {v: VARIANTS[v] for v in args.variants.split(",")}
    if args.profile:
        profile(chosen, args.profile_shapes)
        return 0
    res = study(args.out, args.deadline_s, args.shapes, chosen)
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
