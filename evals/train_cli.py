"""``python -m evals train``: the command around ``evals.train.train``: the training run, the
weights and manifest it writes, the quick checks (reference, random top-k, dense) and, where lm-eval
is installed, lm-eval's gsm8k on all generated test questions."""
from __future__ import annotations

import random
import re
import time

import torch

from evals import synth, weights
from evals.train import GEN_ROOM, TRAINED_CONFIG, TrainSpec, train

STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")  # lm-eval gsm8k's two filters
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")


def quick_check(model, n: int = 256, batch: int = 64, seed: int = 0, data: synth.SynthSpec | None = None) -> dict:
    """Greedy answers to ``n`` generated test questions in lm-eval's 5-shot layout (shots drawn at
    random from the train split), scored with lm-eval's two gsm8k filters: a progress check, run after every training; the figures
    of record come from lm-eval itself (``evals.lm``)."""
    data = data or synth.SynthSpec()
    test, train_docs = synth.docs(data, "test")[:n], synth.docs(data, "train")
    rng = random.Random(1234 + seed)
    prompts = [synth.prompt(rng.sample(train_docs, 5), d) for d in test]
    right = {"strict-match": 0, "flexible-extract": 0}
    for i in range(0, len(prompts), batch):
        outs = model.generate(prompts[i:i + batch], GEN_ROOM, ["Question:", "</s>", "<|im_end|>"])
        for d, o in zip(test[i:i + batch], outs):
            want = d["answer"].rsplit("#### ", 1)[1]
            strict = STRICT.search(o["text"])
            flex = [m for m in FLEXIBLE.findall(o["text"])]
            right["strict-match"] += bool(strict) and strict.group(1).rstrip(".") == want
            right["flexible-extract"] += bool(flex) and (flex[-1][0] or flex[-1][1]).rstrip(".") == want
    return {"n": len(test), **{k: round(v / max(1, len(test)), 4) for k, v in right.items()}}


# -- the CLI ----------------------------------------------------------------------------------------
STEP_FLAGS = ("dense_steps", "indexer_steps", "sparse_steps", "batch", "lr", "context_weight", "seq_chars", "curriculum")


def command_line(args) -> str:
    """The canonical command that reproduces this training run."""
    parts = ["python -m evals train", f"--out {args.out}", f"--seed {args.seed}", f"--data-seed {args.data_seed}"]
    if getattr(args, "init", None):
        parts.append(f"--init {args.init}")
    parts += [f"--{k.replace('_', '-')} {getattr(args, k)}" for k in STEP_FLAGS if getattr(args, k, None) is not None]
    return " ".join(parts)


def main(args) -> int:
    import importlib.util
    import tempfile
    from pathlib import Path

    from evals.gsm8k import hardware, hardware_label

    spec = TrainSpec(seed=args.seed, data_seed=args.data_seed,
                     **{k: getattr(args, k) for k in STEP_FLAGS if getattr(args, k, None) is not None})
    init, cfg, init_record = None, TRAINED_CONFIG, None
    if getattr(args, "init", None):
        cfg, init, m = weights.load(args.init)
        init_record = {"sha256": m["sha256"], "command": (m.get("training") or {}).get("command"),
                       "git_commit": (m.get("training") or {}).get("git_commit"), "init": (m.get("training") or {}).get("init")}
    net, record = train(spec, cfg, device=args.device, init=init)
    if init_record:
        record["init"] = init_record
    hw = hardware()
    training = {"command": command_line(args), "seed": spec.seed, "data_seed": spec.data_seed,
                "generator_version": synth.GENERATOR_VERSION, "git_commit": weights.git_commit(),
                "hardware": hardware_label(hw), "torch": torch.__version__,
                **record}
    test_spec = synth.SynthSpec()
    out = Path(args.out)
    manifest = weights.save(out, net.tensors(), net.cfg, training=training, eval_data=synth.record(test_spec))
    print(f"weights: {out / weights.WEIGHTS_FILE} ({manifest['bytes']} bytes, sha256 {manifest['sha256'][:16]}) "
          f"after {record['wall_s']} s", flush=True)
    batch = args.eval_batch_size or (128 if str(args.device).startswith("cuda") else 8)
    # The checks run the file just written, through the loader that checks it, as users run it.
    checks = {}
    for selection in ("indexer", "random", "dense"):
        t0 = time.time()
        model = weights.embedded_model(out, selection=selection, device=str(args.device))
        checks[selection] = {**quick_check(model, n=args.check_n, batch=batch), "wall_s": round(time.time() - t0, 1)}
        print(f"quick check [{selection}]: {checks[selection]}", flush=True)
    manifest["quick_check"] = {"what": "greedy, lm-eval's gsm8k layout and filters re-implemented (evals.train_cli."
                               "quick_check), shots drawn by the check itself: a progress figure", **checks}
    lm_eval_ok = importlib.util.find_spec("lm_eval") is not None
    if not args.no_eval and lm_eval_ok:
        from evals.lm import evaluate

        with tempfile.TemporaryDirectory() as tmp:
            synth.write(Path(tmp), test_spec)
            res = evaluate(weights.embedded_model(out, device=str(args.device)), Path(tmp), limit=args.eval_limit,
                           batch_size=batch, label="train-check")
        manifest["accuracy"] = accuracy_record(res, str(args.device), batch, hw)
        a = manifest["accuracy"]
        print(f"lm-eval on {a['data']} (n={a['n']}): flexible-extract {a.get('flexible-extract')}, "
              f"strict-match {a.get('strict-match')}", flush=True)
    elif not args.no_eval:
        print("lm-eval is not installed here: the manifest's accuracy is left to `python -m evals gsm8k run` "
              "(then `python -m evals record-accuracy RUN_DIR --weights DIR`)", flush=True)
    weights.write_manifest(out / weights.MANIFEST, manifest)
    return 0


def accuracy_record(res: dict, device: str, batch: int, hw: dict) -> dict:
    scores = {k.split(",")[1]: v for k, v in res["metrics"].items() if k.startswith("exact_match,")}
    return weights.accuracy_record(synth.record(synth.SynthSpec())["name"], res["n"], scores, device, hw,
                                   res["wall_s"], batch_size=batch)
