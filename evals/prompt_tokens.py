"""How many tokens each prompt of a run had, and what that means for the indexer.

DeepSeek-V3.2's indexer keeps the ``index_topk`` (2048) highest-scoring tokens of the context. On a
prompt of at most ``index_topk`` tokens it keeps every token whatever logits the kernel computes, so
accuracy on such prompts cannot see an indexer value bug (only a broken mask). A run therefore
records each prompt's token count, the top-k it was measured against, and the share of prompts
longer than top-k; the gate says plainly when that share is too small.

Where the counts come from, in order (the manifest names it):
  * ``server``: the counts the server returned. lm-eval does not keep the response's ``usage``, so
    the run uses a subclass of lm-eval's own API model that reads it: per choice where the server
    reports it (the embedded server does), else ``usage.prompt_tokens`` of a request with one prompt;
  * ``tokenizer:NAME``: a Hugging Face tokenizer the user names (``--tokenizer``), for batched
    requests to servers that report only a batch total;
  * ``embedded``: the embedded model's byte-level tokenizer (``--tokenizer embedded``).
A prompt no source could count is recorded as unknown; the gate treats unknown as not shown."""
from __future__ import annotations

import contextvars
import functools
import hashlib
import statistics
import threading

SERVER, EMBEDDED = "server", "embedded"
DEFAULT_SERVER_TOPK = 2048  # DeepSeek-V3.2's index_topk
DEFAULT_MIN_SHARE = 0.5

_current_prompts: contextvars.ContextVar = contextvars.ContextVar("evals_prompts", default=None)


def text_key(prompt) -> str:
    text = prompt if isinstance(prompt, str) else getattr(prompt, "prompt", None) or str(prompt)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class UsageRecorder:
    """Prompt (by hash) -> the server's count for it; filled from the responses as they arrive."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts: dict[str, dict] = {}
        self.batched_totals = 0  # responses whose counts could not be attributed to prompts

    def record(self, prompts, response) -> None:
        if not isinstance(response, dict) or prompts is None:
            return
        choices = response.get("choices") or []
        usage = response.get("usage") or {}
        got: dict[str, dict] = {}
        per_choice = choices and all(isinstance(c.get("prompt_tokens"), int) for c in choices)
        if per_choice and len(choices) == len(prompts):
            for c in choices:
                i = c.get("index", 0)
                if isinstance(i, int) and 0 <= i < len(prompts):
                    got[text_key(prompts[i])] = {"prompt_tokens": c["prompt_tokens"],
                                                 "truncated_prompt_tokens": c.get("truncated_prompt_tokens") or 0}
        elif len(prompts) == 1 and isinstance(usage.get("prompt_tokens"), int):
            got[text_key(prompts[0])] = {"prompt_tokens": usage["prompt_tokens"],
                                         "truncated_prompt_tokens": usage.get("truncated_prompt_tokens") or 0}
        with self.lock:
            if got:
                self.counts.update(got)
            else:
                self.batched_totals += 1


def counting_model(kind: str, recorder: UsageRecorder, **model_args):
    """lm-eval's ``local-completions`` / ``local-chat-completions`` model, unchanged except that each
    response's prompt-token counts go to ``recorder`` (lm-eval parses only the texts)."""
    from lm_eval.models.openai_completions import LocalChatCompletion, LocalCompletionsAPI

    base = LocalChatCompletion if kind == "local-chat-completions" else LocalCompletionsAPI

    class Counting(base):
        def model_call(self, messages, **kwargs):
            out = super().model_call(messages, **kwargs)
            recorder.record(messages, out)
            return out

        async def amodel_call(self, session, sem, messages, **kwargs):
            # The async path parses inside amodel_call; the prompts travel in a context variable
            # (one per asyncio task) to parse_generations.
            token = _current_prompts.set(messages)
            try:
                return await super().amodel_call(session, sem, messages, **kwargs)
            finally:
                _current_prompts.reset(token)

        def parse_generations(self, outputs, **kwargs):
            prompts = _current_prompts.get()
            if prompts is not None:
                for out in outputs if isinstance(outputs, list) else [outputs]:
                    recorder.record(prompts, out)
            return super().parse_generations(outputs=outputs, **kwargs)

    Counting.__name__ = f"Counting{base.__name__}"
    return Counting(**model_args)


@functools.lru_cache(maxsize=4)
def tokenizer_counter(spec: str):
    """``embedded``: UTF-8 bytes; otherwise a Hugging Face tokenizer name or local path."""
    if spec == EMBEDDED:
        return lambda text: len(text.encode("utf-8"))
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ValueError(f"--tokenizer {spec!r}: a Hugging Face tokenizer needs the transformers package "
                         f"(pip install transformers), or give 'embedded'") from None
    try:
        tok = AutoTokenizer.from_pretrained(spec)
    except Exception as exc:
        raise ValueError(f"--tokenizer {spec!r}: cannot load it as a Hugging Face tokenizer "
                         f"({type(exc).__name__}: {str(exc)[:200]}); give a local path, a cached name, "
                         f"or 'embedded'") from None
    return lambda text: len(tok(text).input_ids)


def per_doc_counts(prompts: dict[int, str], recorder: UsageRecorder | None, fallback: str | None) -> dict:
    """``{doc_id: {"prompt_tokens", "truncated_prompt_tokens", "source"}}`` (``prompt_tokens`` None
    when nothing could count it). ``prompts`` maps doc_id to the prompt text lm-eval sent."""
    counter = tokenizer_counter(fallback) if fallback else None
    source = f"tokenizer:{fallback}" if fallback and fallback != EMBEDDED else fallback
    out = {}
    for doc, text in prompts.items():
        rec = (recorder.counts.get(text_key(text)) if recorder else None)
        if rec is not None:
            out[doc] = {**rec, "source": SERVER}
        elif counter is not None:
            out[doc] = {"prompt_tokens": counter(text), "truncated_prompt_tokens": None, "source": source}
        else:
            out[doc] = {"prompt_tokens": None, "truncated_prompt_tokens": None, "source": None}
    return out


def summarize(per_doc: dict, index_topk: int, note: str | None = None) -> dict:
    """The manifest's ``prompt_tokens`` block."""
    counted = {d: r["prompt_tokens"] for d, r in per_doc.items() if r["prompt_tokens"] is not None}
    lens = sorted(counted.values())
    over = sum(n > index_topk for n in lens)
    truncated = sorted(d for d, r in per_doc.items() if r.get("truncated_prompt_tokens"))
    sources = sorted({r["source"] for r in per_doc.values() if r["source"]})
    block = {"index_topk": index_topk, "n": len(per_doc), "counted": len(lens), "unknown": len(per_doc) - len(lens),
             "sources": sources, "over_topk": over,
             "share_over_topk": over / len(lens) if lens else None,
             # mean over prompts of the share of the prompt's tokens the indexer leaves out
             "mean_dropped_share": statistics.fmean(max(0.0, 1 - index_topk / n) for n in lens) if lens else None,
             "min": lens[0] if lens else None, "median": statistics.median(lens) if lens else None,
             "max": lens[-1] if lens else None,
             "truncated_prompts": len(truncated), "truncated_doc_ids": truncated[:50],
             "per_doc": {str(d): counted.get(d) for d in sorted(per_doc)}}
    if note:
        block["note"] = note
    return block


def coverage(block: dict | None, min_share: float = DEFAULT_MIN_SHARE) -> tuple[bool, list[str]]:
    """``(shown, lines)``: whether the run's prompts are long enough for its accuracy to reflect the
    indexer's values, and the plain-words lines that say so (or why not)."""
    if not block or not block.get("counted"):
        why = (block or {}).get("note") or "this run did not record prompt lengths"
        return False, [f"prompt lengths unknown ({why}): cannot tell whether this accuracy can see an indexer "
                       "value bug (pass --tokenizer, or --batch-size 1 against a server)"]
    k, share = block["index_topk"], block["share_over_topk"]
    lines = [f"prompt tokens: min {block['min']}, median {block['median']:g}, max {block['max']} "
             f"({block['counted']}/{block['n']} counted, from {', '.join(block['sources'])}); "
             f"{block['over_topk']} of {block['counted']} ({share:.0%}) exceed index_topk={k}; the indexer "
             f"leaves out {block['mean_dropped_share']:.0%} of a prompt's tokens on average"]
    if block.get("unknown"):
        lines.append(f"{block['unknown']} prompt(s) could not be counted and are not in the share")
    if block.get("truncated_prompts"):
        lines.append(f"WARNING: the server truncated {block['truncated_prompts']} prompt(s) to fit its window "
                     f"(doc_ids {block['truncated_doc_ids'][:10]}): the model did not see them whole")
    # over all the run's prompts: one that could not be counted is not shown to exceed index_topk (the share of
    # the counted alone once passed a run with 1 of 40 prompts counted)
    share_all = block["over_topk"] / block["n"] if block.get("n") else 0.0
    shown = share_all >= min_share
    if not shown:
        lines.append(f"WARNING: only {share_all:.0%} of prompts exceed index_topk={k}: the indexer "
                     "keeps every token of the rest, so this accuracy cannot see an indexer value bug")
    return shown, lines
