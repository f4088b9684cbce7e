"""The embedded model's shipped weights: a safetensors file and the manifest that vouches for it.

``evals/weights/manifest.json`` names the file, its sha256 and size, the model config, how it was
made (training command, seeds, generator version, commit, device, time) and the accuracy it
reached. Loading recomputes the sha256 and refuses a file that does not match, and refuses tensors
that do not fit the config: a corrupt, truncated or swapped file is a :class:`WeightsError` (exit 2
from the CLI), never a model that quietly scores 0.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
from dataclasses import asdict, fields
from pathlib import Path

import torch

from evals.model import ModelConfig, weight_shapes

WEIGHTS_DIR = Path(__file__).parent / "weights"
MANIFEST = "manifest.json"
WEIGHTS_FILE = "tiny-indexer-lm.safetensors"
SCHEMA = 1


class WeightsError(ValueError):
    """The weights cannot be used: the message names the file and what is wrong."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_commit(repo: Path | None = None) -> str | None:
    """The commit the code was at (``$PARITY_GIT_COMMIT`` where the tree was copied without .git)."""
    env = os.environ.get("PARITY_GIT_COMMIT")
    if env:
        return env
    try:
        root = repo or Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def config_from_dict(raw: dict, where: str) -> ModelConfig:
    known = {f.name for f in fields(ModelConfig)}
    if not isinstance(raw, dict) or set(raw) - known:
        raise WeightsError(f"{where}: config must be an object with fields among {sorted(known)}, got {raw!r}")
    try:
        return ModelConfig(**raw)
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{where}: invalid model config: {exc}") from None


def save(dest: Path, tensors: dict[str, torch.Tensor], cfg: ModelConfig, **record) -> dict:
    """Writes the safetensors file and ``manifest.json`` under ``dest``; ``record`` (training,
    data, accuracy, ...) goes into the manifest as given."""
    from safetensors.torch import save_file

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    shapes = weight_shapes(cfg)
    if set(tensors) != set(shapes):
        raise ValueError(f"tensors must be exactly the model's: missing {sorted(set(shapes) - set(tensors))}, "
                         f"unexpected {sorted(set(tensors) - set(shapes))}")
    path = dest / WEIGHTS_FILE
    save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, str(path),
              metadata={"config": json.dumps(asdict(cfg), sort_keys=True)})
    manifest = {"schema": SCHEMA, "model": "tiny-indexer-lm", "file": WEIGHTS_FILE, "sha256": sha256_file(path),
                "bytes": path.stat().st_size, "config": asdict(cfg),
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **record}
    write_manifest(dest / MANIFEST, manifest)
    return manifest


def write_manifest(path: Path, manifest: dict) -> None:
    """``manifest`` as ``path`` (read_manifest's ``_path`` left out: where it was read is not a record)."""
    Path(path).write_text(json.dumps({k: v for k, v in manifest.items() if k != "_path"}, indent=1) + "\n")


def manifest_path(path: str | Path | None) -> Path:
    """``path``: a weights directory, its manifest, or the safetensors file beside one; default the
    shipped weights."""
    p = Path(path) if path is not None else WEIGHTS_DIR
    if p.is_dir():
        p = p / MANIFEST
    elif p.suffix == ".safetensors":
        p = p.parent / MANIFEST
    return p


def read_manifest(path: str | Path | None = None) -> dict:
    mpath = manifest_path(path)
    if not mpath.is_file():
        raise WeightsError(f"--weights: no weights manifest at {mpath} (a directory with {MANIFEST} and the "
                           f"safetensors file it names; `python -m evals train --out DIR` writes one, --untrained "
                           f"runs the random-weight model)")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise WeightsError(f"weights manifest {mpath} is not valid JSON ({exc})") from None
    for key, kind in (("file", str), ("sha256", str), ("config", dict)):
        if not isinstance(manifest.get(key), kind):
            raise WeightsError(f"weights manifest {mpath}: {key!r} is missing or not a {kind.__name__}")
    manifest["_path"] = str(mpath)
    return manifest


def load(path: str | Path | None = None) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """``(config, tensors, manifest)`` after checking the file against its manifest."""
    import safetensors
    from safetensors.torch import load_file

    manifest = read_manifest(path)
    mpath = Path(manifest["_path"])
    wpath = mpath.parent / manifest["file"]
    if not wpath.is_file():
        raise WeightsError(f"weights file {wpath} (named by {mpath}) does not exist")
    got = sha256_file(wpath)
    if got != manifest["sha256"]:
        raise WeightsError(f"weights file {wpath}: sha256 {got} does not match the manifest's {manifest['sha256']} "
                           f"({mpath}): the file is corrupt or is not the one the manifest describes")
    cfg = config_from_dict(manifest["config"], str(mpath))
    try:
        tensors = load_file(str(wpath))
    except (getattr(safetensors, "SafetensorError", OSError), OSError, ValueError) as exc:
        raise WeightsError(f"weights file {wpath} is not a readable safetensors file: {exc}") from None
    shapes = weight_shapes(cfg)
    bad = sorted(set(shapes) ^ set(tensors)) + [k for k in shapes if k in tensors and tuple(tensors[k].shape) != shapes[k]]
    if bad:
        raise WeightsError(f"weights file {wpath} does not fit the manifest's config: tensors {bad[:6]} missing, "
                           "unexpected or of the wrong shape")
    return cfg, tensors, manifest


def describe(manifest: dict) -> dict:
    """What a run's manifest records about the weights it ran."""
    return {"weights": {"manifest": manifest.get("_path"), "file": manifest.get("file"), "sha256": manifest.get("sha256"),
                        "training": manifest.get("training"), "accuracy": manifest.get("accuracy")}}


def embedded_model(weights: str | Path | None = None, untrained: bool = False, backend: str = "torch",
                   buffer: str = "exact", path: str = "fused", selection: str = "indexer",
                   model_seed: int | None = None, max_model_len: int | None = None, device: str = "cpu",
                   backend_options: dict | None = None, fp8: str | None = None):
    """The embedded model as the CLI builds it: the shipped (or ``weights``) trained model, or
    the seeded random one, on :func:`embedded_config`; ``fp8`` another fp8 flavour for its q and keys
    (e4m3fnuz: an AMD-quantized cache)."""
    from dataclasses import replace

    from evals.model import Indexer, TinyIndexerLM

    cfg = embedded_config(weights, untrained, model_seed, max_model_len)
    if fp8 is not None:
        cfg = replace(cfg, fp8=fp8)
    if untrained:
        tensors, info = None, {"weights": "untrained (seeded random)"}
    else:
        _, tensors, manifest = load(weights)  # checks the file's hash
        info = describe(manifest)
    try:
        indexer = Indexer(backend, buffer, path, options=backend_options)
    except (ImportError, OSError, RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(f"--backend {backend!r} (path {path}, buffer {buffer}) cannot be loaded: "
                         f"{type(exc).__name__}: {exc}") from None
    return TinyIndexerLM(cfg, indexer, weights=tensors, selection=selection, device=device,
                         info=info)


def accuracy_record(data: str, n: int, scores: dict, device: str, hw: dict, wall_s, **extra) -> dict:
    """The manifest's ``accuracy``: the reference indexer's lm-eval gsm8k scores on the generated task."""
    from evals.gsm8k import hardware_label

    return {"task": "gsm8k (lm-eval, 5-shot)", "data": data, "n": n,
            **{f: round(float(v), 4) for f, v in scores.items()},
            "indexer": "torch (reference), fused, exact buffer", "device": device, "hardware": hardware_label(hw),
            "wall_s": wall_s, **extra}


def record_accuracy(run_dir: str | Path, weights: str | Path | None = None) -> int:
    """Writes the accuracy of a ``gsm8k run`` of these weights (reference indexer, generated task,
    all questions) into their manifest; refuses a run of other weights, data or indexer (exit 2)."""
    from evals import synth
    from evals.gate import load_run

    manifest = read_manifest(weights)
    mpath = Path(manifest.pop("_path"))
    flex, strict = (load_run(run_dir, f) for f in ("flexible-extract", "strict-match"))
    # A `gsm8k run` (the server's info) or an in-process run of evals.lm (the model's own description).
    info = (flex.manifest.get("server") or {}).get("info") or (flex.manifest.get("model") or {}).get("info") or {}
    used = (info.get("weights") or {}) if isinstance(info.get("weights"), dict) else {}
    ind = info.get("indexer") or {}
    data = flex.manifest.get("data") or {}
    problems = []
    if used.get("sha256") != manifest["sha256"]:
        problems.append(f"it ran weights {used.get('sha256')}, not {manifest['sha256']}")
    if (ind.get("backend"), ind.get("path"), ind.get("buffer"), info.get("selection")) != ("torch", "fused", "exact", "indexer"):
        problems.append(f"its indexer was {ind.get('backend')}/{ind.get('path')}/{ind.get('buffer')} "
                        f"selection {info.get('selection')}, not the reference torch/fused/exact")
    if data.get("source") != "generated" or data.get("seed") != 0 or data.get("generator_version") != synth.GENERATOR_VERSION:
        problems.append(f"its data was {data.get('name')!r}, not {synth.record(synth.SynthSpec())['name']!r}")
    if flex.manifest.get("limit") is not None:
        problems.append(f"it ran --limit {flex.manifest['limit']}, not all questions")
    if problems:
        raise WeightsError(f"run {run_dir} cannot vouch for {mpath}: " + "; ".join(problems))
    manifest["accuracy"] = accuracy_record(
        data.get("name"), flex.n, {"flexible-extract": flex.value, "strict-match": strict.value},
        info.get("device", "cpu"), flex.manifest.get("hardware") or {}, flex.manifest.get("wall_s"),
        run=str(run_dir), command=" ".join(str(c) for c in flex.manifest.get("command", [])))
    write_manifest(mpath, manifest)
    print(f"{mpath}: accuracy flexible-extract {manifest['accuracy']['flexible-extract']}, strict-match "
          f"{manifest['accuracy']['strict-match']} (n={flex.n})")
    return 0


def embedded_config(weights: str | Path | None = None, untrained: bool = False, model_seed: int | None = None,
                    max_model_len: int | None = None) -> ModelConfig:
    """The config of the embedded model, from the manifest alone (``embedded_model`` builds the model
    on it and checks the file's hash). ``max_model_len`` may shrink a trained model's window, never
    grow it (positions past the trained window were never seen)."""
    from dataclasses import replace

    if untrained:
        if weights is not None:
            raise WeightsError("--weights and --untrained exclude each other")
        return ModelConfig(seed=0 if model_seed is None else model_seed,
                           max_model_len=1000 if max_model_len is None else max_model_len)
    manifest = read_manifest(weights)
    cfg = config_from_dict(manifest["config"], manifest["_path"])
    if max_model_len is not None:
        if max_model_len > cfg.max_model_len:
            raise WeightsError(f"--max-model-len {max_model_len}: the trained model's window is "
                               f"{cfg.max_model_len} tokens (it may be made smaller, not larger)")
        cfg = replace(cfg, max_model_len=max_model_len)
    if model_seed is not None:
        cfg = replace(cfg, seed=model_seed)
    return cfg
