"""``python -m parity bench``: every backend x path on decode shapes, against a roofline measured in the same run.

byte floor = (fp8 keys + fp32 scales read once per sequence + logits written) / device copy bandwidth, the copy
bandwidth measured in the same run (a large device-to-device copy, bytes read + written). compute floor = the
fp8 products of the path (2 * B * next_n * context * H * D FLOP) / the dense fp8 matrix throughput measured in
the same run (``parity.perf.roofline``). roofline = the larger. Inputs rotate over several sets so that a shape
smaller than the L2 cache is not timed out of the cache.

Shapes come in two flavours (``--formats``): fp8 (132 bytes a key at D = 128) and mxfp4 (E2M1 with UE8M0 group
scales, 68 bytes: id suffix ``-mxfp4``); an mxfp4 row also gives its ratio to the same backend and path on the
fp8 shape of the same size in the same run (``vs fp8``, > 1: the FP4 call is faster). The compute floor stays
the fp8 one: a GPU without FP4 matrix units (the H200) has no faster product for FP4 inputs.

A backend may split its call in two (``prepare(path, inputs) -> handle``, then ``run_prepared(handle, out)``):
only ``run_prepared`` is timed, the way a server builds a schedule once per step and reuses it in every layer.
(``run_prepared(handle)`` without ``out`` is accepted too: a kernel that allocates its own output.)
"""
from __future__ import annotations

import argparse
import fnmatch
import inspect
import json
import math
import os
import re
import statistics
import sys
from dataclasses import dataclass

import torch

from parity.problem import layouts, mxfp4
from parity.backends import PATHS, load_backend
from parity.problem.cases import IndexerInputs
from parity.perf.bench_table import add_fp8_ratios, markdown
from parity.perf.roofline import Throughput, fp8_tflops, roofline
from parity.perf.timing import (copy_bandwidth, gpu_state, interleaved_graph_rounds, launch_floor_us,
                                paired_ratio_range, replayed_ms, time_ms)

HEADS, HEAD_DIM, BLOCK_SIZE = 64, 128, 64
FULL = [(B, n, ctx) for ctx in (4096, 8192, 32768, 131072) for B in (1, 8, 64, 128) for n in (1, 2, 4)]
QUICK = [(1, 2, 8192), (8, 2, 8192), (64, 1, 8192), (64, 2, 8192), (64, 4, 8192), (128, 2, 8192),
         (64, 2, 32768), (128, 4, 32768)]
CPU_SHAPES = [(2, 2, 512)]
# a server's call: the logits rows are max_model_len wide (163840 for DeepSeek-V3.2) and the contexts far
# shorter, so a kernel that splits B x max_model_len evenly leaves most programs idle (--shapes '*-mml*')
SERVING_MML = 163840
SERVING = [(8, 2, 8192), (64, 2, 8192), (128, 2, 4096)]
ROTATE_BYTES = 4 * 64 << 20  # several times any current L2
FORMATS = ("fp8", "mxfp4")


@dataclass(frozen=True)
class Shape:
    batch: int
    next_n: int
    context: int
    heads: int = HEADS
    head_dim: int = HEAD_DIM
    block_size: int = BLOCK_SIZE
    key_format: str = "fp8"  # FORMATS
    max_model_len: int = 0  # the logits rows' width; 0: the context

    @property
    def cols(self) -> int:
        return self.max_model_len or self.context

    @property
    def id(self) -> str:
        return (f"B{self.batch}-n{self.next_n}-ctx{self.context}" + (f"-mml{self.max_model_len}" if self.max_model_len
                else "") + ("" if self.key_format == "fp8" else "-mxfp4"))

    @property
    def token_bytes(self) -> int:
        """Key cache bytes of one token: 132 (fp8, D = 128), 68 (mxfp4)."""
        if self.key_format == "mxfp4":
            return mxfp4.token_bytes(self.head_dim)
        return self.head_dim + layouts.SCALE_BYTES

    def bytes_moved(self, path: str) -> int:
        """Fewest bytes a kernel of ``path`` must move: keys and scales once, every written logit once."""
        return self.batch * self.context * self.token_bytes + self.out_bytes(path)

    def flops(self, path: str) -> int:
        """fp8 multiply-adds (x2) a kernel of any path must do: every query row of every head against every
        key position of its sequence, at head_dim. stage1 does the same products and sums heads later. The
        causal rule spares rows ``i < next_n - 1`` at most ``next_n - 1`` positions, not counted."""
        return 2 * self.batch * self.next_n * self.context * self.heads * self.head_dim

    def out_bytes(self, path: str) -> int:
        return self.batch * self.next_n * self.context * 4 * (self.heads if path == "stage1" else 1)


def make_inputs(shape: Shape, device, fp8=torch.float8_e4m3fn, gen: torch.Generator | None = None) -> IndexerInputs:
    """Random decode inputs built on ``device`` (every sequence at full context, shuffled block ids)."""
    B, n, H, D, bs, ctx = shape.batch, shape.next_n, shape.heads, shape.head_dim, shape.block_size, shape.context
    per_seq = math.ceil(ctx / bs)
    num_blocks = B * per_seq
    if shape.key_format == "mxfp4":
        return _mxfp4_inputs(shape, device, num_blocks, per_seq, gen)
    cache = torch.empty(num_blocks, layouts.block_bytes(bs, D), dtype=torch.uint8, device=device)
    chunk = max(1, (1 << 24) // (bs * D))  # quantize 16M values at a time
    for lo in range(0, num_blocks, chunk):
        hi = min(num_blocks, lo + chunk)
        k = torch.randn((hi - lo) * bs, D, device=device, generator=gen)
        k_fp8, scales = layouts.quantize_per_token(k, fp8)
        cache[lo:hi] = layouts.pack_kv_cache(k_fp8, scales, bs).view(hi - lo, -1)
    perm = torch.randperm(num_blocks, device=device, generator=gen).to(torch.int32)
    q = (torch.randn(B, n, H, D, device=device, generator=gen) * 2).to(fp8)
    kv = cache.view(num_blocks, bs, 1, D + layouts.SCALE_BYTES)
    return IndexerInputs(
        q_fp8=q, kv_cache=kv, weights=torch.randn(B * n, H, device=device, generator=gen) * H**-0.5,
        context_lens=torch.full((B,), ctx, dtype=torch.int32, device=device),
        block_tables=perm.view(B, per_seq), max_model_len=shape.cols,
        kv_cache_preshuffled=layouts.preshuffle_kv_cache(kv))


def _mxfp4_inputs(shape: Shape, device, num_blocks: int, per_seq: int, gen) -> IndexerInputs:
    """MXFP4 decode inputs of random bytes and scales (``mxfp4.random_cache``: no quantizer pass)."""
    B, n, H, D, bs, ctx = shape.batch, shape.next_n, shape.heads, shape.head_dim, shape.block_size, shape.context
    perm = torch.randperm(num_blocks, device=device, generator=gen).to(torch.int32)
    q = torch.randint(0, 256, (B, n, H, D // 2), device=device, generator=gen, dtype=torch.int32).to(torch.uint8)
    return IndexerInputs(
        q_fp8=q, kv_cache=mxfp4.random_cache(num_blocks, bs, D, device, gen),
        weights=(torch.randn(B * n, H, device=device, generator=gen) * H**-0.5).bfloat16().float(),
        context_lens=torch.full((B,), ctx, dtype=torch.int32, device=device), block_tables=perm.view(B, per_seq),
        max_model_len=shape.cols, key_format="mxfp4", q_sf=mxfp4.random_words((B, n, H), device, gen))


def timed_call(backend, path: str, sets: list, outs: list):
    """``call(i)`` running ``path`` on set i, and whether it is the prepared half only. With
    ``prepare``/``run_prepared``, every set is prepared here, before any timing; ``run_prepared`` is given
    ``out`` where it takes it (a backend whose kernel allocates its own output, DeepGEMM's, copies it into
    ``out`` in a step of its own that is not timed)."""
    prepare, run_prepared = getattr(backend, "prepare", None), getattr(backend, "run_prepared", None)
    if not (callable(prepare) and callable(run_prepared)):
        return (lambda i: backend.run(path, sets[i], outs[i])), False
    handles = [prepare(path, s) for s in sets]
    try:
        takes_out = len(inspect.signature(run_prepared).parameters) >= 2
    except (TypeError, ValueError):
        takes_out = True
    if takes_out:
        return (lambda i: run_prepared(handles[i], outs[i])), True
    return (lambda i: run_prepared(handles[i])), True


# The bare read's forms and program counts timed for the read floor: on an H200 (2026-12-04,
# ci/kernel-study.sh) bulk copies 3 deep at 3-4 programs per multiprocessor were the fastest at every quick
# shape, at the copy floor from B64-n2-ctx32768 on, and faster than DeepGEMM's kernel at all of them.
READ_FORMS = [("copy", dict(num_stages=3), (2, 3, 4)), ("tma", dict(tma=True, num_stages=3), (3, 4))]


def read_floor_us(sets: list[IndexerInputs], device) -> float | None:
    """Microseconds of the fastest bare read of every key byte and scale through the block table
    (``parity.kernels.gather_read``) among ``READ_FORMS`` (loads through registers; bulk tensor copies where
    the GPU has them), rotating over ``sets``. None off CUDA, where the block shape does not suit that
    kernel, or where it fails."""
    if torch.device(device).type != "cuda":
        return None
    from parity.kernels.gather_read import gather_read, tma_ok

    props = torch.cuda.get_device_properties(device)
    bulk = props.major >= 9 and not torch.version.hip and tma_ok(sets[0].kv_cache)
    sms = props.multi_processor_count
    out = torch.zeros(4 * sms, dtype=torch.int32, device=device)
    best = None
    for form, kw, per_sms in READ_FORMS:
        if kw.get("tma") and not bulk:
            continue
        for per_sm in per_sms:
            try:
                ms = replayed_ms(lambda i: gather_read(sets[i % len(sets)].kv_cache, sets[i % len(sets)].block_tables,
                                                       out, per_sm * sms, **kw), device, calls=len(sets))
            except Exception:  # noqa: BLE001  (a reference row that cannot run must not end the benchmark)
                continue
            best = ms if best is None else min(best, ms)
    return None if best is None else best * 1e3


def _fits(shape: Shape, path: str, device, sets: int) -> bool:
    if torch.device(device).type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    per_set = shape.bytes_moved("fused") * 2 + shape.out_bytes(path)  # plain + preshuffled cache
    return sets * per_set + shape.out_bytes(path) * 3 < 0.7 * free  # torch path temporaries


def rotation_sets(shape: Shape, path: str) -> int:
    """How many input sets a timing of ``shape`` rotates over: together several times any current L2 (at
    most 8), so that no call finds its keys in the cache the call before left there."""
    in_bytes = shape.bytes_moved("fused") - shape.out_bytes("fused")
    return max(1, min(8, math.ceil(ROTATE_BYTES / (in_bytes + shape.out_bytes(path)))))


def bench_shape(shape: Shape, backends: dict, paths, device, bandwidth: float, graph: bool,
                warmup_ms: float, rep_ms: float, tflops: float | None = None, reps: int = 20) -> list[dict]:
    """Rows of ``backends`` on ``shape``; ``bandwidth`` GB/s and ``tflops`` (None: unknown) give the floors;
    ``reps`` rounds of graph replays (``interleaved_graph_rounds``)."""
    rows = []
    read_us = None
    # the read floor rotates over the most sets any path gets (the fused path's; stage1's outputs are H times
    # larger, so it gets fewer): a graph of one call pays its launch and ramp once per call, and the floor
    # came out 24 % high at B64-n2-ctx8192 on an H200 (2026-12-04) when it took stage1's one set
    read_path = max(paths, key=lambda p: rotation_sets(shape, p))
    for path in paths:
        n_sets = rotation_sets(shape, path)
        if not _fits(shape, path, device, n_sets):
            n_sets = 1
            if not _fits(shape, path, device, 1):
                rows += [{"backend": name, "path": path, "shape": shape.id, "skipped": "memory"} for name in backends]
                continue
        gen = torch.Generator(device=device).manual_seed(hash(shape.id) & 0xFFFF)
        sets = [make_inputs(shape, device, gen=gen) for _ in range(n_sets)]
        lead = (shape.heads,) if path == "stage1" else ()
        outs = [torch.full((*lead, shape.batch * shape.next_n, shape.cols), float("-inf"), device=device)
                for _ in sets]
        roof = roofline(shape.bytes_moved(path), shape.flops(path), bandwidth, tflops)
        if path == read_path and graph:
            read_us = read_floor_us(sets, device)
        ran = {}  # name -> (row, call, eager ms)
        for name, backend in backends.items():
            row = {"backend": name, "path": path, "shape": shape.id, "sets": n_sets}
            reason = backend.unsupported(path, sets[0])
            if reason:
                rows.append({**row, "skipped": reason})
                continue
            try:
                call, prepared = timed_call(backend, path, sets, outs)
                it = iter(range(1 << 62))
                eager = time_ms(lambda: call(next(it) % n_sets), device, warmup_ms, rep_ms)
            except Exception as exc:  # noqa: BLE001  (one failing backend must not end the run)
                msg = f"{type(exc).__name__}: {exc}".splitlines()
                rows.append({**row, "skipped": f"error: {' '.join(msg[:1] + msg[-1:])}"[:200]})
                continue
            row["prepared"] = prepared
            rows.append(row)  # filled in once every backend of the path has been graph-timed
            ran[name] = (row, call, eager)
        rounds = (interleaved_graph_rounds({n: c for n, (_, c, _) in ran.items()}, n_sets, device, reps) if graph
                  else {})
        for name, (row, _, eager) in ran.items():
            g = statistics.median(rounds[name]) if rounds.get(name) else None
            ms = eager if g is None else g
            if g is not None:
                row["rounds_us"] = [t * 1e3 for t in rounds[name]]
            us = ms * 1e3
            row.update(us=us, timing="eager" if g is None else "graph", eager_us=eager * 1e3,
                       gbps=shape.bytes_moved(path) / (ms * 1e-3) / 1e9, floor_us=roof.bytes_us,
                       x_floor=us / roof.bytes_us, pct_floor=100 * roof.bytes_us / us,
                       flop_us=roof.compute_us, roof_us=roof.roof_us, bound=roof.bound, x_roof=roof.x_roof(us))
        state = gpu_state(device) if graph else None
        for row, _, _ in ran.values():
            row["gpu_state"] = state
        ran = rounds = None  # a prepared call holds its handles, and they the sets: let them go before the next path
        del sets, outs
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    timed = [r for r in rows if "us" in r]
    if read_us:
        for r in timed:
            r.update(read_us=read_us, x_read=r["us"] / read_us)
    for r in timed:  # ratio to every other backend on the same shape and path: > 1 means r is faster
        others = [o for o in timed if o["path"] == r["path"] and o["backend"] != r["backend"]]
        r["speedup_vs"] = {o["backend"]: o["us"] / r["us"] for o in others}
        spread = {o["backend"]: paired_ratio_range(o.get("rounds_us"), r.get("rounds_us")) for o in others}
        r["speedup_range"] = {k: list(v) for k, v in spread.items() if v is not None}
    return rows


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m parity bench", description=__doc__.splitlines()[0])
    p.add_argument("--backend", action="append", default=None,
                   help="registered name, pkg.mod:factory or file.py[:factory] (repeatable; default torch, triton)")
    p.add_argument("--path", action="append", choices=PATHS, default=None, help="repeatable; default all")
    p.add_argument("--quick", action="store_true", help=f"{len(QUICK)} shapes around B=64, next_n=2, ctx=8192 "
                   f"(without: {len(FULL)} shapes, and {len(SERVING)} with max_model_len {SERVING_MML})")
    p.add_argument("--shapes", default=None,
                   help="comma-separated glob patterns on shape ids, e.g. 'B64-n2-ctx8192,B*-n1-*'")
    p.add_argument("--formats", default="fp8",
                   help="comma-separated key formats of the shapes: fp8, mxfp4 (default fp8; 'fp8,mxfp4' times both "
                        "and gives each mxfp4 row its ratio to fp8)")
    p.add_argument("--device", default=None, help="default: cuda when present, else cpu (tiny shape)")
    p.add_argument("--no-graph", action="store_true", help="eager timing only (no CUDA-graph replay)")
    p.add_argument("--fp8-tflops", type=float, default=None,
                   help="dense fp8 matrix throughput to use for the compute floor instead of measuring it")
    p.add_argument("--reps", type=int, default=20,
                   help="rounds of CUDA-graph replays per shape and path, each replaying every backend once (default "
                        "20; the speedup column's per-round percentiles need 5)")
    p.add_argument("--warmup-ms", type=float, default=25.0)
    p.add_argument("--rep-ms", type=float, default=100.0)
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    return p.parse_args(argv)


def select_shapes(args, device) -> list[Shape]:
    formats = [f.strip() for f in (getattr(args, "formats", None) or "fp8").split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"--formats takes a comma-separated list of {', '.join(FORMATS)}, got {args.formats!r}")
    base = CPU_SHAPES if torch.device(device).type == "cpu" and not args.shapes else (QUICK if args.quick else FULL)
    flavoured = lambda sizes, fmts=formats: [Shape(*s, key_format=f) for s in sizes for f in fmts]  # noqa: E731
    served = lambda fmts: [Shape(*s, key_format=f, max_model_len=SERVING_MML)  # noqa: E731
                           for s in SERVING for f in fmts]
    serving = served(formats)
    if args.shapes:
        pats = [s.strip() for s in args.shapes.split(",") if s.strip()]
        universe = flavoured(dict.fromkeys(FULL + QUICK + CPU_SHAPES), FORMATS) + served(FORMATS)
        chosen = [s for s in universe if any(fnmatch.fnmatch(s.id, p) for p in pats)]
        if not chosen:
            raise ValueError(f"--shapes {args.shapes!r} matches no shape id (ids look like "
                             f"{Shape(*FULL[0]).id} or {Shape(*FULL[0], key_format='mxfp4').id}; patterns are globs)")
        return [s for s in flavoured(base) + serving if s in chosen] or chosen
    return flavoured(base) + (serving if base is FULL else [])


def shape_from_id(text: str) -> Shape:
    """The fp8 shape a plain id names (``B64-n2-ctx8192``), or ValueError saying what an id looks like."""
    m = re.fullmatch(r"B(\d+)-n(\d+)-ctx(\d+)", text)
    if m is None or min(map(int, m.groups())) < 1:
        raise ValueError(f"expected B<batch>-n<next_n>-ctx<context>, each >= 1, e.g. B64-n2-ctx8192; got {text!r}")
    return Shape(*map(int, m.groups()))


def option_error(args) -> str | None:
    """The first bad timing option, named: a negative or infinite budget would time nothing or never end."""
    if args.reps < 1:
        return f"--reps must be >= 1 round, got {args.reps}"
    if not (math.isfinite(args.warmup_ms) and args.warmup_ms >= 0):
        return f"--warmup-ms must be a finite number >= 0 of milliseconds, got {args.warmup_ms}"
    if not (math.isfinite(args.rep_ms) and args.rep_ms > 0):
        return f"--rep-ms must be a finite number > 0 of milliseconds, got {args.rep_ms}"
    if args.fp8_tflops is not None and not (math.isfinite(args.fp8_tflops) and args.fp8_tflops > 0):
        return f"--fp8-tflops must be a finite number > 0, got {args.fp8_tflops}"
    return None


def main(argv: list[str] | None = None, check_device=None, check_output=None) -> int:
    """``check_device(value)`` and ``check_output(flag, path)`` are the CLI's rules (parity.cli), passed in so
    that the benchmark does not import the runner: each returns why a value cannot be used, or None."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    why = option_error(args)
    if why is None and check_device is not None:
        why = check_device(device)
    if why is None and args.out is not None and check_output is not None:  # before the run, not after it
        why = check_output("--out", args.out)
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    try:
        shapes = select_shapes(args, device)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    specs = args.backend or ["torch", "triton"]
    backends, unavailable = {}, {}
    for spec in specs:
        try:
            backends[spec] = load_backend(spec)
        except Exception as exc:  # noqa: BLE001
            unavailable[spec] = f"{type(exc).__name__}: {exc}"
            print(f"backend {spec!r} unavailable: {unavailable[spec]}", file=sys.stderr)
    if not backends:
        print("error: no backend could be loaded", file=sys.stderr)
        return 2
    dev_name = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else "cpu"
    bandwidth = copy_bandwidth(device)
    compute = (Throughput(args.fp8_tflops, "given with --fp8-tflops") if args.fp8_tflops is not None
               else fp8_tflops(device, time_ms))
    launch_us = launch_floor_us(device) if not args.no_graph else None
    rows = []
    for shape in shapes:
        rows += bench_shape(shape, backends, args.path or list(PATHS), device, bandwidth, not args.no_graph,
                            args.warmup_ms, args.rep_ms, compute.tflops, args.reps)
    add_fp8_ratios(rows)
    print(markdown(rows, bandwidth, dev_name, launch_us, compute))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"device": dev_name, "copy_gbps": bandwidth, "launch_us": launch_us,
                       "fp8_tflops": compute.tflops, "fp8_method": compute.method,
                       "torch": torch.__version__,
                       "backends": {k: getattr(b, "describe", dict)() for k, b in backends.items()},
                       "unavailable": unavailable, "rows": rows}, f, indent=1)
    if unavailable and args.backend:  # asked for by name: a table without it is not what was asked for
        print(f"error: requested backend(s) not benchmarked, unavailable: {', '.join(unavailable)}", file=sys.stderr)
        return 2
    return 0 if any("us" in r for r in rows) else 1
