"""Backends for ``python -m parity bench --backend ci/wg4c_variants.py:<factory>`` (ci/candidate-h200.sh): the
product's ``triton`` backend under the GPU's own config, with its next_n 2 four-warpgroup calls run by the
coupled program (``parity.kernels.paged_mqa_logits_sm90_wg4c``) at 3, 4 or 5 key slots a warpgroup. What the
H200's config would run if it took that form; ``triton:sm90-wg4c`` instead gives the program every call."""
from parity.backends.triton_kernels import TritonBackend


def slots3(**options) -> TritonBackend:
    return TritonBackend(**{**options, "sm90_wg4c_stages": 3})


def slots4(**options) -> TritonBackend:
    return TritonBackend(**{**options, "sm90_wg4c_stages": 4})


def slots5(**options) -> TritonBackend:
    return TritonBackend(**{**options, "sm90_wg4c_stages": 5})
