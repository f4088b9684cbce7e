"""Backends for ``python -m parity bench --backend ci/config_variants.py:<factory>`` (ci/sm90-candidates.sh): the
product's ``triton`` backend with a config it does not yet choose for the GPU it runs on.

- ``slots2``, ``slots3``, ``slots4``, ``slots5``: the GPU's own config, its next_n 2 four-warpgroup calls run by the coupled
  program (``parity.kernels.paged_mqa_logits_sm90_wg4c``) at that many key slots a warpgroup: what the H200's
  config would run if it took that form (``triton:sm90-wg4c`` instead gives the program every call);
- ``h200_config``, ``h200_config_slots4``: the H200's config on another GPU of compute capability 9.0 (the H100's
  entry is the base config, the portable kernel, measured before the Gluon kernels existed), without and with
  the coupled program.
"""
from parity.backends import triton_configs
from parity.backends.triton_kernels import TritonBackend


def slots2(**options) -> TritonBackend:
    return TritonBackend(**{**options, "sm90_wg4c_stages": 2})


def slots3(**options) -> TritonBackend:
    return TritonBackend(**{**options, "sm90_wg4c_stages": 3})


def slots4(**options) -> TritonBackend:
    return TritonBackend(**{**options, "sm90_wg4c_stages": 4})


def slots5(**options) -> TritonBackend:
    return TritonBackend(**{**options, "sm90_wg4c_stages": 5})


def h200_config(**options) -> TritonBackend:
    return TritonBackend(**{**triton_configs.H200, **options})


def h200_config_slots4(**options) -> TritonBackend:
    return TritonBackend(**{**triton_configs.H200, "sm90_wg4c_stages": 4, **options})
