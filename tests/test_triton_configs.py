"""The Triton backend's per-GPU configs: looked up by device name where measured, else from the device's
properties; options given override them; describe() shows the config in force and why; the bulk-copy
switch follows the tile count and next_n rules the H200 measurements set."""
from types import SimpleNamespace

import pytest
import torch

from parity.backends import load_backend, triton_configs
from parity.problem.cases import IndexerCase, build_inputs

pytest.importorskip("triton")


def _props(major, minor=0, sms=132, clock_khz=0, bus_bits=0):
    return SimpleNamespace(major=major, minor=minor, multi_processor_count=sms, memory_clock_rate=clock_khz,
                           memory_bus_width=bus_bits)


def test_measured_gpus_are_found_by_name():
    h200, why = triton_configs.lookup("NVIDIA H200", _props(9))
    assert h200["tma"] and h200["pdl"] and "measured on H200" in why
    h100, why = triton_configs.lookup("NVIDIA H100 80GB HBM3", _props(9))
    assert h100 == triton_configs.BASE and "measured on H100" in why


def test_unmeasured_gpus_get_a_config_from_their_properties():
    gh200, why = triton_configs.lookup("NVIDIA GH200 480GB", _props(9, clock_khz=2_619_000, bus_bits=6144))
    assert gh200["tma"] and gh200["pdl"] and "not reported" not in why and "measured" not in why  # not an H200
    assert gh200["kernel"] == "sm90" and gh200["sm90_max_next_n"] == 2  # compute capability 9.0: sm_90a
    blackwell, _ = triton_configs.lookup("NVIDIA B200", _props(10))
    assert blackwell["tma"] and blackwell["kernel"] == "portable"
    ampere, why = triton_configs.lookup("NVIDIA A100-SXM4-80GB", _props(8))
    assert ampere == triton_configs.BASE and "8.0" in why
    rocm, _ = triton_configs.lookup("AMD Instinct MI300X", _props(9, 4), hip=True)
    assert not rocm["tma"] and not rocm["pdl"]
    assert triton_configs.lookup("some GPU")[1] == "base config"


def test_given_options_override_and_describe_says_so():
    backend = load_backend("triton", num_stages=5, tma=False)
    config, source = backend.config(torch.device("cpu"))
    assert config["num_stages"] == 5 and not config["tma"] and "given: num_stages=5, tma=False" in source
    info = backend.describe()
    assert info["config"]["num_stages"] == 5 and "config_source" in info
    assert load_backend("triton").describe()["config"] == {**triton_configs.BASE} or torch.cuda.is_available()


@pytest.mark.parametrize("min_tiles, next_n, expect", [(0, 2, True), (8, 2, False), (0, 4, False)])
def test_bulk_copies_only_where_they_paid(min_tiles, next_n, expect):
    """Under the interpreter (2 'multiprocessors', 3 programs each): B4 x 512 tokens is 32 tiles, 5 per
    program; bulk copies need tma_min_tiles per program and next_n <= tma_max_next_n (2)."""
    inputs = build_inputs(IndexerCase(batch=4, next_n=next_n, max_model_len=512, block_size=64), "cpu")
    out = torch.empty(4 * next_n, 512)
    backend = load_backend("triton", tma=True, tma_min_tiles=min_tiles)
    _, _, args, consts, _ = backend._launch("fused", inputs, out)
    assert consts["TMA"] is (expect and backend.config(torch.device("cpu"))[0]["tma"])
    assert (args[3] is not None) == consts["TMA"]  # the key descriptor travels only when used


def test_bad_register_cap_is_refused():
    with pytest.raises(ValueError, match="maxnreg"):
        load_backend("triton", maxnreg=300)
