"""The benchmark's rows as the Markdown table ``python -m parity bench`` prints: each backend x path x shape with
its time, its distance to the roofline and to the bare read, and its ratio to every other row of that shape in
the same run; and the FP4 rows' ratio to the fp8 row of the same size."""
from __future__ import annotations

from parity.perf.roofline import Throughput


def add_fp8_ratios(rows: list[dict]) -> None:
    """``vs_fp8`` of each timed mxfp4 row: the same backend and path on the fp8 shape of the same size, in the
    same run, over this row's time (> 1: the FP4 call is faster)."""
    fp8 = {(r["backend"], r["path"], r["shape"]): r["us"] for r in rows if "us" in r}
    for r in rows:
        if "us" in r and r["shape"].endswith("-mxfp4"):
            base = fp8.get((r["backend"], r["path"], r["shape"][: -len("-mxfp4")]))
            if base is not None:
                r["vs_fp8"] = base / r["us"]


def _f(value, fmt: str, none: str = "n/a") -> str:
    return none if value is None else format(value, fmt)


def markdown(rows: list[dict], bandwidth: float, device_name: str, launch_us: float | None = None,
             compute: Throughput | None = None) -> str:
    compute = compute or Throughput(None, "n/a (not measured)")
    peak = (f"dense fp8 matrix throughput {compute.tflops:.4g} TFLOP/s ({compute.method})" if compute.tflops
            else f"dense fp8 matrix throughput {compute.method}")
    prepared = sorted({r["backend"] for r in rows if r.get("prepared")})
    lines = [f"device: {device_name}; copy bandwidth {bandwidth:.0f} GB/s (read + write); {peak}", "",
             "us: CUDA-graph replay where the backend can be captured (marked g; the backends of a shape "
             "replayed in turn, round after round), else eager; eager us: triton.testing.do_bench median of single "
             "calls, host launch cost included"
             + (f"; {', '.join(prepared)}: run_prepared only (schedule, and any copy into the caller's buffer, "
                "outside the timed region)" if prepared else ""), "",
             "floor us: bytes over the copy bandwidth. flop us: 2*rows*ctx*H*D fp8 FLOP over the fp8 throughput. "
             "roof us: the larger of the two (b: bytes bind, c: compute binds); x roof = us / roof us. "
             "speedup vs: the other row's us over this row's (> 1: this row is faster), and in brackets the 10th-90th "
             "percentile of that ratio round by round, where both rows were graph-timed side by side. "
             "read us: the fastest of the bare kernels that read the same keys and scales through the same block "
             "table and compute nothing (parity/kernels/gather_read.py: loads through registers, and bulk tensor "
             "copies where the GPU has them; 2-4 programs per SM)"
             + (f"; an empty kernel costs {launch_us:.1f} us per launch in a graph" if launch_us else ""), "",
             "| backend | path | shape | us | eager us | GB/s | floor us | x floor | flop us | roof us | x roof "
             "| read us | x read | vs fp8 | speedup vs |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "us" not in r:
            lines.append(f"| {r['backend']} | {r['path']} | {r['shape']} | skipped: {r.get('skipped')} |||||||||||| ")
            continue
        g = "g" if r.get("timing") == "graph" else ""
        spread = r.get("speedup_range", {})
        vs = ", ".join(f"{k} {v:.2f}x" + (" ({:.2f}-{:.2f})".format(*spread[k]) if k in spread else "")
                       for k, v in r.get("speedup_vs", {}).items())
        read = f"{r['read_us']:.1f} | {r['x_read']:.2f}" if "read_us" in r else "- | -"
        bound = {"bytes": " b", "compute": " c"}.get(r.get("bound"), "")
        roof = "n/a" if r.get("roof_us") is None else f"{r['roof_us']:.1f}{bound}"
        lines.append(f"| {r['backend']} | {r['path']} | {r['shape']} | {r['us']:.1f}{g} | "
                     f"{r['eager_us']:.1f} | {r['gbps']:.1f} | {r['floor_us']:.1f} | {r['x_floor']:.2f} | "
                     f"{_f(r.get('flop_us'), '.1f')} | {roof} | {_f(r.get('x_roof'), '.2f')} | {read} | "
                     f"{_f(r.get('vs_fp8'), '.2f', '-')} | {vs} |")
    states = {(r["shape"], r["path"]): r["gpu_state"] for r in rows if r.get("gpu_state")}
    if states:
        lines += ["", "GPU after each shape and path was timed (nvidia-smi): " + "; ".join(
            f"{shape} {path} {st['sm_mhz']} MHz {st['power_w']:.0f} W {st['temp_c']} C"
            + (f" ({', '.join(st['clock_events'])})" if st.get("clock_events") else "")
            for (shape, path), st in states.items())]
    return "\n".join(lines)
