"""``gsm8k compare RUN_A RUN_B``: two runs of one model on the same questions (two kernel builds).

Lists the questions whose correctness flipped (with the paired exact test) and the generations that
differ. For the embedded model each differing generation is traced: its batch is replayed with A's
indexer driving and B's computed on the very same inputs at every decode call, and B's top-k sets
are checked against A's logits with the tie-aware comparison of ``parity.judge.topk``. A difference that
is only swaps at the k-th value is a top-k tie; anything else is a kernel divergence.

Exit codes: 0 every generation agrees or differs only through ties, 1 divergence beyond ties (or
differences that could not be traced), 2 unusable input."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from evals import stats
from evals.gate import RunScores, Unusable
from evals.gsm8k import REQUESTS
from evals.server import prompt_hash

MAX_SHOWN = 20


@dataclass
class Trace:
    """Selection differences of one replayed sequence: (step, layer, kind, detail)."""
    ties: int = 0
    events: list = field(default_factory=list)

    @property
    def non_tie(self) -> list:
        return [e for e in self.events if e[2] == "non-tie"]


def _prompt(rec: dict) -> str:
    return rec["arguments"][0][0] if isinstance(rec["arguments"][0], (list, tuple)) else rec["arguments"]["gen_args_0"]["arg_0"]


def _response(rec: dict) -> str:
    return rec["resps"][0][0]


def replay(a: RunScores, b: RunScores, docs: list[int], out) -> dict[int, Trace]:
    """Traces for ``docs`` (embedded runs only), one replay per server batch that holds any of them."""
    import torch  # noqa: F401  (the model needs it; imported late so compare of server runs does not)

    from evals.model import Indexer, ModelConfig, TinyIndexerLM
    from parity.judge.checks import TOLERANCES
    from parity.judge.topk import compare_topk

    ma, mb = (r.manifest["server"]["info"] for r in (a, b))
    if ma["config"] != mb["config"]:
        raise Unusable("the two embedded runs used different model configs; compare needs the same model")
    wa, wb = ((m.get("weights") or {}) for m in (ma, mb))
    sha = [w.get("sha256") if isinstance(w, dict) else w for w in (wa, wb)]
    if sha[0] != sha[1]:
        raise Unusable(f"the two embedded runs used different weights ({sha[0]} vs {sha[1]})")
    cfg = ModelConfig(**ma["config"])
    tensors = None
    if isinstance(wa, dict):
        from evals.weights import WeightsError, load

        try:
            _, tensors, manifest = load(wa.get("manifest"))
        except WeightsError as exc:
            raise Unusable(f"cannot replay: {exc}") from None
        if manifest["sha256"] != wa.get("sha256"):
            raise Unusable(f"cannot replay: {wa.get('manifest')} now holds other weights than the runs used")
    ia, ib = ma["indexer"], mb["indexer"]
    model = TinyIndexerLM(cfg, Indexer(ia["backend"], ia["buffer"], ia["path"]), weights=tensors,
                          selection=ma.get("selection", "indexer"))
    other = Indexer(ib["backend"], ib["buffer"], ib["path"])
    rtol, atol = TOLERANCES[cfg.fp8]
    by_hash = {prompt_hash(_prompt(rec)): d for d, rec in a.records.items()}
    wanted = set(docs)
    log = [json.loads(x) for x in (a.path / REQUESTS).read_text().splitlines() if x.strip()]
    traces: dict[int, Trace] = {}
    for entry in log:
        batch = [by_hash.get(h) for h in entry["prompts"]]
        if not wanted & set(batch):
            continue
        if None in batch:
            raise Unusable(f"{a.path / REQUESTS}: request {entry['request']} holds prompts not in the samples")
        local = {row: Trace() for row in range(len(batch))}

        def observer(step, layer, seqs, inp, logits, sel):
            _, sel_b = other.select(inp, cfg.index_topk)
            differ = (sel_b != sel).any(1)
            for row in torch.nonzero(differ).flatten().tolist():
                f = compare_topk(sel_b[row:row + 1], logits[row:row + 1], inp.context_lens[row:row + 1], 1,
                                 cfg.index_topk, rtol, atol)
                t = local[seqs[row]]
                if f.ok:
                    t.ties += f.details["tie_swaps"]
                    t.events.append((step, layer, "tie", f"{f.details['tie_swaps']} tie swap(s)"))
                else:
                    d = f.details["non_tie_per_row"][0]
                    t.events.append((step, layer, "non-tie", f"dropped {d['dropped']} added {d['added']} "
                                     f"(k-th logit {d['kth_value']:.4g}, context {int(inp.context_lens[row])})"))
            return sel

        model.generate([_prompt(a.records[d]) for d in batch], entry["max_tokens"], entry["stop"], observer)
        for row, d in enumerate(batch):
            traces[d] = local[row]
    return traces


def compare(a: RunScores, b: RunScores, out=print, trace: bool = True) -> int:
    if a.doc_ids != b.doc_ids:
        raise Unusable(f"the runs cover different questions ({a.n} vs {b.n} docs, or other doc_ids)")
    for name in ("task_version", "num_fewshot"):
        if getattr(a, name) != getattr(b, name):
            raise Unusable(f"different {name}: {getattr(a, name)!r} vs {getattr(b, name)!r}")
    for d in a.doc_ids:
        if _prompt(a.records[d]) != _prompt(b.records[d]):
            raise Unusable(f"doc {d}: the two runs sent different prompts (few-shot seed or data differ)")
    t = stats.mcnemar(b.correct, a.correct)
    lost = [d for d, x, y in zip(a.doc_ids, a.correct, b.correct) if x and not y]
    gained = [d for d, x, y in zip(a.doc_ids, a.correct, b.correct) if y and not x]
    differ = [d for d in a.doc_ids if _response(a.records[d]) != _response(b.records[d])]
    out(f"gsm8k compare [{a.filter}] A={a.path} B={b.path}")
    out(f"  A {a.value:.4f}  B {b.value:.4f}  (n={a.n}); flipped: {len(lost)} right->wrong, {len(gained)} "
        f"wrong->right; paired exact p-value (B worse) {t.p_value:.4g}")
    for d in (lost + gained)[:MAX_SHOWN]:
        ra, rb = a.records[d], b.records[d]
        out(f"    doc {d}: {'right->wrong' if d in lost else 'wrong->right'}  target "
            f"{ra['target'].split('####')[-1].strip()!r}  A {ra['filtered_resps'][0]!r}  B {rb['filtered_resps'][0]!r}")
    out(f"  generations: {a.n - len(differ)}/{a.n} identical, {len(differ)} differ")
    if not differ:
        out("  verdict: AGREE")
        return 0
    embedded = all((r.manifest.get("model") or {}).get("kind") == "embedded" for r in (a, b))
    if not (trace and embedded and (a.path / REQUESTS).is_file()):
        for d in differ[:MAX_SHOWN]:
            out(f"    doc {d}: A {_response(a.records[d])[:60]!r}  B {_response(b.records[d])[:60]!r}")
        out("  verdict: DIVERGED (not traced: tracing replays the embedded model only)")
        return 1
    traces = replay(a, b, differ, out)
    kinds = {}
    for d in differ:
        tr = traces.get(d, Trace())
        kind = "kernel" if tr.non_tie else "tie" if tr.events else "untraced"
        kinds[d] = kind
    for d in differ[:MAX_SHOWN]:
        tr, kind = traces.get(d, Trace()), kinds[d]
        first = (tr.non_tie or tr.events or [None])[0]
        where = f"first at decode step {first[0]}, layer {first[1]}: {first[3]}" if first else "no selection difference in replay"
        label = {"kernel": "DIVERGENCE beyond ties", "tie": "top-k tie", "untraced": "UNTRACED"}[kind]
        out(f"    doc {d}: {label}; {len(tr.non_tie)} non-tie / {len(tr.events) - len(tr.non_tie)} tie calls; {where}")
        out(f"      A {_response(a.records[d])[:60]!r}\n      B {_response(b.records[d])[:60]!r}")
    n_kernel = sum(k == "kernel" for k in kinds.values())
    n_tie = sum(k == "tie" for k in kinds.values())
    n_untraced = len(differ) - n_kernel - n_tie
    out(f"  traced: {n_tie} top-k tie, {n_kernel} divergence beyond ties, {n_untraced} untraced")
    ok = n_kernel == 0 and n_untraced == 0
    out(f"  verdict: {'AGREE (differences are top-k ties)' if ok else 'DIVERGED'}")
    return 0 if ok else 1
