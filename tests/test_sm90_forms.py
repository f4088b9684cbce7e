"""Which calls the backend gives each form of the Gluon kernels for Hopper (the single-partition kernel, its
warp-specialized form and that form's four-warpgroup program) under the H200's config and under the backends
that pin one, what each launch is given (constexprs, grid, schedule), the options they refuse, and the grid later
calls keep. On the CPU: the launches are built, not made. The kernels' compile is checked in
test_sm90_kernel.py, their logits on a GPU in test_sm90_gpu.py."""
import pytest
import torch


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
    backend.run_prepared(tk.Prepared("fused", inputs, None, 4 * sms, ("ws", 4)), torch.empty(1, 1))
    assert backend._grid({**o, "ctas_per_sm": 4}, ("ws", 4), 10**6, inputs.device) == 2 * sms


def test_a_prepared_portable_call_keeps_to_what_fits(monkeypatch):
    """A portable kernel's handle pins no grid: its calls choose one as ``run`` does, asking ``ctas_per_sm``
    programs per SM the first time and no more than fit after. They once asked ``ctas_per_sm`` every time: on
    an H100 at next_n 4 (204 registers, 2 programs of 3 fit) every benchmarked call ran a second, mostly empty
    wave, 1.22-1.25x the time (2026-12-05)."""
    import types

    from parity.backends import triton_kernels as tk

    sms, grids = 132, []
    monkeypatch.setattr(tk, "_num_sms", lambda device: sms)
    monkeypatch.setattr(tk, "_programs_per_sm", lambda kernel, device: 2)  # the compiled kernel fits 2
    backend = tk.TritonBackend(ctas_per_sm=3, kernel="portable")
    o = dict(backend.config(torch.device("cpu"))[0], programs=0, ctas_per_sm=3)

    class Kernel:
        def __getitem__(self, grid):
            grids.append(grid[0])
            return lambda *args, **consts: object()

    def launch(path, inputs, out, prepared=None, plan=None):  # the portable launch: its grid from _grid
        key = ("portable", 4)
        return Kernel(), (backend._grid(o, key, 10**6, inputs.device),), (), {}, key

    monkeypatch.setattr(backend, "_launch", launch)
    inputs = types.SimpleNamespace(device=torch.device("cuda"), key_format="fp8")
    prepared = tk.Prepared("fused", inputs)  # what prepare returns for the portable kernel: no schedule, no key
    for _ in range(3):
        backend.run_prepared(prepared, torch.empty(1, 1))
    assert grids == [3 * sms, 2 * sms, 2 * sms]


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


@pytest.mark.parametrize("name", ["triton:sm90", "triton:sm90-ws", "triton:sm90-wg4"])
def test_the_named_sm90_backends_run_as_on_the_h200_where_the_gpus_entry_is_the_base_config(name):
    """On an H100 (whose entry is the base config, as the CPU's is) ``triton:sm90-wg4`` once took the base
    config's 3 key slots and asked 237 KB of shared memory, where 232 KB fit: it did not launch
    (2026-12-05). The sm90 kernels' keys come from the H200's config, the only GPU they were measured on."""
    from parity.backends import load_backend, triton_configs
    from parity.backends.triton_sm90 import sm90_ws_programs_per_sm, sm90_ws_stages

    base, _ = triton_configs.lookup("NVIDIA H100 80GB HBM3")
    assert base == triton_configs.BASE  # what this test stands in for
    config, _ = load_backend(name).config(torch.device("cpu"))
    h200 = triton_configs.H200
    assert sm90_ws_stages(2, config) == h200["sm90_ws_stages"] == 2
    assert sm90_ws_programs_per_sm(2, config) == h200["sm90_ws_ctas_per_sm"] == 4
    assert config["balanced"] is True and config["kernel"] == "sm90"
    assert config["tma"] is False and config["pdl"] is False  # the portable kernel's fallbacks: the GPU's entry
