"""python -m evals gsm8k run|gate|compare|baseline|export-data|make-data, python -m evals longctx
run|gate|compare|baseline, python -m evals serve|train|sensitivity|record-accuracy."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from evals import synth

EMBEDDED_MAX_GEN_TOKS = synth.MAX_GEN_TOKS
UNTRAINED_MAX_GEN_TOKS = 32  # untrained, the embedded model never stops early; keep CPU runs short


def _model_args(p):
    g = p.add_argument_group("embedded model (used when --base-url is not given)")
    g.add_argument("--backend", default="torch", help="parity backend computing the indexer logits (default torch)")
    g.add_argument("--buffer", default="exact",
                   help="logits buffer: exact | padded (guarded) or a parity.contract.strategies name (default exact)")
    g.add_argument("--path", default="fused", choices=("fused", "stage1", "preshuffle"))
    g.add_argument("--weights", default=None, help="weights directory or manifest (default: the shipped trained "
                   "model, evals/weights)")
    g.add_argument("--untrained", action="store_true", help="seeded random weights, the small untrained config")
    g.add_argument("--selection", default="indexer", choices=("indexer", "random", "dense"),
                   help="controls: random (index_topk tokens at random) or dense (every token, no indexer)")
    g.add_argument("--device", type=_device, default="cpu", help="torch device of the model (default cpu)")
    g.add_argument("--model-seed", type=int, default=None, help="untrained: the weights' seed (default 0)")
    g.add_argument("--max-model-len", type=_int_at_least("--max-model-len", 2), default=None,
                   help="untrained: default 1000; trained: its window (2000), which this may only shrink")
    g.add_argument("--truncate-prompts", action="store_true",
                   help="left-truncate prompts that do not fit max_model_len (reported in each response and the "
                        "run's manifest) instead of refusing them with HTTP 400 as vLLM does")


def cpu_threads(device) -> None:
    """One intra-op thread on the CPU unless $EVALS_TORCH_THREADS says otherwise: the model's ops are
    small, and on a shared CPU a second thread waits for a core far longer than the op takes."""
    if str(device or "cpu").startswith("cpu"):
        import torch

        torch.set_num_threads(int(os.environ.get("EVALS_TORCH_THREADS", "1")))


def embedded(args):
    """The embedded model the flags describe (trained, or --untrained)."""
    from evals.weights import embedded_model

    cpu_threads(args.device)
    return embedded_model(args.weights, args.untrained, args.backend, args.buffer, args.path, args.selection,
                          args.model_seed, args.max_model_len, args.device)


def _positive_int(flag: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be a positive integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} must be a positive integer, got {value}")
        return value
    return parse


def _int_at_least(flag: str, low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{flag} must be an integer >= {low}, got {value}")
        return value
    return parse


def _port(text: str) -> int:
    value = _int_at_least("--port", 0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"--port must be in 0..65535, got {value}")
    return value


def _fraction(flag: str, low: float = 0.0, high: float = 1.0, high_open: bool = False):
    """A finite number in [low, high] (or [low, high)): NaN compares false with every bar and would pass a gate."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (low <= value < high if high_open else low <= value <= high):
            raise argparse.ArgumentTypeError(
                f"{flag} must be a number in [{low:g}, {high:g}{')' if high_open else ']'}, got {text!r}")
        return value
    return parse


def _device(text: str) -> str:
    """A torch device this machine has (cpu, cuda, cuda:N), checked before a model is built on it."""
    from parity.run.device_names import device_error

    def gpus() -> int:
        import torch

        return torch.cuda.device_count()

    if (why := device_error(text, gpus, "torch")) is not None:
        raise argparse.ArgumentTypeError(why.removeprefix("--device "))
    return text


def add_run_args(r, default_out: str) -> None:
    """The flags every lm-eval run takes (gsm8k run, longctx run)."""
    r.add_argument("--out", default=default_out, help=f"run directory (default {default_out})")
    r.add_argument("--limit", type=_positive_int("--limit"), default=None, help="first N test questions (smoke runs)")
    r.add_argument("--base-url", default=None, help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    r.add_argument("--model", default=None, help="served model name (with --base-url)")
    r.add_argument("--chat", action="store_true", help="use /v1/chat/completions (local-chat-completions)")
    r.add_argument("--num-concurrent", type=_positive_int("--num-concurrent"), default=1)
    r.add_argument("--max-retries", type=_int_at_least("--max-retries", 0), default=3)
    r.add_argument("--batch-size", type=_positive_int("--batch-size"), default=None,
                   help="prompts per request (default 8 embedded, 1 server); the embedded server decodes them as one batch")
    r.add_argument("--max-gen-toks", type=_positive_int("--max-gen-toks"), default=None, help=f"default 256 (server), {EMBEDDED_MAX_GEN_TOKS} "
                   f"(embedded; {UNTRAINED_MAX_GEN_TOKS} untrained)")
    r.add_argument("--timeout", type=_positive_int("--timeout"), default=600)
    r.add_argument("--seed", type=int, default=0, help="lm-eval's random seed (few-shot order uses its own, 1234)")
    r.add_argument("--kernel-backend", default=None, help="label for the manifest (server runs)")
    r.add_argument("--kernel-build", default=None, help="label for the manifest, e.g. a wheel version or commit")
    r.add_argument("--index-topk", type=_positive_int("--index-topk"), default=None,
                   help="the indexer's top-k the prompt lengths are measured against (default 2048 for a server, "
                        "the embedded model's own index_topk)")
    r.add_argument("--tokenizer", default=None,
                   help="count prompt tokens with this Hugging Face tokenizer (name or local path) where the server's "
                        "usage cannot be attributed to prompts (batched requests); 'embedded' = the byte tokenizer")
    _model_args(r)


def add_verdict_parsers(sub, task: str) -> None:
    """gate, compare and baseline, the same for every task (the run directory names its task)."""
    g = sub.add_parser("gate", help=f"gate a {task} run against a baseline (exit 0 pass, 1 regression, 2 unusable)")
    g.add_argument("run")
    g.add_argument("--baseline", required=True)
    g.add_argument("--filter", default="flexible-extract", choices=("strict-match", "flexible-extract"))
    g.add_argument("--confidence", type=_fraction("--confidence", 0.5, 1.0, high_open=True), default=0.95)
    g.add_argument("--floor", type=_fraction("--floor"), default=None, help="absolute minimum accuracy")
    g.add_argument("--min-share-over-topk", type=_fraction("--min-share-over-topk"), default=0.5,
                   help="below this share of prompts longer than index_topk the verdict says that the accuracy "
                        "cannot see an indexer value bug (default 0.5)")
    g.add_argument("--require-coverage", action="store_true",
                   help="make such a run unusable (exit 2) instead of a verdict with that warning")

    c = sub.add_parser("compare", help="paired comparison of two runs; traces embedded-model divergences")
    c.add_argument("run_a")
    c.add_argument("run_b")
    c.add_argument("--filter", default="flexible-extract", choices=("strict-match", "flexible-extract"))
    c.add_argument("--no-trace", action="store_true", help="do not replay differing generations")

    b = sub.add_parser("baseline", help="write a baseline file (with the per-sample vector) from a run")
    b.add_argument("run")
    b.add_argument("-o", "--output", required=True)
    b.add_argument("--name", default=None)
    b.add_argument("--filter", default="flexible-extract", choices=("strict-match", "flexible-extract"))
    b.add_argument("--no-samples", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    from evals import longctx

    p = argparse.ArgumentParser(prog="python -m evals")
    sub = p.add_subparsers(dest="cmd", required=True)
    gsm = sub.add_parser("gsm8k", help="GSM8K through lm-eval: run, gate, compare, baseline")
    gsub = gsm.add_subparsers(dest="action", required=True)

    r = gsub.add_parser("run", help="run lm-eval's gsm8k task (embedded model unless --base-url)")
    r.add_argument("--data-dir", default=None, help="GSM8K-format JSONL dir with train.jsonl and test.jsonl. "
                   "Default: the embedded model runs the generated task (evals.synth, --synth-seed), written to "
                   "OUT/data; a server runs GSM8K from $GSM8K_DATA_DIR, else lm-eval's hub dataset openai/gsm8k")
    r.add_argument("--synth-seed", type=int, default=0, help="seed of the generated task (embedded default data)")
    add_run_args(r, "runs/gsm8k")
    add_verdict_parsers(gsub, "gsm8k")

    x = gsub.add_parser("export-data", help="write the hub dataset as train.jsonl/test.jsonl for offline machines")
    x.add_argument("dir", help="output directory (then: --data-dir DIR or GSM8K_DATA_DIR=DIR)")
    x.add_argument("--revision", default=None, help="hub revision (commit) to export (default: the latest)")

    m = gsub.add_parser("make-data", help="write the generated task (GSM8K format) into a directory")
    m.add_argument("dir")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--n-test", type=_positive_int("--n-test"), default=1319)
    m.add_argument("--n-train", type=_positive_int("--n-train"), default=2000)
    m.add_argument("--facts", default=None, help="MIN:MAX facts per question (default 4:9)")
    m.add_argument("--target-chars", type=_int_at_least("--target-chars", synth.MIN_TARGET_CHARS), default=None,
                   help="long format: facts added until each question has this many characters (0-shot runs)")

    longctx.add_parser(sub, add_run_args, add_verdict_parsers, _positive_int)
    _train_parsers(sub)

    s = sub.add_parser("serve", help="serve the embedded model on an OpenAI-compatible /v1/completions")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=_port, default=8000)
    s.add_argument("--log", default=None, help="append each decoded batch to this JSONL")
    s.add_argument("--max-body-bytes", type=_positive_int("--max-body-bytes"), default=None,
                   help="refuse larger request bodies with HTTP 413 (default 64 MiB)")
    _model_args(s)
    return p


def _train_parsers(sub) -> None:
    t = sub.add_parser("train", help="train the embedded model (DSv3.2 recipe: dense, indexer warm-up, sparse)")
    t.add_argument("--out", required=True, help="directory for the safetensors file and its manifest")
    t.add_argument("--seed", type=int, default=0, help="model init and training order")
    t.add_argument("--data-seed", type=int, default=0, help="the training stream")
    t.add_argument("--dense-steps", type=int, default=None)
    t.add_argument("--indexer-steps", type=int, default=None)
    t.add_argument("--sparse-steps", type=int, default=None)
    t.add_argument("--batch", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--context-weight", type=float, default=None, help="loss weight outside the answers")
    t.add_argument("--seq-chars", type=int, default=None, help="training sequence length (default 1952)")
    t.add_argument("--curriculum", type=float, default=None, help="share of the dense stage over which the "
                   "facts per question grow from 1 (default 0.3; 0: none)")
    t.add_argument("--init", default=None, help="continue from these weights (a directory with a manifest) "
                   "instead of the seed's random ones; the manifest records them")
    t.add_argument("--check-n", type=int, default=256, help="questions of the quick checks (reference, controls)")
    t.add_argument("--device", type=_device, default=None, help="default cuda when available, else cpu")
    t.add_argument("--eval-limit", type=int, default=None, help="questions of the final check (default all 1319)")
    t.add_argument("--eval-batch-size", type=int, default=None, help="default 128 on a GPU, 8 on the CPU")
    t.add_argument("--no-eval", action="store_true", help="skip the final lm-eval check (no accuracy in the manifest)")

    v = sub.add_parser("sensitivity", help="every planted fault and real build as the model's indexer: accuracy, "
                       "gate and parity verdicts (JSON + Markdown)")
    v.add_argument("--out", required=True)
    v.add_argument("--limit", type=_positive_int("--limit"), default=None, help="first N questions (default all 1319)")
    v.add_argument("--batch-size", type=_positive_int("--batch-size"), default=None, help="decode batch (default 128 on a GPU, 8 on the CPU)")
    v.add_argument("--max-gen-toks", type=_positive_int("--max-gen-toks"), default=EMBEDDED_MAX_GEN_TOKS)
    v.add_argument("--device", type=_device, default=None, help="default cuda when available, else cpu")
    v.add_argument("--weights", default=None)
    v.add_argument("--data-dir", default=None, help="default: the generated task (--data-seed), written to OUT/data")
    v.add_argument("--data-seed", type=int, default=0)
    v.add_argument("--aiter-tree", default=None, help="an aiter source tree: adds its stage1 rows")
    v.add_argument("--no-triton", action="store_true", help="leave out the project's Triton kernels")
    v.add_argument("--no-builds", action="store_true", help="leave out aiter and DeepGEMM")
    v.add_argument("--only", default=None, help="comma-separated row ids (the reference is always added)")
    v.add_argument("--skip", default=None, help="comma-separated row ids or id prefixes to leave out (e.g. deepgemm/)")
    v.add_argument("--resume", action="store_true", help="keep the rows OUT/rows/ already holds a finished record "
                   "of (from an earlier or interrupted run, or copied there from another host) and run the rest")
    v.add_argument("--jobs", type=_int_at_least("--jobs", 0), default=4, help="rows run at once, each in its own process (0: all in "
                   "this process, one after the other)")
    v.add_argument("--confidence", type=_fraction("--confidence", 0.5, 1.0, high_open=True), default=0.95)
    v.add_argument("--parity-timeout", type=_positive_int("--parity-timeout"), default=900)
    v.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)

    a = sub.add_parser("record-accuracy", help="write a run's accuracy into a weights manifest (the reference "
                       "indexer on the generated task, where training could not run lm-eval)")
    a.add_argument("run", help="a `gsm8k run` directory of those weights, reference indexer, generated task")
    a.add_argument("--weights", default=None, help="weights directory (default: the shipped one)")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from evals.data import DataUnavailable
    from evals.gate import UNUSABLE, Unusable

    try:
        if args.cmd == "serve":
            return _serve(args)
        if args.cmd == "train":
            from evals import train_cli

            _default_device(args)
            cpu_threads(args.device)
            return train_cli.main(args)
        if args.cmd == "sensitivity":
            from evals import sensitivity

            _default_device(args)
            cpu_threads(args.device)
            if args.batch_size is None:
                args.batch_size = 128 if args.device.startswith("cuda") else 8
            return sensitivity.main(args)
        if args.cmd == "record-accuracy":
            from evals.weights import record_accuracy

            return record_accuracy(args.run, args.weights)
        if args.cmd == "gsm8k" and args.action == "make-data":
            return _make_data(args)
        if args.cmd == "longctx" and args.action == "generate":
            from evals import longctx

            return longctx.generate_command(args)
        if args.action == "run":
            embedded = args.base_url is None
            if args.max_gen_toks is None:
                args.max_gen_toks = (UNTRAINED_MAX_GEN_TOKS if args.untrained else EMBEDDED_MAX_GEN_TOKS) if embedded else 256
            if args.batch_size is None:
                args.batch_size = 8 if embedded else 1
            if not embedded and not args.model:
                print("error: --model is required with --base-url (the name the server serves)", file=sys.stderr)
                return UNUSABLE
            if args.tokenizer:
                from evals.prompt_tokens import tokenizer_counter

                tokenizer_counter(args.tokenizer)  # a name that does not load stops here, before the run
            if args.cmd == "longctx":
                from evals import longctx

                return longctx.run(args)
            from evals import gsm8k

            return gsm8k.run(args)
        if args.action == "export-data":
            return _export(args)
        from evals.gate import gate, load_baseline, load_run, make_baseline

        if args.action == "gate":
            run = load_run(args.run, args.filter)
            return gate(run, load_baseline(args.baseline, run.task), args.confidence, args.floor,
                        min_share=args.min_share_over_topk, require_coverage=args.require_coverage)
        if args.action == "compare":
            from evals.compare import compare

            return compare(load_run(args.run_a, args.filter), load_run(args.run_b, args.filter),
                           trace=not args.no_trace)
        if args.action == "baseline":
            run = load_run(args.run, args.filter)
            base = make_baseline(run, args.name or Path(args.run).name, with_samples=not args.no_samples)
            try:
                Path(args.output).write_text(json.dumps(base, indent=1) + "\n")
            except OSError as exc:  # a directory, a folder that is not there
                print(f"error: -o/--output {args.output!r} cannot be written: {exc}", file=sys.stderr)
                return UNUSABLE
            print(f"baseline {args.output}: {base['metric']} {base['value']:.4f} n={base['n']}")
            return 0
    except Unusable as exc:
        print(f"UNUSABLE INPUT: {exc}", file=sys.stderr)
        return UNUSABLE
    except (ValueError, DataUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return UNUSABLE
    return 2


def _export(args) -> int:
    from evals import data, gsm8k

    cfg = gsm8k.task_config(None)
    rec = data.export(Path(args.dir), cfg["dataset_path"], cfg.get("dataset_name"), args.revision)
    for s in data.SPLITS:
        print(f"{args.dir}/{s}.jsonl: {rec['rows'][s]} rows, sha256 {rec['sha256'][s]}")
    print(f"from {rec['dataset']} ({rec['config']}) at revision {rec['revision']}; "
          f"use it with --data-dir {args.dir} or {data.DATA_ENV}={args.dir}")
    return 0


def _default_device(args) -> None:
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"


def _make_data(args) -> int:
    from evals import synth

    lo_hi = {}
    if args.facts:
        try:
            lo, hi = (int(x) for x in args.facts.split(":"))
        except ValueError:
            raise ValueError(f"--facts must be MIN:MAX (two integers), got {args.facts!r}") from None
        lo_hi = {"min_facts": lo, "max_facts": hi}
    spec = synth.SynthSpec(seed=args.seed, n_test=args.n_test, n_train=args.n_train, target_chars=args.target_chars,
                           **lo_hi)
    rec = synth.write(Path(args.dir), spec)
    print(f"{args.dir}: {rec['name']}, {spec.n_test} test / {spec.n_train} train questions; "
          f"5-shot prompts up to {synth.max_prompt_chars(spec)} characters")
    return 0


def _serve(args) -> int:
    from evals.server import CompletionService, ServerThread

    if args.log:  # found now, not at the first request, whose batch would be lost with the log line
        try:
            open(args.log, "a").close()
        except OSError as exc:
            print(f"python -m evals serve: error: --log {args.log!r} cannot be appended to: {exc}", file=sys.stderr)
            return 2
    model = embedded(args)
    service = CompletionService(model, log_path=args.log, truncate_prompts=args.truncate_prompts)
    try:
        server = ServerThread(service, args.host, args.port, **({"max_body_bytes": args.max_body_bytes}
                                                                if args.max_body_bytes else {}))
    except OSError as exc:  # a port in use, a host name that does not resolve
        print(f"python -m evals serve: error: cannot listen on --host {args.host} --port {args.port}: {exc}",
              file=sys.stderr)
        return 2
    print(f"serving tiny-indexer-lm ({args.backend}, {args.buffer}, {args.path}; max_model_len "
          f"{model.cfg.max_model_len}, prompts that do not fit: {'truncated' if args.truncate_prompts else 'refused'}) "
          f"on {server.base_url}", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
