"""A generated task in GSM8K's format whose answers depend on which tokens the indexer selects.

Each question states many quantities ("Bin K7Q has 312.") and asks for one of them; the answer
restates that fact and ends ``#### N``, as GSM8K answers do. Codes are random, so the answer is
nowhere but in that one fact, stated tens to hundreds of tokens before the question ends: under
lm-eval's 5-shot prompt (about 1.3 KB, 40 times the embedded model's ``index_topk``) a model whose
attention sees only the selected tokens can answer only if its indexer selects that fact.

The files are those of the GSM8K release (``train.jsonl`` / ``test.jsonl``, one ``{"question",
"answer"}`` object a line), so lm-eval's own ``gsm8k`` task runs on them through ``--data-dir``;
``source.json`` beside them records the generator version, seed and parameters. The same
generator writes a long-context retrieval set (``target_chars``: facts are added until each
question reaches that length) for 0-shot runs at the model's scale, and the training stream the
embedded model learns from (``training_text``). Everything is a pure function of the seed and
``GENERATOR_VERSION``: change the output, bump the version.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from evals.data import SOURCE_FILE, SPLITS

GENERATOR_VERSION = 1
# No I/O/0/1: codes stay unambiguous to a reader. 32 symbols, 3 of them: 32768 codes, so a code
# of the question being asked is almost never also in one of the few-shot examples before it.
ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
CODE_LEN = 3
# (opening sentence, container word, plural item, preposition) - the scene only varies the wording.
SCENES = (
    ("A store counts nails in its bins.", "Bin", "nails", "in"),
    ("A library counts books on its shelves.", "Shelf", "books", "on"),
    ("A farm counts sheep in its pens.", "Pen", "sheep", "in"),
    ("A depot counts boxes in its crates.", "Crate", "boxes", "in"),
    ("A school counts pencils in its drawers.", "Drawer", "pencils", "in"),
    ("A bakery counts rolls on its trays.", "Tray", "rolls", "on"),
    ("A garage counts bolts in its tins.", "Tin", "bolts", "in"),
    ("A port counts barrels on its docks.", "Dock", "barrels", "on"),
)
VALUES = (10, 999)  # 2 or 3 digits: a guessed or half-copied number is wrong
MAX_GEN_TOKS = 48  # embedded runs' generation room: an answer and the "Question:" that stops it fit in 41
MIN_TARGET_CHARS = 120  # the long format's shortest question: the longest opening, one fact and the ask
# lm-eval's gsm8k prompt: "Question: {q}\nAnswer:" then " {answer}", shots joined by "\n\n".
Q_PREFIX, A_PREFIX, SHOT_SEP = "Question: ", "\nAnswer:", "\n\n"


@dataclass(frozen=True)
class SynthSpec:
    seed: int = 0
    n_test: int = 1319  # GSM8K's test split
    n_train: int = 2000  # the few-shot pool
    min_facts: int = 4
    max_facts: int = 9
    target_chars: int | None = None  # long format: facts added until a question has this many characters

    def __post_init__(self):
        for name in ("n_test", "n_train", "min_facts"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        if not isinstance(self.max_facts, int) or self.max_facts < self.min_facts:
            raise ValueError(f"max_facts must be an int >= min_facts ({self.min_facts}), got {self.max_facts!r}")
        if self.max_facts > len(ALPHABET) ** CODE_LEN:
            raise ValueError(f"max_facts must be <= {len(ALPHABET) ** CODE_LEN} (distinct codes)")
        if self.target_chars is not None and (not isinstance(self.target_chars, int)
                                              or self.target_chars < MIN_TARGET_CHARS):
            raise ValueError(f"target_chars must be an int >= {MIN_TARGET_CHARS} (room for one fact and the question), "
                             f"got {self.target_chars!r}")


def _code(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(CODE_LEN))


def make_doc(rng: random.Random, n_facts: int | None = None, target_chars: int | None = None) -> dict:
    """One ``{"question", "answer"}``: ``n_facts`` facts, or as many as keep the question within
    ``target_chars``. The fact asked about is drawn uniformly among them."""
    opening, box, items, prep = rng.choice(SCENES)
    ask_tail = f" How many {items} are {prep} {box.lower()} "
    codes: list[str] = []
    facts: list[str] = []
    length = len(opening) + len(ask_tail) + CODE_LEN + 1
    while n_facts is None or len(facts) < n_facts:
        code = _code(rng)
        if code in codes:
            continue
        fact = f" {box} {code} has {rng.randint(*VALUES)}."
        if target_chars is not None and facts and length + len(fact) > target_chars:
            break
        codes.append(code)
        facts.append(fact)
        length += len(fact)
    i = rng.randrange(len(facts))
    value = int(facts[i].rsplit(" ", 1)[1].rstrip("."))
    question = opening + "".join(facts) + ask_tail + codes[i] + "?"
    answer = f"{box} {codes[i]} has {value} {items}.\n#### {value}"
    return {"question": question, "answer": answer}


def docs(spec: SynthSpec, split: str) -> list[dict]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    # One stream per split, derived from the seed: the test questions do not depend on n_train.
    rng = random.Random(f"synth-v{GENERATOR_VERSION}-{spec.seed}-{split}")
    n = spec.n_test if split == "test" else spec.n_train
    out = []
    for _ in range(n):
        if spec.target_chars is not None:
            out.append(make_doc(rng, target_chars=spec.target_chars))
        else:
            out.append(make_doc(rng, n_facts=rng.randint(spec.min_facts, spec.max_facts)))
    return out


def record(spec: SynthSpec, sha256: dict | None = None) -> dict:
    """How the manifest names this data set (never to be confused with GSM8K)."""
    rec = {"source": "generated", "generator": "evals.synth", "generator_version": GENERATOR_VERSION,
           "seed": spec.seed, "spec": asdict(spec),
           "name": f"synthetic lookup v{GENERATOR_VERSION} seed {spec.seed}"
                   + (f" ({spec.target_chars}-char questions)" if spec.target_chars else "")}
    if sha256 is not None:
        rec["sha256"] = sha256
    return rec


def write(dest: Path, spec: SynthSpec) -> dict:
    """Writes ``train.jsonl``, ``test.jsonl`` and ``source.json`` under ``dest``; returns the record."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    sha = {}
    for split in SPLITS:
        data = "".join(json.dumps(d) + "\n" for d in docs(spec, split)).encode()
        (dest / f"{split}.jsonl").write_bytes(data)
        sha[split] = hashlib.sha256(data).hexdigest()
    rec = record(spec, sha)
    (dest / SOURCE_FILE).write_text(json.dumps(rec, indent=1) + "\n")
    return rec


def read_record(data_dir: Path) -> dict | None:
    """The generator's record of a data dir it wrote, if the files still match it (else None)."""
    path = Path(data_dir) / SOURCE_FILE
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if rec.get("source") != "generated" or not isinstance(rec.get("sha256"), dict):
        return None
    for split in SPLITS:
        f = Path(data_dir) / f"{split}.jsonl"
        if not f.is_file() or hashlib.sha256(f.read_bytes()).hexdigest() != rec["sha256"].get(split):
            return None
    return rec


def shot(doc: dict) -> str:
    """One solved example as lm-eval's gsm8k task writes it into a few-shot prompt."""
    return f"{Q_PREFIX}{doc['question']}{A_PREFIX} {doc['answer']}"


def prompt(shots: list[dict], target: dict) -> str:
    """lm-eval's gsm8k prompt: the solved shots, then the target question (no description)."""
    return SHOT_SEP.join([shot(d) for d in shots] + [f"{Q_PREFIX}{target['question']}{A_PREFIX}"])


def max_prompt_chars(spec: SynthSpec, shots: int = 5) -> int:
    """An upper bound of lm-eval's ``shots``-shot prompt on this data, for sizing max_model_len."""
    if spec.target_chars is not None:
        q = spec.target_chars
    else:
        longest_fact = len(" Drawer XXX has 999.")
        q = max(len(o) + len(f" How many {i} are {p} {b.lower()} XXX?") for o, b, i, p in SCENES) \
            + spec.max_facts * longest_fact
    a = max(len(f"{b} XXX has 999 {i}.\n#### 999") for _, b, i, _ in SCENES)
    one = len(Q_PREFIX) + q + len(A_PREFIX) + 1 + a
    return shots * (one + len(SHOT_SEP)) + len(Q_PREFIX) + q + len(A_PREFIX)


def training_text(rng: random.Random, max_chars: int, spec: SynthSpec, long_share: float = 0.25) -> tuple[str, list[tuple[int, int]]]:
    """One training sequence of at most ``max_chars`` characters and the (start, end) spans of its
    answers (each `` answer`` followed by the next shot's ``\\n\\nQuestion:``, what a model must
    produce to stop). Either solved shots back to back, as in lm-eval's prompts (the first answers
    see few shots, the last ones many), or, with probability ``long_share``, one long question of
    the long format filling the sequence."""
    if rng.random() < long_share:
        target = rng.randint(max(MIN_TARGET_CHARS, max_chars // 3), max_chars - 60)
        docs_ = [make_doc(rng, target_chars=target)]
    else:
        docs_ = []
        used = 0
        while True:
            d = make_doc(rng, n_facts=rng.randint(spec.min_facts, spec.max_facts))
            add = len(shot(d)) + len(SHOT_SEP)
            if used + add > max_chars:
                break
            docs_.append(d)
            used += add
        if not docs_:
            raise ValueError(f"max_chars={max_chars} holds no question of {spec.max_facts} facts")
    text, spans = "", []
    for d in docs_:
        head = f"{Q_PREFIX}{d['question']}{A_PREFIX}"
        start = len(text) + len(head)
        text += head + " " + d["answer"] + SHOT_SEP
        spans.append((start, min(len(text) + len(Q_PREFIX.rstrip()), max_chars)))
    text += Q_PREFIX.rstrip()
    return text[:max_chars], spans
