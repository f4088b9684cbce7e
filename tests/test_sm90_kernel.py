"""The Gluon kernels for Hopper (parity.kernels.paged_mqa_logits_sm90 and its warp-specialized form,
paged_mqa_logits_sm90_ws), compiled for sm_90a by the ptxas that ships with Triton (no GPU needed): ptxas
serializes none of their products, nothing spills (but the bytes ``SPILL_BYTES`` lists, per Triton version),
each epilogue but a tile's last overlaps the next product,
three programs fit a multiprocessor at next_n 2 (the warp-specialized form within its cap of 80 registers
at launch, its compute warps raised to 136 and its load warps lowered to 24; four, the H200's config, at 64,
104 and 24; two at next_n 4, 232 and 24),
and both compile for a batch of one (a constant to Triton). The checks catch the two
planted faults that cost the kernel its overlap while it was written: a product carried in flight across
the loop's back edge (ptxas serializes every product, C7514) and a full wait after every product, in
either form. Which calls the backend gives which form is checked on the CPU. Their logits are checked on a
GPU (``parity run --backend triton:sm90`` and ``triton:sm90-ws``; a prepared call against an unprepared one
here, where the GPU has compute capability 9.0)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

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
            "wg4-n2": 0, "wg4-n4": 0, "wg4c-n2": 0, "wg4c-n2-s5": 0}  # the four-warpgroup programs: one product
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
    # coupled (triton:sm90-wg4c): the same registers, products and stores; one q a multiprocessor, where the four
    # shares' q buffers left room for 2 key slots a warpgroup, holds 4 in less shared memory and 5 within the 227
    # KB a program may take
    for n in ("wg4c-n2", "wg4c-n2-s5"):
        assert report[n]["registers"] <= 96 and 112 in report[n]["setmaxnreg"], report
        assert report[n]["products"] == wg4["products"] and report[n]["stores"] == wg4["stores"], report
    assert report["wg4c-n2"]["shared_bytes"] < wg4["shared_bytes"] <= 227 * 1024, report
    assert report["wg4c-n2"]["shared_bytes"] < report["wg4c-n2-s5"]["shared_bytes"] <= 227 * 1024, report
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


@pytest.mark.parametrize("next_n, batch, max_next_n, expected", [
    (2, 64, 2, "ws"),  # B64-n2-ctx8192: 20.7 tiles per program
    (1, 64, 2, "ws"),
    (2, 8, 2, "single"),  # B8-n2-ctx8192: 2.6 tiles per program, where the single-partition form was faster
    (4, 64, 2, "ws"),  # B64-n4-ctx8192: 31 tiles per program at 2 programs per SM
    (4, 8, 2, None),  # 3.9 tiles per program and next_n past the H200's sm90_max_next_n: the portable kernel
    (4, 8, 4, "single"),  # the same under triton:sm90 (sm90_max_next_n 4)
])
def test_the_sm90_form_follows_tiles_per_program_and_next_n(next_n, batch, max_next_n, expected):
    from parity.backends import triton_configs
    from parity.backends.triton_sm90 import sm90_form

    config, _ = triton_configs.lookup("NVIDIA H200")
    n_tiles = batch * 8192 // config["block_t"]
    config = {**config, "sm90_wg4": False}  # the four-warpgroup program: the test below
    assert sm90_form(next_n, n_tiles, {**config, "sm90_max_next_n": max_next_n}, 132, batch) == expected


@pytest.mark.parametrize("next_n", [2, 4])
@pytest.mark.parametrize("change, expected", [
    ({}, "wg4"),  # the H200's config at B64-n2-ctx8192 and B64-n4-ctx8192
    ({"sm90_wg4": False}, "ws"),
    ({"balanced": False}, "ws"),  # it reads shares by real tile counts only
    ({"probe": "reads"}, "ws"),  # the probes are the warp-specialized form's
])
def test_the_h200_runs_next_n_2_and_4_as_four_warpgroups_a_program(next_n, change, expected):
    from parity.backends import triton_configs
    from parity.backends.triton_sm90 import sm90_form

    config, _ = triton_configs.lookup("NVIDIA H200")
    assert config["sm90_wg4"] is True
    o = {**config, "probe": None, **change}
    assert sm90_form(next_n, 64 * 8192 // 64, o, 132, 64) == expected
    assert sm90_form(1, 64 * 8192 // 64, o, 132, 64) == "ws" and sm90_form(2, 8 * 8192 // 64, o, 132, 8) == "single"


@pytest.mark.parametrize("next_n", [2, 4])
def test_the_h200_keeps_a_small_batch_on_the_warp_specialized_form_whatever_its_max_model_len(next_n):
    """A server passes its model's max_model_len (163840): B8 then counts 20480 tiles and passes the
    warp-specialized form's bar, whatever its real lengths. The four-warpgroup program starts slower: at
    B8-n2-ctx8192-mml163840 it ran 8.8-9.1 us against that form's 7.4-7.7 (H200, 2026-12-04), so the H200 runs
    it from 64 sequences on."""
    from parity.backends import triton_configs
    from parity.backends.triton_sm90 import sm90_form

    config, _ = triton_configs.lookup("NVIDIA H200")
    o = {**config, "probe": None}
    assert config["sm90_wg4_min_batch"] == 64
    assert sm90_form(next_n, 8 * 163840 // 64, o, 132, 8) == "ws"
    assert sm90_form(next_n, 63 * 163840 // 64, o, 132, 63) == "ws"
    assert sm90_form(next_n, 64 * 163840 // 64, o, 132, 64) == "wg4"
    assert sm90_form(next_n, 8 * 163840 // 64, {**o, "sm90_wg4_min_batch": 0}, 132, 8) == "wg4"


def test_a_negative_batch_bar_is_refused():
    from parity.backends import load_backend

    with pytest.raises(ValueError, match="sm90_wg4_min_batch must be None or >= 0"):
        load_backend("triton", sm90_wg4_min_batch=-1)


@pytest.mark.parametrize("next_n, slots, shares", [(2, 2, 4), (4, 3, 2)])
def test_the_four_warpgroup_launch_reads_a_schedule_of_its_shares(next_n, slots, shares):
    """One program per multiprocessor at 96 registers, the warp-specialized form's slots, no constexpr it
    does not take; a prepared call's grid, with a schedule of 4 shares a program at next_n 2 (one a compute
    warpgroup) and 2 at next_n 4 (one a pair); ``run`` prepares first."""
    pytest.importorskip("triton.experimental.gluon.language.nvidia.hopper")
    from parity.backends import load_backend, triton_configs
    from parity.backends import triton_kernels as tk
    from parity.backends.triton_sm90 import Prepared, shares_per_program
    from parity.problem.cases import IndexerCase, build_inputs

    h200, _ = triton_configs.lookup("NVIDIA H200")
    inputs = build_inputs(IndexerCase(batch=3, next_n=next_n, max_model_len=256, block_size=64, heads=64), "cpu")
    backend = load_backend("triton", **h200)
    o = {**backend.config(torch.device("cpu"))[0], **backend.opts}
    out = torch.empty(3 * next_n, 256)
    kernel, (grid,), args, consts, _ = backend._launch_sm90(inputs, out, inputs.kv_cache, o, "wg4")
    assert kernel.__name__ == "paged_mqa_logits_sm90_wg4_kernel"
    assert consts["maxnreg"] == 96 and consts["NUM_STAGES"] == slots and consts["NEXT_N"] == next_n, consts
    assert not {"BALANCED", "PROBE", "SCHEDULED"} & set(consts), consts
    assert grid == min(tk._num_sms(inputs.device), 3 * 4)  # one program a multiprocessor, at most a tile each
    schedule = torch.zeros((shares * 5, 8), dtype=torch.int32)
    _, (grid,), args, _, _ = backend._launch_sm90(inputs, out, inputs.kv_cache, o, "wg4",
                                                  Prepared("fused", inputs, schedule, 5))
    assert grid == 5 and args[-1] is schedule
    assert shares_per_program("wg4", next_n) == shares and shares_per_program("ws", next_n) == 1


@pytest.mark.parametrize("next_n, shares", [(2, 4), (4, 2)])
def test_run_plans_a_four_warpgroup_call_once_and_launches_it_on_its_schedule(monkeypatch, next_n, shares):
    """``run`` of a wg4 call: one plan (config and form), one set of descriptors, the schedule of its shares
    prepared for the grid the launch then takes (the schedule's launch and the descriptors' build are counted
    in place of the GPU work)."""
    pytest.importorskip("triton.experimental.gluon.language.nvidia.hopper")
    from parity.backends import load_backend, triton_configs, triton_sm90
    from parity.problem.cases import IndexerCase, build_inputs

    h200, _ = triton_configs.lookup("NVIDIA H200")
    inputs = build_inputs(IndexerCase(batch=3, next_n=next_n, max_model_len=256, block_size=64, heads=64), "cpu")
    backend = load_backend("triton", **h200)
    o = {**backend.config(torch.device("cpu"))[0], **backend.opts}
    plans, built, schedules, launched = [], [], [], []
    monkeypatch.setattr(backend, "_sm90_plan", lambda path, inputs: plans.append(path) or (o, "wg4", inputs.kv_cache))
    monkeypatch.setattr(triton_sm90, "schedule_once", lambda inputs, block_t, balanced, programs: schedules.append(
        torch.zeros((programs, 8), dtype=torch.int32)) or schedules[-1])
    real_launch = triton_sm90.sm90_launch

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **consts: launched.append((grid, args))

    def counting(*args, **kwargs):
        built.append(1)
        return (Kernel(), *real_launch(*args, **kwargs)[1:])

    monkeypatch.setattr(triton_sm90, "sm90_launch", counting)
    backend.run("fused", inputs, torch.empty(3 * next_n, 256))
    assert plans == ["fused"] and built == [1] and len(schedules) == 1 and len(launched) == 1
    (grid,), args = launched[0]
    assert args[-1] is schedules[0] and schedules[0].shape[0] == grid * shares
    with pytest.raises(ValueError, match="out must be"):  # refused before the schedule's launch
        backend.run("fused", inputs, torch.empty(3 * next_n, 255))
    assert len(schedules) == 1 and len(launched) == 1


def test_the_four_warpgroup_program_takes_next_n_2_and_4_only():
    pytest.importorskip("triton.experimental.gluon.language.nvidia.hopper")
    from parity.kernels.paged_mqa_logits_sm90_wg4 import shares

    with pytest.raises(ValueError, match="next_n must be 2 or 4"):
        shares(1)


def test_the_warp_specialized_register_cap_fits_the_programs_asked_for():
    pytest.importorskip("triton.experimental.gluon.language.nvidia.hopper")
    from parity.kernels.paged_mqa_logits_sm90_ws import launch_maxnreg

    for per_sm in (1, 2, 3, 4):
        assert per_sm * 256 * launch_maxnreg(per_sm) <= 65536 and launch_maxnreg(per_sm) % 8 == 0
    assert launch_maxnreg(3) == 80 and launch_maxnreg(2) == 128


def test_the_warp_specialized_form_runs_2_programs_per_sm_at_next_n_4():
    """Two q buffers of four rows and three key slots take 93 KB of shared memory a program: 2 fit a
    multiprocessor of 228 KB, with the register cap of 2 programs. At next_n <= 2 the form's own programs
    per SM and slots (the H200's: 4 and 2, two q buffers of two rows each: 4 x 50 KB), else the kernels'."""
    from parity.backends import triton_configs
    from parity.backends.triton_sm90 import sm90_ws_programs_per_sm, sm90_ws_stages

    base = dict(triton_configs.BASE, ctas_per_sm=3, num_stages=3)
    assert [sm90_ws_programs_per_sm(n, base) for n in (1, 2, 4)] == [3, 3, 2]
    assert sm90_ws_programs_per_sm(4, {**base, "ctas_per_sm": 1}) == 1
    assert [sm90_ws_stages(n, base) for n in (1, 2, 4)] == [3, 3, 3]
    h200, _ = triton_configs.lookup("NVIDIA H200")
    assert [sm90_ws_programs_per_sm(n, h200) for n in (1, 2, 4)] == [4, 4, 2]
    assert [sm90_ws_stages(n, h200) for n in (1, 2, 4)] == [2, 2, 3]
    assert h200["ctas_per_sm"] == 3 and h200["num_stages"] == 3  # what the other kernels still run with


def test_triton_sm90_ws_pins_the_warp_specialized_form():
    from parity.backends import load_backend
    from parity.backends.triton_sm90 import sm90_form

    config, _ = load_backend("triton:sm90-ws").config(torch.device("cpu"))
    assert config["kernel"] == "sm90" and config["sm90_ws_min_tiles"] == 0
    assert sm90_form(2, 1, {**config, "probe": None}, 132, 1) == "ws"  # at next_n 2 and 4 too
    assert sm90_form(4, 1, {**config, "probe": None}, 132, 1) == "ws"
    config, _ = load_backend("triton:sm90-wg4").config(torch.device("cpu"))
    assert sm90_form(2, 1, {**config, "probe": None}, 132, 1) == "wg4"  # the four-warpgroup program at any size
    assert sm90_form(4, 1, {**config, "probe": None}, 132, 1) == "wg4"
    assert sm90_form(1, 1, {**config, "probe": None}, 132, 1) == "ws"


def test_the_h200_config_runs_the_sm90_kernel_up_to_next_n_2():
    from parity.backends import triton_configs

    config, source = triton_configs.lookup("NVIDIA H200")
    assert config["kernel"] == "sm90" and config["sm90_max_next_n"] == 2, (config, source)
    config, _ = triton_configs.lookup("NVIDIA H100 80GB HBM3")
    assert config["kernel"] == "portable"


def test_off_a_hopper_gpu_the_portable_kernel_runs():
    """Asked for the sm90 kernel on the CPU (the interpreter), the backend launches the portable one and says
    why the other could not run."""
    from parity.backends import load_backend
    from parity.backends.triton_kernels import _sm90_unfit
    from parity.problem.cases import IndexerCase, build_inputs

    inputs = build_inputs(IndexerCase(batch=2, next_n=2, max_model_len=256, block_size=64), "cpu")
    out = torch.empty(4, 256)
    kernel, *_ = load_backend("triton:sm90")._launch("fused", inputs, out)
    assert kernel.__name__ == "paged_mqa_logits_kernel"
    assert _sm90_unfit("fused", inputs, inputs.kv_cache, 64) == "not an NVIDIA GPU"


def test_bad_kernel_option_is_refused():
    from parity.backends import load_backend

    with pytest.raises(ValueError, match="kernel must be None or one of"):
        load_backend("triton", kernel="sm100")
    with pytest.raises(ValueError, match="sm90_ws_min_tiles must be None or >= 0"):
        load_backend("triton", sm90_ws_min_tiles=-1)


@pytest.mark.parametrize("balanced", [True, False])
def test_both_gluon_forms_take_the_split_the_config_asks_for(balanced):
    """The sm90 launch passes the config's ``balanced`` (the H200's: on) to whichever form runs, with the batch
    size up to which its schedule reads the context lengths."""
    pytest.importorskip("triton.experimental.gluon.language.nvidia.hopper")
    from parity.backends import load_backend, triton_configs
    from parity.problem.cases import IndexerCase, build_inputs

    h200, _ = triton_configs.lookup("NVIDIA H200")
    assert h200["balanced"] is True
    inputs = build_inputs(IndexerCase(batch=3, next_n=2, max_model_len=256, block_size=64, heads=64), "cpu")
    for form, name in {"ws": "paged_mqa_logits_sm90_ws_kernel", "single": "paged_mqa_logits_sm90_kernel"}.items():
        backend = load_backend("triton", **{**h200, "balanced": balanced})
        o, _ = backend.config(torch.device("cpu"))
        kernel, _, args, consts, _ = backend._launch_sm90(inputs, torch.empty(6, 256), inputs.kv_cache,
                                                          {**o, **backend.opts}, form)
        assert kernel.__name__ == name
        assert consts["BALANCED"] is balanced and args[-2] == 3, (form, consts, args[-2])
        assert consts["SCHEDULED"] is False and args[-1] is inputs.context_lens  # unprepared: no schedule read


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


def test_later_calls_keep_the_programs_per_sm_of_the_form_launched(monkeypatch):
    """The grid of a call after the first (or of a prepare after a prepared call) takes the smaller of what the
    form asks (the warp-specialized form's 4 programs per SM on the H200) and what fits, not the other
    kernels' ``ctas_per_sm`` (3): the benchmark's default rows once ran that form at 3 programs per SM with 2
    key slots (B128-n2-ctx8192 48.0 against 46.0 us with the 4 asked, H200, 2026-12-04)."""
    import types

    from parity.backends import triton_kernels as tk
    from parity.backends.triton_sm90 import sm90_ws_programs_per_sm

    sms, grids = 132, []
    monkeypatch.setattr(tk, "_num_sms", lambda device: sms)
    monkeypatch.setattr(tk, "_programs_per_sm", lambda kernel, device: 4)  # the compiled form fits 4
    backend = tk.TritonBackend(ctas_per_sm=3, sm90_ws_ctas_per_sm=4)
    o = dict(backend.config(torch.device("cpu"))[0], programs=0)

    class Kernel:
        def __getitem__(self, grid):
            grids.append(grid[0])
            return lambda *args, **consts: object()

    def launch(path, inputs, out, prepared=None, plan=None):  # the ws form's launch: its own programs per SM
        key = ("ws", 4)
        grid = backend._grid({**o, "ctas_per_sm": sm90_ws_programs_per_sm(2, o)}, key, 10**6, inputs.device)
        return Kernel(), (grid,), (), {}, key

    monkeypatch.setattr(backend, "_launch", launch)
    monkeypatch.setattr(backend, "_sm90_plan", lambda path, inputs: (o, "ws", None))
    inputs = types.SimpleNamespace(device=torch.device("cuda"), key_format="fp8")
    for _ in range(3):
        backend.run("fused", inputs, None)
    assert grids == [4 * sms] * 3
    monkeypatch.setattr(tk, "_programs_per_sm", lambda kernel, device: 2)  # a build that fits only 2
    backend._resident.clear()
    grids.clear()
    for _ in range(2):
        backend.run("fused", inputs, None)
    assert grids == [4 * sms, 2 * sms]
    # a prepared call records what fits under the key of the launch that chose its grid: the next prepare's
    backend._resident.clear()
    monkeypatch.setattr(backend, "_launch", lambda path, inputs, out, p=None: (Kernel(), (p.programs,), (), {}, "x"))
    backend.run_prepared(tk.Prepared("fused", inputs, None, 4 * sms, ("ws", 4)), None)
    assert backend._grid({**o, "ctas_per_sm": 4}, ("ws", 4), 10**6, inputs.device) == 2 * sms


def test_a_prepared_call_reads_its_schedule_on_its_grid():
    """``prepare`` pins a grid and a schedule; the launch of ``run_prepared`` takes both (``SCHEDULED``), in
    either form, whatever grid the backend would choose itself."""
    pytest.importorskip("triton.experimental.gluon.language.nvidia.hopper")
    from parity.backends import load_backend, triton_configs
    from parity.backends.triton_sm90 import Prepared
    from parity.problem.cases import IndexerCase, build_inputs

    h200, _ = triton_configs.lookup("NVIDIA H200")
    inputs = build_inputs(IndexerCase(batch=3, next_n=2, max_model_len=256, block_size=64, heads=64), "cpu")
    schedule = torch.zeros((5, 8), dtype=torch.int32)
    for form in ("ws", "single"):
        backend = load_backend("triton", **h200)
        o = {**backend.config(torch.device("cpu"))[0], **backend.opts}
        _, (grid,), args, consts, _ = backend._launch_sm90(inputs, torch.empty(6, 256), inputs.kv_cache, o, form,
                                                           Prepared("fused", inputs, schedule, 5))
        assert consts["SCHEDULED"] is True and args[-1] is schedule and grid == 5, (form, grid)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                    reason="runs the sm90 kernels: needs a GPU of compute capability 9.0")
@pytest.mark.parametrize("batch,context,max_model_len", [(1, 700, 8192), (8, 8192, 8192), (64, 8192, 163840),
                                                         (130, 3000, 16384), (128, 4096, 163840)])
@pytest.mark.parametrize("name", ["triton", "triton:sm90-ws", "triton:sm90-wg4c"])
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
    from parity.problem.cases import per_row_lengths
    from parity.problem.reference import reference_logits

    gen = torch.Generator(device="cuda").manual_seed(batch)
    inputs = make_inputs(Shape(batch, next_n, context, max_model_len=max_model_len), "cuda", gen=gen)
    inputs.context_lens.copy_(torch.randint(1, context + 1, (batch,), device="cuda", generator=gen))
    if row_lens == "per_row":
        lens_2d = per_row_lengths(inputs.context_lens.tolist(), next_n, torch.Generator().manual_seed(batch))
        inputs = dataclasses.replace(inputs, context_lens_2d=lens_2d.to("cuda"))
    outs = []
    for name, form in (("triton:sm90-wg4", "wg4"), ("triton:sm90-ws", "ws"),
                       ("triton:sm90-wg4c", "wg4c" if next_n == 2 else "wg4")):
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
