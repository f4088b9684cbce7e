"""Where a GSM8K run's documents come from, and the record of it in the run manifest.

Two sources, nothing else: JSONL files the user names (``--data-dir`` or ``$GSM8K_DATA_DIR``, for
machines without network), or the hub dataset lm-eval's own task config names (``openai/gsm8k``,
config ``main``), loaded through ``datasets`` with whatever online/offline mode the user's
environment sets. ``export-data`` turns the second into the first for an offline machine.

Both records carry a sha256 per split over the same bytes: the export writes each document as
``json.dumps({"question", "answer"})`` per line, the serialization of the original GSM8K release,
so a hub run, its export and a copy of the release compare by hash.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

DATA_ENV = "GSM8K_DATA_DIR"
SPLITS = ("train", "test")
FIELDS = ("question", "answer")
EXPORT_COMMAND = "python -m evals gsm8k export-data DIR"
SOURCE_FILE = "source.json"  # written beside an export: where it came from


class DataUnavailable(Exception):
    """No usable GSM8K data: the message says what to do."""


def resolve_data_dir(arg: str | None) -> Path | None:
    """``--data-dir``, else ``$GSM8K_DATA_DIR``, else None (the hub dataset)."""
    raw = arg or os.environ.get(DATA_ENV)
    if not raw:
        return None
    path = Path(raw).expanduser()
    path = path if path.is_absolute() else (Path.cwd() / path)
    if not path.is_dir():
        raise ValueError(f"--data-dir / ${DATA_ENV} = {path}: no such directory")
    missing = [f"{s}.jsonl" for s in SPLITS if not (path / f"{s}.jsonl").is_file()]
    if missing:
        raise ValueError(f"--data-dir / ${DATA_ENV} = {path}: missing {missing} (GSM8K JSONL with "
                         f"{' and '.join(repr(f) for f in FIELDS)} fields; `{EXPORT_COMMAND}` writes them)")
    return path.resolve()


def check_jsonl(path: Path) -> bytes:
    """The file's bytes, after checking that every line is a JSON object with string ``question``
    and ``answer`` fields and an answer that ends in ``#### N`` (GSM8K's format). Raises
    ValueError naming the file and line: lm-eval would otherwise stop mid-run with a traceback."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}): expected JSON lines") from None
    rows = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({exc})") from None
        if not isinstance(doc, dict) or not all(isinstance(doc.get(f), str) for f in FIELDS):
            raise ValueError(f"{path}:{lineno}: expected a JSON object with string fields "
                             f"{' and '.join(repr(f) for f in FIELDS)}")
        tail = doc["answer"].rsplit("####", 1)
        if len(tail) != 2 or not tail[1].strip():
            raise ValueError(f"{path}:{lineno}: the answer must end in '#### N' (GSM8K's format)")
        rows += 1
    if rows == 0:
        raise ValueError(f"{path}: no documents (an empty file)")
    return raw


def local_record(data_dir: Path, splits=SPLITS) -> dict:
    files = {}
    for s in splits:
        p = data_dir / f"{s}.jsonl"
        raw = check_jsonl(p)
        files[s] = {"path": str(p), "sha256": hashlib.sha256(raw).hexdigest(), "rows": raw.count(b"\n")}
    return {"source": "local", "dir": str(data_dir), "files": files}


def _line(doc: dict) -> bytes:
    return (json.dumps({f: doc[f] for f in FIELDS}) + "\n").encode()


def unavailable_message(dataset: str, config: str | None, exc: BaseException) -> str:
    return (f"cannot load the GSM8K hub dataset {dataset!r} (config {config!r}): {type(exc).__name__}: {exc}\n"
            f"Without network (or with HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set and no cached copy), give the "
            f"data as JSONL: --data-dir DIR or {DATA_ENV}=DIR in the environment, a directory holding train.jsonl "
            f"and test.jsonl ('question' and 'answer' per line). On a machine with network, `{EXPORT_COMMAND}` "
            f"writes them.")


def load_hub(dataset: str, config: str | None, revision: str | None = None):
    """The hub dataset as ``(DatasetDict, commit)``. The builder's hash is the dataset repository's
    commit for hub datasets (``datasets`` keys its cache directory by it), also when read from the
    local cache offline."""
    try:
        import datasets

        builder = datasets.load_dataset_builder(dataset, config, revision=revision)
        builder.download_and_prepare()
        ds = builder.as_dataset()
    except Exception as exc:  # ConnectionError (offline, no cache), DatasetNotFoundError, ...
        raise DataUnavailable(unavailable_message(dataset, config, exc)) from exc
    missing = [s for s in SPLITS if s not in ds]
    if missing:
        raise DataUnavailable(f"hub dataset {dataset!r} (config {config!r}) has no split {missing}")
    return ds, builder.hash


def hub_record(ds, dataset: str, config: str | None, commit: str | None) -> dict:
    import datasets

    sha, rows = {}, {}
    for s in SPLITS:
        h = hashlib.sha256()
        for doc in ds[s]:
            h.update(_line(doc))
        sha[s], rows[s] = h.hexdigest(), ds[s].num_rows
    return {"source": "hub", "dataset": dataset, "config": config, "revision": commit,
            "fingerprint": {s: ds[s]._fingerprint for s in SPLITS}, "sha256": sha, "rows": rows,
            "datasets_version": datasets.__version__}


def export(dest: Path, dataset: str, config: str | None, revision: str | None = None, load=load_hub) -> dict:
    """Writes ``train.jsonl``, ``test.jsonl`` and ``source.json`` (the hub record) under ``dest``."""
    ds, commit = load(dataset, config, revision)
    record = hub_record(ds, dataset, config, commit)
    dest.mkdir(parents=True, exist_ok=True)
    for s in SPLITS:
        with open(dest / f"{s}.jsonl", "wb") as f:
            for doc in ds[s]:
                f.write(_line(doc))
    (dest / SOURCE_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return record
