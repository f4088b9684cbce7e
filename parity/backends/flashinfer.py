"""FlashInfer's ``fp4_paged_mqa_logits`` (flashinfer-ai/flashinfer #4365, ``flashinfer/attn_scores``) as the
``fused`` path of MXFP4 cells, from the ``flashinfer`` the user has installed. It runs on datacentre
Blackwell only (SM100/SM103; SM107 is major 10 too): elsewhere every cell skips with "needs SM100".

The call, as the released docstring and its argument checks describe it::

    logits = fp4_paged_mqa_logits(q, q_sf, kv_fused, weights, block_tables, seq_lens, max_seq_len, *,
                                  sf_vec_size=32, output_dtype=torch.bfloat16, epi_dtype=torch.float32,
                                  is_kv_sf_interleaved=False, schedule_meta=None, out=None)

``q`` uint8 ``(B, next_n, H, D/2)`` (element 2j in the low nibble of byte j), ``q_sf`` int32 ``(B, next_n, H)``
(byte k of the little-endian word scales elements ``[32k, 32k + 32)``), ``kv_fused`` uint8 ``(num_blocks,
block_size, 1, D/2 + 4)`` with each block's values then its scales (the suite's MXFP4 cache), ``weights``
float32 ``(B * next_n, H)``, ``seq_lens`` int32 ``(B,)`` (row ``b * next_n + t`` sees positions
``0 .. seq_lens[b] - next_n + t``). Only H = 64, D = 128, block_size in {32, 64, 128}, next_n 1..4; the
output is float32, float16 or bfloat16. The first release named the arguments ``sf_q``, ``context_lens``,
``block_table``, ``max_context_len`` (in the order q, sf_q, kv_fused, weights, context_lens, block_table,
max_context_len); the adapter passes every argument by the name the installed function declares.

FlashInfer allocates its own output and leaves the columns past each row's limit unspecified (rows of a
sequence of length 0 are never written): the adapter copies the logits into the harness's view as they are,
so the consumer rule judges what the kernel leaves there (don't-care for a length-bounded reader, a mask
finding for an unbounded one), as for DeepGEMM; the out-of-bounds check judges the adapter's copy.
"""
from __future__ import annotations

import importlib
import inspect
import types
from dataclasses import dataclass

import torch

from parity.problem.cases import IndexerInputs

# parameter roles -> the names each release gives them
NAMES = {
    "q_sf": ("q_sf", "sf_q"),
    "seq_lens": ("seq_lens", "context_lens"),
    "block_tables": ("block_tables", "block_table"),
    "max_seq_len": ("max_seq_len", "max_context_len"),
}
LIMITS = {"arch_major": 10, "heads": (64,), "head_dim": (128,), "block_size": (32, 64, 128), "next_n": (1, 2, 3, 4)}
OUTPUT_DTYPES = (torch.float32, torch.bfloat16)  # what the suite's buffers hold (float16 too for FlashInfer)
UNGUARDED = ("FlashInfer allocates its own output, so its stores are not guarded: the out-of-bounds check "
             "judges the adapter's copy into the harness's buffer")


def find_function(module: types.ModuleType):
    """``fp4_paged_mqa_logits`` of an imported ``flashinfer`` (top level or ``attn_scores``), or None."""
    fn = getattr(module, "fp4_paged_mqa_logits", None)
    if fn is None:
        sub = getattr(module, "attn_scores", None)
        fn = getattr(sub, "fp4_paged_mqa_logits", None)
    return fn if callable(fn) else None


def argument_names(fn) -> dict[str, str]:
    """Role -> the parameter name this release uses; a missing role raises, naming what was found."""
    params = inspect.signature(fn).parameters
    found = {}
    for role, names in NAMES.items():
        hit = [n for n in names if n in params]
        if not hit:
            raise TypeError(f"fp4_paged_mqa_logits has none of {names} (its parameters: {', '.join(params)}); "
                            "a signature this adapter does not know")
        found[role] = hit[0]
    for needed in ("q", "kv_fused", "weights", "output_dtype"):
        if needed not in params:
            raise TypeError(f"fp4_paged_mqa_logits has no {needed!r} (its parameters: {', '.join(params)})")
    return found


@dataclass
class Prepared:
    kwargs: dict
    inputs: IndexerInputs


class FlashInferFp4Backend:
    name = "flashinfer"
    paths = ("fused",)
    device_types = ("cuda",)
    fp8_flavours = ()
    key_formats = ("mxfp4",)
    logits_dtypes = OUTPUT_DTYPES
    per_row_lengths = False  # seq_lens (B,): the causal rule only

    def __init__(self, module: types.ModuleType | None = None, reason: str | None = None,
                 arch: tuple[int, int] | None = None):
        self.module, self.reason, self.arch = module, reason, arch
        self.fn, self.names = None, {}
        if module is not None and reason is None:
            self.fn = find_function(module)
            if self.fn is None:
                self.reason = f"flashinfer at {getattr(module, '__file__', '?')} has no fp4_paged_mqa_logits (#4365)"
            else:
                try:
                    self.names = argument_names(self.fn)
                except (TypeError, ValueError) as exc:
                    self.reason = str(exc)

    def unsupported(self, path: str, inputs: IndexerInputs) -> str | None:
        if self.reason:
            return self.reason
        if path not in self.paths:
            return f"FlashInfer's fp4_paged_mqa_logits has no {path} path"
        if inputs.key_format != "mxfp4":
            return "this adapter calls fp4_paged_mqa_logits: MXFP4 cells only"
        if self.arch is None and (inputs.device.type != "cuda" or getattr(torch.version, "hip", None)):
            return (f"needs SM100: FlashInfer's fp4_paged_mqa_logits runs on SM100/SM103/SM107 only; the inputs "
                    f"are on {inputs.device.type}")
        major = (self.arch or torch.cuda.get_device_capability(inputs.device))[0]
        if major != LIMITS["arch_major"]:
            return (f"needs SM100: FlashInfer's fp4_paged_mqa_logits runs on SM100/SM103/SM107 only, this GPU is "
                    f"sm{major}x")
        if inputs.context_lens_2d is not None:
            return "FlashInfer takes seq_lens (B,) and applies the causal rule: no per-row lengths"
        if inputs.logits_dtype not in self.logits_dtypes:
            return f"the suite's buffers hold float32 or bfloat16, not {inputs.logits_dtype}"
        for what, value in (("heads", inputs.heads), ("head_dim", inputs.head_dim),
                            ("block_size", inputs.block_size), ("next_n", inputs.next_n)):
            if value not in LIMITS[what]:
                return f"FlashInfer's fp4_paged_mqa_logits takes {what} in {LIMITS[what]}, got {value}"
        return None

    def prepare(self, path: str, inputs: IndexerInputs) -> Prepared:
        n = self.names
        kwargs = {"q": inputs.q_fp8.contiguous(), n["q_sf"]: inputs.q_sf.contiguous(), "kv_fused": inputs.kv_cache,
                  "weights": inputs.weights.contiguous(), n["block_tables"]: inputs.block_tables,
                  n["seq_lens"]: inputs.context_lens.to(torch.int32), n["max_seq_len"]: int(inputs.max_model_len),
                  "output_dtype": inputs.logits_dtype}
        return Prepared(kwargs, inputs)

    def run_prepared(self, p: Prepared) -> torch.Tensor:
        """FlashInfer's kernel only; returns its own logits (a view of its padded storage)."""
        return self.fn(**p.kwargs)

    def finish(self, p: Prepared, logits: torch.Tensor, out: torch.Tensor) -> None:
        want = (p.inputs.rows, p.inputs.max_model_len)
        if tuple(logits.shape) != want:
            raise ValueError(f"fp4_paged_mqa_logits returned shape {tuple(logits.shape)}; expected {want}")
        out.copy_(logits)

    def run(self, path: str, inputs: IndexerInputs, out: torch.Tensor) -> None:
        p = self.prepare(path, inputs)
        self.finish(p, self.run_prepared(p), out)

    def describe(self) -> dict:
        info = {"name": self.name, "guarded_stores": False, "caveats": [UNGUARDED]}
        if self.module is not None:
            info.update(origin=getattr(self.module, "__file__", None),
                        version=getattr(self.module, "__version__", None), arguments=self.names)
        if self.reason:
            info["unavailable"] = self.reason
        return info


def make_backend(module: types.ModuleType | None = None, arch: tuple[int, int] | None = None) -> FlashInferFp4Backend:
    """``module`` stands in for ``flashinfer`` (tests); by default it is imported, and an import failure
    becomes the reason every cell is skipped."""
    if module is not None:
        return FlashInferFp4Backend(module, arch=arch)
    try:
        return FlashInferFp4Backend(importlib.import_module("flashinfer"), arch=arch)
    except Exception as exc:  # ImportError, or a CUDA/JIT failure at import
        return FlashInferFp4Backend(None, f"flashinfer not importable: {type(exc).__name__}: {exc}")
