"""The parity suite's pytest plugin, installed with the package (entry point ``pytest11``), so that
``pytest -m parity --backend my_backend.py`` runs the matrix from any directory: a kernel team's own
repository, a CI job, this checkout.

It adds the options, gives each xdist worker its own GPU and its share of the CPU cores, and, when
the run asks for the matrix (``-m`` naming ``parity``, or ``--backend``/``--parity-level`` given),
collects :mod:`parity.matrix` unless a test module of the run already holds the matrix test.

Importing this module costs nothing: it is loaded by every pytest run of the environment, so torch
and the backends are imported only once a run has asked for the matrix.
"""
from __future__ import annotations

import functools
import os
import sys
import threading
from pathlib import Path

import pytest

MATRIX_FIXTURE = "parity_cell"


def pytest_addoption(parser):
    g = parser.getgroup("parity", "indexer parity matrix (python -m parity --help for the CLI)")
    g.addoption("--backend", action="append", default=None,
                help="backend to check: registered name, pkg.mod:factory or file.py[:factory] (repeatable)")
    g.addoption("--device", action="append", default=None, help="cpu, cuda, cuda:1 ... (repeatable; default: all)")
    g.addoption("--parity-level", choices=("quick", "full", "stress"), default=None,
                help="case grid (default quick); stress also calls each cell 20 times")
    g.addoption("--aiter-path", default=None, help="aiter source tree or install dir for the aiter backend")
    # The choices are parity.judge.consumers.CONSUMERS, written out: this module imports nothing of the suite.
    g.addoption("--parity-consumer", choices=("length-bounded", "unbounded"), default="length-bounded",
                help="who reads the logits next: length-bounded (default; past each row's valid length is "
                     "don't-care) or unbounded (-inf required there)")


def matrix_wanted(config) -> bool:
    mark = config.getoption("markexpr", "") or ""
    return ("parity" in mark and "not parity" not in mark) or bool(config.getoption("--backend")) \
        or config.getoption("--parity-level") is not None


def pytest_configure(config):
    config.addinivalue_line("markers", "parity: the backend x path x buffer x case x device matrix")
    if not matrix_wanted(config) and not config.pluginmanager.hasplugin("parity_repo_conftest"):
        return
    if _xdist_controller(config):
        # The controller runs no test: importing torch here (seconds with a CUDA build) would only
        # delay the start of the workers, so it checks --device with the driver alone, and even that
        # (cuInit: 0.45 s on an H100 host) runs beside the start of the workers (pytest_sessionstart).
        _start_controller_device_check(config)
        return
    gpu_values = [v for v in config.getoption("--device") or ["cuda"] if v.startswith("cuda")]  # none: all devices
    if matrix_wanted(config) and gpu_values and not os.environ.get("PARITY_FAKE_GPUS"):
        # cuInit and the GPU's context (0.45 s and more on an H100 host) while torch imports (seconds):
        # ctypes lets go of the GIL, and torch later finds the driver up and the context made.
        threading.Thread(target=_open_gpu_early, args=(gpu_values[0],), name="parity-cuda-init", daemon=True).start()
    import torch

    # Triton decides at decoration time whether to interpret; without a GPU the interpreter is
    # the only way a Triton kernel runs at all.
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from parity.run import devices

    # A thread per core (torch's default) costs a matrix process more than it computes, and xdist
    # workers share the cores: see devices.cpu_threads.
    workers = _xdist_workers()
    try:
        torch.set_num_threads(devices.cpu_threads(workers))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    for value in config.getoption("--device") or ():
        if (why := _device_error(value)) is not None:
            raise pytest.UsageError(why)

    # Pin each worker to its GPU before anything opens a context: a Triton launch goes to the
    # current device, so a worker left on cuda:0 would share GPU 0 with gw0 (see parity.run.devices).
    if workers > 1 and gpu_values and devices.gpu_count():
        devices.pin(devices.worker_device("cuda"))


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # the hook is xdist's; without xdist it is never called
def pytest_xdist_auto_num_workers(config):
    """``-n auto`` for a matrix run on GPUs: a worker per GPU the run uses (xdist's own answer is a
    worker per CPU core: on a 128-core host with 8 GPUs, 16 processes per GPU, each importing torch and
    holding a CUDA context). Asked of the driver, not torch (the controller imports no torch).
    ``$PYTEST_XDIST_AUTO_NUM_WORKERS`` still decides where set."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS") or not matrix_wanted(config):
        return None
    values = config.getoption("--device") or ["cuda"]  # no --device: every device present, GPUs included
    if not any(v.startswith("cuda") for v in values):
        return None
    if "cuda" not in values:  # explicit GPUs only: one worker each
        return len({v for v in values if v.startswith("cuda:")})
    return _driver_gpu_count() or None  # no driver or no GPU: xdist's default, and --device reports it


def _xdist_workers() -> int:
    """How many xdist workers share this host (1 outside xdist)."""
    return int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


def _xdist_controller(config) -> bool:
    """This process hands the tests to xdist workers (``-n N``, N > 0) and runs none itself."""
    return not os.environ.get("PYTEST_XDIST_WORKER") and (getattr(config.option, "dist", "no") or "no") != "no"


def _open_gpu_early(device: str) -> int | None:
    """Initializes the CUDA driver and retains the primary context of the GPU this process will run
    ``device`` on (an xdist worker's own GPU for ``cuda``, see parity.run.devices.worker_device); the
    context torch makes current later is that same one. Returns the index, or None (no CUDA driver,
    no such GPU: torch then reports what is wrong)."""
    import ctypes

    from parity.run.device_names import worker_index

    count = _driver_gpu_count()  # cuInit, and the GPUs this process sees
    index = int(device.partition(":")[2] or worker_index() % (count or 1))
    if not count or index >= count:
        return None
    try:
        driver = ctypes.CDLL("libcuda.so.1")  # loaded already, unless the GPUs are HIP's
        handle, ctx = ctypes.c_int(0), ctypes.c_void_p()
        if driver.cuDeviceGet(ctypes.byref(handle), index) != 0 \
                or driver.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), handle) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return index


def _driver_gpu_count() -> int | None:
    """GPUs the CUDA (or HIP) driver shows this process, asked without torch; None: no driver found."""
    import ctypes

    if raw := os.environ.get("PARITY_FAKE_GPUS"):
        return int(raw) if raw.isdigit() else None
    for lib, init, count in (("libcuda.so.1", "cuInit", "cuDeviceGetCount"),
                             ("libamdhip64.so", None, "hipGetDeviceCount")):
        try:
            driver = ctypes.CDLL(lib)
        except OSError:
            continue
        n = ctypes.c_int(0)
        if (init and getattr(driver, init)(0) != 0) or getattr(driver, count)(ctypes.byref(n)) != 0:
            return 0  # e.g. CUDA_VISIBLE_DEVICES="" or no device: the driver reports an error
        return n.value
    return None


_DEVICE_CHECK = pytest.StashKey[tuple]()


def _start_controller_device_check(config) -> None:
    """Judges the form of each --device now, and on a thread the GPUs it names (the driver's count)."""
    from parity.run.device_names import form_error

    gpu_values = []
    for value in config.getoption("--device") or ():
        if (why := form_error(value)) is not None:
            raise pytest.UsageError(why)
        if value != "cpu":
            gpu_values.append(value)
    if not gpu_values:
        return
    found: list[str] = []

    def check() -> None:
        try:
            found.extend(why for v in gpu_values if (why := _controller_device_error(v)) is not None)
        except Exception as exc:  # noqa: BLE001  (the workers check again with torch)
            found.append(f"--device: the GPU count could not be read: {type(exc).__name__}: {exc}")

    thread = threading.Thread(target=check, name="parity-device-check", daemon=True)
    thread.start()
    config.stash[_DEVICE_CHECK] = (thread, found)


def _finish_controller_device_check(session) -> None:
    """After xdist has started its workers: a --device the driver rejects stops them and the run."""
    thread, found = session.config.stash.get(_DEVICE_CHECK, (None, None))
    if thread is None:
        return
    thread.join()
    del session.config.stash[_DEVICE_CHECK]
    if found:
        dsession = session.config.pluginmanager.get_plugin("dsession")
        if dsession is not None:  # its own shutdown of the workers it has started
            try:
                dsession.pytest_sessionfinish()
            except TypeError:  # older pytest-xdist releases take the session
                dsession.pytest_sessionfinish(session)
        raise pytest.UsageError(found[0])


def _controller_device_error(value: str) -> str | None:
    from parity.run.device_names import device_error

    def gpus() -> int:
        count = _driver_gpu_count()
        if count is None:  # no driver library to ask: torch's answer, at torch's cost
            from parity.run.devices import gpu_count

            return gpu_count()
        return count

    return device_error(value, gpus, "this process")


def _device_error(value: str) -> str | None:
    from parity.cli import check_device

    return check_device(value)


def default_backends() -> list[str]:
    # Our own kernels always; third-party builds only when asked for (--backend aiter ...), since
    # a known-buggy build is expected to fail and has its own expectation tests.
    return ["torch", "triton"]


def pytest_generate_tests(metafunc):
    if MATRIX_FIXTURE not in metafunc.fixturenames:
        return
    from parity.backends import PATHS
    from parity.judge.buffers import BUFFER_KINDS
    from parity.problem.grids import cases_for_level
    from parity.run.devices import gpu_count

    cfg = metafunc.config
    backends = cfg.getoption("--backend") or default_backends()
    devices = cfg.getoption("--device") or (["cpu", "cuda"] if gpu_count() else ["cpu"])
    cases = cases_for_level(cfg.getoption("--parity-level") or "quick")
    params, ids = [], []
    # Case by case: the cells of a case are neighbours, so the float64 reference and the inputs a
    # worker builds for a case serve all of its cells (a per-process cache of a few cases hits),
    # and pytest-split's contiguous groups and xdist's chunks keep a case together.
    for dev in devices:
        for case in cases:
            for backend in backends:
                for path in PATHS:
                    for buf in BUFFER_KINDS:
                        params.append((backend, path, buf, case, dev))
                        suffix = f"-{dev}" if len(devices) > 1 else ""
                        ids.append(f"{backend}-{path}-{buf}-{case.id}{suffix}")
    metafunc.parametrize(MATRIX_FIXTURE, params, ids=ids)


@pytest.hookimpl(tryfirst=True)  # before -m/-k deselect, so they apply to the matrix too
def pytest_collection_modifyitems(session, config, items):
    if matrix_wanted(config) and not any(MATRIX_FIXTURE in getattr(i, "fixturenames", ()) for i in items):
        from parity import matrix

        module = pytest.Module.from_parent(session, path=Path(matrix.__file__))
        items.extend(session.genitems(module))
    # Under `--dist loadgroup` a case's cells stay in one worker: its Triton kernels compile there
    # once, not in every worker at the same moment, and its reference is computed once. Without
    # xdist the mark is unknown (a warning, an error under --strict-markers).
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        cell = getattr(item, "callspec", None) and item.callspec.params.get(MATRIX_FIXTURE)
        if cell:
            item.add_marker(pytest.mark.xdist_group(cell[3].id))


@pytest.hookimpl(trylast=True)  # after xdist has sent its collection: the controller schedules meanwhile
def pytest_collection_finish(session):
    """Before the first cell: compile every Triton kernel the run's cells will launch, in parallel (see
    parity.run.harness.precompile). xdist workers each collect every cell, so each compiles its share of
    the kernels into the Triton cache they share."""
    config = session.config
    if config.option.collectonly or _xdist_controller(config) or not matrix_wanted(config):
        return
    cells: dict[tuple[str, str], list] = {}
    for item in session.items:
        cell = getattr(item, "callspec", None) and item.callspec.params.get(MATRIX_FIXTURE)
        if cell and not cell[4].startswith("cpu"):
            cells.setdefault((cell[0], cell[4]), []).append(cell[1:4])
    if not cells:
        return
    from parity.run import devices, harness

    workers = _xdist_workers()
    share = (devices.worker_index(), workers) if workers > 1 else (0, 1)
    for (spec, device), wanted in cells.items():
        try:
            backend = _backend(spec, config.getoption("--aiter-path"))
        except Exception:  # noqa: BLE001  (its cells report it)
            continue
        dev = devices.worker_device(device)
        with devices.current(dev):
            harness.precompile(backend, wanted, devices.placement(dev),
                               threads=devices.cpu_threads(workers), share=share)


# hypothesis' pytest plugin (installed wherever hypothesis is) imports the whole hypothesis package in
# its terminal summary, in every process, whether or not a test used it: 1.2-2.5 s at the end of each
# run on the H100 machine, paid after the last cell, and in series (workers, then the controller) under
# xdist. A process that never imported hypothesis ran no hypothesis test and wrote no observation, so
# that summary has nothing to say there; the xdist controller cannot know (its workers ran the tests),
# but it sits idle while they run and can import hypothesis meanwhile.
HYPOTHESIS_PLUGIN = "hypothesispytest"
_hypothesis_import: threading.Thread | None = None


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionstart(session):
    global _hypothesis_import
    config = session.config
    if (matrix_wanted(config) and _xdist_controller(config) and "hypothesis" not in sys.modules
            and config.pluginmanager.get_plugin(HYPOTHESIS_PLUGIN) is not None):
        _hypothesis_import = threading.Thread(target=_import_quietly, args=("hypothesis",),
                                              name="parity-hypothesis-import", daemon=True)
        _hypothesis_import.start()
    result = yield  # xdist's controller starts its workers here
    _finish_controller_device_check(session)
    return result


@pytest.hookimpl(tryfirst=True)  # inside the terminal reporter's wrapper: before its summary hooks run
def pytest_sessionfinish(session):
    global _hypothesis_import
    config = session.config
    if not matrix_wanted(config):
        return
    if _hypothesis_import is not None:
        _hypothesis_import.join(timeout=120)
        _hypothesis_import = None  # a later session in this process (pytester) starts afresh
    elif not _xdist_controller(config) and "hypothesis" not in sys.modules:
        plugin = config.pluginmanager.get_plugin(HYPOTHESIS_PLUGIN)
        if plugin is not None:
            config.pluginmanager.unregister(plugin)


def _import_quietly(name: str) -> None:
    try:
        __import__(name)
    except Exception:  # noqa: BLE001  (the summary that needs it imports it again and reports)
        pass


@functools.lru_cache(maxsize=None)
def _backend(spec: str, aiter_path: str | None):
    from parity.backends import load_backend

    opts = {"aiter_path": aiter_path} if spec.split(":")[0] == "aiter" and aiter_path else {}
    return load_backend(spec, **opts)


def pytest_report_header(config):
    if matrix_wanted(config):
        from parity.judge import consumers

        return consumers.line(consumers.describe(config.getoption("--parity-consumer")))
    return None


@pytest.fixture
def parity_consumer(request) -> str:
    """The rule for what lies past each row's valid length (``--parity-consumer``; parity.judge.consumers)."""
    return request.config.getoption("--parity-consumer")


@pytest.fixture
def parity_repeats(request, parity_cell) -> int:
    """Calls per cell at the run's level and the cell's device (each compared bitwise with the first)."""
    from parity.problem.grids import repeats_for

    return repeats_for(request.config.getoption("--parity-level") or "quick", parity_cell[-1])


@pytest.fixture
def parity_backend(request):
    """Loads a backend by spec; a backend that cannot load skips (default list) or fails (asked for)."""

    def get(spec: str):
        try:
            return _backend(spec, request.config.getoption("--aiter-path"))
        except Exception as exc:
            msg = f"backend {spec!r} unavailable: {type(exc).__name__}: {exc}"
            if request.config.getoption("--backend"):
                pytest.fail(msg)
            pytest.skip(msg)

    return get
