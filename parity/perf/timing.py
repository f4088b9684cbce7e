"""How the benchmark times a call on a GPU, and what it records about the GPU while it does: the median of
single calls (``time_ms``), CUDA-graph replays of a call over rotating input sets (``graph_time_ms``), the
backends of a shape replayed in turn (``interleaved_graph_rounds``), the copy bandwidth the byte floor
divides by, the launch of an empty kernel in a graph, and the clock, power and temperature after each timing
(``gpu_state``). On the CPU: a host clock around synchronized calls, and None for what only a GPU has."""
from __future__ import annotations

import statistics
import time

import torch


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device, warmup_ms: float = 25, rep_ms: float = 100) -> float:
    """Median milliseconds of ``fn``: triton.testing.do_bench on a GPU (events, L2 flushed between
    calls), a host clock around synchronized calls on the CPU."""
    if torch.device(device).type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    fn()
    times = []
    deadline = time.perf_counter() + rep_ms / 1e3
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 50):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def copy_bandwidth(device, nbytes: int = 1 << 30) -> float:
    """GB/s of a large device-to-device copy, counting bytes read plus bytes written."""
    if torch.device(device).type == "cpu":
        nbytes = 1 << 26
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def graph_time_ms(call, n_sets: int, device, reps: int = 20) -> float | None:
    """Median ms per call replayed from a CUDA graph that runs ``call(i)`` once for every rotating set i:
    device time without the host's launch cost (decode steps run as graphs). None where capture fails."""
    rounds = interleaved_graph_rounds({"call": call}, n_sets, device, reps)["call"]
    return statistics.median(rounds) if rounds else None


def interleaved_graph_rounds(calls: dict, n_sets: int, device, reps: int = 20) -> dict:
    """Ms per call of each of ``calls`` (name -> ``call(i)``) in each of ``reps`` rounds, in round order: all
    captured first, then replayed in turn, the order rotating each round. A drift of the GPU's clocks or
    temperature while a shape is timed falls on every backend alike instead of on whichever came last, and
    the i-th times of two names were taken side by side (their ratio a round: ``paired_ratio_range``). A name
    whose capture fails, or every name off CUDA, maps to None."""
    if torch.device(device).type != "cuda":
        return {name: None for name in calls}
    graphs = {}
    for name, call in calls.items():
        try:
            graphs[name] = _capture(call, device, n_sets)
        except Exception:  # noqa: BLE001  (a backend that syncs on the host cannot be captured)
            graphs[name] = None
    live = [name for name, g in graphs.items() if g is not None]
    times: dict = {name: [] for name in live}
    for r in range(reps):
        for k in range(len(live)):
            name = live[(r + k) % len(live)]
            times[name].append(_replay_ms(graphs[name], device) / n_sets)
    return {name: times.get(name) for name in calls}


MIN_PAIRED_ROUNDS = 5  # fewer rounds give no 10th-90th percentile worth printing


def paired_ratio_range(num: list | None, den: list | None) -> tuple[float, float] | None:
    """The 10th and 90th percentiles of ``num[i] / den[i]`` over the rounds of ``interleaved_graph_rounds``
    (two backends timed side by side in each): how far a ratio of medians moves from round to round within
    one run. None with fewer than ``MIN_PAIRED_ROUNDS`` rounds, or rounds that do not pair."""
    if not num or not den or len(num) != len(den) or len(num) < MIN_PAIRED_ROUNDS:
        return None
    cuts = statistics.quantiles([a / b for a, b in zip(num, den)], n=10, method="inclusive")
    return cuts[0], cuts[-1]


def _capture(fn, device, calls: int):
    """A CUDA graph of ``fn(i)`` for i in range(calls), after one run of them outside it, replayed once."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for i in range(calls):
            fn(i)
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(i)
    graph.replay()
    _sync(device)
    return graph


def _replay_ms(graph, device) -> float:
    """Milliseconds of one replay of ``graph``, by events around it."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def replayed_ms(fn, device, calls: int, reps: int = 20) -> float:
    """Median ms per call of ``fn(i)`` for i in range(calls), replayed from one CUDA graph: ``graph_time_ms``
    for a reference row that says why it could not be timed (a failed capture raises here)."""
    graph = _capture(fn, device, calls)
    return statistics.median(_replay_ms(graph, device) / calls for _ in range(reps))


# nvidia-smi's clocks_event_reasons.active bits, by name (nvidia-smi --help-query-gpu)
CLOCK_EVENTS = {0x1: "idle", 0x2: "applications clocks", 0x4: "power cap", 0x8: "hw slowdown", 0x10: "sync boost",
                0x20: "sw thermal", 0x40: "hw thermal", 0x80: "hw power brake", 0x100: "display clocks"}


def gpu_state(device) -> dict | None:
    """The SM clock (MHz), board power (W), temperature (C) and what holds the clock down (``clock_events``,
    the names of nvidia-smi's active clock event reasons; absent where this nvidia-smi does not report them)
    of ``device`` now, or None (no NVIDIA GPU, no nvidia-smi, or output it does not parse). Recorded after
    each path of a shape is timed: a row timed while the GPU ran at a lower clock than the others shows it
    (on an H200, 2026-12-04, the last shape of a benchmark read 13-34 % slower than the same kernels in a
    process of their own, and 1530 MHz after it where every other row read 1920-1980)."""
    import subprocess

    dev = torch.device(device)
    if dev.type != "cuda" or torch.version.hip:
        return None
    fields = "clocks.sm,power.draw,temperature.gpu"
    for query in (fields + ",clocks_event_reasons.active", fields):  # older drivers lack the last field
        try:
            out = subprocess.run(["nvidia-smi", f"--id={dev.index or 0}", f"--query-gpu={query}",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10)
            values = [v.strip() for v in out.stdout.strip().splitlines()[0].split(",")]
            state = {"sm_mhz": int(float(values[0])), "power_w": float(values[1]), "temp_c": int(float(values[2]))}
            if len(values) > 3:
                bits = int(values[3], 16)
                state["clock_events"] = [name for bit, name in CLOCK_EVENTS.items() if bits & bit]
            return state
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            continue
    return None


def launch_floor_us(device) -> float | None:
    """Microseconds per launch of an empty Triton kernel (grid 3 x SMs) in a CUDA graph: what every kernel
    in a graph pays before it moves a byte. None off CUDA."""
    if torch.device(device).type != "cuda":
        return None
    from parity.kernels.gather_read import empty_kernel

    grid = 3 * torch.cuda.get_device_properties(device).multi_processor_count
    buf = torch.zeros(grid, dtype=torch.int32, device=device)
    return replayed_ms(lambda i: empty_kernel[(grid,)](buf), device, calls=4) * 1e3
