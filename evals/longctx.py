"""``python -m evals longctx``: a long-context retrieval task that exercises the indexer.

GSM8K's 5-shot prompts are shorter than DeepSeek-V3.2's ``index_topk`` (2048): the indexer keeps
every token and accuracy cannot see its values. Here each prompt is several times longer than
top-k (``--context-tokens``, default 8192,16384,32768 for a server): many records "locker K has
access code V." in seeded filler text, and a question for one of them, so the model answers only
if the indexer selects that record's tokens. Lengths are counted with the tokenizer the sizes are
meant for (the embedded model's bytes; ``--tokenizer`` for a server; else an estimate of 4
characters a token); the run records the counts the server actually saw.

Two haystacks: ``lockers`` (the default for a server: records in filler prose, any model can read them)
and ``lookup`` (the default for the embedded model: the generated task's long format, facts "Bin K7Q has
312." until the question is as long as asked, which the embedded model is trained on, so that its
accuracy measures its indexer rather than a format it never saw).

The documents are GSM8K-format JSON lines (``question``, ``answer`` ending in ``#### N``), run
through ``evals/tasks/longctx_retrieval.yaml`` with lm-eval (0-shot, greedy, exact match on the
number). ``--data-dir`` takes any directory with such a ``test.jsonl`` instead of generating."""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from evals import data as data_mod
from evals.gsm8k import TaskSpec

TASK = "longctx_retrieval"
TASKS_DIR = Path(__file__).resolve().parent / "tasks"
GENERATOR_VERSION = 1
DEFAULT_SERVER_LENGTHS = (8192, 16384, 32768)
EMBEDDED_FRACTIONS = (4, 2, 1)  # the embedded window's room divided by these: short, half, full
MIN_TOPK_MULTIPLE = 2  # a length must be at least this many times top-k, or the task tests nothing
CHARS_PER_TOKEN = 4  # the estimate when no tokenizer is named
RECORD_EVERY = 3  # every third haystack item is a (distractor) record
DEFAULT_N_PER_LENGTH = 100
HAYSTACKS = ("lockers", "lookup")

_ADJ = ("quiet", "bright", "narrow", "old", "green", "heavy", "busy", "distant", "warm", "plain")
_NOUN = ("river", "station", "garden", "market", "bridge", "library", "harbor", "valley", "tower", "road")
_VERB = ("stays", "turns", "opens", "waits", "shines", "rests", "grows", "changes", "fades", "returns")
_ADV = ("slowly", "early", "again", "today", "at night", "in spring", "by noon", "for hours", "once", "often")
_INTRO = "Below are notes with the access codes of many lockers. Read them and answer the question.\n"


def parse_lengths(text: str) -> list[int]:
    """``8192,16384,32768`` or ``8K,16K,32K``: positive token counts, each once."""
    out = []
    for part in str(text).split(","):
        p = part.strip().lower()
        mult = 1024 if p.endswith("k") else 1
        try:
            value = int(p[:-1] if mult > 1 else p) * mult
        except ValueError:
            raise ValueError(f"--context-tokens: {part.strip()!r} is not a token count (expected e.g. "
                             f"8192,16384,32768 or 8K,16K,32K)") from None
        if value < 1:
            raise ValueError(f"--context-tokens: {part.strip()!r} must be a positive token count")
        out.append(value)
    if len(set(out)) != len(out):
        raise ValueError(f"--context-tokens: {text!r} repeats a length")
    return out


def check_lengths(lengths: list[int], index_topk: int, window: int | None, max_gen_toks: int) -> None:
    for n in lengths:
        if n < MIN_TOPK_MULTIPLE * index_topk:
            raise ValueError(f"--context-tokens: {n} is not several times index_topk={index_topk}; at least "
                             f"{MIN_TOPK_MULTIPLE * index_topk} so that the indexer must choose")
        if window is not None and n + max_gen_toks > window:
            raise ValueError(f"--context-tokens: {n} tokens plus --max-gen-toks {max_gen_toks} exceed the "
                             f"model's max_model_len={window}; at most {window - max_gen_toks}")


def _filler(rng: random.Random) -> str:
    return f"The {rng.choice(_ADJ)} {rng.choice(_NOUN)} {rng.choice(_VERB)} {rng.choice(_ADV)}."


def _record(key: int, value: int) -> str:
    return f"Locker {key} has access code {value}."


def make_doc(rng: random.Random, length: int, depth: float, count) -> dict:
    """One question whose prompt (``Question: ...\nAnswer:``) has at most ``length`` tokens by
    ``count`` and as many as fit; the asked record sits at ``depth`` (0 = first item, 1 = last)."""
    keys = iter(rng.sample(range(10000, 100000), k=max(4, length // 8)))
    target_key, target_value = next(keys), rng.randrange(1000, 10000)
    target = _record(target_key, target_value)
    tail = f"\nWhat is the access code of locker {target_key}?"
    items: list[str] = []

    def add(slack: int) -> int:
        """Appends haystack items whose token counts sum to at most ``slack``; returns how many."""
        added = 0
        while True:
            key = next(keys, None) if len(items) % RECORD_EVERY == 1 else None
            if key is not None:
                value = rng.randrange(1000, 10000)
                while value == target_value:  # the answer appears once in the prompt
                    value = rng.randrange(1000, 10000)
                item = _record(key, value)
            else:
                item = _filler(rng)
            cost = count(item + "\n")
            if cost > slack:
                return added
            items.append(item)
            slack -= cost
            added += 1

    def render():
        at = round(depth * len(items))
        question = _INTRO + "\n".join(items[:at] + [target] + items[at:]) + tail
        return question, count(f"Question: {question}\nAnswer:"), at

    add(length - count(f"Question: {_INTRO}{target}{tail}\nAnswer:"))
    # Under BPE the pieces' counts add up only approximately: measure the whole, then trim or grow.
    can_grow = True
    while True:
        question, n, at = render()
        if n > length:
            if not items:
                raise ValueError(f"--context-tokens {length}: too short for a question ({n} tokens without "
                                 f"any other record)")
            items.pop()
            can_grow = False  # never oscillate between one item more and one less
            continue
        if not can_grow or not add(length - n):
            break
    return {"question": question, "answer": f"{target}\n#### {target_value}", "context_tokens": length,
            "prompt_tokens_generated": n, "depth": round(at / max(1, len(items)), 4), "key": target_key}


def make_lookup_doc(rng: random.Random, length: int, count) -> dict:
    """One question of the generated task's long format whose prompt has at most ``length`` tokens by
    ``count`` (the asked fact drawn uniformly among the question's facts)."""
    from evals import synth

    target = length - count(synth.Q_PREFIX + synth.A_PREFIX)
    while True:
        if target < synth.MIN_TARGET_CHARS:  # make_doc keeps one fact whatever the target: it would never fit
            raise ValueError(f"--context-tokens {length}: too short for a lookup question, which needs "
                             f"{synth.MIN_TARGET_CHARS} characters besides 'Question: ' and '\\nAnswer:'")
        doc = synth.make_doc(rng, target_chars=target)
        n = count(synth.Q_PREFIX + doc["question"] + synth.A_PREFIX)
        if n <= length:
            return {**doc, "context_tokens": length, "prompt_tokens_generated": n}
        target -= n - length  # a tokenizer that counts more than a token a character: shrink and redraw


def generate(lengths: list[int], n_per_length: int, seed: int, count, haystack: str = "lockers") -> list[dict]:
    """``n_per_length`` questions per length, from one seeded generator: ``lockers`` with the asked
    record's depth spread evenly over the context (shuffled), or ``lookup`` (the generated task's long
    format)."""
    if haystack not in HAYSTACKS:
        raise ValueError(f"--haystack must be one of {HAYSTACKS}, got {haystack!r}")
    rng = random.Random(seed)
    docs = []
    for length in lengths:
        if haystack == "lookup":
            docs += [make_lookup_doc(rng, length, count) for _ in range(n_per_length)]
            continue
        depths = [(i + 0.5) / n_per_length for i in range(n_per_length)]
        rng.shuffle(depths)
        docs += [make_doc(rng, length, d, count) for d in depths]
    return docs


def counter_for(tokenizer: str | None):
    """``(count, description)``: how the generator measures lengths."""
    from evals import prompt_tokens

    if tokenizer:
        desc = "embedded byte tokenizer" if tokenizer == prompt_tokens.EMBEDDED else f"tokenizer {tokenizer}"
        return prompt_tokens.tokenizer_counter(tokenizer), desc
    return (lambda text: -(-len(text) // CHARS_PER_TOKEN)), f"estimate ({CHARS_PER_TOKEN} characters a token)"


def write_data_dir(dest: Path, docs: list[dict], meta: dict) -> dict:
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / "test.jsonl", "w") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
    (dest / data_mod.SOURCE_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def resolve_data_dir(raw: str) -> Path:
    path = Path(raw).expanduser().resolve()
    if not path.is_dir():
        raise ValueError(f"--data-dir {raw}: no such directory")
    if not (path / "test.jsonl").is_file():
        raise ValueError(f"--data-dir {path}: missing 'test.jsonl' (JSON lines with 'question' and 'answer' "
                         f"ending in '#### N'; `python -m evals longctx generate DIR` writes one)")
    return path


def task_config(test_file: Path) -> dict:
    """The task YAML as lm-eval's loader reads it, its documents pointed at ``test_file``."""
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = dict(load_yaml(TASKS_DIR / f"{TASK}.yaml", resolve_func=True))
    cfg["dataset_kwargs"] = {"data_files": {"test": str(test_file)}}
    return cfg


def _embedded_cfg(args):
    from evals.weights import embedded_config

    return embedded_config(args.weights, args.untrained, args.model_seed, args.max_model_len)


def prepare(args) -> TaskSpec:
    """Generates the documents into ``OUT/data`` (or checks ``--data-dir``) and returns the spec."""
    embedded = args.base_url is None
    if embedded:
        cfg = _embedded_cfg(args)
        topk, window = cfg.index_topk, cfg.max_model_len
        if args.index_topk is not None and args.index_topk != topk:
            raise ValueError(f"--index-topk {args.index_topk}: the embedded model's indexer keeps "
                             f"index_topk={topk} tokens; omit the flag or give {topk}")
    else:
        topk, window = args.index_topk or 2048, None
    info = {"generator": None}
    if args.data_dir:
        if args.context_tokens:
            raise ValueError("--context-tokens and --data-dir exclude each other: the data dir fixes the lengths")
        path = resolve_data_dir(args.data_dir)
        record = data_mod.local_record(path, splits=("test",))
    else:
        if args.context_tokens:
            lengths = parse_lengths(args.context_tokens)
        elif embedded:
            room = window - args.max_gen_toks
            lengths = [room // f for f in EMBEDDED_FRACTIONS]
        else:
            lengths = list(DEFAULT_SERVER_LENGTHS)
        check_lengths(lengths, topk, window, args.max_gen_toks)
        if args.n_per_length < 1:
            raise ValueError(f"--n-per-length must be >= 1, got {args.n_per_length}")
        spec = args.tokenizer or ("embedded" if embedded else None)
        count, desc = counter_for(spec)
        haystack = args.haystack or ("lookup" if embedded else "lockers")
        docs = generate(lengths, args.n_per_length, args.gen_seed, count, haystack)
        path = Path(args.out) / "data"
        info["generator"] = {"version": GENERATOR_VERSION, "seed": args.gen_seed, "context_tokens": lengths,
                             "n_per_length": args.n_per_length, "lengths_counted_with": desc, "haystack": haystack}
        write_data_dir(path, docs, info["generator"])
        record = data_mod.local_record(path, splits=("test",))
        record["source"] = "generated"
        record["generator"] = info["generator"]
        record["name"] = f"long-context {haystack} v{GENERATOR_VERSION} seed {args.gen_seed}"
    return TaskSpec(TASK, task_config(path / "test.jsonl"), record, include_path=str(TASKS_DIR))


def by_length(out: Path) -> dict:
    """Accuracy per requested context length (documents that carry ``context_tokens``)."""
    from evals.gsm8k import MANIFEST, samples_file

    groups: dict[str, dict] = {}
    path = out / samples_file(TASK)
    if not path.is_file():
        return {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        n = (rec.get("doc") or {}).get("context_tokens")
        if n is None:
            continue
        g = groups.setdefault(str(n), {})
        g.setdefault(rec["filter"], []).append(float(rec["exact_match"]))
    table = {n: {"n": len(next(iter(f.values()))),
                 **{f"exact_match,{k}": sum(v) / len(v) for k, v in f.items()}} for n, f in groups.items()}
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["by_context_tokens"] = table
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
    return table


def run(args) -> int:
    from evals import gsm8k

    spec = prepare(args)
    rc = gsm8k.run(args, spec)
    if rc == 0:
        for n, row in sorted(by_length(Path(args.out)).items(), key=lambda kv: int(kv[0])):
            scores = ", ".join(f"{k.split(',')[1]} {v:.4f}" for k, v in sorted(row.items()) if "," in k)
            print(f"  context {n} tokens: n={row['n']}, {scores}")
    return rc


def generate_command(args) -> int:
    lengths = parse_lengths(args.context_tokens)
    check_lengths(lengths, args.index_topk, None, 0)
    count, desc = counter_for(args.tokenizer)
    docs = generate(lengths, args.n_per_length, args.gen_seed, count, args.haystack)
    meta = {"version": GENERATOR_VERSION, "seed": args.gen_seed, "context_tokens": lengths,
            "n_per_length": args.n_per_length, "lengths_counted_with": desc, "haystack": args.haystack}
    write_data_dir(Path(args.dir), docs, meta)
    sha = hashlib.sha256((Path(args.dir) / "test.jsonl").read_bytes()).hexdigest()
    print(f"{args.dir}/test.jsonl: {len(docs)} questions at {lengths} tokens ({desc}), sha256 {sha}")
    return 0


def add_parser(sub, add_run_args, add_verdict_parsers, _positive_int) -> None:
    """The ``longctx`` command group; the shared flag builders come from ``evals.__main__``."""
    lc = sub.add_parser("longctx", help="long-context retrieval through lm-eval: prompts several times index_topk")
    lsub = lc.add_subparsers(dest="action", required=True)
    r = lsub.add_parser("run", help="generate the questions and run them (embedded model unless --base-url)")
    r.add_argument("--context-tokens", default=None,
                   help="prompt lengths in tokens, e.g. 8192,16384,32768 or 8K,16K (default: those for a server; "
                        "a quarter, half and all of the embedded model's window)")
    r.add_argument("--n-per-length", type=int, default=DEFAULT_N_PER_LENGTH, help="questions per length (default 100)")
    r.add_argument("--gen-seed", type=int, default=0, help="the generator's seed")
    r.add_argument("--haystack", choices=HAYSTACKS, default=None,
                   help="lockers (records in filler prose; the default for a server) or lookup (the generated "
                        "task's long format, which the embedded model is trained on; its default)")
    r.add_argument("--data-dir", default=None,
                   help="run this directory's test.jsonl (question/answer ending in '#### N') instead of generating")
    add_run_args(r, "runs/longctx")
    add_verdict_parsers(lsub, TASK)
    g = lsub.add_parser("generate", help="write the questions as DIR/test.jsonl (for lm-eval or --data-dir)")
    g.add_argument("dir")
    g.add_argument("--context-tokens", default=",".join(map(str, DEFAULT_SERVER_LENGTHS)))
    g.add_argument("--n-per-length", type=_positive_int("--n-per-length"), default=DEFAULT_N_PER_LENGTH)
    g.add_argument("--gen-seed", type=int, default=0)
    g.add_argument("--haystack", choices=HAYSTACKS, default="lockers")
    g.add_argument("--index-topk", type=_positive_int("--index-topk"), default=2048)
    g.add_argument("--tokenizer", default=None, help="count lengths with this tokenizer ('embedded': bytes)")
