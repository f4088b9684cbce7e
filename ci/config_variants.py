"""Backends for ``python -m parity bench --backend ci/config_variants.py:<factory>`` (ci/sm90-candidates.sh): the
product's ``triton`` backend with a config it does not yet choose for the GPU it runs on.

- ``h200_config``: the H200's config on another GPU of compute capability 9.0 (the H100's entry is the base
  config, the portable kernel, measured before the Gluon kernels existed).
"""
from parity.backends import triton_configs
from parity.backends.triton_kernels import TritonBackend


def h200_config(**options) -> TritonBackend:
    return TritonBackend(**{**triton_configs.H200, **options})
