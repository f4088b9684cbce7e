"""Where a parity run's time goes, per process (xdist workers included): a pytest plugin for
profiling runs only (``-p parity_profile`` with ``ci/profiling`` on PYTHONPATH; ci/profile-xdist.sh).

At the end of the session each process appends one JSON line to ``$PARITY_PROFILE_LOG``: seconds from
the process's start to its first test, the tests' own time, and inside it the time spent compiling
Triton kernels (Triton's compilation listener: how many compiles, how many were cache hits), calling
backends, computing references, building inputs and checking; then each compile's specialization
(constants and attributes) as lines of kind "compile", to count the variants a level needs. Every process,
the xdist controller too, also logs the wall-clock times of its phases ("events": configure, collection,
first and last test, xdist's worker set-up and shut-down as the controller sees them, and the process's
exit), to put the processes of a run on one timeline."""
from __future__ import annotations

import collections
import functools
import json
import os
import time

import atexit

import pytest

T_IMPORT = time.time()
EVENTS: dict[str, float] = {"plugin_import": T_IMPORT}


CPU: dict[str, float] = {}  # the process's CPU seconds (all its threads) at each event


def _event(name: str) -> None:
    if name not in EVENTS:
        EVENTS[name] = time.time()
        CPU[name] = time.process_time()


def _log(line: dict) -> None:
    if path := os.environ.get("PARITY_PROFILE_LOG"):
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")


atexit.register(lambda: _log({"kind": "exit", "pid": os.getpid(), "t": time.time()}))


def _process_start() -> float:
    # /proc/self/stat field 22: start time in clock ticks after boot.
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            up = float(f.read().split()[0])
        return time.time() - up + ticks / os.sysconf("SC_CLK_TCK")
    except OSError:
        return T_IMPORT


class Profile:
    def __init__(self):
        self.sums = collections.Counter()
        self.counts = collections.Counter()
        self.compiles = []
        self.first_test = None
        self.last_test = None
        self.tests = 0

    def timed(self, name, fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.sums[name] += time.perf_counter() - t0
                self.counts[name] += 1
        return wrapper

    def on_compile(self, *, src=None, metadata=None, times=None, cache_hit=False, **_):
        total = times.total / 1e6 if times is not None else 0.0
        self.sums["compile_hit" if cache_hit else "compile"] += total
        self.counts["compile_hit" if cache_hit else "compile"] += 1
        self.compiles.append({"name": (metadata or {}).get("name"), "hit": cache_hit, "s": round(total, 3),
                              "constants": repr(getattr(src, "constants", None))[:600],
                              "attrs": repr(getattr(src, "attrs", None))[:600]})


PROFILE = Profile()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    _event("configure_first")


@pytest.hookimpl(trylast=True)
def pytest_configure(config):  # noqa: F811  (the last configure hook: the parity plugin's imports are done)
    _event("configure_last")
    if not os.environ.get("PYTEST_XDIST_WORKER") and (getattr(config.option, "dist", "no") or "no") != "no":
        return  # the xdist controller runs no cell: importing parity (torch) here would delay its workers
    try:
        import triton

        triton.knobs.compilation.listener = PROFILE.on_compile
    except Exception as exc:  # an older Triton: no listener, only the wrappers below
        PROFILE.sums["no_listener"] = 0.0
        PROFILE.compiles.append({"error": repr(exc)})
    if raw := os.environ.get("PARITY_PROFILE_TORCH_THREADS"):  # torch's threads apart from the compile pool's
        import torch

        torch.set_num_threads(int(raw))
    from parity.judge import checks, topk
    from parity.run import harness
    from parity.problem import refcache
    from parity.reports import render

    harness._call = PROFILE.timed("backend_call", harness._call)
    harness.precompile = PROFILE.timed("precompile", harness.precompile)
    harness.build_inputs = PROFILE.timed("build_inputs", harness.build_inputs)
    refcache.cached = PROFILE.timed("reference", refcache.cached)
    for mod, names in ((checks, ("check_out_of_bounds", "check_mask", "check_values", "check_determinism")),
                       (topk, ("topk_reference", "compare_topk")), (render, ("buffer_map",))):
        for n in names:
            setattr(mod, n, PROFILE.timed(n, getattr(mod, n)))


@pytest.hookimpl(tryfirst=True)
def pytest_collection(session):
    _event("collection_start")


def pytest_collection_finish(session):
    _event("collection_finish")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_setupnodes(config, specs):
    _event("xdist_setupnodes")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodeready(node):
    EVENTS[f"ready_{node.gateway.id}"] = time.time()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    EVENTS[f"collected_{node.gateway.id}"] = time.time()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    EVENTS[f"down_{node.gateway.id}"] = time.time()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    t0 = time.time()
    PROFILE.first_test = PROFILE.first_test or t0
    _event("first_test")
    yield
    PROFILE.last_test = time.time()
    PROFILE.sums["tests"] += PROFILE.last_test - t0
    PROFILE.tests += 1


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session):
    """The end of a run (seen: 0.8 s in every process) with cProfile on: the top of it goes to the log."""
    import cProfile
    import io
    import pstats

    _event("sessionfinish")
    prof = cProfile.Profile()
    prof.enable()
    yield
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumtime").print_stats(12)
    _log({"kind": "sessionfinish_profile", "pid": os.getpid(),
          "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"), "text": out.getvalue()[-3000:]})


def pytest_unconfigure(config):
    _event("unconfigure")
    if PROFILE.last_test:
        EVENTS["last_test"] = PROFILE.last_test
    start = _process_start()
    CPU["unconfigure"] = time.process_time()
    _log({"kind": "events", "pid": os.getpid(), "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
          "start": start, **EVENTS, "cpu": {k: round(v, 2) for k, v in CPU.items()}})
    if not PROFILE.tests:
        return
    line = {"kind": "process", "pid": os.getpid(), "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
            "tests": PROFILE.tests, "to_first_test": round(PROFILE.first_test - start, 2),
            "first_to_last_test": round(PROFILE.last_test - PROFILE.first_test, 2),
            "seconds": {k: round(v, 2) for k, v in PROFILE.sums.items()}, "counts": dict(PROFILE.counts)}
    _log(line)
    for c in PROFILE.compiles:
        _log({"kind": "compile", "pid": os.getpid(), **c})
