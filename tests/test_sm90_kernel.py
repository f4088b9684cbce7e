"""The Gluon kernels for Hopper (parity.kernels.paged_mqa_logits_sm90, its warp-specialized form
paged_mqa_logits_sm90_ws and that form's four-warpgroup programs), compiled for sm_90a by the ptxas that ships
with Triton (no GPU needed): ptxas serializes none of their products, nothing spills (but the bytes
``SPILL_BYTES`` lists, per Triton version), each epilogue but a tile's last overlaps the next product, three
programs fit a multiprocessor at next_n 2 (the warp-specialized form within its cap of 80 registers at launch,
its compute warps raised to 136 and its load warps lowered to 24; four, the H200's config, at 64, 104 and 24;
two at next_n 4, 232 and 24), and both compile for a batch of one (a constant to Triton). The checks catch the
two planted faults that cost the kernel its overlap while it was written: a product carried in flight across
the loop's back edge (ptxas serializes every product, C7514) and a full wait after every product, in either
form. Which calls the backend gives which form: test_sm90_forms.py; their logits on a GPU: test_sm90_gpu.py
and ``parity run --backend triton:sm90``, ``triton:sm90-ws``, ``triton:sm90-wg4``."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

# compiled in a child process without TRITON_INTERPRET (the parity plugin sets it where there is no GPU)
CHILD = textwrap.dedent("""
    import json, pathlib, sys, tempfile, importlib.util
    try:
        from triton.experimental.gluon.language.nvidia import hopper  # noqa: F401
        from parity.kernels import pipelining, paged_mqa_logits_sm90 as km
    except ImportError as exc:
        print(json.dumps({"skip": f"no Gluon for Hopper in this Triton: {exc}"})); sys.exit(0)
    tmp = pathlib.Path(tempfile.mkdtemp())

    def load(name, src):
        (tmp / f"{name}.py").write_text(src)
        spec = importlib.util.spec_from_file_location(name, tmp / f"{name}.py")
        mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
        return mod

    if sys.argv[1] == "kernel":
        print(json.dumps(pipelining.sm90_report())); sys.exit(0)
    if sys.argv[1] == "probes":  # the warp-specialized kernel's measurement probes, 0: the kernel itself
        from parity.kernels import paged_mqa_logits_sm90_ws as kw
        print(json.dumps({p: pipelining.compile_sm90(kw.paged_mqa_logits_sm90_ws_kernel, 2, kw.launch_maxnreg(3),
                                                     balanced=True, probe=p) for p in range(5)})); sys.exit(0)
    if sys.argv[1] in ("full_waits", "ws_full_waits"):  # both forms run the single-partition module's _tile
        from parity.kernels import paged_mqa_logits_sm90_ws as kw
        src = pathlib.Path(km.__file__).read_text()
        overlap = "done = warpgroup_mma_wait(1, deps=(acc,))"
        assert overlap in src, "the kernel no longer waits as this test expects"
        mod = sys.modules["full_waits"] = load("full_waits", src.replace(overlap,
                                                                          "done = warpgroup_mma_wait(0, deps=(acc,))"))
        if sys.argv[1] == "ws_full_waits":
            ws_src = pathlib.Path(kw.__file__).read_text()
            ours = "from parity.kernels.paged_mqa_logits_sm90 import"
            assert ours in ws_src, "the warp-specialized kernel no longer imports as this test expects"
            mod = load("ws_full_waits", ws_src.replace(ours, "from full_waits import"))
        fn = getattr(mod, "paged_mqa_logits_sm90_ws_kernel", None) or mod.paged_mqa_logits_sm90_kernel
        ws = sys.argv[1] == "ws_full_waits"
        print(json.dumps(pipelining.compile_sm90(fn, 2, kw.launch_maxnreg(3) if ws else None))); sys.exit(0)
    if sys.argv[1] == "split_schedule":  # the schedule's chunk split over the warps instead of repeated
        src = pathlib.Path(km.__file__).read_text()
        repeated = "gl.BlockedLayout([CHUNK // 32], [32], [num_warps], [0])"
        assert repeated in src, "the schedule no longer lays its chunk out as this test expects"
        mod = load("split_schedule", src.replace(repeated, "gl.BlockedLayout([1], [32], [num_warps], [0])"))
        print(json.dumps({"planted": pipelining.compile_sm90(mod.paged_mqa_logits_sm90_kernel, 2, balanced=True),
                          "even": pipelining.compile_sm90(km.paged_mqa_logits_sm90_kernel, 2)})); sys.exit(0)
    mod = load("carried", pathlib.Path(sys.argv[2]).read_text())
    print(json.dumps(pipelining.compile_sm90(mod.carried_kernel, 2)))
""")


# a kernel whose next product is still in flight at its loop's back edge, each epilogue reading the last
CARRIED = textwrap.dedent("""
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import warpgroup_mma, warpgroup_mma_wait


    @gluon.jit
    def carried_kernel(k_desc, q_desc, out_ptr, n, H: gl.constexpr, D: gl.constexpr, BLOCK_T: gl.constexpr):
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, H, 32])
        k = gl.allocate_shared_memory(k_desc.dtype, [BLOCK_T, D], k_desc.layout)
        q = gl.allocate_shared_memory(q_desc.dtype, [H, D], q_desc.layout)
        zero = gl.zeros([BLOCK_T, H], gl.float32, mma)
        rows = gl.arange(0, BLOCK_T, layout=gl.SliceLayout(1, mma))
        acc = warpgroup_mma(k, q.permute((1, 0)), zero, use_acc=False, is_async=True)
        for j in range(0, n):
            nxt = warpgroup_mma(k, q.permute((1, 0)), zero, use_acc=False, is_async=True)
            done = warpgroup_mma_wait(1, deps=(acc,))
            gl.store(out_ptr + j * BLOCK_T + rows, gl.sum(done, axis=1))
            acc = nxt
        done = warpgroup_mma_wait(0, deps=(acc,))
        gl.store(out_ptr + rows, gl.sum(done, axis=1))
""")


def _child(what: str, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.getcwd() + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", CHILD, what, *args], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in out:
        pytest.skip(out["skip"])
    return out


# units per tile (one per speculative row; two half-head units at odd next_n): all but the last overlap
OVERLAPS = {"n1": 1, "n2": 1, "n4": 3, "ws-n1": 1, "ws-n2": 1, "ws-n4": 3, "bal-n2": 1, "bal-ws-n2": 1,
            "bal-b1-n2": 1, "bal-b1-ws-n2": 1, "bal-ws-c4-n1": 1, "bal-ws-c4-n2": 1, "sched-n2": 1, "sched-ws-c4-n2": 1,
            "wg4-n2": 0, "wg4-n4": 0}  # the four-warpgroup programs: one product
# a tile, waited for at once, as DeepGEMM's
# ptxas (Triton 3.6 and 3.9) keeps one value of the warp-specialized form that reads a prepared schedule in local
# memory across a tile's first product: one 4-byte store and load per tile, no slower on the H200 (B64-n2-ctx8192
# 24.9 us with and without the schedule read, 2026-12-04)
SPILL_BYTES = {"sched-ws-c4-n2": 4}
# Triton 3.6 (the H200 image's) spills the warp-specialized form at next_n 4 with the even split, 12 bytes
# (docs/h200-serving-schedule.md section 6; none under 3.9, CI's); the H200 runs the split by real tile counts
SPILL_BYTES_TRITON_36 = {**SPILL_BYTES, "ws-n4": 12}


def test_the_kernel_overlaps_its_epilogues_and_nothing_is_serialized_or_spilled():
    import triton

    report = _child("kernel")
    allowed = SPILL_BYTES_TRITON_36 if triton.__version__.startswith("3.6.") else SPILL_BYTES
    for n, facts in report.items():
        assert facts["serialized"] == [], (n, facts)
        assert facts["spill_bytes"] <= allowed.get(n, 0), (n, facts)
        assert facts["overlapping_waits"] >= OVERLAPS[n], (n, facts)
    for n in ("n2", "bal-n2"):  # 3 programs of 128 threads per multiprocessor
        assert report[n]["registers"] <= 168, report
    # 3 programs of 256 threads; the compute warps get what the load warps give up
    for n in ("ws-n1", "ws-n2", "bal-ws-n2", "bal-b1-ws-n2"):
        assert report[n]["registers"] <= 80 and report[n]["setmaxnreg"] == [24, 136], report
    # the H200's at next_n <= 2: 4 programs of 256 threads, the compute warps at 104
    for n in ("bal-ws-c4-n1", "bal-ws-c4-n2", "sched-ws-c4-n2"):
        assert report[n]["registers"] <= 64 and report[n]["setmaxnreg"] == [24, 104], report
    # next_n 4: 2 programs of 256 threads, the compute warps at 232
    assert report["ws-n4"]["registers"] <= 128 and report["ws-n4"]["setmaxnreg"] == [24, 232], report
    # the H200's at next_n 2: one program of 20 warps, 96 registers at launch, the compute warps at 112; one
    # m64n128k32 product a tile in each of the 4 compute warpgroups (4 instructions of k 32 each), as many stores
    # as the warp-specialized form's (both rows, two tokens a thread) in each
    wg4 = report["wg4-n2"]
    assert wg4["registers"] <= 96 and 112 in wg4["setmaxnreg"], report
    assert wg4["products"] == 4 * 4 and wg4["stores"] == 4 * report["bal-ws-c4-n2"]["stores"], report
    # at next_n 4 the same four compute warpgroups, two a share, each with two of the rows
    wg4_n4 = report["wg4-n4"]
    assert wg4_n4["registers"] <= 96 and 112 in wg4_n4["setmaxnreg"], report
    assert wg4_n4["products"] == wg4["products"] and wg4_n4["stores"] == wg4["stores"], report
    assert wg4["shared_bytes"] <= 227 * 1024, report  # what a program may take
    # the schedule by real tile counts adds no barrier between a program's warps (each warp sums it itself)
    assert report["bal-n2"]["barriers"] == report["n2"]["barriers"], report
    assert report["bal-ws-n2"]["barriers"] == report["ws-n2"]["barriers"], report


def test_the_check_catches_a_schedule_split_over_the_warps():
    facts = _child("split_schedule")
    assert facts["planted"]["barriers"] > facts["even"]["barriers"], facts


def test_the_check_catches_a_product_carried_across_the_back_edge(tmp_path):
    (tmp_path / "carried.py").write_text(CARRIED)
    facts = _child("carried", str(tmp_path / "carried.py"))
    assert "C7514" in facts["serialized"], facts


@pytest.mark.parametrize("form", ["full_waits", "ws_full_waits"])
def test_the_check_catches_full_waits(form):
    facts = _child(form)
    assert facts["overlapping_waits"] == 0, facts


def test_the_probes_leave_out_what_they_say_and_fit_as_the_kernel_does():
    """kernel_study's measurement probes (TritonBackend's ``probe``): 1 copies only (no products, no
    stores), 2 every product and store instruction kept (the stores masked off at run time), 3 the stores
    without the products, 4 half the products (one a tile at next_n 2) and every store; each in the kernel's
    registers, with no spills."""
    report = {int(k): v for k, v in _child("probes").items()}
    kernel = report[0]
    assert kernel["products"] > 0 and kernel["stores"] > 0, kernel
    assert (report[1]["products"], report[1]["stores"]) == (0, 0), report
    assert (report[2]["products"], report[2]["stores"]) == (kernel["products"], kernel["stores"]), report
    assert report[3]["products"] == 0 and report[3]["stores"] > 0, report
    assert (report[4]["products"], report[4]["stores"]) == (kernel["products"] // 2, kernel["stores"]), report
    for facts in report.values():
        assert facts["spill_bytes"] == 0 and facts["registers"] <= 80, report
