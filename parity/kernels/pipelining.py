"""How many key tiles a compiled kernel keeps in flight, read from its TTGIR for a GPU target that need
not be present: Triton compiles for sm_90 on any machine, so CI (no GPU) can check the property the
kernel's speed rests on.

The pipeliner's shared-memory copies show in the TTGIR as ``ttg.local_alloc : () -> !ttg.memdesc<NxSHAPE``
(N buffers of one loaded tile) and ``ttg.async_wait ... {num = K}`` (K copy groups may still be in flight
when the loop waits for its tile). K = 0 means every iteration waits for the copy it just issued: one tile
in flight, the kernel latency-bound (what an in-iteration block-table read did to this kernel). For the
Gluon kernel for Hopper, ptxas's own account instead (``compile_sm90``): registers, spills, and whether it
serialized the products the kernel overlaps with its epilogues.

    python -m parity.kernels.pipelining    # prints the figures of the project's kernels, as JSON
"""
from __future__ import annotations

import json
import re
from collections import Counter

from parity.kernels.paged_mqa_logits import paged_mqa_logits_kernel

# the kernel's pointer arguments and their element types; every other non-constexpr argument is i32
POINTERS = {"q_ptr": "*fp8e4nv", "k_ptr": "*fp8e4nv", "scale_ptr": "*fp32", "w_ptr": "*fp32",
            "ctx_ptr": "*i32", "lens_ptr": "*i32", "table_ptr": "*i32", "out_ptr": "*fp32"}
# the reference shape B64-n2-ctx8192 (H=64, D=128, block_size 64, next_n 2), fp8 dot
BAR_CONSTEXPRS = dict(NEXT_N=2, H=64, BLOCK_H=64, D=128, BS=64, BLOCK_T=64, STAGE1=False, PRESHUFFLE=False,
                      FLAT=False, UPCAST=0, EXP_BIAS=7, NP=2, NUM_STAGES=3, GROUPS=1, PER_ROW=False, TMA=False,
                      PDL=False, BLOCK_B=0, k_desc=None, s_desc=None)
# with TMA, the descriptors of the cache as rows of D fp8 bytes and as rows of BS fp32 scales, one tile's box each
TMA_DESCRIPTORS = {"k_desc": "tensordesc<fp8e4nv[64, 128]>", "s_desc": "tensordesc<fp32[1, 64]>"}


def compile_for(fn, constexprs: dict, pointers: dict, num_warps: int = 4, num_stages: int = 3, arch: int = 90,
                maxnreg: int | None = None):
    """``fn`` (a Triton or a Gluon kernel) compiled for CUDA ``sm_<arch>``; ``pointers`` gives the type of
    each pointer or descriptor argument, every other non-constexpr argument is i32. Every argument is taken
    as a multiple of 16, as Triton specializes pointers and integers at launch (at the reference shape all
    of them are)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source = ASTSource
    if getattr(fn, "is_gluon", lambda: False)():
        from triton.experimental.gluon._runtime import GluonASTSource as source
    names = fn.arg_names
    signature = {n: "constexpr" if n in constexprs else pointers.get(n, "i32") for n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if n not in constexprs and not signature[n].startswith("tensordesc")}
    src = source(fn, signature, constexprs={n: v for n, v in constexprs.items() if n in names}, attrs=attrs)
    options = dict(num_warps=num_warps, num_stages=num_stages, **({"maxnreg": maxnreg} if maxnreg else {}))
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def compile_ttgir(fn, constexprs: dict, pointers: dict, num_warps: int = 4, num_stages: int = 3,
                  arch: int = 90) -> str:
    """TTGIR of ``fn`` compiled for CUDA ``sm_<arch>`` (see :func:`compile_for`)."""
    return compile_for(fn, constexprs, pointers, num_warps, num_stages, arch).asm["ttgir"]


def tiles_in_flight(ttgir: str) -> dict:
    """``buffers``: the most buffers of one multi-buffered allocation; ``wait_depth``: how many tiles may
    still be in flight when the loop waits for one: the largest ``async_wait`` count for copies through
    ``cp.async`` (0: each iteration waits for everything it issued), and for bulk tensor copies (which the
    loop waits for on a barrier) one less than the copies of one descriptor issued before the key loop."""
    allocs = [int(m) for m in re.findall(r"ttg\.local_alloc\s*:\s*\(\)\s*->\s*!ttg\.memdesc<(\d+)x", ttgir)]
    waits = [int(m) for m in re.findall(r"ttg\.async_wait[^\n]*\{num = (\d+) : i32\}", ttgir)]
    lines = ttgir.splitlines()
    loops = [i for i, line in enumerate(lines) if "scf.for" in line]
    prologue = lines[loops[-2] if len(loops) > 1 else 0:loops[-1]] if loops else []
    bulk = Counter(m.group(1) for line in prologue
                   if (m := re.search(r"async_tma_copy_global_to_local (%[\w.]+)\[", line)))
    return {"buffers": max(allocs, default=0), "wait_depth": max(waits + [max(bulk.values(), default=0) - 1])}


def kernel_report(num_stages: int = 3) -> dict:
    """Tiles in flight of the project's kernel at the reference shape (B64-n2-ctx8192), per path
    (plain and preshuffled)."""
    out = {}
    for name, extra in {"fused": {}, "preshuffle": dict(PRESHUFFLE=True, FLAT=True),
                        "preshuffle-gather": dict(PRESHUFFLE=True), "stage1": dict(STAGE1=True),
                        "fused-tma": dict(TMA=True), "preshuffle-tma": dict(PRESHUFFLE=True, FLAT=True, TMA=True)
                        }.items():
        consts = {**BAR_CONSTEXPRS, **extra, "NUM_STAGES": num_stages}
        pointers = dict(POINTERS)
        if consts["TMA"]:
            del consts["k_desc"], consts["s_desc"]
            pointers.update(TMA_DESCRIPTORS)
        out[name] = tiles_in_flight(compile_ttgir(paged_mqa_logits_kernel, consts, pointers,
                                                  num_stages=num_stages))
    return out


# the FP4 kernel (parity.kernels.paged_mqa_logits_fp4) at the same shape, bf16 operands (a GPU without FP4 units)
FP4_POINTERS = {"q_ptr": "*u8", "qsf_ptr": "*i32", "k_ptr": "*u8", "ksf_ptr": "*i32", "w_ptr": "*fp32",
                "ctx_ptr": "*i32", "lens_ptr": "*i32", "table_ptr": "*i32", "out_ptr": "*fp32"}
FP4_CONSTEXPRS = dict(NEXT_N=2, H=64, BLOCK_H=64, D=128, BS=64, BLOCK_T=64, STAGE1=False, UPCAST=1, NP=2,
                      NUM_STAGES=3, GROUPS=1, PER_ROW=False)


def fp4_report(num_stages: int = 3) -> dict:
    """Tiles in flight of the FP4 kernel at the reference shape: fused into float32 logits, stage1 into bf16
    (the bf16 store compiles only where its rounding is written for the compiler, not just the interpreter)."""
    from parity.kernels.paged_mqa_logits_fp4 import paged_mqa_logits_fp4_kernel

    out = {}
    for name, extra, out_ty in (("fused", {}, "*fp32"), ("stage1-bf16", dict(STAGE1=True), "*bf16")):
        consts = {**FP4_CONSTEXPRS, **extra, "NUM_STAGES": num_stages}
        ttgir = compile_ttgir(paged_mqa_logits_fp4_kernel, consts, {**FP4_POINTERS, "out_ptr": out_ty},
                              num_stages=num_stages)
        out[name] = tiles_in_flight(ttgir)
    return out


# The Gluon kernel for Hopper (parity.kernels.paged_mqa_logits_sm90) at the same shape: descriptors of the key
# tiles and of q's rows (a box of 64 rows of 128 fp8 bytes each), plain pointers for the rest.
SM90_POINTERS = {"scale_ptr": "*fp32", "w_ptr": "*fp32", "ctx_ptr": "*i32", "lens_ptr": "*i32",
                 "table_ptr": "*i32", "out_ptr": "*fp32", "sched_ptr": "*i32"}
SM90_CONSTEXPRS = dict(H=64, D=128, BS=64, BLOCK_T=64, NUM_STAGES=3, PER_ROW=False, PDL=True, BALANCED=False,
                       PROBE=0, SCHEDULED=False)
SERIALIZED = re.compile(r"\((C751[4-9])\)[^\n]*")  # ptxas: products serialized, or waits it had to inject


def compile_sm90(fn, next_n: int, maxnreg: int | None = None, balanced: bool = False,
                 batch_one: bool = False, probe: int = 0, stages: int = 3, scheduled: bool = False) -> dict:
    """ptxas's account of ``fn`` (a Gluon kernel for Hopper, or a variant of it) compiled for sm_90a at next_n
    (under a register cap ``maxnreg``; ``stages`` key slots; with the schedule by real tile counts where
    ``balanced``; for a batch of one where ``batch_one``, a value Triton compiles as a constant; as
    measurement probe ``probe``, see ``paged_mqa_logits_sm90``; reading a prepared schedule where
    ``scheduled``): its registers and spill bytes, the notes where ptxas serialized products or injected
    waits (C7514-C7519), how many waits leave one product in flight (``wgmma.wait_group 1``: an epilogue
    overlapping the next product), how many barriers of a program's warps its PTX has, the register counts its
    partitions ask for (``setmaxnreg``, warp-specialized kernels), how many products and global stores its PTX
    has (``products``, ``stores``), and the shared memory a program takes (``shared_bytes``). Uses the ptxas
    that ships with Triton; no GPU needed."""
    import os
    import subprocess
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas
    from triton.experimental.gluon import language as gl

    f32 = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=2)
    descs = {n: f"tensordesc<fp8e4nv[64,128],{gl.NVMMASharedLayout.get_default_for([64, 128], gl.float8e4nv)!r}>"
             for n in ("q_desc", "k_desc")}
    descs.update(s_desc=f"tensordesc<fp32[1,64],{f32!r}>", w_desc=f"tensordesc<fp32[{next_n},64],{f32!r}>")
    pointers = {**SM90_POINTERS, **{n: descs[n] for n in fn.arg_names if n.endswith("_desc")}}
    consts = {**SM90_CONSTEXPRS, "NEXT_N": next_n, "BALANCED": balanced, "PROBE": probe, "NUM_STAGES": stages,
              "SCHEDULED": scheduled, **({"batch": 1} if batch_one else {})}
    compiled = compile_for(fn, consts, pointers, maxnreg=maxnreg)
    ptx = compiled.asm["ptx"]
    ptxas = get_ptxas(90).path  # the ptxas Triton compiled with
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        log = subprocess.run([ptxas, "-arch=sm_90a", "-v", path, "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True, check=True).stderr
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores", log)
    return {"registers": int(regs.group(1)) if regs else None, "spill_bytes": int(spills.group(1)) if spills else None,
            "serialized": sorted(set(SERIALIZED.findall(log))),
            "overlapping_waits": len(re.findall(r"wgmma\.wait_group\.sync\.aligned 1;", ptx)),
            "barriers": len(re.findall(r"\b(?:bar|barrier)\.sync\b", ptx)),
            "setmaxnreg": sorted({int(r) for r in re.findall(r"setmaxnreg\.inc\.sync\.aligned\.u32\s+(\d+);", ptx)}),
            "products": len(re.findall(r"\bwgmma\.mma_async\b", ptx)),
            "stores": len(re.findall(r"\bst\.global\b", ptx)), "shared_bytes": compiled.metadata.shared}


def sm90_report() -> dict:
    """The Gluon kernels: the single-partition one at next_n 1, 2 and 4, the warp-specialized one at next_n 1
    and 2 under the register cap of 3 programs per multiprocessor and at 4 under that of 2, and both at
    next_n 2 with the schedule by real tile counts (``bal-``; ``bal-b1-`` for a batch of one, which Triton
    3.6 once failed to compile; see :func:`compile_sm90`), and the warp-specialized one as the H200 runs it at
    next_n 1 and 2 (``bal-ws-c4-``: 4 programs per multiprocessor, 2 key slots), and both at next_n 2 reading a
    prepared schedule (``sched-``); the four-warpgroup program the H200 runs at next_n 2 and 4 (``wg4-n2``, ``wg4-n4``,
    which always read a prepared schedule)."""
    from parity.kernels.paged_mqa_logits_sm90 import paged_mqa_logits_sm90_kernel as single
    from parity.kernels.paged_mqa_logits_sm90_ws import launch_maxnreg, paged_mqa_logits_sm90_ws_kernel as ws

    report = {f"n{n}": compile_sm90(single, n) for n in (1, 2, 4)}
    report.update({f"ws-n{n}": compile_sm90(ws, n, launch_maxnreg(3)) for n in (1, 2)})
    report["ws-n4"] = compile_sm90(ws, 4, launch_maxnreg(2))  # 2 programs per SM at next_n 4
    report.update({"bal-n2": compile_sm90(single, 2, balanced=True),
                   "bal-ws-n2": compile_sm90(ws, 2, launch_maxnreg(3), balanced=True),
                   "bal-b1-n2": compile_sm90(single, 2, balanced=True, batch_one=True),
                   "bal-b1-ws-n2": compile_sm90(ws, 2, launch_maxnreg(3), balanced=True, batch_one=True)})
    # the H200's warp-specialized form at next_n <= 2: 4 programs per SM, 2 key slots
    report.update({f"bal-ws-c4-n{n}": compile_sm90(ws, n, launch_maxnreg(4), balanced=True, stages=2) for n in (1, 2)})
    # both forms at next_n 2 reading a schedule prepared once per step (TritonBackend.prepare)
    report.update({"sched-n2": compile_sm90(single, 2, balanced=True, scheduled=True),
                   "sched-ws-c4-n2": compile_sm90(ws, 2, launch_maxnreg(4), balanced=True, stages=2, scheduled=True)})
    # the H200's form at next_n 2 and 4: one program per SM of four compute warpgroups; 2 key slots a share at
    # next_n 2, 3 at next_n 4 (two shares)
    from parity.kernels.paged_mqa_logits_sm90_wg4 import LAUNCH_REGS, paged_mqa_logits_sm90_wg4_kernel as wg4

    report["wg4-n2"] = compile_sm90(wg4, 2, LAUNCH_REGS, stages=2)
    report["wg4-n4"] = compile_sm90(wg4, 4, LAUNCH_REGS, stages=3)  # two compute warpgroups a share
    return report


if __name__ == "__main__":
    report = {**kernel_report(), **{f"fp4-{k}": v for k, v in fp4_report().items()}}
    try:
        report.update({f"sm90-{k}": v for k, v in sm90_report().items()})
    except ImportError as exc:  # a Triton without Gluon for Hopper
        report["sm90"] = f"not compiled: {exc}"
    print(json.dumps(report, indent=1))
