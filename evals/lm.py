"""The embedded model as an lm-eval LM, in process: lm-eval's real ``gsm8k`` task (its prompts, its
few-shot sampling, its filters and scoring) with the generation requests batched straight through
the model, on the CPU or a GPU, without the HTTP hop. ``gsm8k run`` goes over HTTP as it does to
vLLM; the sensitivity table and training's final check, which run the same questions through tens
of kernel builds, come here.

A run directory written by :func:`evaluate` has the files of ``gsm8k run`` (``results.json``,
``samples_gsm8k.jsonl``, ``run.json``), so ``gsm8k gate`` / ``baseline`` read it as they read any run.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from evals import synth
from evals.gsm8k import MANIFEST, RESULTS, SAMPLES, TASK, _now, hardware, task_config

LM_NAME = "tiny-indexer-lm-inprocess"


@register_model(LM_NAME)
class EmbeddedLM(LM):
    """``generate_until`` only (gsm8k is a generation task). Requests are decoded ``batch_size`` at
    a time in lm-eval's order, so two runs of the same questions batch them identically (the row
    order of every decode call, which a kernel writing past its row depends on)."""

    def __init__(self, model=None, batch_size: int = 8, max_gen_toks: int = synth.MAX_GEN_TOKS, label: str = "",
                 log=None):
        super().__init__()
        if model is None:
            from evals.weights import embedded_model

            model = embedded_model()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.model, self.batch_size, self.max_gen_toks = model, batch_size, max_gen_toks
        self.label = label or model.indexer.backend_spec
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.stats = {"requests": 0, "prompts": 0, "truncated_prompts": 0, "prompt_tokens": []}

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out: list[str] = []
        n = len(requests)
        batches = (n + self.batch_size - 1) // self.batch_size
        t0 = time.time()
        for i in range(batches):
            chunk = requests[i * self.batch_size:(i + 1) * self.batch_size]
            kwargs = [dict(r.args[1]) for r in chunk]
            until = kwargs[0].get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_gen = int(kwargs[0].get("max_gen_toks", self.max_gen_toks))
            if any(k.get("until") != kwargs[0].get("until") for k in kwargs):
                raise ValueError("requests of one batch must share their stop sequences")
            res = self.model.generate([r.args[0] for r in chunk], max_gen, until)
            self.stats["requests"] += 1
            self.stats["prompts"] += len(chunk)
            self.stats["truncated_prompts"] += sum(o["truncated_prompt_tokens"] > 0 for o in res)
            self.stats["prompt_tokens"] += [o["prompt_tokens"] for o in res]
            out += [o["text"] for o in res]
            done = min(n, (i + 1) * self.batch_size)
            self.log(f"[{self.label}] batch {i + 1}/{batches}: {done}/{n} questions, {time.time() - t0:.0f} s")
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(f"{LM_NAME} serves generation tasks only (no loglikelihood)")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(f"{LM_NAME} serves generation tasks only (no loglikelihood)")


def evaluate(model, data_dir: Path, out: Path | None = None, limit: int | None = None, batch_size: int = 8,
             max_gen_toks: int = synth.MAX_GEN_TOKS, seed: int = 0, label: str = "", data_record: dict | None = None,
             log=None) -> dict:
    """lm-eval's gsm8k on ``data_dir`` with ``model`` in process. Returns ``{"metrics", "n",
    "correct": {filter: [0/1 per doc_id]}, "doc_ids", "wall_s", "lm_stats"}``; with ``out``, also
    writes a run directory ``gsm8k gate`` accepts."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    lm = EmbeddedLM(model, batch_size=batch_size, max_gen_toks=max_gen_toks, label=label, log=log)
    t0 = time.time()
    results = lm_eval.simple_evaluate(model=lm, tasks=[task_config(Path(data_dir))],
                                      task_manager=TaskManager(include_defaults=False), limit=limit,
                                      log_samples=True, random_seed=seed)
    if results is None:
        raise RuntimeError("lm_eval.simple_evaluate returned no results")
    wall = round(time.time() - t0, 2)
    samples = results.pop("samples", {}).get(TASK, [])
    correct: dict[str, dict[int, int]] = {}
    for rec in samples:
        correct.setdefault(rec["filter"], {})[rec["doc_id"]] = int(rec["exact_match"] >= 1.0)
    doc_ids = sorted(next(iter(correct.values()), {}))
    metrics = {k: v for k, v in results.get("results", {}).get(TASK, {}).items() if "," in k}
    summary = {"metrics": metrics, "n": len(doc_ids), "doc_ids": doc_ids,
               "correct": {f: [c[d] for d in doc_ids] for f, c in correct.items()}, "wall_s": wall,
               "lm_stats": {k: v for k, v in lm.stats.items() if k != "prompt_tokens"},
               "prompt_tokens": {"max": max(lm.stats["prompt_tokens"], default=0),
                                 "mean": round(sum(lm.stats["prompt_tokens"]) / max(1, len(lm.stats["prompt_tokens"])), 1)}}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / SAMPLES, "w") as f:
            for rec in samples:
                f.write(json.dumps(rec, default=str) + "\n")
        (out / RESULTS).write_text(json.dumps(results, indent=1, default=str))
        manifest = {"schema": 1, "status": "ok", "task": TASK, "limit": limit, "finished": _now(), "wall_s": wall,
                    "command": [sys.executable, *sys.argv], "hardware": hardware(), "data": data_record,
                    "task_version": results.get("versions", {}).get(TASK),
                    "num_fewshot": results.get("n-shot", {}).get(TASK), "n": summary["n"], "metrics": metrics,
                    "model": {"kind": "embedded-inprocess", "name": LM_NAME, "batch_size": batch_size,
                              "max_gen_toks": max_gen_toks, "info": model.describe()},
                    "kernel": model.indexer.describe(), "seed": {"lm_eval": seed},
                    "lm_stats": summary["lm_stats"], "prompt_tokens": summary["prompt_tokens"]}
        (out / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
    return summary
