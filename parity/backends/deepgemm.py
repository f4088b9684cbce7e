"""DeepGEMM's paged MQA logits as the ``fused`` path, from the ``deep_gemm`` the user has (an installed
wheel, or a source tree built with ``ci/build-deepgemm.sh`` and put on ``PYTHONPATH``). Cells are skipped
with the reason when it does not import or the GPU/case is outside what the kernel takes.

The call (csrc/apis/attention.hpp and tests/test_attention.py of deepseek-ai/DeepGEMM)::

    schedule_meta = get_paged_mqa_logits_metadata(context_lens, block_kv, num_sms)
    logits = fp8_paged_mqa_logits(q, kv_cache, weights, context_lens, block_table,
                                  schedule_meta, max_context_len, clean_logits)

``q`` ``(B, next_n, H, D)`` e4m3fn, ``kv_cache`` ``(num_blocks, block_kv, 1, D + 4)`` uint8 in the
layout of SPEC section 1, ``weights`` ``(B * next_n, H)`` fp32, ``block_table`` int32. The releases
differ in the rest (GENERATIONS below); the adapter follows each:

* ``context_lens`` ``(B,)`` (the kernel applies the causal rule) or ``(B, next_n)`` holding each row's own
  length ``context_len - next_n + i + 1``. Tried in the order the release suggests; the first one its
  metadata call accepts is kept.
* ``clean_logits``: DeepGEMM fills positions past each row's length with -inf only with 1-D lens; the
  2-D-only releases reject it. Without it those positions hold whatever the kernel left, and the caller
  (vLLM's top-k) reads only each row's length. ``clean_logits=None`` (``deepgemm``) asks DeepGEMM to
  clean where the release can; ``True`` (``deepgemm:clean``) insists; ``False`` (``deepgemm:noclean``)
  never asks. The adapter never writes the -inf on the kernel's behalf: what DeepGEMM leaves past the
  lengths is what the checks see, judged by the consumer rule (parity.judge.consumers): don't-care for a
  length-bounded reader, a mask finding for an unbounded one.
* ``fp8_fp4_paged_mqa_logits`` (2026-04 on) takes ``q`` as ``(values, scales or None)`` and a
  ``logits_dtype``; ``fp8_paged_mqa_logits`` stays as its fp32 wrapper.
* MXFP4 inputs (the same call with ``q = (E2M1 pairs as int8 (B, next_n, H, D/2), q_sf int32 (B, next_n,
  H))`` and the ``(num_blocks, block_kv, 1, D/2 + 4)`` cache) run on sm100 only: the host code asserts
  ``arch_major == 10``, H in {8, 16, 32, 64}, D in {64, 128}, block_kv in {32, 64}. Elsewhere the cells
  skip with "needs SM100".

DeepGEMM allocates its own output (row stride aligned to 1024 bytes), so its stores are not guarded:
the out-of-bounds check judges the adapter's copy into the harness's view, not DeepGEMM. ``prepare`` /
``run_prepared`` split the schedule (a kernel of its own) and the copy from the timed call.
"""
from __future__ import annotations

import importlib
import types
from dataclasses import dataclass

import torch

from parity.problem.cases import IndexerInputs

# deepseek-ai/DeepGEMM history of the paged MQA logits call (first commit of each).
GENERATIONS = {
    "80ceeb2 (2025-09)": "fp8_paged_mqa_logits, context_lens (B,), clean_logits allowed",
    "38f8ef7 (2025-11)": "context_lens (B,) or (B, next_n); clean_logits only with (B,)",
    "7f2a703 (2026-04)": "context_lens (B, next_n) only, clean_logits rejected; fp8_fp4_paged_mqa_logits "
                         "with q=(values, scales|None), logits_dtype, indices",
}
# What the host code of those releases asserts, per GPU generation (arch major).
LIMITS = {
    9: {"heads": (32, 64), "block_kv": (64,), "head_dim": (32, 64, 128), "max_next_n": 2},
    10: {"heads": (8, 16, 32, 64), "block_kv": (32, 64), "head_dim": (32, 64, 128), "max_next_n": None},
}
# The FP4 path (is_fp4 in attention.hpp): sm100 only.
FP4_LIMITS = {"arch_major": 10, "heads": (8, 16, 32, 64), "head_dim": (64, 128), "block_kv": (32, 64)}
LOGITS_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
NOT_CLEANED = ("DeepGEMM ran with clean_logits=False: positions past each row's length hold what the kernel "
               "left there (don't-care for a length-bounded reader, a mask finding for an unbounded one)")
UNGUARDED = ("DeepGEMM allocates its own output, so its stores are not guarded: the out-of-bounds check "
             "judges the adapter's copy into the harness's buffer, not DeepGEMM")


@dataclass
class Prepared:
    """One call's arguments, schedule included: everything but the kernel itself."""
    chunks: list  # [(q, weights, context_lens, schedule_meta, rows)]: one per next_n slice
    inputs: IndexerInputs
    clean: bool  # DeepGEMM itself writes -inf past each row's length


class DeepGemmBackend:
    name = "deepgemm"
    paths = ("fused",)
    device_types = ("cuda",)
    fp8_flavours = ("e4m3fn",)
    key_formats = ("fp8", "mxfp4")  # mxfp4 only through fp8_fp4_paged_mqa_logits on sm100 (see unsupported)

    def __init__(self, module: types.ModuleType | None = None, reason: str | None = None,
                 clean_logits: bool | None = None, logits_dtype: str = "float32", split_next_n: bool = False,
                 arch: tuple[int, int] | None = None):
        if logits_dtype not in LOGITS_DTYPES:
            raise ValueError(f"logits_dtype must be one of {sorted(LOGITS_DTYPES)}, got {logits_dtype!r}")
        if clean_logits not in (None, True, False):
            raise ValueError(f"clean_logits must be None (auto), True or False, got {clean_logits!r}")
        self.dg, self.reason, self.arch = module, reason, arch
        self.clean_mode, self.split = clean_logits, split_next_n
        self.logits_dtype = LOGITS_DTYPES[logits_dtype]
        suffix = {None: "", True: ":clean", False: ":noclean"}[clean_logits] + (":split" if split_next_n else "") \
            + ("" if logits_dtype == "float32" else ":bf16")
        if suffix:  # subclasses (vLLM's wrapper) keep their own name
            self.name = type(self).name + suffix
        self.logits_fn, self.fp4_api = None, False
        self.context_lens_2d: bool | None = None  # learnt on the first accepted metadata call
        self.cleaned: bool | None = None  # whether DeepGEMM itself cleaned on the last call
        if module is not None:
            if callable(getattr(module, "fp8_fp4_paged_mqa_logits", None)):
                self.logits_fn, self.fp4_api = module.fp8_fp4_paged_mqa_logits, True
            elif callable(getattr(module, "fp8_paged_mqa_logits", None)):
                self.logits_fn = module.fp8_paged_mqa_logits
            if self.logits_fn is None or not callable(getattr(module, "get_paged_mqa_logits_metadata", None)):
                self.reason = (f"deep_gemm at {getattr(module, '__file__', '?')} has no fp8_paged_mqa_logits / "
                               "get_paged_mqa_logits_metadata")

    # --- what it takes ---------------------------------------------------------------------------

    def _arch(self, device: torch.device) -> tuple[int, int]:
        return self.arch or torch.cuda.get_device_capability(device)

    def unsupported(self, path: str, inputs: IndexerInputs) -> str | None:
        if self.reason:
            return self.reason
        if path not in self.paths:
            return f"DeepGEMM has no {path} path (its fused kernel reduces heads in registers)"
        if inputs.key_format == "mxfp4":
            return self._fp4_unsupported(inputs)
        if self.arch is None and (inputs.device.type != "cuda" or getattr(torch.version, "hip", None)):
            return f"DeepGEMM runs on NVIDIA GPUs only, not on {inputs.device.type}"
        if inputs.q_fp8.dtype != torch.float8_e4m3fn:
            return "DeepGEMM takes fp8 e4m3fn only (e4m3fnuz is an AMD format)"
        if (self.logits_dtype != torch.float32 or inputs.logits_dtype != torch.float32) and not self.fp4_api:
            return "this deep_gemm has no fp8_fp4_paged_mqa_logits, so no logits_dtype (its logits are fp32)"
        if inputs.logits_dtype not in LOGITS_DTYPES.values():
            return f"DeepGEMM writes float32 or bfloat16 logits, not {inputs.logits_dtype}"
        if self.clean_mode is True and self.fp4_api:
            return ("clean_logits: this release takes only 2-D context_lens and rejects clean_logits with them "
                    "(use deepgemm or deepgemm:noclean)")
        major = self._arch(inputs.device)[0]
        lim = LIMITS.get(major)
        if lim is None:
            return f"DeepGEMM's paged MQA logits runs on sm90 and sm100, not on sm{major}x"
        for what, value in (("heads", inputs.heads), ("block_kv", inputs.block_size), ("head_dim", inputs.head_dim)):
            if value not in lim[what]:
                return f"DeepGEMM on sm{major}x takes {what} in {lim[what]}, got {value}"
        if lim["max_next_n"] and inputs.next_n > lim["max_next_n"] and not self.split:
            return (f"DeepGEMM on sm{major}x takes next_n <= {lim['max_next_n']}, got {inputs.next_n} "
                    "(deepgemm:split runs it as several calls)")
        return None

    def _fp4_unsupported(self, inputs: IndexerInputs) -> str | None:
        if not self.fp4_api:
            return ("MXFP4 needs fp8_fp4_paged_mqa_logits (DeepGEMM 2026-04 or later); this deep_gemm has "
                    "fp8_paged_mqa_logits only")
        if self.arch is None and (inputs.device.type != "cuda" or getattr(torch.version, "hip", None)):
            return (f"needs SM100: DeepGEMM's FP4 path asserts arch_major == 10 (datacentre Blackwell); the inputs "
                    f"are on {inputs.device.type}")
        major = self._arch(inputs.device)[0]
        if major != FP4_LIMITS["arch_major"]:
            return f"needs SM100: DeepGEMM's FP4 path asserts arch_major == 10, this GPU is sm{major}x"
        if inputs.logits_dtype not in LOGITS_DTYPES.values():
            return f"DeepGEMM writes float32 or bfloat16 logits, not {inputs.logits_dtype}"
        if self.clean_mode is True:
            return "clean_logits: the FP4 call takes only 2-D context_lens and rejects clean_logits with them"
        for what, value in (("heads", inputs.heads), ("head_dim", inputs.head_dim), ("block_kv", inputs.block_size)):
            if value not in FP4_LIMITS[what]:
                return f"DeepGEMM's FP4 path takes {what} in {FP4_LIMITS[what]}, got {value}"
        return None

    @staticmethod
    def _q_arg(inputs: IndexerInputs, s: int, e: int, fp4_api: bool):
        """q of rows ``[s, e)`` as the release takes it: fp8 alone, ``(fp8, None)``, or for MXFP4 the E2M1
        bytes as int8 (DeepGEMM's kPackedFP4) with their scale words."""
        q = inputs.q_fp8[:, s:e].contiguous()
        if inputs.key_format == "mxfp4":
            return q.view(torch.int8), inputs.q_sf[:, s:e].contiguous()
        return (q, None) if fp4_api else q

    # --- the call ----------------------------------------------------------------------------------

    def _num_sms(self, device: torch.device) -> int:
        if callable(getattr(self.dg, "get_num_sms", None)):
            return int(self.dg.get_num_sms())
        return torch.cuda.get_device_properties(device).multi_processor_count

    def _lens_order(self) -> list[bool]:
        """2-D first where the release names the fp4 API (2-D only since then); 1-D first before, since
        only 1-D lets DeepGEMM clean. A learnt answer is kept."""
        if self.context_lens_2d is not None:
            return [self.context_lens_2d]
        return [True, False] if self.fp4_api or self.clean_mode is False else [False, True]

    per_row_lengths = True  # 2-D context_lens are DeepGEMM's own form

    def _chunks(self, inputs: IndexerInputs) -> list[tuple[int, int]]:
        step = LIMITS.get(self._arch(inputs.device)[0], {}).get("max_next_n") if self.split else None
        step = step or inputs.next_n
        return [(s, min(s + step, inputs.next_n)) for s in range(0, inputs.next_n, step)]

    def prepare(self, path: str, inputs: IndexerInputs) -> Prepared:
        """Arguments and schedule metadata for one call (kernels of their own: keep them out of timing)."""
        n, B, H = inputs.next_n, inputs.batch, inputs.heads
        rows_2d = inputs.row_lens.to(torch.int32).view(B, n)
        sms = self._num_sms(inputs.device)
        last, order = None, self._lens_order()
        if inputs.context_lens_2d is not None:
            order = [True]  # per-row lengths have no 1-D form
        for two_d in order:
            chunks = []
            try:
                for s, e in self._chunks(inputs):
                    if two_d:
                        lens = rows_2d[:, s:e].contiguous()
                    elif (s, e) == (0, n):
                        lens = inputs.context_lens.to(torch.int32).contiguous()
                    else:  # a 1-D slice ends where the full row ends minus the rows after it
                        lens = (inputs.context_lens.to(torch.int32) - (n - e)).contiguous()
                    meta = self.dg.get_paged_mqa_logits_metadata(lens, inputs.block_size, sms)
                    w = inputs.weights.view(B, n, H)[:, s:e].reshape(-1, H).contiguous()
                    chunks.append((self._q_arg(inputs, s, e, self.fp4_api), w, lens, meta, (s, e)))
            except (RuntimeError, TypeError, ValueError) as exc:
                last = exc
                continue
            self.context_lens_2d = two_d
            return Prepared(chunks, inputs, (not two_d) and self.clean_mode is not False)
        tried = " and ".join("(B, next_n)" if t else "(B,)" for t in order)
        raise RuntimeError(f"get_paged_mqa_logits_metadata rejected context_lens {tried}: {last}")

    def run_prepared(self, p: Prepared) -> list[torch.Tensor]:
        """DeepGEMM's kernel only; returns its own output tensors (one per next_n slice)."""
        i = p.inputs
        dtype = i.logits_dtype if i.logits_dtype != torch.float32 else self.logits_dtype
        out = []
        for q, w, lens, meta, _ in p.chunks:
            args = (q, i.kv_cache, w, lens, i.block_tables, meta, i.max_model_len, p.clean)
            out.append(self.logits_fn(*args, dtype) if self.fp4_api else self.logits_fn(*args))
        return out

    def finish(self, p: Prepared, logits: list[torch.Tensor], out: torch.Tensor) -> None:
        """Copy DeepGEMM's output into ``out`` (rows of each slice in their place), as the kernel left it."""
        i = p.inputs
        view = out.view(i.batch, i.next_n, out.shape[-1])  # splits the row dim only: fine for padded views
        for (_, _, _, _, (s, e)), lg in zip(p.chunks, logits):
            want = (i.batch * (e - s), i.max_model_len)
            if tuple(lg.shape) != want:
                raise ValueError(f"deep_gemm returned logits of shape {tuple(lg.shape)}; expected {want} "
                                 "(B * next_n, max_model_len)")
            view[:, s:e].copy_(lg.view(i.batch, e - s, lg.shape[-1]))
        self.cleaned = p.clean

    def run(self, path: str, inputs: IndexerInputs, out: torch.Tensor) -> None:
        p = self.prepare(path, inputs)
        self.finish(p, self.run_prepared(p), out)

    def describe(self) -> dict:
        info = {"name": self.name, "guarded_stores": False, "caveats": [UNGUARDED]}
        if self.dg is not None:
            info.update(origin=getattr(self.dg, "__file__", None), version=getattr(self.dg, "__version__", None),
                        function=getattr(self.logits_fn, "__name__", None), q_as_tuple=self.fp4_api,
                        context_lens_2d=self.context_lens_2d,
                        logits_dtype=str(self.logits_dtype).replace("torch.", ""), split_next_n=self.split,
                        output="allocated by DeepGEMM, copied into the harness's view")
            # describe() runs before any call: what the release's API implies, else what the last call did
            will_clean = self.cleaned if self.cleaned is not None else (
                False if (self.fp4_api or self.clean_mode is False) else None)
            info["clean_logits"] = will_clean
            if will_clean is False:
                info["caveats"].append(NOT_CLEANED)
        if self.reason:
            info["unavailable"] = self.reason
        return info


def make_backend(module: types.ModuleType | None = None, clean_logits: bool | None = None,
                 logits_dtype: str = "float32", split_next_n: bool = False) -> DeepGemmBackend:
    """``module`` stands in for ``deep_gemm`` (tests); by default it is imported, and an import failure
    becomes the reason every cell is skipped."""
    opts = dict(clean_logits=clean_logits, logits_dtype=logits_dtype, split_next_n=split_next_n)
    if module is not None:
        return DeepGemmBackend(module, **opts)
    try:
        return DeepGemmBackend(importlib.import_module("deep_gemm"), **opts)
    except Exception as exc:  # ImportError, or a CUDA/JIT failure at import
        return DeepGemmBackend(None, f"deep_gemm not importable: {type(exc).__name__}: {exc}", **opts)


def make_clean_backend(**kw) -> DeepGemmBackend:
    return make_backend(clean_logits=True, **kw)


def make_noclean_backend(**kw) -> DeepGemmBackend:
    return make_backend(clean_logits=False, **kw)


def make_split_backend(**kw) -> DeepGemmBackend:
    return make_backend(split_next_n=True, **kw)
