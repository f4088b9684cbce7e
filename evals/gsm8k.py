"""``gsm8k run``: lm-eval's own ``gsm8k`` task (5-shot, greedy, strict-match and flexible-extract)
through its Python API, against an OpenAI-compatible server or the embedded model served on
localhost. A run directory holds ``results.json`` (lm-eval's results), ``samples_gsm8k.jsonl``
(lm-eval's per-sample records), ``run.json`` (the manifest) and, for the embedded model,
``server_requests.jsonl`` (each batch the server decoded, for ``compare``'s replay)."""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

from dataclasses import dataclass, field

from evals import prompt_tokens
from evals.data import hub_record, load_hub, local_record, resolve_data_dir

TASK = "gsm8k"
# lm-eval writes this for a response the server returned as null; the default (empty string)
# would be indistinguishable from a model that answered nothing.
NULL_RESPONSE = "<<evals: server returned no text>>"
RESULTS, SAMPLES, MANIFEST, REQUESTS = "results.json", f"samples_{TASK}.jsonl", "run.json", "server_requests.jsonl"


def task_config(data_dir: Path | None) -> dict:
    """lm-eval's gsm8k config, unchanged except for where its documents come from: its hub dataset
    (``dataset_path``/``dataset_name``), or the JSONL files of ``data_dir``."""
    import lm_eval.tasks
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = dict(load_yaml(Path(lm_eval.tasks.__file__).parent / TASK / f"{TASK}.yaml", resolve_func=True))
    cfg.pop("tag", None)
    if data_dir is not None:
        cfg.update(dataset_path="json", dataset_name=None,
                   dataset_kwargs={"data_files": {"train": str(data_dir / "train.jsonl"),
                                                  "test": str(data_dir / "test.jsonl")}})
    return cfg


def hardware() -> dict:
    info = {"machine": platform.machine(), "processor": platform.processor() or None, "cpus": os.cpu_count(),
            "platform": platform.platform()}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception as exc:  # the manifest must not stop a run
        info["torch_error"] = repr(exc)
    return info


def hardware_label(info: dict) -> str:
    """One line for a manifest or a table: the GPUs of :func:`hardware`'s record, else its CPUs."""
    return ", ".join(info.get("gpus") or []) or f"{info.get('cpus')} CPUs ({info.get('machine')})"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _get_json(url: str, timeout: float = 5.0) -> dict:
    import requests

    try:
        r = requests.get(url, timeout=timeout)
        return r.json() if r.ok else {"error": f"HTTP {r.status_code}"}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def _server_root(url: str) -> str:
    root = url.rstrip("/")
    for tail in ("/completions", "/chat", "/v1"):
        root = root[: -len(tail)] if root.endswith(tail) else root
    return root


def completions_url(base_url: str, chat: bool) -> str:
    url = base_url.rstrip("/")
    want = "/chat/completions" if chat else "/completions"
    if url.endswith(want):
        return url
    if not url.endswith("/v1"):
        url += "/v1"
    return url + want


def data_source(data_dir: Path | None) -> dict:
    """The manifest's record of the documents, with a ``name`` that tells the generated task from
    GSM8K. For the hub dataset this loads it first (network, or the local cache when the user's
    environment is offline), so a machine that has neither stops here with what to do, raising
    :class:`DataUnavailable`, before a server starts."""
    from evals import synth

    if data_dir is not None:
        rec = local_record(data_dir)
        generated = synth.read_record(data_dir)
        if generated is not None:
            return {**rec, **generated, "files": rec["files"]}
        return {**rec, "name": f"GSM8K-format files in {data_dir}"}
    cfg = task_config(None)
    dataset, config = cfg["dataset_path"], cfg.get("dataset_name")
    ds, commit = load_hub(dataset, config)
    return {**hub_record(ds, dataset, config, commit), "name": f"GSM8K {dataset} ({config}) revision {commit}"}


class BadInput(ValueError):
    """A flag that contradicts the run (exit 2); raised after the manifest is written."""


@dataclass
class TaskSpec:
    """What ``run`` evaluates: an lm-eval task config (a dict, as lm-eval's loader reads a YAML) and
    the manifest's record of its documents."""
    name: str
    config: dict
    data: dict
    include_path: str | None = None  # a folder of task YAMLs for lm-eval's TaskManager
    manifest: dict = field(default_factory=dict)  # extra manifest fields (e.g. a generator's settings)


def gsm8k_spec(args) -> TaskSpec:
    if args.base_url is None and args.data_dir is None:
        # The embedded model's own task (GSM8K cannot see its indexer); a server runs GSM8K.
        from evals import synth

        data_dir = Path(args.out) / "data"
        synth.write(data_dir, synth.SynthSpec(seed=getattr(args, "synth_seed", 0)))
    else:
        data_dir = resolve_data_dir(args.data_dir)
    return TaskSpec(TASK, task_config(data_dir), data_source(data_dir))


def samples_file(task: str) -> str:
    return f"samples_{task}.jsonl"


def run(args, spec: TaskSpec | None = None) -> int:
    """Returns 0 when lm-eval finished and every artifact was written, 1 otherwise (run.json still
    written, with status "failed" and the error). Raises :class:`DataUnavailable` (nothing written)
    when there is no data to run on, :class:`BadInput` (run.json written) for a contradictory flag."""
    os.environ.setdefault("LMEVAL_MODEL_NONE_ANSWER_PLACEHOLDER", NULL_RESPONSE)
    # The embedded model first: weights that fail their check or a backend that cannot run the
    # model's shape are bad input (exit 2, nothing written), not a failed run.
    model = embedded_model(args) if args.base_url is None else None
    spec = spec or gsm8k_spec(args)
    task = spec.name
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in (RESULTS, samples_file(task), MANIFEST, REQUESTS):
        (out / stale).unlink(missing_ok=True)
    manifest = {"schema": 1, "status": "running", "task": task, "limit": args.limit, "started": _now(),
                "command": [sys.executable, "-m", "evals", *sys.argv[1:]], "hardware": hardware(), "data": spec.data,
                "kernel": {"backend": args.kernel_backend, "build": args.kernel_build}, **spec.manifest}
    t0 = time.time()
    server = None
    recorder = prompt_tokens.UsageRecorder()
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager

        manifest["lm_eval_version"] = getattr(lm_eval, "__version__", None) or _dist_version("lm_eval")
        embedded = args.base_url is None
        if embedded:
            server = _start_embedded(model, args, out)
            url, served = server.base_url, server.service.name
            manifest["kernel"].update(backend=args.backend, buffer=args.buffer, path=args.path,
                                      build=args.kernel_build or server.service.model.indexer.describe()["backend_info"])
            model_topk = server.service.model.cfg.index_topk
            if args.index_topk is not None and args.index_topk != model_topk:
                raise BadInput(f"--index-topk {args.index_topk}: the embedded model's indexer keeps "
                               f"index_topk={model_topk} tokens; omit the flag or give {model_topk}")
            index_topk = model_topk
        else:
            url, served = completions_url(args.base_url, args.chat), args.model
            index_topk = args.index_topk or prompt_tokens.DEFAULT_SERVER_TOPK
        model_args = {"base_url": url, "model": served, "tokenizer_backend": None, "tokenized_requests": False,
                      "num_concurrent": args.num_concurrent, "max_retries": args.max_retries,
                      "max_gen_toks": args.max_gen_toks, "batch_size": args.batch_size, "timeout": args.timeout,
                      "seed": args.seed}
        lm_model = "local-chat-completions" if args.chat else "local-completions"
        manifest["model"] = {"kind": "embedded" if embedded else "server", "name": served,
                             "lm_eval_model": lm_model, "model_args": model_args,
                             "prompt_tokens_from": "lm-eval's model, subclassed to keep each response's usage"}
        manifest["seed"] = {"lm_eval": args.seed, "model": args.model_seed if embedded else None}
        manifest["index_topk"] = index_topk
        results = lm_eval.simple_evaluate(
            model=prompt_tokens.counting_model(lm_model, recorder, **model_args), tasks=[spec.config],
            task_manager=TaskManager(include_defaults=False, include_path=spec.include_path), limit=args.limit,
            log_samples=True, apply_chat_template=bool(args.chat), random_seed=args.seed)
        if results is None:
            raise RuntimeError("lm_eval.simple_evaluate returned no results")
        samples = results.pop("samples", {}).get(task, [])
        with open(out / samples_file(task), "w") as f:
            for rec in samples:
                f.write(json.dumps(rec, default=str) + "\n")
        (out / RESULTS).write_text(json.dumps(results, indent=1, default=str))
        manifest["prompt_tokens"] = _prompt_token_block(args, samples, recorder, index_topk, embedded)
        manifest.update(status="ok", task_version=results.get("versions", {}).get(task),
                        num_fewshot=results.get("n-shot", {}).get(task),
                        n=results.get("n-samples", {}).get(task, {}).get("effective"),
                        metrics={k: v for k, v in results.get("results", {}).get(task, {}).items() if "," in k})
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        if server is not None and server.service.last_refusal:
            error += f" (the server refused a request: {server.service.last_refusal})"
            if "maximum context length" in server.service.last_refusal:
                error += ("; the embedded model's window is --max-model-len: raise it, or pass --truncate-prompts "
                          "to cut prompts from the left (reported in run.json)")
        manifest.update(status="failed", error=error, traceback=traceback.format_exc()[-4000:])
        if isinstance(exc, (KeyboardInterrupt, BadInput)):
            raise
    finally:
        if server is not None:
            manifest["server"] = {"base_url": server.base_url, "info": server.service.info()}
            server.__exit__(None, None, None)
        elif args.base_url is not None:
            root = _server_root(args.base_url)
            manifest["server"] = {"base_url": args.base_url, "models": _get_json(root + "/v1/models")}
        manifest.update(finished=_now(), wall_s=round(time.time() - t0, 2))
        (out / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
    _print_summary(manifest, out)
    return 0 if manifest["status"] == "ok" else 1


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name.replace("_", "-"))
    except PackageNotFoundError:
        return None


def embedded_model(args):
    """The embedded model of the run's flags, probed with one decode call: a backend that declines
    the model's shape is a ValueError naming it."""
    from evals.__main__ import embedded
    from evals.model import BackendUnsupported

    model = embedded(args)
    try:
        model.probe()
    except BackendUnsupported as exc:
        raise ValueError(f"--backend {args.backend} --path {args.path}: {exc}") from None
    except Exception:  # noqa: BLE001 - a kernel that fails is the run's finding, reported by the run
        pass
    return model


def _start_embedded(model, args, out: Path):
    from evals.server import CompletionService, ServerThread

    service = CompletionService(model, log_path=str(out / REQUESTS),
                                truncate_prompts=getattr(args, "truncate_prompts", False))
    return ServerThread(service).__enter__()


def sample_prompt(rec: dict) -> str:
    """The prompt lm-eval sent for a per-sample record (a chat prompt is its JSON string)."""
    args = rec["arguments"]
    first = args[0] if isinstance(args, (list, tuple)) else args["gen_args_0"]["arg_0"]
    while isinstance(first, (list, tuple)):
        first = first[0]
    return first


def _prompt_token_block(args, samples: list[dict], recorder, index_topk: int, embedded: bool) -> dict:
    prompts = {rec["doc_id"]: sample_prompt(rec) for rec in samples}
    fallback = getattr(args, "tokenizer", None) or (prompt_tokens.EMBEDDED if embedded else None)
    per_doc = prompt_tokens.per_doc_counts(prompts, recorder, fallback)
    note = None
    if recorder.batched_totals and not fallback:
        note = (f"the server reported only batch totals for {recorder.batched_totals} request(s) of "
                f"--batch-size {args.batch_size}: pass --batch-size 1 or --tokenizer")
    return prompt_tokens.summarize(per_doc, index_topk, note)


def _print_summary(manifest: dict, out: Path) -> None:
    if manifest["status"] != "ok":
        print(f"{manifest['task']} run FAILED: {manifest.get('error')}\nartifacts: {out}")
        return
    m = manifest["metrics"]
    parts = [f"{k.split(',')[1]} {m[k]:.4f}" for k in sorted(m) if k.startswith("exact_match,")]
    print(f"{manifest['task']} n={manifest['n']} ({manifest['num_fewshot']}-shot, v{manifest['task_version']}) on "
          f"{(manifest.get('data') or {}).get('name', '?')}: " + ", ".join(parts) + f"  [{manifest['wall_s']} s]")
    for line in prompt_tokens.coverage(manifest.get("prompt_tokens"))[1]:
        print(f"  {line}")
    print(f"artifacts: {out}")
