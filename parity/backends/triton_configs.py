"""Launch configs of the project's Triton kernel, chosen per GPU so that nobody tunes by hand.

A config is looked up once per device and cached: first by the device's name among the GPUs it was measured
on (``MEASURED``: each entry says which run chose it), else from the device's properties (``by_properties``:
compute capability and peak memory bandwidth), else the base config. Options given to the backend override
the chosen values one by one; ``describe()`` shows the config in force and where it came from.
Configs are chosen from timings of the CUDA-graph replay of one call (a decode step's view); the bulk copies'
host descriptors add host time to each eager call (docs/h200-kernel-study.md).

Keys: ``block_t`` tokens per tile; ``ctas_per_sm`` persistent programs per multiprocessor; ``num_warps``;
``num_stages`` key tiles buffered; ``flat`` (preshuffled tiles copied as one contiguous run); ``max_dot_n``
(speculative rows above this many columns go through two dots); ``tma`` (key tiles and scales copied by the
bulk tensor copy engine, NVIDIA compute capability 9.0 and later); ``pdl`` (programmatic dependent launch:
the kernel's launch overlaps the end of the kernel before it, which it waits for before reading anything);
``maxnreg`` (a register cap per thread, NVIDIA); ``kernel`` (``portable``: the Triton kernel of every target;
``sm90``: the Gluon kernel for compute capability 9.0 on the calls it takes: its warp-specialized form,
``parity.kernels.paged_mqa_logits_sm90_ws``, where each program gets at least ``sm90_ws_min_tiles`` tiles
(next_n 1, 2 or 4), else its single-partition form, ``parity.kernels.paged_mqa_logits_sm90``, up to next_n
``sm90_max_next_n``, and the portable kernel on the others); ``sm90_ws_ctas_per_sm`` and ``sm90_ws_stages``
(the warp-specialized form's programs per multiprocessor and key slots at next_n <= 2; None: ``ctas_per_sm``
and ``num_stages``, which the other kernels take); ``sm90_wg4`` (the warp-specialized form's calls at next_n 2
and 4 as one program per multiprocessor of four compute warpgroups, one m64n128 product a tile over two rows,
``parity.kernels.paged_mqa_logits_sm90_wg4``; with ``balanced`` only, and from ``sm90_wg4_min_batch`` sequences
on); ``balanced`` (the fp8 kernels' programs split the tiles the batch really has, by context length, instead
of ``B x cdiv(max_model_len, block_t)``, which leaves most programs idle where a server passes its model's
max_model_len: on where it was timed, the H200); ``tma_min_tiles`` and ``tma_max_next_n`` (``tma`` only where
each program gets at least that many tiles and next_n is at most that: on the H200 bulk copies were slower with
2.6 tiles per program, B8-n2-ctx8192, and at next_n 4).
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import torch

BASE = dict(block_t=64, ctas_per_sm=3, num_warps=4, num_stages=3, flat=True, max_dot_n=128, tma=False, pdl=False,
            maxnreg=None, tma_min_tiles=8, tma_max_next_n=2, kernel="portable", sm90_max_next_n=4,
            sm90_ws_min_tiles=8, balanced=False, sm90_ws_ctas_per_sm=None, sm90_ws_stages=None, sm90_wg4=False,
            sm90_wg4_min_batch=0)
KEYS = tuple(BASE)


@dataclass(frozen=True)
class Measured:
    name: str  # a substring of torch.cuda.get_device_name(), matched case-insensitively
    config: dict  # differences from BASE
    evidence: str  # the run that chose it


# The H200's differences from BASE (the evidence: MEASURED below); other GPUs of compute capability 9.0 get them too
# (by_properties), so that the two cannot drift apart.
H200 = dict(tma=True, pdl=True, kernel="sm90", sm90_max_next_n=2, balanced=True, sm90_ws_ctas_per_sm=4,
            sm90_ws_stages=2, sm90_wg4=True, sm90_wg4_min_batch=64)

# Names are matched as whole words; more specific names first ("H100" would catch an "H100 NVL" listed after it).
MEASURED: tuple[Measured, ...] = (
    Measured("H200", H200,
             "python -m parity.perf.kernel_study, 2026-12-04 (docs/h200-kernel-study.md sections 10 and 12): "
             "the sm90 kernel at next_n <= 2, 3 stages, 3 programs per SM (B64-n2-ctx8192 27.0 -> 25.2 us, "
             "B128-n2-ctx8192 49.1 -> 46.6, B64-n2-ctx32768 92.7 -> 89.9, B8-n2 7.4 -> 7.1; B1-n2 3.2 -> 3.5), "
             "warp-specialized from 8 tiles per program (B64-n2-ctx8192 26.4 -> 24.7 us, B128-n2-ctx8192 "
             "48.8 -> 45.8, B64-n2-ctx32768 94.6 -> 86.7; below that 7.2-7.6 against 7.8-8.0 at B8-n2); "
             "the single-partition sm90 kernel not at next_n 4 (42.9 against the portable kernel's 45.0 us at "
             "B64, 349.3 against 337.1 at B128-n4-ctx32768); for the portable kernel bulk copies and "
             "programmatic launch (B64-n2-ctx8192 29.7 -> 27.6 us), the copy path at next_n 4 and under 8 tiles "
             "per program; the split by real tile counts (docs/h200-serving-schedule.md: at max_model_len "
             "163840, B8-n2-ctx8192 29.2 -> 8.4 us, B64-n2-ctx8192 93.8 -> 26.4, B128-n2-ctx4096 49.7 -> 25.7; "
             "where every context is max_model_len, 0.2-1.0 us more); the warp-specialized form at next_n 4 "
             "too, 2 programs per SM (docs/h200-serving-schedule.md section 6: B64-n4-ctx8192 46.9 -> 41.0 "
             "us, B128-n4-ctx32768 387.6 -> 331.4 against the portable kernel); the warp-specialized form at "
             "next_n <= 2 with 4 programs per SM and 2 key slots (docs/h200-gap-probes.md section 3: "
             "B128-n2-ctx8192 46.65 -> 45.82 us, B64-n2-ctx32768 87.92 -> 85.90, B64-n2-ctx8192 25.84 -> 25.58, "
             "the three serving shapes 0.6-3.6 % faster; the same direction in three earlier calls, "
             "docs/h200-serving-schedule.md section 4); that form's next_n 2 calls as one program per SM of four "
             "compute warpgroups, one m64n128 product a tile (docs/h200-four-warpgroups.md: two runs, "
             "B128-n2-ctx8192 44.9, 45.2 -> 44.1, 44.5 us, B64-n2-ctx32768 84.7, 87.3 -> 82.4, 84.0, "
             "B64-n2-ctx8192 24.7, 25.4 -> 24.7, 25.4); its next_n 4 calls too, two compute warpgroups a share "
             "reading the same key slots (docs/h200-four-warpgroups.md, next_n 4: two runs, B128-n4-ctx32768 "
             "305.4, 303.5 -> 291.9, 289.0 us, B64-n4-ctx32768 145.4, 145.3 -> 139.8, 140.8, B128-n4-ctx8192 "
             "74.6, 74.8 -> 71.6, 71.9, B64-n4-ctx8192 39.0, 39.7 -> 38.2, 38.9); that program from 64 "
             "sequences on (the same doc: at B8-n2-ctx8192-mml163840 it ran 9.1, 8.8 us against the "
             "warp-specialized form's 7.7, 7.4, at B64 of that shape 24.9, 25.0 against 24.9, 25.1)"),
    Measured("H100", dict(), "H100 80GB HBM3, the tuning sweeps of 2026-11-25 and 2026-11-26 (docs/performance.md, "
             "docs/design.md): the base config, the portable kernel; the Gluon kernels have not run on an H100 "
             "(ci/sm90-candidates.sh times the H200's config there)"),
)


def peak_gbps(props) -> float | None:
    """Peak DRAM bandwidth from the device properties (clock in kHz, bus in bits, double data rate); None
    where torch does not report them."""
    clock, bus = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    return 2 * clock * 1e3 * bus / 8 / 1e9 if clock and bus else None


def by_properties(props, hip: bool) -> tuple[dict, str]:
    """A config from what the device reports, for GPUs no run has measured: NVIDIA compute capability 9.0
    and later have the bulk tensor copy engine and programmatic dependent launch, and get the H200's
    choices (on the H200, 3 to 6 stages ran alike, so the stage count does not follow the bandwidth); 9.0
    exactly also the H200's kernel (its products are sm_90a instructions)."""
    gbps = peak_gbps(props)
    seen = f"compute capability {props.major}.{props.minor}{' (ROCm)' if hip else ''}, peak memory " + (
        "not reported" if gbps is None else f"{gbps:.0f} GB/s")
    if hip or props.major < 9:
        return {}, f"{seen}: base config"
    if (props.major, props.minor) == (9, 0):
        return (dict(H200),
                f"{seen}: the sm90 kernel up to next_n 2 (its warp-specialized form at 4 programs per SM), bulk "
                "tensor copies, programmatic launch and the split by real tile counts, as on the H200")
    return dict(tma=True, pdl=True), f"{seen}: bulk tensor copies and programmatic launch, as on the H200"


def lookup(name: str, props=None, hip: bool = False) -> tuple[dict, str]:
    """(config, source) for a device called ``name`` with ``props`` (torch device properties, or None)."""
    for m in MEASURED:  # whole words: "GH200" is not an H200
        if re.search(rf"\b{re.escape(m.name)}\b", name, re.IGNORECASE):
            return {**BASE, **m.config}, f"measured on {m.name}: {m.evidence}"
    if props is None:
        return dict(BASE), "base config"
    extra, why = by_properties(props, hip)
    return {**BASE, **extra}, why


@functools.lru_cache(maxsize=None)
def _for_cuda(index: int) -> tuple[tuple, str]:
    props = torch.cuda.get_device_properties(index)
    config, source = lookup(torch.cuda.get_device_name(index), props, bool(torch.version.hip))
    return tuple(config.items()), source


def config_for(device: torch.device, interpreted: bool) -> tuple[dict, str]:
    """The config for ``device``, cached per GPU. Off CUDA (the interpreter) the base config without the
    NVIDIA-only features."""
    if device.type != "cuda" or interpreted:
        return dict(BASE), "not a GPU: base config"
    items, source = _for_cuda(device.index if device.index is not None else torch.cuda.current_device())
    return dict(items), source
