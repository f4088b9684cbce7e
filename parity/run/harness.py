"""Runs one (backend, path, buffer, case) cell: build inputs, call the backend twice into guarded
buffers, and apply every check. pytest and the CLI both call :func:`run_cell`."""
from __future__ import annotations

import functools
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import torch

from parity.judge import checks, consumers, topk

from parity.run import devices

from parity.problem import refcache

from parity.reports import render
from parity.backends.base import Backend
from parity.judge.buffers import DEFAULT_PAD, guarded_buffer
from parity.problem.cases import IndexerCase, IndexerInputs, build_inputs, validate_inputs
from parity.problem.reference import reference_head_logits


def cell_id(backend: str, path: str, buffer: str, case: IndexerCase) -> str:
    return f"{backend}-{path}-{buffer}-{case.id}"


def _reference_heads(case: IndexerCase) -> dict[str, torch.Tensor]:
    inp = build_inputs(case, "cpu", compact=True)  # the same logits without gigabytes of filler blocks
    return {"heads": reference_head_logits(inp), "mags": reference_head_logits(inp, magnitude=True)}


# The runners order cells case by case (pytest_plugin, runner), so a small cache per process hits;
# the disk cache shares a case's reference between processes (xdist workers, per-GPU children).
@functools.lru_cache(maxsize=8)
def _reference(case: IndexerCase) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    ref = refcache.cached(case, _reference_heads)
    heads, mags = ref["heads"], ref["mags"]
    return heads, heads.sum(0), mags, mags.sum(0)


@functools.lru_cache(maxsize=8)
def _inputs(case: IndexerCase, device: str) -> IndexerInputs:
    return build_inputs(case, device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _call(backend: Backend, path: str, inputs: IndexerInputs, buf) -> float:
    t0 = time.perf_counter()
    returned = backend.run(path, inputs, buf.view)
    if returned is not None:  # a backend may return its output instead of writing into the view
        if not isinstance(returned, torch.Tensor) or tuple(returned.shape) != tuple(buf.view.shape):
            got = tuple(returned.shape) if isinstance(returned, torch.Tensor) else type(returned).__name__
            raise ValueError(f"backend returned shape {got}; expected {tuple(buf.view.shape)} (or None after "
                             "writing into out)")
        # copy_ would convert silently: a float64 or bfloat16 answer for a float32 buffer is the caller's
        # contract broken (a consumer reads the buffer's dtype), not a value to judge after a cast.
        if returned.dtype != buf.view.dtype or returned.device != buf.view.device:
            raise ValueError(f"backend returned {returned.dtype} on {returned.device}; expected "
                             f"{buf.view.dtype} on {buf.view.device} (or None after writing into out)")
        buf.view.copy_(returned)
    _sync(inputs.device)
    return time.perf_counter() - t0


def _bits(t: torch.Tensor) -> torch.Tensor:
    """``t`` as integers of its width, on its device: NaN payloads and -0.0 compare exactly."""
    return t.view({4: torch.int32, 2: torch.int16}[t.element_size()])


def _input_tensors(inputs: IndexerInputs) -> dict[str, torch.Tensor]:
    names = ("q_fp8", "q_sf", "kv_cache", "kv_cache_preshuffled", "weights", "context_lens", "block_tables")
    return {n: getattr(inputs, n).clone() for n in names if getattr(inputs, n) is not None}


def _check_inputs_untouched(before: dict[str, torch.Tensor], inputs: IndexerInputs) -> checks.Finding:
    """A kernel that writes its inputs corrupts the cache for later layers and steps."""
    def raw(t):  # fp8 tensors compare as bytes
        return t.view(torch.uint8) if t.dtype.itemsize == 1 else t

    changed = [n for n, t in before.items() if not torch.equal(raw(t), raw(getattr(inputs, n)))]
    if changed:
        for n, t in before.items():  # restore: the inputs are shared with later cells
            getattr(inputs, n).copy_(t)
        return checks.Finding("inputs", False, f"backend modified its inputs: {', '.join(changed)}", {"changed": changed})
    return checks.Finding("inputs", True, "inputs untouched")


def format_unsupported(backend: Backend, inputs: IndexerInputs) -> str | None:
    """A backend takes the key formats it lists in ``key_formats`` (fp8 when it lists none: a backend
    written before MXFP4 existed reads q_fp8 as fp8 and must not be handed E2M1 bytes)."""
    formats = getattr(backend, "key_formats", ("fp8",))
    if inputs.key_format not in formats:
        return (f"{getattr(backend, 'name', 'backend')} does not take {inputs.key_format} inputs "
                f"(its key_formats: {', '.join(formats)})")
    return None


def _new_buffer(path: str, buffer: str, inputs: IndexerInputs, pad: int):
    lead = (inputs.heads, inputs.rows) if path == "stage1" else (inputs.rows,)
    return guarded_buffer(lead, inputs.max_model_len, buffer, inputs.device, pad=pad, dtype=inputs.logits_dtype)


def precompile(backend: Backend, cells, device: str, pad: int = DEFAULT_PAD, threads: int | None = None,
               share: tuple[int, int] = (0, 1)) -> int:
    """Compile at once, on ``threads`` threads, the kernels that ``cells`` ((path, buffer, case) triples, run
    by :func:`run_cell` with the same ``device`` and ``pad``) will launch, where the backend can say which
    (a ``precompile(path, inputs, out)`` method) and Triton compiles asynchronously (its
    ``AsyncCompileMode``, Triton >= 3.4). Compiled one by one inside the first cells that need them, the
    full level's 66 kernels took 42 of a 67 s run on an H100.

    ``share=(k, n)``: n processes precompile for the same cells (xdist workers: each collects every cell
    and is handed its own as the run goes); this one compiles the k-th, (k+n)-th, ... distinct kernel (by
    the backend's ``variant``, in the order the cells first need them, which is the same in every
    process), the others the rest, into the Triton cache on disk that they share, from where each loads
    the others' kernels when its cells first launch them. Counted this way the shares differ by at most
    one kernel (a hash of the key would leave them as uneven as chance makes them). A compile that fails
    here is left to its cell to report. Returns the number of kernels handed to the compiler."""
    hook = getattr(backend, "precompile", None)
    if not callable(hook):
        return 0
    try:
        from triton.runtime._async_compile import AsyncCompileMode
    except ImportError:
        return 0
    variant = getattr(backend, "variant", None)
    by_case: dict[IndexerCase, list[tuple[str, str]]] = {}
    for path, buffer, case in cells:
        by_case.setdefault(case, []).append((path, buffer))
    seen, submitted = set(), 0
    pool = ThreadPoolExecutor(threads or devices.cpu_threads(), thread_name_prefix="precompile")
    try:
        try:
            mode = AsyncCompileMode(pool, ignore_errors=True)
        except TypeError:  # Triton 3.4/3.5: no ignore_errors; the except below stands in
            mode = AsyncCompileMode(pool)
        with mode:
            for case, wanted in by_case.items():
                try:  # compact: the same launch arguments without the filler blocks of block_id_floor
                    inputs = build_inputs(case, device, compact=True)
                except Exception:  # noqa: BLE001  (the cell reports its bad inputs)
                    continue
                for path, buffer in wanted:
                    if format_unsupported(backend, inputs) or backend.unsupported(path, inputs):
                        continue
                    try:
                        out = _new_buffer(path, buffer, inputs, pad).view
                        key = repr(variant(path, inputs, out)) if callable(variant) else (path, buffer, case.id)
                        if key in seen:
                            continue
                        seen.add(key)
                        if callable(variant) and (len(seen) - 1) % share[1] != share[0]:
                            continue
                        hook(path, inputs, out)
                        submitted += 1
                    except Exception:  # noqa: BLE001
                        pass
    except Exception:  # noqa: BLE001  (a compile error: the cell that launches that kernel raises it again)
        pass
    finally:
        pool.shutdown(wait=True)
    return submitted


def run_cell(backend: Backend, path: str, buffer: str, case: IndexerCase, device: str = "cpu",
             pad: int = DEFAULT_PAD, backend_name: str | None = None, repeats: int = 2,
             consumer: str = consumers.DEFAULT_CONSUMER) -> dict:
    """Result dict: id, status (pass | fail | skip | error), findings, timings. The backend is called
    ``repeats`` times on the same inputs, each into a fresh guarded buffer; every run must be bitwise
    equal to the first and write nothing out of bounds. ``consumer`` is the rule for what lies past
    each row's valid length (parity.judge.consumers)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    consumers.check_consumer(consumer)
    name = backend_name or backend.name
    result = {"id": cell_id(name, path, buffer, case), "backend": name, "path": path, "buffer": buffer,
              "case": {**asdict(case), "id": case.id}, "device": device, "consumer": consumer, "findings": []}
    if torch.device(device).type == "cpu" and (why := case.cpu_reason()):
        return {**result, "status": "skip", "reason": why}
    try:
        inputs = _inputs(case, device)
        validate_inputs(inputs)
    except Exception as exc:  # bad case: a finding, not a crash of the run
        return {**result, "status": "error", "findings": [checks.Finding("error", False, f"inputs: {exc}").to_dict()]}
    try:
        reason = format_unsupported(backend, inputs) or backend.unsupported(path, inputs)
    except Exception as exc:  # the backend's own question about the cell: its error, not the run's
        tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return {**result, "status": "error",
                "findings": [checks.Finding("error", False, f"unsupported() raised: {tb}").to_dict()]}
    if reason:
        return {**result, "status": "skip", "reason": reason}
    cols = inputs.max_model_len
    reps = inputs.heads if path == "stage1" else 1
    ctx2d = inputs.context_lens.cpu().long().repeat_interleave(inputs.next_n).repeat(reps)
    row_len2d = inputs.row_lens.cpu().repeat(reps)
    new_buffer = lambda: _new_buffer(path, buffer, inputs, pad)  # noqa: E731
    times, first, later_oob, determinism = [], None, None, None
    before = _input_tensors(inputs)
    for run in range(1, repeats + 1):
        buf = new_buffer()
        try:
            times.append(_call(backend, path, inputs, buf))
        except Exception as exc:
            tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
            if first is None:
                return {**result, "status": "error",
                        "findings": [checks.Finding("error", False, f"backend raised: {tb}").to_dict()]}
            result["findings"].append(checks.Finding("error", False, f"call {run} of {repeats} raised: {tb}").to_dict())
            break
        if first is None:
            first = buf
            continue
        if torch.equal(_bits(buf.storage), _bits(first.storage)):
            continue  # the same bits everywhere, guards included: nothing new for either check to see
        if later_oob is None:
            oob = checks.check_out_of_bounds(buf)
            if not oob.ok:
                oob.summary = f"run {run} of {repeats}: {oob.summary}"
                later_oob = oob
        if determinism is None or determinism.ok:
            found = checks.check_determinism(first.view, buf.view, row_len=row_len2d, consumer=consumer, run=run,
                                             runs=repeats)
            if found.ok and determinism is not None:  # keep the most don't-care positions any run moved
                found = max(found, determinism, key=lambda f: f.details.get("dont_care_differ", 0))
            determinism = found
        del buf
    if len(times) > 1 and determinism is None:  # every run left the same bits as the first
        determinism = checks.Finding("determinism", True, f"{len(times)} runs bitwise equal", {"runs": len(times)})
    ref_heads, ref, mag_heads, mag = _reference(case)
    out2d = first.view.reshape(-1, cols)
    ref2d = ref_heads.reshape(-1, cols) if path == "stage1" else ref
    findings = [checks.check_out_of_bounds(first)]
    if findings[0].ok and later_oob is not None:
        findings = [later_oob]
    mask = checks.check_mask(out2d, ref2d, row_len2d, consumer)
    mag2d = mag_heads.reshape(-1, cols) if path == "stage1" else mag
    values = checks.check_values(out2d, ref2d, ctx2d, case.input_format, magnitude=mag2d)
    next_row, not_next_row = checks.attribute_next_row(mask, values, ctx2d, cols, causal_tail=inputs.next_n,
                                                       row_len=row_len2d, padding=checks.padding_written(first),
                                                       pad=first.pad)
    if not_next_row:
        for f in (values, mask):
            if not f.ok:
                f.summary += f" ({not_next_row})"
                f.details["not_next_row"] = not_next_row
    findings += [mask, values] + ([next_row] if next_row else [])
    logits = first.view.float().sum(0) if path == "stage1" else first.view  # stage1: the caller's sum over heads
    rtol, atol = checks.TOLERANCES[case.input_format]
    rtol += checks.OUTPUT_ROUNDING[inputs.logits_dtype]
    selected = topk.topk_reference(logits, inputs.context_lens, inputs.next_n, case.topk,
                                   context_lens_2d=inputs.context_lens_2d)
    # the values check's own bound, magnitude included (stage1: the fused magnitude of the summed logit)
    findings.append(topk.compare_topk(selected, ref, inputs.context_lens, inputs.next_n, case.topk, rtol, atol,
                                      context_lens_2d=inputs.context_lens_2d, magnitude=mag))
    if determinism is not None:
        findings.append(determinism)
    findings.append(_check_inputs_untouched(before, inputs))
    result["findings"] += [f.to_dict() for f in findings]
    result["status"] = "pass" if all(f["ok"] for f in result["findings"]) else "fail"
    if result["status"] == "fail":  # what the first call left in its guarded buffer, for the report's picture
        result["map"] = render.buffer_map(first, ref2d, ctx2d, case.input_format, magnitude=mag2d,
                                          row_len=row_len2d, causal_tail=inputs.next_n, consumer=consumer)
    result["seconds"] = times
    return result


def failed_checks(result: dict) -> list[str]:
    return [f"{f['check']}: {f['summary']}" for f in result.get("findings", []) if not f["ok"]]
