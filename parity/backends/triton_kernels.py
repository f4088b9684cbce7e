"""The project's own Triton kernels as a backend: paths stage1, fused and preshuffle on any Triton target
(NVIDIA, AMD) and on the CPU through the Triton interpreter (``TRITON_INTERPRET=1``)."""
from __future__ import annotations

import os

import torch

from parity.problem import layouts
from parity.backends.base import PATHS, SimpleBackend
from parity.problem.cases import IndexerInputs

# Triton picks interpreter or compiler when a kernel is decorated, i.e. when this module is imported.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

UPCASTS = {"fp8": 0, "fp16": 1, "fp32": 2, "decode": 3}
EXP_BIAS = {torch.float8_e4m3fn: 7, torch.float8_e4m3fnuz: 8}


def _fp8_dot_ok(device: torch.device, fp8: torch.dtype) -> bool:
    """Whether tl.dot takes this fp8 flavour natively on ``device``."""
    if device.type != "cuda":
        return False
    props = torch.cuda.get_device_properties(device)
    if torch.version.hip:
        arch = getattr(props, "gcnArchName", "")
        return (arch.startswith("gfx94") and fp8 == torch.float8_e4m3fnuz) or (
            arch.startswith("gfx95") and fp8 == torch.float8_e4m3fn)
    return (props.major, props.minor) >= (8, 9) and fp8 == torch.float8_e4m3fn


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


# A program loads q and the weights of each sequence it enters (16 KB at next_n 2, 64 heads): where the
# tiles would give each of ctas_per_sm programs per SM fewer than this many, one program fewer per SM
# runs faster. H100, next_n 2, ctx 8192, benchmark rotation (programs per SM 3 / 2 / 1, us): B4 (1.3 tiles
# per program at 3) 5.94 / 5.54 / 5.90; B8 (2.6) 8.86 / 8.40 / 9.46; B16 (5.2) 12.26 / 12.12 / 14.42.
MIN_TILES_PER_PROGRAM = 4


class TritonBackend(SimpleBackend):
    """Options (for tuning): ``block_t`` tokens per tile; ``programs`` (0: ``ctas_per_sm`` x multiprocessors,
    fewer where the compiled kernel does not fit that many per multiprocessor, one fewer per multiprocessor
    where each would get fewer than ``MIN_TILES_PER_PROGRAM`` tiles) persistent programs sharing
    the tiles evenly; ``num_warps``; ``num_stages`` key tiles buffered; ``flat`` copies a preshuffled tile that sits in one cache block as one contiguous run
    (else row by row); ``max_dot_n`` above which the speculative rows go through two dots; ``upcast``
    ('auto', 'fp8', 'fp16', 'fp32', 'decode')."""

    def __init__(self, block_t: int = 64, programs: int = 0, ctas_per_sm: int = 3, num_warps: int = 4,
                 num_stages: int = 3, flat: bool = True, max_dot_n: int = 128,
                 upcast: str = "auto"):
        import triton

        super().__init__(name="triton", info={"triton": triton.__version__, "interpreted": INTERPRETED},
                         logits_dtypes=(torch.float32, torch.bfloat16), per_row_lengths=True)
        if block_t < 16 or block_t & (block_t - 1):
            raise ValueError(f"block_t must be a power of two >= 16, got {block_t}")
        if programs < 0 or ctas_per_sm < 1:
            raise ValueError(f"programs must be >= 0 and ctas_per_sm >= 1, got {programs}, {ctas_per_sm}")
        if num_stages < 1:
            raise ValueError(f"num_stages must be >= 1, got {num_stages}")
        if upcast != "auto" and upcast not in UPCASTS:
            raise ValueError(f"upcast must be 'auto' or one of {sorted(UPCASTS)}, got {upcast!r}")
        self.opts = dict(block_t=block_t, programs=programs, ctas_per_sm=ctas_per_sm, num_warps=num_warps,
                         num_stages=num_stages, flat=flat, max_dot_n=max_dot_n,
                         upcast=upcast)
        self.info.update(self.opts)
        self.last_launch = None
        self._resident: dict = {}  # compiled-kernel key -> programs that fit on the device at once

    def unsupported(self, path: str, inputs: IndexerInputs) -> str | None:
        if inputs.device.type == "cpu" and not INTERPRETED:
            return ("triton runs on cpu only under TRITON_INTERPRET=1 "
                    "(set before parity.backends.triton_kernels is imported)")
        return super().unsupported(path, inputs)

    def _upcast(self, inputs: IndexerInputs) -> int:
        no_type = (inputs.q_fp8.dtype == torch.float8_e4m3fnuz and inputs.device.type == "cuda"
                   and not torch.version.hip)  # Triton on NVIDIA has no e4m3fnuz type at all
        if self.opts["upcast"] != "auto":
            asked = UPCASTS[self.opts["upcast"]]
            return UPCASTS["decode"] if no_type and asked in (UPCASTS["fp8"], UPCASTS["fp16"]) else asked
        if INTERPRETED:
            return UPCASTS["fp32"]
        if _fp8_dot_ok(inputs.device, inputs.q_fp8.dtype):
            return UPCASTS["fp8"]
        # Triton on NVIDIA has no e4m3fnuz type at all; elsewhere a native fp8 load may be missing too.
        return UPCASTS["decode"]

    def _launch(self, path: str, inputs: IndexerInputs, out: torch.Tensor):
        """The kernel's grid, positional arguments and constexprs for ``path`` on ``inputs`` into ``out``."""
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        B, n, H, D = inputs.q_fp8.shape
        rows, cols = B * n, inputs.max_model_len
        want = (H, rows, cols) if path == "stage1" else (rows, cols)
        if tuple(out.shape) != want or out.dtype not in self.logits_dtypes or out.stride(-1) != 1:
            raise ValueError(f"out must be float32 or bfloat16 {want} with stride(-1) == 1, got {out.dtype} "
                             f"{tuple(out.shape)} strides {out.stride()}")
        cache = inputs.kv_cache_preshuffled if path == "preshuffle" else inputs.kv_cache
        if cache is None:
            raise ValueError("preshuffle needs inputs.kv_cache_preshuffled (block_size a multiple of 16)")
        layouts.check_kv_cache(cache)
        bs = cache.shape[1]
        upcast = self._upcast(inputs)
        fp8 = inputs.q_fp8.dtype
        as_dtype = torch.uint8 if upcast == UPCASTS["decode"] else fp8
        flat = cache.contiguous().view(-1)
        keys = flat.view(as_dtype)
        scales = flat.view(torch.float32)  # scales of block p start at float index p*block_bytes/4 + bs*D/4
        q = inputs.q_fp8.contiguous().view(as_dtype)
        table = inputs.block_tables if inputs.block_tables.stride(-1) == 1 else inputs.block_tables.contiguous()
        o = self.opts
        tiles_per_seq = triton.cdiv(cols, o["block_t"])
        n_tiles = B * tiles_per_seq
        stage1 = path == "stage1"
        np2, block_h = triton.next_power_of_2(n), max(16, triton.next_power_of_2(H))
        consts = dict(
            NEXT_N=n, H=H, BLOCK_H=block_h, D=D, BS=bs, BLOCK_T=o["block_t"],
            STAGE1=stage1, PRESHUFFLE=path == "preshuffle", UPCAST=upcast,
            FLAT=o["flat"] and path == "preshuffle" and bs >= o["block_t"],
            EXP_BIAS=EXP_BIAS[fp8], NP=np2, NUM_STAGES=o["num_stages"],
            GROUPS=2 if np2 > 1 and np2 * block_h > o["max_dot_n"] else 1,
            PER_ROW=inputs.context_lens_2d is not None,
            num_warps=o["num_warps"], num_stages=o["num_stages"])
        key = (str(inputs.device), *consts.items())
        sms, per_sm = _num_sms(inputs.device), o["ctas_per_sm"]
        if per_sm > 1 and n_tiles < MIN_TILES_PER_PROGRAM * per_sm * sms:
            per_sm -= 1
        programs = o["programs"] or min(self._resident.get(key, per_sm * sms), per_sm * sms)
        args = (q, keys, scales, inputs.weights.contiguous(), inputs.context_lens,
                inputs.context_lens if inputs.context_lens_2d is None else inputs.context_lens_2d.contiguous(), table,
                out, table.stride(0), table.shape[1], out.stride(0) if stage1 else 0, out.stride(-2), cols,
                layouts.block_bytes(bs, D), bs * D // 4, n_tiles, tiles_per_seq)
        return (min(n_tiles, programs),), args, consts, key

    def run(self, path: str, inputs: IndexerInputs, out: torch.Tensor) -> None:
        from parity.kernels.paged_mqa_logits import paged_mqa_logits_kernel

        grid, args, consts, key = self._launch(path, inputs, out)
        self.last_launch = paged_mqa_logits_kernel[grid](*args, **consts)
        if not self.opts["programs"] and key not in self._resident:  # later calls: no more than fit at once
            fits = _programs_per_sm(self.last_launch, inputs.device) or self.opts["ctas_per_sm"]
            self._resident[key] = min(self.opts["ctas_per_sm"], fits) * _num_sms(inputs.device)

    def variant(self, path: str, inputs: IndexerInputs, out: torch.Tensor) -> tuple:
        """What Triton compiles one kernel for: the constexprs, and how it specializes the other arguments
        (tensors by dtype and 16-byte alignment, integers by == 1 and divisibility by 16)."""
        _, args, consts, _ = self._launch(path, inputs, out)
        spec = tuple((str(a.dtype), a.data_ptr() % 16 == 0) if isinstance(a, torch.Tensor) else (a == 1, a % 16 == 0)
                     for a in args)
        return tuple(consts.items()), spec

    def precompile(self, path: str, inputs: IndexerInputs, out: torch.Tensor) -> None:
        """Compile, without launching, the kernel that ``run`` would launch for these arguments (inside
        Triton's asynchronous compile mode the compile goes to that mode's executor). The interpreter
        compiles nothing."""
        if INTERPRETED:
            return
        from parity.kernels.paged_mqa_logits import paged_mqa_logits_kernel

        grid, args, consts, _ = self._launch(path, inputs, out)
        paged_mqa_logits_kernel.warmup(*args, grid=grid, **consts)


import triton  # noqa: E402  (after INTERPRETED is read; the kernel module imports it too)


def make_backend(**options) -> TritonBackend:
    return TritonBackend(**options)
