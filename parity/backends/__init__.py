"""Backends by name. Third-party ones import their package only when asked for, so a missing
package costs nothing until a run names it."""
from __future__ import annotations

import importlib

from parity.backends.base import PATHS, Backend, SimpleBackend, load_backend, register, registered_names

_LAZY = {
    "torch": "parity.backends.torch_ref:make_backend",
    "triton": "parity.backends.triton_kernels:make_backend",
    "triton:portable": "parity.backends.triton_kernels:make_portable_backend",
    "triton:sm90": "parity.backends.triton_kernels:make_sm90_backend",
    "triton:sm90-ws": "parity.backends.triton_kernels:make_sm90_ws_backend",
    "triton:sm90-wg4": "parity.backends.triton_kernels:make_sm90_wg4_backend",
    "aiter": "parity.backends.aiter:make_backend",
    "aiter:ragged": "parity.backends.aiter:make_ragged_backend",
    "aiter:varctx": "parity.backends.aiter:make_varctx_backend",
    "aiter:sglang": "parity.backends.aiter:make_sglang_backend",
    "aiter:atom": "parity.backends.aiter:make_atom_backend",
    "deepgemm": "parity.backends.deepgemm:make_backend",
    "deepgemm:clean": "parity.backends.deepgemm:make_clean_backend",
    "deepgemm:noclean": "parity.backends.deepgemm:make_noclean_backend",
    "deepgemm:split": "parity.backends.deepgemm:make_split_backend",
    "vllm": "parity.backends.vllm_ops:make_backend",
    "flashinfer": "parity.backends.flashinfer:make_backend",
    "aiter:fp4": "parity.backends.aiter.fp4:make_backend",
}


def _lazy(target: str):
    def factory(**options):
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)(**options)

    return factory


for _name, _target in _LAZY.items():
    register(_name, _lazy(_target))

# Planted faults, for the self-test: ``fault:<name>`` (see parity.backends.faults).
for _fault in ("unmasked_chunk_store", "causal_off_by_one", "causal_short_by_one", "pos_inf_past_length",
               "nan_past_length", "ignores_stride0", "scales_interleaved",
               "wrong_preshuffle_offsets", "drops_one_head",
               "fp8_flavour_misread", "racy_write", "raises", "aborts", "hangs"):
    register(f"fault:{_fault}", lambda _f=_fault, **kw: _lazy("parity.backends.faults:make_backend")(fault=_f, **kw))

# Planted faults of the bug classes seen in the wild (the stress level; parity.backends.faults_stress).
for _fault in ("writes_dummy_rows", "dummy_row_overrun", "offset_wraps", "batch_stride_over_64", "block_table_cap", "ignores_row_lengths",
               "bf16_writes_fp32", "rare_race", "drops_tie_group", "odd_next_n_reads_next_q"):
    register(f"fault:{_fault}",
             lambda _f=_fault, **kw: _lazy("parity.backends.faults_stress:make_backend")(fault=_f, **kw))

# Planted faults of the MXFP4 format (parity.backends.faults_fp4).
for _fault in ("fp4_nibbles_swapped", "fp4_scale_neighbour_group", "fp4_scales_token_interleaved",
               "fp4_row_offset_wraps", "fp4_one_group_scale_off"):
    register(f"fault:{_fault}",
             lambda _f=_fault, **kw: _lazy("parity.backends.faults_fp4:make_backend")(fault=_f, **kw))

DEFAULT_BACKENDS = ("torch", "triton")

__all__ = ["PATHS", "Backend", "SimpleBackend", "load_backend", "register", "registered_names", "DEFAULT_BACKENDS"]
