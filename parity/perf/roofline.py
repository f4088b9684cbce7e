"""The benchmark's roofline: a byte floor and a compute floor, both from rates measured in the same run.

* byte floor = bytes a kernel of the path must move / copy bandwidth (``parity.perf.timing.copy_bandwidth``);
* compute floor = fp8 products a kernel of the path must do / dense fp8 matrix throughput, measured here
  with the vendor GEMM (``torch._scaled_mm``) or, where that is missing, a Triton ``tl.dot`` loop
  (``parity.kernels.fp8_matmul``);
* roofline = the larger of the two; ``x roof`` = time / roofline.

The throughput is measured, not read from a datasheet: a datasheet peak is a clock-boosted number no
kernel sustains, and the point of the floor is what this chip does in this run.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# Square products large enough to keep every SM busy for ~1 ms; the best of them is the rate.
CUDA_SIZES = (4096, 8192)
TRITON_CONFIGS = ((128, 128, 128, 8, 3), (128, 256, 128, 8, 3))  # block m, n, k, warps, stages


@dataclass(frozen=True)
class Roofline:
    """Microseconds of each floor; ``compute_us`` is None where no fp8 throughput was measured."""

    bytes_us: float
    compute_us: float | None

    @property
    def roof_us(self) -> float | None:
        return None if self.compute_us is None else max(self.bytes_us, self.compute_us)

    @property
    def bound(self) -> str | None:
        """Which floor binds: "bytes" or "compute" (ties go to bytes); None where compute is unknown."""
        if self.compute_us is None:
            return None
        return "compute" if self.compute_us > self.bytes_us else "bytes"

    def x_roof(self, us: float) -> float | None:
        return None if self.roof_us is None else us / self.roof_us


def roofline(nbytes: int, flops: int, gbps: float, tflops: float | None) -> Roofline:
    """Floors of a kernel that moves ``nbytes`` and does ``flops`` at ``gbps`` GB/s and ``tflops`` TFLOP/s."""
    if gbps <= 0:
        raise ValueError(f"gbps must be > 0, got {gbps}")
    if tflops is not None and tflops <= 0:
        raise ValueError(f"tflops must be > 0 or None, got {tflops}")
    return Roofline(bytes_us=nbytes / (gbps * 1e3),
                    compute_us=None if tflops is None else flops / (tflops * 1e6))


@dataclass(frozen=True)
class Throughput:
    tflops: float | None
    method: str  # what was timed, or why nothing was


def _fp8_dtype():
    """e4m3fn, or e4m3fnuz on a ROCm device whose matrix unit takes only that flavour (MI300)."""
    if getattr(torch.version, "hip", None):
        arch = getattr(torch.cuda.get_device_properties(0), "gcnArchName", "")
        if "gfx94" in arch:
            return torch.float8_e4m3fnuz
    return torch.float8_e4m3fn


def _operands(n: int, device, dtype):
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=gen).to(dtype)
    b_nk = torch.randn(n, n, device=device, generator=gen).to(dtype)
    return a, b_nk


def scaled_mm_tflops(device, time_ms, sizes=CUDA_SIZES) -> Throughput:
    """Best TFLOP/s of ``torch._scaled_mm`` (per-tensor scales, bf16 out) over square ``sizes``, with and
    without fast accumulation (the faster one is the floor: a floor must not be above what is possible)."""
    if not hasattr(torch, "_scaled_mm"):
        raise RuntimeError("torch has no _scaled_mm")
    dtype = _fp8_dtype()
    one = torch.ones((), dtype=torch.float32, device=device)
    best, how = None, None
    for n in sizes:
        a, b_nk = _operands(n, device, dtype)
        b = b_nk.t()  # column-major (K, N), the layout _scaled_mm requires
        for fast in (False, True):
            def call(a=a, b=b, fast=fast):
                torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16, use_fast_accum=fast)

            tflops = 2 * n**3 / (time_ms(call, device) * 1e-3) / 1e12
            if best is None or tflops > best:
                best, how = tflops, f"torch._scaled_mm {str(dtype).split('.')[-1]} {n}x{n}x{n}, bf16 out" + \
                    (", fast accumulation" if fast else "")
        del a, b_nk, b
    return Throughput(best, how)


def triton_dot_tflops(device, time_ms, sizes=CUDA_SIZES, configs=TRITON_CONFIGS) -> Throughput:
    """Best TFLOP/s of the Triton fp8 ``tl.dot`` probe over ``sizes`` and tile ``configs``."""
    from parity.kernels.fp8_matmul import fp8_matmul

    dtype = _fp8_dtype()
    best, how, last = None, None, None
    for n in sizes:
        a, b_nk = _operands(n, device, dtype)
        c = torch.empty(n, n, dtype=torch.bfloat16, device=device)
        for bm, bn, bk, warps, stages in configs:
            def call(a=a, b_nk=b_nk, c=c, cfg=(bm, bn, bk, warps, stages)):
                fp8_matmul(a, b_nk, c, *cfg)

            try:
                tflops = 2 * n**3 / (time_ms(call, device) * 1e-3) / 1e12
            except Exception as exc:  # noqa: BLE001  (a tile config this device cannot hold)
                last = exc
                continue
            if best is None or tflops > best:
                best = tflops
                how = f"Triton tl.dot {str(dtype).split('.')[-1]} {n}x{n}x{n} (tile {bm}x{bn}x{bk}, {warps} warps)"
    if best is None:
        raise RuntimeError(f"no Triton fp8 dot config ran: {type(last).__name__}: {last}")
    return Throughput(best, how)


def fp8_tflops(device, time_ms) -> Throughput:
    """Dense fp8 matrix throughput of ``device``: ``torch._scaled_mm``, else the Triton probe, else None
    with the reasons. None on the CPU: it has no fp8 matrix unit (torch's CPU ``_scaled_mm`` is an
    emulation at well under 1 GFLOP/s), so a compute floor there would describe nothing."""
    if torch.device(device).type == "cpu":
        return Throughput(None, "n/a on the CPU (no fp8 matrix unit to measure)")
    reasons = []
    for probe in (scaled_mm_tflops, triton_dot_tflops):
        try:
            return probe(device, time_ms)
        except Exception as exc:  # noqa: BLE001  (the next probe, or an n/a compute floor)
            first = (str(exc).splitlines() or [""])[0][:120]
            reasons.append(f"{probe.__name__}: {type(exc).__name__}: {first}")
    return Throughput(None, "n/a: " + "; ".join(reasons))
