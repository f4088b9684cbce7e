"""The four-warpgroup program with its warpgroups coupled (``triton:sm90-wg4c``, a candidate form in no GPU's config,
``parity.kernels.paged_mqa_logits_sm90_wg4c``): which calls it takes, what its launch is given, and the options it
refuses, on the CPU. Its compile (registers, products, shared memory) is checked with the other Gluon kernels in
test_sm90_kernel.py, and its logits in test_sm90_gpu.py and by ``parity run --backend triton:sm90-wg4c`` on a GPU
of compute capability 9.0."""
import pytest
import torch

from parity.backends import load_backend, triton_configs
from parity.backends.triton_sm90 import MAX_WG4C_STAGES, WG4C_STAGES, shares_per_program, sm90_form


def _config(name: str, **change) -> dict:
    config, _ = load_backend(name).config(torch.device("cpu"))
    return {**config, "probe": None, **change}


@pytest.mark.parametrize("change, next_n, expected", [
    ({}, 2, "wg4c"),
    ({}, 4, "wg4"),  # the coupled form is next_n 2's only: next_n 4 stays on the program it comes from
    ({}, 1, "ws"),
    ({"sm90_wg4c_stages": None}, 2, "wg4"),
    ({"sm90_wg4": False}, 2, "ws"),  # it is a form of the four-warpgroup program, and under its conditions
    ({"balanced": False}, 2, "ws"),
    ({"probe": "reads"}, 2, "ws"),
])
def test_triton_sm90_wg4c_takes_the_four_warpgroup_programs_next_n_2_calls(change, next_n, expected):
    o = _config("triton:sm90-wg4c", **change)
    assert o["sm90_wg4c_stages"] == change.get("sm90_wg4c_stages", WG4C_STAGES)
    assert sm90_form(next_n, 64 * 8192 // 64, o, 132, 64) == expected


def test_no_gpu_config_runs_the_candidate():
    for name in ("NVIDIA H200", "NVIDIA H100 80GB HBM3", "AMD Instinct MI300X"):
        config, _ = triton_configs.lookup(name)
        assert config["sm90_wg4c_stages"] is None, name
    assert sm90_form(2, 64 * 8192 // 64, _config("triton", **triton_configs.lookup("NVIDIA H200")[0]), 132,
                     64) == "wg4"


@pytest.mark.parametrize("stages", [0, 1, MAX_WG4C_STAGES + 1])
def test_key_slots_the_program_cannot_hold_are_refused(stages):
    with pytest.raises(ValueError, match=f"sm90_wg4c_stages must be None or 2-{MAX_WG4C_STAGES} .* got {stages}"):
        load_backend("triton", sm90_wg4c_stages=stages)


def test_the_coupled_launch_takes_one_share_a_program_and_its_own_slots():
    """One program per multiprocessor at 96 registers, the coupled kernel with ``sm90_wg4c_stages`` slots, the
    four-warpgroup program's constexprs; a prepared call's grid and schedule, one share a program."""
    pytest.importorskip("triton.experimental.gluon.language.nvidia.hopper")
    from parity.backends import triton_kernels as tk
    from parity.backends.triton_sm90 import Prepared
    from parity.problem.cases import IndexerCase, build_inputs

    h200, _ = triton_configs.lookup("NVIDIA H200")
    inputs = build_inputs(IndexerCase(batch=3, next_n=2, max_model_len=256, block_size=64, heads=64), "cpu")
    backend = load_backend("triton", **{**h200, "sm90_wg4c_stages": 3})
    o = {**backend.config(torch.device("cpu"))[0], **backend.opts}
    out = torch.empty(6, 256)
    kernel, (grid,), args, consts, _ = backend._launch_sm90(inputs, out, inputs.kv_cache, o, "wg4c")
    assert kernel.__name__ == "paged_mqa_logits_sm90_wg4c_kernel"
    assert consts["maxnreg"] == 96 and consts["NUM_STAGES"] == 3 and consts["NEXT_N"] == 2, consts
    assert not {"BALANCED", "PROBE", "SCHEDULED"} & set(consts), consts
    assert grid == min(tk._num_sms(inputs.device), 3 * 4)
    schedule = torch.zeros((5, 8), dtype=torch.int32)
    _, (grid,), args, _, _ = backend._launch_sm90(inputs, out, inputs.kv_cache, o, "wg4c",
                                                  Prepared("fused", inputs, schedule, 5))
    assert grid == 5 and args[-1] is schedule
    assert shares_per_program("wg4c", 2) == 1 and shares_per_program("wg4", 2) == 4


def test_run_prepares_a_coupled_call_with_one_share_a_program(monkeypatch):
    """``run`` of a wg4c call prepares its schedule first, one row a program of the grid it launches."""
    pytest.importorskip("triton.experimental.gluon.language.nvidia.hopper")
    from parity.backends import triton_sm90
    from parity.problem.cases import IndexerCase, build_inputs

    inputs = build_inputs(IndexerCase(batch=3, next_n=2, max_model_len=256, block_size=64, heads=64), "cpu")
    backend = load_backend("triton:sm90-wg4c")
    o = {**backend.config(torch.device("cpu"))[0], **backend.opts}
    schedules, launched = [], []
    monkeypatch.setattr(backend, "_sm90_plan", lambda path, inputs: (o, "wg4c", inputs.kv_cache))
    monkeypatch.setattr(triton_sm90, "schedule_once", lambda inputs, block_t, balanced, programs: schedules.append(
        torch.zeros((programs, 8), dtype=torch.int32)) or schedules[-1])
    real_launch = triton_sm90.sm90_launch

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **consts: launched.append((grid, args, consts))

    monkeypatch.setattr(triton_sm90, "sm90_launch", lambda *a, **k: (Kernel(), *real_launch(*a, **k)[1:]))
    backend.run("fused", inputs, torch.empty(6, 256))
    assert len(schedules) == 1 and len(launched) == 1
    (grid,), args, consts = launched[0]
    assert args[-1] is schedules[0] and schedules[0].shape[0] == grid and consts["NUM_STAGES"] == WG4C_STAGES
