"""Launch configs of the project's Triton kernel, chosen per GPU so that nobody tunes by hand.

A config is looked up once per device and cached: first by the device's name among the GPUs it was measured
on (``MEASURED``: each entry says which run chose it), else from the device's properties (``by_properties``:
compute capability and peak memory bandwidth), else the base config. Options given to the backend override
the chosen values one by one; ``describe()`` shows the config in force and where it came from.

Keys: ``block_t`` tokens per tile; ``ctas_per_sm`` persistent programs per multiprocessor; ``num_warps``;
``num_stages`` key tiles buffered; ``flat`` (preshuffled tiles copied as one contiguous run); ``max_dot_n``
(speculative rows above this many columns go through two dots); ``tma`` (key tiles and scales copied by the
bulk tensor copy engine, NVIDIA compute capability 9.0 and later); ``pdl`` (programmatic dependent launch:
the kernel's launch overlaps the end of the kernel before it, which it waits for before reading anything).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

BASE = dict(block_t=64, ctas_per_sm=3, num_warps=4, num_stages=3, flat=True, max_dot_n=128, tma=False, pdl=False)
KEYS = tuple(BASE)


@dataclass(frozen=True)
class Measured:
    name: str  # a substring of torch.cuda.get_device_name(), matched case-insensitively
    config: dict  # differences from BASE
    evidence: str  # the run that chose it


# Longer (more specific) names first: "H100" must not catch an "H100 NVL" entry listed after it.
MEASURED: tuple[Measured, ...] = (
    Measured("H100", dict(), "H100 80GB HBM3, sweeps of sessions 6-8 (notes/triton-perf.md): the base config"),
)

# Bytes of key tiles in flight that one multiprocessor needs to keep memory busy grow with bandwidth per
# multiprocessor (Little's law at a fixed latency). The H100's 3.35 TB/s needed 3 stages (two tiles in
# flight per program); faster memory per multiprocessor gets more stages, at most what shared memory holds.
H100_GBPS_PER_SM = 3350 / 132


def peak_gbps(props) -> float | None:
    """Peak DRAM bandwidth from the device properties (clock in kHz, bus in bits, double data rate); None
    where torch does not report them."""
    clock, bus = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    return 2 * clock * 1e3 * bus / 8 / 1e9 if clock and bus else None


def by_properties(props, hip: bool) -> tuple[dict, str]:
    """A config from what the device reports, for GPUs no run has measured."""
    if hip or props.major < 9:
        return {}, f"compute capability {props.major}.{props.minor}{' (ROCm)' if hip else ''}: base config"
    gbps = peak_gbps(props)
    stages = BASE["num_stages"]
    if gbps:
        per_sm = gbps / props.multi_processor_count
        stages = min(6, max(3, round(BASE["num_stages"] * per_sm / H100_GBPS_PER_SM)))
    return (dict(tma=True, num_stages=stages),
            f"compute capability {props.major}.{props.minor}, peak memory "
            f"{'unknown' if gbps is None else f'{gbps:.0f} GB/s'}: bulk tensor copies, {stages} stages")


def lookup(name: str, props=None, hip: bool = False) -> tuple[dict, str]:
    """(config, source) for a device called ``name`` with ``props`` (torch device properties, or None)."""
    for m in MEASURED:
        if m.name.lower() in name.lower():
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
