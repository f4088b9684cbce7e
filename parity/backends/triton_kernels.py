"""The project's own Triton kernels as a backend: paths stage1, fused and preshuffle on any Triton target
(NVIDIA, AMD) and on the CPU through the Triton interpreter (``TRITON_INTERPRET=1``). MXFP4 inputs go to
the FP4 kernel (stage1 and fused; ``parity.kernels.paged_mqa_logits_fp4``), which dequantizes in registers
to bf16 on a GPU and to fp32 under the interpreter."""
from __future__ import annotations

import os

import torch
import triton

from parity.backends import triton_configs, triton_fp4, triton_portable, triton_sm90
from parity.problem import layouts
from parity.backends.triton_portable import UPCASTS
from parity.backends.base import PATHS, SimpleBackend
from parity.backends.triton_sm90 import SM90_PROBES, Prepared, sm90_form
from parity.problem.cases import IndexerInputs

# Triton picks interpreter or compiler when a kernel is decorated, i.e. when this module is imported.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

KERNELS = ("portable", "sm90")
# the options a caller may fix, each None or: (a test of the value, what it must be)
OPTION_RULES = {
    "block_t": (lambda v: v >= 16 and not v & (v - 1), "a power of two >= 16 tokens"),
    "ctas_per_sm": (lambda v: v >= 1, ">= 1 programs per multiprocessor"),
    "num_warps": (lambda v: v >= 1 and not v & (v - 1), "a power of two"),
    "num_stages": (lambda v: v >= 1, ">= 1 key tiles"),
    "maxnreg": (lambda v: 24 <= v <= 255, "24-255 registers per thread"),
    "sm90_ws_ctas_per_sm": (lambda v: v >= 1, ">= 1 programs per multiprocessor"),
    "sm90_ws_stages": (lambda v: v >= 2, ">= 2 key slots"),
    "sm90_ws_min_tiles": (lambda v: v >= 0, ">= 0 tiles per program"),
    "sm90_wg4_min_batch": (lambda v: v >= 0, ">= 0 sequences"),
}


def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 2


def _programs_per_sm(kernel, device: torch.device) -> int | None:
    """How many programs of a compiled kernel one multiprocessor holds at once (registers, shared memory,
    warps); None where unknown (interpreter, or a Triton that does not say). A persistent grid larger than
    this runs a second, mostly empty wave: 4 programs per SM of a 151-register kernel ran 1.24x slower
    than 3 on an H100."""
    regs, shared = getattr(kernel, "n_regs", None), getattr(getattr(kernel, "metadata", None), "shared", None)
    warps = getattr(getattr(kernel, "metadata", None), "num_warps", None)
    if device.type != "cuda" or not regs or shared is None or not warps:
        return None
    props = torch.cuda.get_device_properties(device)
    warp_size = getattr(props, "warp_size", 32)
    per_warp = -(-regs * warp_size // 256) * 256  # registers are allocated per warp in units of 256
    by_regs = getattr(props, "regs_per_multiprocessor", 65536) // (per_warp * warps)
    smem = getattr(props, "shared_memory_per_multiprocessor", 0)
    by_smem = smem // (shared + 1024) if smem else by_regs  # 1 KB per block is reserved on NVIDIA
    by_warps = getattr(props, "max_threads_per_multi_processor", 2048) // (warps * warp_size)
    return max(1, min(by_regs, by_smem, by_warps))


def _sm90_unfit(path: str, inputs: IndexerInputs, cache: torch.Tensor, block_t: int) -> str | None:
    """Why the Hopper kernel (``parity.kernels.paged_mqa_logits_sm90``) cannot run this call, or None. It
    takes what it was checked on, on an H200 (full and stress level, 2026-12-04): the fused path on the
    plain layout, e4m3fn, 64 heads of 128, block_size a multiple of its 64-token tile, next_n 1, 2 or 4, on
    a GPU of compute capability 9.0 exactly (its products are sm_90a instructions)."""
    B, n, H, D = inputs.q_fp8.shape
    dev = inputs.device
    if INTERPRETED or dev.type != "cuda" or torch.version.hip:
        return "not an NVIDIA GPU"
    if torch.cuda.get_device_capability(dev) != (9, 0):
        return f"compute capability {torch.cuda.get_device_capability(dev)}, not (9, 0)"
    checks = {"the fused path": path == "fused", "fp8 e4m3fn": inputs.q_fp8.dtype == torch.float8_e4m3fn,
              "64 heads": H == 64, "head_dim 128": D == 128, "block_t 64": block_t == 64,
              "block_size a multiple of 64": cache.shape[1] % 64 == 0, "next_n 1, 2 or 4": n in (1, 2, 4),
              "a 16-byte aligned cache": cache.data_ptr() % 16 == 0,
              # its schedule counts tiles in 32 bits
              "fewer than 2**31 key tiles": B * -(-inputs.max_model_len // block_t) < 2**31}
    failed = [k for k, ok in checks.items() if not ok]
    if failed:
        return "needs " + ", ".join(failed)
    try:
        import triton.experimental.gluon.language.nvidia.hopper  # noqa: F401
    except ImportError as e:
        return f"this Triton has no Gluon for Hopper ({e})"
    return None


class TritonBackend(SimpleBackend):
    """Options, each None (the default) to take the value chosen for the GPU (``triton_configs``): ``block_t`` tokens
    per tile; ``ctas_per_sm`` persistent programs per multiprocessor (fewer where the compiled kernel does not fit
    that many, one fewer where each would get fewer than ``triton_portable.MIN_TILES_PER_PROGRAM`` tiles);
    ``num_warps``; ``num_stages`` key tiles buffered; ``flat`` copies a preshuffled tile that sits in one cache
    block as one contiguous run (else row by row); ``max_dot_n`` above which the speculative rows go through two
    dots; ``tma`` key tiles by the bulk tensor copy engine where the block shape allows it, next_n is at most
    ``tma_max_next_n`` and each program gets at least ``tma_min_tiles`` tiles; ``pdl`` programmatic dependent launch
    (NVIDIA compute capability 9.0 and later); ``maxnreg`` a cap on registers per thread (NVIDIA, fused path with
    one dot per tile), so that more programs fit per multiprocessor; ``kernel`` 'portable' or 'sm90' (the Gluon
    kernel for Hopper on the calls it takes, ``_sm90_unfit``: warp-specialized where each program gets at least
    ``sm90_ws_min_tiles`` tiles, else single-partition up to next_n ``sm90_max_next_n``); ``sm90_ws_ctas_per_sm``
    and ``sm90_ws_stages`` the warp-specialized form's programs per multiprocessor and key slots at next_n <= 2
    (None: ``ctas_per_sm``, ``num_stages``); ``sm90_wg4`` that form's next_n 2 and 4 calls as one program per
    multiprocessor of four compute warpgroups (``paged_mqa_logits_sm90_wg4``; with ``balanced``, no ``probe``, and
    from ``sm90_wg4_min_batch`` sequences on); ``balanced`` the
    fp8 kernels' programs share the tiles the batch really has, by context length (the portable kernel: batches up
    to ``triton_portable.MAX_BALANCED_BATCH``; the sm90 kernels: any batch). ``programs`` (0: from ``ctas_per_sm``)
    fixes the number of programs; ``upcast`` ('auto', 'fp8', 'fp16', 'fp32', 'decode'); ``probe`` (one of
    ``SM90_PROBES``, for measurement only: the sm90 kernels then write wrong logits on purpose, and a call that
    would run the portable kernel is refused)."""

    def __init__(self, block_t: int | None = None, programs: int = 0, ctas_per_sm: int | None = None,
                 num_warps: int | None = None, num_stages: int | None = None, flat: bool | None = None,
                 max_dot_n: int | None = None, upcast: str = "auto", tma: bool | None = None,
                 pdl: bool | None = None, maxnreg: int | None = None, tma_min_tiles: int | None = None,
                 tma_max_next_n: int | None = None, kernel: str | None = None,
                 sm90_max_next_n: int | None = None, sm90_ws_min_tiles: int | None = None,
                 balanced: bool | None = None, sm90_ws_ctas_per_sm: int | None = None,
                 sm90_ws_stages: int | None = None, sm90_wg4: bool | None = None,
                 sm90_wg4_min_batch: int | None = None, probe: str | None = None):
        super().__init__(name="triton" if kernel is None else f"triton:{kernel}",
                         info={"triton": triton.__version__, "interpreted": INTERPRETED},
                         logits_dtypes=(torch.float32, torch.bfloat16), per_row_lengths=True,
                         key_formats=("fp8", "mxfp4"))
        given = dict(block_t=block_t, ctas_per_sm=ctas_per_sm, num_warps=num_warps, num_stages=num_stages,
                     flat=flat, max_dot_n=max_dot_n, tma=tma, pdl=pdl, maxnreg=maxnreg, tma_min_tiles=tma_min_tiles,
                     tma_max_next_n=tma_max_next_n, kernel=kernel, sm90_max_next_n=sm90_max_next_n,
                     sm90_ws_min_tiles=sm90_ws_min_tiles, balanced=balanced, sm90_ws_ctas_per_sm=sm90_ws_ctas_per_sm,
                     sm90_ws_stages=sm90_ws_stages, sm90_wg4=sm90_wg4, sm90_wg4_min_batch=sm90_wg4_min_batch)
        for name, (ok, expected) in OPTION_RULES.items():
            if given[name] is not None and not ok(given[name]):
                raise ValueError(f"{name} must be None or {expected}, got {given[name]}")
        if programs < 0:
            raise ValueError(f"programs must be >= 0 (0: from ctas_per_sm), got {programs}")
        if kernel is not None and kernel not in KERNELS:
            raise ValueError(f"kernel must be None or one of {KERNELS}, got {kernel!r}")
        if probe is not None and probe not in SM90_PROBES:
            raise ValueError(f"probe must be None or one of {SM90_PROBES}, got {probe!r}")
        if upcast != "auto" and upcast not in UPCASTS:
            raise ValueError(f"upcast must be 'auto' or one of {sorted(UPCASTS)}, got {upcast!r}")
        # what the caller fixed; None: the GPU's config decides
        self.given = given  # what the caller fixed; None: the GPU's config decides
        self.opts = dict(programs=programs, upcast=upcast, probe=probe)
        self.info.update({k: v for k, v in self.given.items() if v is not None}, **self.opts)
        self.last_launch = None
        self._resident: dict = {}  # compiled-kernel key -> programs that fit on the device at once

    def config(self, device: torch.device) -> tuple[dict, str]:
        """The launch config in force on ``device``: the GPU's (cached per device) with the given options."""
        chosen, source = triton_configs.config_for(device, INTERPRETED)
        fixed = {k: v for k, v in self.given.items() if v is not None}
        if fixed:
            source += f"; given: {', '.join(f'{k}={v}' for k, v in fixed.items())}"
        return {**chosen, **fixed}, source

    def describe(self) -> dict:
        """The options, and the config in force on the current device (the GPU when there is one)."""
        device = torch.device("cuda") if torch.cuda.is_available() and not INTERPRETED else torch.device("cpu")
        config, source = self.config(device)
        return {**super().describe(), "config": config, "config_source": source}

    def unsupported(self, path: str, inputs: IndexerInputs) -> str | None:
        if inputs.device.type == "cpu" and not INTERPRETED:
            return ("triton runs on cpu only under TRITON_INTERPRET=1 "
                    "(set before parity.backends.triton_kernels is imported)")
        return super().unsupported(path, inputs)

    def _check_out(self, path: str, inputs: IndexerInputs, out: torch.Tensor) -> None:
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        rows, cols, H = inputs.rows, inputs.max_model_len, inputs.heads
        want = (H, rows, cols) if path == "stage1" else (rows, cols)
        if tuple(out.shape) != want or out.dtype not in self.logits_dtypes or out.stride(-1) != 1:
            raise ValueError(f"out must be float32 or bfloat16 {want} with stride(-1) == 1, got {out.dtype} "
                             f"{tuple(out.shape)} strides {out.stride()}")

    def _grid(self, o: dict, key, n_tiles: int, device: torch.device) -> int:
        """Programs of a launch with config ``o``: ``triton_portable.ctas_per_sm`` per multiprocessor, never more
        than fit, or ``programs`` when given."""
        sms = _num_sms(device)
        per_sm = triton_portable.ctas_per_sm(o, n_tiles, sms)
        programs = o["programs"] or min(self._resident.get(key, per_sm * sms), per_sm * sms)
        return min(n_tiles, programs)

    def _grid_of(self, device: torch.device):
        """:meth:`_grid` on ``device``, as the launch modules take it: ``grid_of(o, key, n_tiles)``."""
        return lambda o, key, n_tiles: self._grid(o, key, n_tiles, device)

    def _refuse_probe(self, why: str) -> None:
        """A probe is set where the sm90 kernels do not run (``why``): it would measure nothing."""
        if self.opts["probe"]:
            raise ValueError(f"probe={self.opts['probe']!r} measures the sm90 kernels; {why}")

    def _sm90_plan(self, path: str, inputs: IndexerInputs):
        """(config, form, cache) where a call runs an sm90 kernel (``sm90_form``), else (config, None, cache)."""
        B, n = inputs.q_fp8.shape[:2]
        cache = inputs.kv_cache_preshuffled if path == "preshuffle" else inputs.kv_cache
        if cache is None:
            raise ValueError("preshuffle needs inputs.kv_cache_preshuffled (block_size a multiple of 16)")
        layouts.check_kv_cache(cache)
        o, _ = self.config(inputs.device)
        o.update(self.opts)
        form = None
        if o["kernel"] == "sm90" and _sm90_unfit(path, inputs, cache, o["block_t"]) is None:
            form = sm90_form(n, B * triton.cdiv(inputs.max_model_len, o["block_t"]), o, _num_sms(inputs.device), B)
        return o, form, cache

    def _launch(self, path: str, inputs: IndexerInputs, out: torch.Tensor, prepared: Prepared | None = None,
                plan: tuple | None = None):
        """The kernel's grid, positional arguments and constexprs for ``path`` on ``inputs`` into ``out`` (with
        the schedule of ``prepared``, see :meth:`prepare`; ``plan``: :meth:`_sm90_plan`'s, where made already)."""
        self._check_out(path, inputs, out)
        if inputs.key_format == "mxfp4":
            self._refuse_probe("an mxfp4 cache runs the FP4 kernel")
            o, _ = self.config(inputs.device)
            return triton_fp4.fp4_launch(path, inputs, out, {**o, **self.opts}, INTERPRETED,
                                         self._grid_of(inputs.device))
        n = inputs.q_fp8.shape[1]
        o, form, cache = plan or self._sm90_plan(path, inputs)
        if form is not None:
            return self._launch_sm90(inputs, out, cache, o, form, prepared)
        self._refuse_probe(f"this call runs the portable kernel (kernel={o['kernel']!r}, path {path!r}, next_n {n})")
        upcast = triton_portable.upcast_code(self.opts["upcast"], inputs, INTERPRETED)
        return triton_portable.portable_launch(path, inputs, out, cache, o, upcast, INTERPRETED,
                                               _num_sms(inputs.device), self._grid_of(inputs.device))

    def _launch_sm90(self, inputs: IndexerInputs, out: torch.Tensor, cache: torch.Tensor, o: dict, form: str,
                     prepared: Prepared | None = None):
        """The Hopper kernel's launch in ``form`` (``triton_sm90.sm90_launch``), its grid from :meth:`_grid`."""
        return triton_sm90.sm90_launch(inputs, out, cache, o, form, prepared,
                                       self._grid_of(inputs.device))

    def run(self, path: str, inputs: IndexerInputs, out: torch.Tensor) -> None:
        # planned once (the config, the form, the descriptors); the wg4 form reads its shares from a prepared
        # schedule only: two launches, the schedule's first
        plan = self._sm90_plan(path, inputs) if inputs.key_format == "fp8" else None
        prepared = None
        if plan is not None and plan[1] == "wg4":
            self._check_out(path, inputs, out)  # a bad buffer is refused before the schedule's launch
            prepared = self._prepare(path, inputs, plan)
        kernel, grid, args, consts, key = self._launch(path, inputs, out, prepared, plan)
        self.last_launch = kernel[grid](*args, **consts)
        self._record_fit(prepared.key if prepared is not None else key, inputs.device)

    def _record_fit(self, key, device: torch.device) -> None:
        """After a launch: how many programs of that kernel fit the GPU at once, under ``key``, so that later
        launches take no more. What fits, not what the config asked: each launch takes the smaller of the two
        with the programs per SM of its own form (the warp-specialized form's are not ``ctas_per_sm``)."""
        if not self.opts["programs"] and key is not None and key not in self._resident:
            fits = _programs_per_sm(self.last_launch, device)
            if fits:
                self._resident[key] = fits * _num_sms(device)

    def prepare(self, path: str, inputs: IndexerInputs) -> Prepared:
        """A call split in two, as a server makes it (``parity.perf.bench`` times ``run_prepared`` only): where
        the call runs an sm90 kernel, each program's share of it computed once (``triton_sm90.schedule_once``)
        for the grid the handle pins; else the handle only holds the call. Lengths changed after ``prepare``
        need a new handle (as DeepGEMM's schedule metadata, once per decode step); so does an input replaced by
        another tensor (the handle's launch is planned once for the tensors it holds: values written into them
        are read, see ``triton_sm90.launch_reusable``)."""
        if inputs.key_format != "fp8":  # the FP4 kernel has no schedule to prepare
            return Prepared(path, inputs)
        return self._prepare(path, inputs, self._sm90_plan(path, inputs))

    def _prepare(self, path: str, inputs: IndexerInputs, plan: tuple) -> Prepared:
        """:meth:`prepare` with :meth:`_sm90_plan`'s ``plan`` made already (no form under the interpreter)."""
        o, form, cache = plan
        if form is None:
            return Prepared(path, inputs)
        programs, key = triton_sm90.sm90_grid(inputs, cache, o, form,
                                              self._grid_of(inputs.device))
        shares = programs * triton_sm90.shares_per_program(form, inputs.q_fp8.shape[1])
        return Prepared(path, inputs, triton_sm90.schedule_once(inputs, o["block_t"], bool(o["balanced"]), shares),
                        programs, key)

    def run_prepared(self, prepared: Prepared, out: torch.Tensor) -> None:
        # a server calls one handle into one buffer again and again: the launch (checks, descriptors,
        # constexprs) is planned once where the plan copied no tensor; planning each call took longer than
        # the kernel (eager, H200: 103 against 15 us a call at B8-n2-ctx8192, 153 against 51 at B128-n2)
        target = triton_sm90.buffer_key(out)
        key = prepared.key  # the sm90 kernels' handles: the key of the launch that chose the pinned grid
        if prepared.launch is not None and prepared.launch[0] == target:
            kernel, grid, args, consts = prepared.launch[1]
        else:
            kernel, grid, args, consts, launch_key = self._launch(prepared.path, prepared.inputs, out, prepared)
            if prepared.schedule is not None and triton_sm90.launch_reusable(prepared.inputs, prepared.path):
                prepared.launch = (target, (kernel, grid, args, consts))
            if key is None:  # the portable kernel's handle pins nothing: its next grid is chosen as run's
                key = launch_key
        self.last_launch = kernel[grid](*args, **consts)
        # what fits, as run records it: without it every later portable call asked for ctas_per_sm programs per
        # SM where fewer fit and ran a second, mostly empty wave (H100, next_n 4, 204 registers: 2 of 3 fit; the
        # benchmark times prepared calls: B64-n4-ctx8192 1.25x, B128-n4-ctx32768 1.22x the time of the tree
        # before prepared calls, ci/bench-against-tree.sh, 2026-12-05)
        self._record_fit(key, prepared.inputs.device)

    def variant(self, path: str, inputs: IndexerInputs, out: torch.Tensor) -> tuple:
        """What Triton compiles one kernel for: the constexprs, and how it specializes the other arguments
        (tensors by dtype and 16-byte alignment, integers by == 1 and divisibility by 16)."""
        _, _, args, consts, _ = self._launch(path, inputs, out)
        spec = tuple((str(a.dtype), a.data_ptr() % 16 == 0) if isinstance(a, torch.Tensor)
                     else (a == 1, a % 16 == 0) if isinstance(a, int)
                     else (type(a).__name__, tuple(getattr(a, "block_shape", ()))) for a in args)
        return tuple(consts.items()), spec

    def precompile(self, path: str, inputs: IndexerInputs, out: torch.Tensor) -> None:
        """Compile, without launching, the kernel that ``run`` would launch for these arguments (inside
        Triton's asynchronous compile mode the compile goes to that mode's executor). The interpreter
        compiles nothing."""
        if INTERPRETED:
            return
        kernel, grid, args, consts, _ = self._launch(path, inputs, out)
        kernel.warmup(*args, grid=grid, **consts)



def make_backend(**options) -> TritonBackend:
    return TritonBackend(**options)


def make_portable_backend(**options) -> TritonBackend:
    """The portable kernel whatever the GPU's config says (``triton:portable``)."""
    return TritonBackend(**{**options, "kernel": "portable"})


# What the named sm90 backends take from the H200's config whatever the GPU's own entry says: the sm90 kernels'
# keys (programs per SM, key slots, forms) and the split by real tile counts that the four-warpgroup program
# needs. The H200 is the only GPU they were measured on; on an H100, whose entry is the base config, the
# four-warpgroup program with the base config's 3 key slots asked 237 KB of shared memory (232 KB fit) and
# did not launch (2026-12-05). Bulk copies and programmatic launch of the portable kernel are left to the GPU's
# entry: the named backends fall back to that kernel on the calls the sm90 kernel does not take.
SM90_FROM_H200 = {k: v for k, v in triton_configs.H200.items() if k.startswith("sm90_") or k == "balanced"}


def make_sm90_backend(**options) -> TritonBackend:
    """The Hopper kernel on the calls it takes (``triton:sm90``), configured as on the H200
    (``SM90_FROM_H200``); the portable kernel on the others."""
    return TritonBackend(**{**SM90_FROM_H200, "sm90_max_next_n": 4, **options, "kernel": "sm90"})


def make_sm90_ws_backend(**options) -> TritonBackend:
    """The Hopper kernel's warp-specialized form at every call it takes, whatever its size (``triton:sm90-ws``),
    at next_n 2 and 4 too (not the four-warpgroup program, ``sm90_wg4``); the portable kernel on the calls the sm90
    kernel does not take. Configured as on the H200 (``SM90_FROM_H200``)."""
    return TritonBackend(**{**SM90_FROM_H200, "sm90_max_next_n": 4, "sm90_ws_min_tiles": 0, "sm90_wg4": False,
                            **options, "kernel": "sm90"})


def make_sm90_wg4_backend(**options) -> TritonBackend:
    """The warp-specialized form's four-warpgroup program at every next_n 2 and 4 call the sm90 kernel takes,
    whatever its size (``triton:sm90-wg4``, for parity runs: the H200's config gives it the calls of at least
    ``sm90_ws_min_tiles`` tiles per program only); the warp-specialized form at next_n 1. Configured as on the H200
    (``SM90_FROM_H200``)."""
    return TritonBackend(**{**SM90_FROM_H200, "sm90_max_next_n": 4, "sm90_ws_min_tiles": 0, **options,
                            "sm90_wg4": True, "sm90_wg4_min_batch": 0, "kernel": "sm90"})
