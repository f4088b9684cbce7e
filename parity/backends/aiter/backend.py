"""The aiter backend: one build, one variant of its API, the suite's three paths.

Variants (each its own backend name, so their cells never mix):

* ``paged`` (``aiter``): ``deepgemm_fp8_paged_mqa_logits[_stage1]`` with ``context_lens`` and
  ``kv_indices`` = block tables; ``Preshuffle=True`` for the preshuffle path where the wrapper has it.
* ``ragged`` (``aiter-ragged``): ``..._ragged_k`` wrappers. Same math, other arguments: a per-token
  cache, ``prefix_sum_context_lens`` ``(B + 1,)`` and a flat ``kv_indices`` of token slots; mapped
  here from the suite's paged inputs (same keys, same scales).
* ``varctx`` (``aiter-varctx``): the fused wrapper with ``VarCtxSchedule`` from the build's own
  ``deepgemm_fp8_paged_mqa_logits_schedule``, as aiter's benchmark calls it.
* ``sglang`` (``aiter-sglang``), ``atom`` (``aiter-atom``): the wrapper called as that server's indexer calls
  it in decode (``callers``: its arguments, and the path it takes at each block size).
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import sys
import traceback

import torch

from parity.problem import layouts
from parity.backends.aiter import discovery as disc
from parity.backends.aiter.callers import CALLERS
from parity.backends.aiter import launch
from parity.backends.aiter.shims import NOT_RUNNABLE, load_from_files
from parity.backends.base import PATHS
from parity.problem.cases import IndexerCase, IndexerInputs, build_inputs

VARIANTS = {  # variant -> (backend name, {path: wrapper})
    "paged": ("aiter", {"stage1": disc.STAGE1, "fused": disc.FUSED, "preshuffle": disc.FUSED}),
    "ragged": ("aiter-ragged", {"stage1": disc.STAGE1_RAGGED, "fused": disc.FUSED_RAGGED}),
    "varctx": ("aiter-varctx", {"fused": disc.FUSED, "preshuffle": disc.FUSED}),
    "sglang": ("aiter-sglang", {"fused": disc.FUSED}),
    "atom": ("aiter-atom", {"fused": disc.FUSED, "preshuffle": disc.FUSED}),
}
RAGGED_CONTRACT = ("ragged_k wrappers take prefix_sum_context_lens (B + 1,) and a flat kv_indices of token slots "
                   "(kv_indices[prefix[b] + t]) into a per-token cache (num_tokens, 1, 1, D + 4); the suite's "
                   "paged inputs are re-laid out to that form (same keys and scales) before the call")
# The DSv3.2 shape, for the launch configuration describe() reports.
PROBE_CASE = IndexerCase(batch=2, next_n=2, heads=64, block_size=64, max_model_len=1000, context="random")


def is_amd() -> bool:
    return bool(getattr(torch.version, "hip", None))


def per_token_view(inputs: IndexerInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """The same keys and scales as a block_size 1 cache, ``(num_blocks * block_size, 1, 1, D + 4)``,
    and per-token ``kv_indices`` ``(B, max_blocks * block_size)``; unused slots point at token 0."""
    bs = inputs.block_size
    keys, scales = layouts.split_kv_cache(inputs.kv_cache, inputs.q_fp8.dtype)
    tokens = keys.reshape(-1, keys.shape[-1])
    cache = layouts.pack_kv_cache(tokens, scales.reshape(-1), 1)
    t = torch.arange(inputs.block_tables.shape[1] * bs, device=inputs.block_tables.device)
    kv_indices = inputs.block_tables.long()[:, t // bs] * bs + t % bs
    return cache, kv_indices.to(torch.int32).contiguous()


def ragged_view(inputs: IndexerInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token cache, ``prefix_sum_context_lens`` ``(B + 1,)`` and flat token-slot ``kv_indices``."""
    cache, per_row = per_token_view(inputs)
    lens = inputs.context_lens.long()
    prefix = torch.zeros(inputs.batch + 1, dtype=torch.int32, device=lens.device)
    prefix[1:] = torch.cumsum(lens, 0).to(torch.int32)
    flat = torch.cat([per_row[b, :n] for b, n in enumerate(lens.tolist())]).to(torch.int32).contiguous()
    return cache, prefix, flat


class AiterBackend:
    fp8_flavours = ("e4m3fn", "e4m3fnuz")
    logits_dtypes = (torch.float32,)  # aiter's wrappers write float32 logits only
    per_row_lengths = False  # they take 1-D context_lens and derive each row's length causally

    def __init__(self, build: disc.AiterBuild, variant: str = "paged"):
        if variant not in VARIANTS:
            raise ValueError(f"aiter variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        self.build, self.variant = build, variant
        self.name, self._wrapper_for = VARIANTS[variant]
        self.caller = CALLERS.get(variant)  # a server's call of the wrapper, or None
        self.mode = "rocm" if is_amd() else "files"
        self.layout = disc.scan(build)
        self.load_error: str | None = None
        self._loaded = None
        self._modules: dict[str, object] = {}
        self.log = launch.LaunchLog()
        self.tolerated: dict[tuple, dict] = {}
        try:
            if self.mode == "rocm":
                self._modules = self._import_on_rocm()
            else:
                self._loaded = load_from_files(build, self.layout)
                self._modules = self._loaded.wrappers
                self.log.drop_amd_options = not self._loaded.interpreted
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            raise RuntimeError(f"aiter build at {build.root} could not be loaded: {self.load_error}") from exc
        for mod in self._modules.values():
            launch.watch(mod, self.log)
            if self.mode == "files" and getattr(mod, "enable_gluon_pa_mqa_logits", False):
                mod.enable_gluon_pa_mqa_logits = False  # its own switch to the Triton kernels, off AMD
        self.paths = tuple(p for p in PATHS if self._offers(p))
        self.device_types = ("cuda",) if self.mode == "rocm" else ("cpu", "cuda")
        if variant != "paged" and not self.paths:
            raise RuntimeError(f"aiter build at {build.root} ({build.version}) has no {variant} variant: "
                               f"{self._missing_variant()}")

    def _import_on_rocm(self) -> dict:
        """ROCm: the build's package imports; its wrapper modules are imported as users import them."""
        if self.build.found_by != "installed package" and str(self.build.root) not in sys.path:
            sys.path.insert(0, str(self.build.root))
        names = [disc.module_name(self.build.root, p) for p in self.layout.wrapper_files]
        return {n: importlib.import_module(n) for n in names}

    # -- what the build offers --
    def function(self, name: str):
        path = self.layout.wrappers.get(name)
        if path is None:
            return None
        fn = getattr(self._modules.get(disc.module_name(self.build.root, path)), name, None)
        return fn if callable(fn) else None

    def _params(self, name: str) -> set[str]:
        fn = self.function(name)
        return set(inspect.signature(fn).parameters) if fn else set()

    def _offers(self, path: str) -> bool:
        wrapper = self._wrapper_for.get(path)
        if wrapper is None or self.function(wrapper) is None:
            return False
        if path == "preshuffle" and "Preshuffle" not in self._params(wrapper):
            return False
        if self.variant == "varctx":
            return "VarCtxSchedule" in self._params(wrapper) and self.function(disc.SCHEDULE) is not None
        if self.caller is not None:
            return path in self.caller.paths and self.caller.passes() <= self._params(wrapper)
        return True

    def _missing_variant(self) -> str:
        if self.variant == "ragged":
            return f"no {disc.FUSED_RAGGED} or {disc.STAGE1_RAGGED} wrapper"
        if self.caller is not None:
            if self.function(disc.FUSED) is None:
                return f"no {disc.FUSED} wrapper"
            missing = sorted(self.caller.passes() - self._params(disc.FUSED))
            return (f"its {disc.FUSED} takes no {', '.join(missing)}, which {self.caller.who} passes "
                    f"({self.caller.source})")
        return f"no {disc.SCHEDULE} and no VarCtxSchedule argument of {disc.FUSED}"

    def _block_aware(self, wrapper: str) -> bool:
        """Whether the wrapper addresses a paged cache by block (newer builds) or per token (0.1.7)."""
        if "KVBlockSize" in self._params(wrapper):
            return True
        try:
            return "KVBlockSize" in inspect.getsource(self.function(wrapper))
        except (OSError, TypeError):
            return False

    # -- argument mapping --
    def _arguments(self, path: str, inputs: IndexerInputs) -> tuple[tuple, dict]:
        wrapper = self._wrapper_for[path]
        params = self._params(wrapper)
        kwargs = {}
        if self.variant == "ragged":
            cache, lens, kv_indices = ragged_view(inputs)
        elif path == "preshuffle":
            cache, lens, kv_indices = inputs.kv_cache_preshuffled, inputs.context_lens, inputs.block_tables
            kwargs = {"Preshuffle": True, "KVBlockSize": inputs.block_size}
        elif inputs.block_size == 1 or self._block_aware(wrapper):
            cache, lens, kv_indices = inputs.kv_cache, inputs.context_lens, inputs.block_tables
            if "KVBlockSize" in params:
                kwargs = {"KVBlockSize": inputs.block_size}
                if "Preshuffle" in params:
                    kwargs["Preshuffle"] = False
        else:
            lens = inputs.context_lens
            cache, kv_indices = per_token_view(inputs)
        if self.caller is not None:  # a server's other arguments (it passes KVBlockSize and Preshuffle as above)
            kwargs.update(self.caller.kwargs)
        return (inputs.q_fp8, cache, inputs.weights, None, lens, kv_indices, inputs.max_model_len), kwargs

    def _schedule_needs_cuda(self) -> bool:
        try:
            source = inspect.getsource(self.function(disc.SCHEDULE))
        except (OSError, TypeError):
            return True
        return bool(re.search(r"""device\s*=\s*['"]cuda['"]""", source))

    def _schedule(self, inputs: IndexerInputs):
        return self.function(disc.SCHEDULE)(inputs.batch, inputs.next_n, inputs.context_lens, inputs.max_model_len)

    def _call(self, path: str, inputs: IndexerInputs, out: torch.Tensor, dry: bool = False) -> list[dict]:
        wrapper = self._wrapper_for[path]
        fn = self.function(wrapper)
        args, kwargs = self._arguments(path, inputs)
        args = args[:3] + (out,) + args[4:]
        if self._loaded is not None:
            self._loaded.standins.fp8 = inputs.q_fp8.dtype
        self.log.dry = dry
        self.log.launches.clear()
        try:
            if self.variant == "varctx":
                kwargs["VarCtxSchedule"] = self._schedule(inputs)
            tolerated = launch.call(fn, args, kwargs, self.log)
        finally:
            self.log.dry = False
        if tolerated is not None:
            tolerated["why"] = ("a dry run launches nothing" if dry else
                                "under TRITON_INTERPRET=1 a Triton launch returns None; the kernel had run")
            self.tolerated[(tolerated["wrapper"], tolerated["line"], dry)] = tolerated
        return [{k: v for k, v in r.items() if k in ("kernel", "grid", "constexprs")} for r in self.log.launches]

    def launch_config(self, path: str, inputs: IndexerInputs) -> dict:
        """What this build's wrapper launches for ``inputs`` (kernel, grid, ChunkK, SplitKV ...), found
        by running the wrapper with its kernels replaced by recorders (nothing is computed)."""
        out = torch.empty((inputs.heads, inputs.rows, inputs.max_model_len) if path == "stage1"
                          else (inputs.rows, inputs.max_model_len), device=inputs.device)
        found = {}
        for record in self._call(path, inputs, out, dry=True):
            found.setdefault(record["kernel"], []).append(record)
        return found

    def unsupported(self, path: str, inputs: IndexerInputs) -> str | None:
        if path not in self.paths:
            if path == "preshuffle" and self.variant == "paged" and self.function(disc.FUSED) is not None:
                return f"this aiter build ({self.build.version}) has no preshuffle path (no Preshuffle argument)"
            return f"this aiter build ({self.build.version}) exposes no {path} wrapper for the {self.variant} variant"
        dev = inputs.device.type
        if self.caller is not None and not self.caller.takes(path, inputs.block_size):
            return (f"{self.caller.who} takes the {path} path at block_size {self.caller.paths[path]} only, "
                    f"not {inputs.block_size} ({self.caller.source})")
        if getattr(inputs, "logits_dtype", torch.float32) not in self.logits_dtypes:
            return f"aiter's wrappers write float32 logits, not {inputs.logits_dtype}"
        if getattr(inputs, "context_lens_2d", None) is not None:
            return "aiter's wrappers take 1-D context_lens, no per-row context lengths (2-D context_lens)"
        if path == "preshuffle":
            if self.mode != "rocm":
                return f"{NOT_RUNNABLE}: aiter's preshuffle path is a Gluon kernel for AMD GPUs"
            if inputs.kv_cache_preshuffled is None:
                return "preshuffle needs block_size and head_dim multiples of 16"
        if dev not in self.device_types:
            return f"aiter on ROCm runs on the GPU only, not on {dev}"
        if self.variant == "varctx" and dev != "cuda" and self._schedule_needs_cuda():
            return (f"{NOT_RUNNABLE}: this build's {disc.SCHEDULE} allocates its result on 'cuda' (hard-coded), "
                    "so the varctx variant needs a GPU")
        if self.mode == "files":
            if dev == "cpu" and not self._loaded.interpreted:
                return ("aiter's Triton kernels run on the CPU only under the Triton interpreter: set "
                        "TRITON_INTERPRET=1 in the environment before Triton is imported (e.g. "
                        "TRITON_INTERPRET=1 python -m parity run --backend aiter ...)")
            if dev == "cuda" and not self._loaded.interpreted and inputs.q_fp8.dtype == torch.float8_e4m3fnuz:
                return f"{NOT_RUNNABLE}: e4m3fnuz is an AMD fp8 format; Triton on NVIDIA has no such type"
        try:
            self.launch_config(path, inputs)
        except Exception as exc:  # noqa: BLE001 - anything but a rejection: the real call reports it as an error
            return self._rejection(path, inputs, exc)
        return None

    def _rejection(self, path: str, inputs: IndexerInputs, exc: Exception) -> str | None:
        """The wrapper's own refusal of these inputs, found in a dry run, as a skip reason."""
        if isinstance(exc, (AssertionError, ZeroDivisionError)):
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            line = (frame.line or "").strip()
            if isinstance(exc, AssertionError):
                return (f"this aiter build's {path} wrapper rejects these inputs (heads={inputs.heads}, "
                        f"block_size={inputs.block_size}): {line or exc}")
            if frame.filename != self.function(self._wrapper_for[path]).__code__.co_filename:
                return None  # not the wrapper's own arithmetic
            # Newer stage1 wrappers divide by heads // ChunkQ before asserting heads % ChunkQ == 0.
            return (f"this aiter build's {path} wrapper rejects these inputs (heads={inputs.heads}, "
                    f"block_size={inputs.block_size}): ZeroDivisionError at `{line}` "
                    f"({frame.name}, line {frame.lineno})")
        return None

    def run(self, path: str, inputs: IndexerInputs, out: torch.Tensor) -> None:
        self._call(path, inputs, out)

    # -- the report --
    def _probe(self) -> dict:
        """The launch configuration of every path at the DSv3.2 shape, or why there is none."""
        if self.mode == "rocm" or self.variant == "varctx":
            return {}
        case = PROBE_CASE
        if self.caller is not None and self.caller.paths.get("fused") == "1":
            case = dataclasses.replace(case, block_size=1)  # the block size it takes the fused path at
        inputs, found = build_inputs(case, "cpu"), {"case": case.id}
        for path in self.paths:
            if path == "preshuffle":
                continue
            try:
                found[path] = self.launch_config(path, inputs)
            except Exception as exc:
                found[path] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        return found

    def describe(self) -> dict:
        b, lay = self.build, self.layout
        info = {"name": self.name, "variant": self.variant, "origin": str(b.package_dir), "found_by": b.found_by,
                "version": b.version, "version_source": b.version_source, "mode": self.mode,
                "paths": list(self.paths),
                "wrappers": {w: str(inspect.signature(self.function(w))) for w in sorted(set(self._wrapper_for.values()))
                             if self.function(w) is not None},
                "wrapper_files": [str(p.relative_to(b.root)) for p in lay.wrapper_files],
                "kernel_files": [str(p.relative_to(b.root)) for p in lay.kernel_files],
                "kernels": sorted(lay.kernels)}
        if self.variant == "ragged":
            info["contract"] = RAGGED_CONTRACT
        if self.caller is not None:
            info["caller"] = dataclasses.asdict(self.caller)
        if self._loaded is not None:
            info["triton_interpreter"] = self._loaded.interpreted
            info["launch_probe"] = self._probe()
            info["stand_ins"] = self._loaded.standins.report(self._loaded.imported)
            info["imports_answered"] = self._loaded.imported
            gluon = sorted(n for n in lay.kernels if "gluon" in n)
            if gluon:
                info["gluon"] = {"found": gluon, "status": NOT_RUNNABLE,
                                 **({"load_error": self._loaded.gluon_error} if self._loaded.gluon_error else {})}
            per_token = [w for p, w in self._wrapper_for.items() if p in self.paths and p != "preshuffle"
                         and self.variant == "paged" and not self._block_aware(w)]
            if per_token:
                info["cache_mapping"] = (f"{', '.join(sorted(set(per_token)))} address the cache per token "
                                         "(block_size 1, kv_indices of token slots); block_size > 1 caches are "
                                         "re-laid out per token before the call")
            if self.log.dropped:
                info["dropped_launch_options"] = {k: {"value": v, "why": "an option of Triton's AMD backend; "
                                                      "Triton for this GPU rejects it"} for k, v in self.log.dropped.items()}
        if self.tolerated:
            info["tolerated_after_launch"] = list(self.tolerated.values())
        return info
