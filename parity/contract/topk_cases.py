"""Cases that reach each path of vLLM's decode top-k, ``top_k_per_row_decode`` (csrc/sampler.cu), with
what reading its source predicts for each, run against an op and judged by the top-k contract
(:func:`parity.judge.topk.check_topk_contract`) and the set comparison
(:func:`parity.judge.topk.compare_topk`).

What the source says (vLLM csrc/sampler.cu at 00e831b25f76; the algorithm is the same at 2689ca0a3f9a):

* The op picks a path by column count: insertion sort of the last bin below 12288 columns, radix sort
  below 200000 (both one block per row), two passes at 200000 and more (ten blocks per row select from
  tenths of the row into an auxiliary buffer, then a merge block selects from their 10 x k candidates).
* A row of ``rowLen <= k`` valid positions takes a shortcut: indices ``0..rowLen-1``, then -1.
* Otherwise a radix select: step 0 bins the fp16 value, steps 1-3 the float32 bits. Everything in bins
  above the threshold bin is written out and counted in ``smemFoundTopKValues``. When the threshold
  bin of step 0 holds more than 2048 entries, step 1 re-bins the whole row (its pattern filter is a
  no-op at shift 0) with the count starting at ``smemFoundTopKValues``: the entries above the
  threshold are appended a second time. This needs a crowded fp16 bin at the k-th value with values
  above it: many exact zeros (every head's ReLU zero) and fewer than k positive logits, say; then the
  ``P`` positives come out twice (``min(P, k - P)`` duplicates).
* In the two-pass path a row of ``L < k`` valid positions gives every block a short slice (all
  shortcut, padded with -1 / -FLT_MAX); the merge block does not know ``L``, sees ``10 k`` candidates
  with ``10 k - L`` pads in one fp16 bin, and double counts the same way: ``min(L, k - L)`` duplicates
  (548 for L = 1500).
* A row whose count ``L = context_len - next_n + i + 1`` is negative takes the shortcut with a
  negative length and writes -1 into ``outIndices[L .. -1]``: the previous row's last ``-L`` slots,
  or before the buffer for row 0. On the one-block paths only (in the two-pass path the slots belong to
  the auxiliary buffer's own padding); whether the previous row's indices survive is a race between two
  blocks.

``python -m parity.contract.topk_cases --vllm-src DIR --out DIR`` builds the op from a vLLM tree
(:mod:`parity.backends.vllm_topk_ext`) and writes ``topk-cases.json`` and ``topk-cases.md``: per case
id, per predicted effect, reproduced / ruled out / not reproduced, with the rows and the counts.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from parity.judge.topk import check_topk_contract, compare_topk, guarded_indices
from parity.problem.lengths import signed_row_lengths

INSERTION_BELOW, TWO_PASS_FROM = 12288, 200_000
BLOCKS_PER_ROW = 10  # the two-pass path's first pass
K = 2048
BAIT = 1.0e6  # past each row's length: a reader that looks there picks it first


def path_of(cols: int) -> str:
    return "insertion" if cols < INSERTION_BELOW else "radix" if cols < TWO_PASS_FROM else "two-pass"


@dataclass(frozen=True)
class TopkCase:
    id: str
    cols: int
    next_n: int
    context_lens: tuple[int, ...]
    # zeros: per row (positives, zeros) among its valid positions, the rest negative; random: N(0, 1)
    mode: str = "random"
    crowd: tuple[tuple[int, int], ...] = ()
    runs: int = 3
    k: int = K
    cause: str = ""

    @property
    def path(self) -> str:
        return path_of(self.cols)

    @property
    def rows(self) -> int:
        return len(self.context_lens) * self.next_n


SHORT_ROWS = (1, 1000, 1500, 2047, 2048, 2049, 5000, 30000)
# (positives, exact zeros): double counted when the zeros fill the k-th value's fp16 bin with more than
# 2048 entries and 0 < positives < k; the last three are controls.
CROWDS = ((1000, 4000), (1500, 4000), (2047, 4000), (3000, 4000), (0, 5000), (1000, 1500))
# next_n > 1 with context_len 0 and 1, next to rows of exactly k (the shortcut: as fast as the stray
# write, so the race can go either way) and of 5000 positions (a full select: slower than the stray).
NEGATIVE = {4: (0, 5000, 2048, 0, 1, 2048, 1, 5000, 0), 2: (0, 2048, 0, 1, 2048, 1)}

SHORT_CAUSE = ("two passes: every block of a short row takes the shortcut; the merge sees 10 k candidates, "
               "10 k - L of them -FLT_MAX pads in one fp16 bin, and step 1 re-bins the row from "
               "smemFoundTopKValues: the top min(L, k - L) are appended twice")
CROWD_CAUSE = ("step 0's threshold bin (the exact zeros, > 2048 entries) does not fit the final sort; step 1 "
               "re-bins the whole row with its count starting at the positives already written: they are "
               "written twice")
NEGATIVE_CAUSE = ("a negative valid count takes the shortcut with rowLen < 0: its -1s from slot rowLen on land "
                  "in the previous row's last slots (before the buffer for row 0)")


def cases() -> list[TopkCase]:
    out = []
    for cols in (8192, 20000, 200_000, 262_144):
        lens = tuple(min(n, cols) for n in SHORT_ROWS) + (cols,)
        out.append(TopkCase(f"short-rows-c{cols}", cols, 1, lens, cause=SHORT_CAUSE if cols >= TWO_PASS_FROM else
                            "one block: rows of L <= k take the shortcut"))
    for cols in (8192, 20000, 163_840):
        out.append(TopkCase(f"zeros-c{cols}", cols, 1, (cols,) * len(CROWDS), mode="zeros", crowd=CROWDS,
                            cause=CROWD_CAUSE))
    for next_n, lens in NEGATIVE.items():
        for cols in (8192, 20000, 204_800):
            out.append(TopkCase(f"negative-valid-n{next_n}-c{cols}", cols, next_n, lens, runs=20,
                                cause=NEGATIVE_CAUSE if cols < TWO_PASS_FROM else
                                "two passes: the stray -1s land in the auxiliary buffer's own padding"))
    return out


def build_logits(case: TopkCase) -> torch.Tensor:
    """``(rows, cols)`` float32 on the CPU, deterministic per case: each row's valid positions by the
    case's mode, :data:`BAIT` past them."""
    gen = torch.Generator().manual_seed(sum(map(ord, case.id)))
    lens = signed_row_lengths(torch.tensor(case.context_lens), case.next_n)
    logits = torch.full((case.rows, case.cols), BAIT)
    for r in range(case.rows):
        L = max(0, min(int(lens[r]), case.cols))
        if case.mode == "random":
            logits[r, :L] = torch.randn(L, generator=gen)
            continue
        pos, zeros = case.crowd[r]
        vals = torch.cat([1 + torch.rand(pos, generator=gen), torch.zeros(zeros),
                          -1 - torch.rand(L - pos - zeros, generator=gen)])
        logits[r, :L] = vals[torch.randperm(L, generator=gen)]
    return logits


def predict(case: TopkCase) -> dict:
    """What the source predicts: ``duplicates`` {row: count}; ``neighbour_slots`` {row: slots of it a row
    of negative count overwrites with -1, where it holds indices}; ``before_buffer`` (slots before row 0)."""
    lens = signed_row_lengths(torch.tensor(case.context_lens), case.next_n).tolist()
    k, dups, neighbour, before = case.k, {}, {}, 0
    for r, L in enumerate(lens):
        if case.mode == "zeros" and case.path != "two-pass" and L > k:
            pos, zeros = case.crowd[r]
            if 0 < pos < k and zeros > 2048 and pos + zeros >= k:
                dups[r] = min(pos, k - pos)
        elif case.mode == "random" and case.path == "two-pass" and 0 < L < k:
            dups[r] = min(L, k - L)
        if L < 0 and case.path != "two-pass":
            if r == 0:
                before = -L
            else:
                held = min(k, max(lens[r - 1], 0))
                slots = [s for s in range(k + L, k) if s < held]
                if slots:
                    neighbour[r - 1] = slots
    return {"duplicates": dups, "neighbour_slots": neighbour, "before_buffer": before}


def _observe(contract) -> dict:
    d = contract.details
    return {"duplicates": {r: c["duplicates"] for r, c in d["per_row_counts"].items() if c["duplicates"]},
            "neighbour_slots": {r: v["slots"] for r, v in d["neighbour_writes"].items()},
            "before_buffer": d["guard"].get("before", {}).get("count", 0),
            "counts": d["counts"], "rows": d["rows"]}


def run_case(op, case: TopkCase, device: str = "cuda", runs: int | None = None) -> dict:
    """Call ``op`` (the ``top_k_per_row_decode`` signature) ``runs`` times into fresh guarded buffers and
    compare what each run broke with :func:`predict`. Per effect: ``reproduced`` (seen as predicted, in
    how many runs), ``ruled out`` (predicted absent and absent), ``not reproduced`` (predicted, never
    seen), ``unexpected`` (seen, not predicted)."""
    from parity.backends.vllm_topk_ext import decode_topk

    runs = runs or case.runs
    logits_cpu = build_logits(case)
    logits = logits_cpu.to(device)
    ctx = torch.tensor(case.context_lens, dtype=torch.int32)
    want = predict(case)
    seen, summaries, set_rows = [], [], set()
    t0 = time.perf_counter()
    for _ in range(runs):
        storage, view = guarded_indices(case.rows, case.k, device)
        decode_topk(op, logits, ctx.to(device), case.next_n, case.k, out=view)
        if device != "cpu":
            torch.cuda.synchronize()
        contract = check_topk_contract(view, ctx, case.next_n, case.k, storage)
        # The selected sets against the reference (exact ties at the k-th value forgiven).
        sets = compare_topk(view.cpu(), logits_cpu.double(), ctx, case.next_n, case.k, rtol=0.0, atol=0.0)
        set_rows |= set(sets.details["rows"])
        seen.append(_observe(contract))
        summaries.append(contract.summary)
    effects = {}
    for key in ("duplicates", "neighbour_slots", "before_buffer"):
        predicted = want[key]
        hits = [o[key] for o in seen if o[key]]
        matching = [h for h in hits if h == predicted]
        if predicted and matching:
            verdict = "reproduced"
        elif predicted and hits:
            verdict = "reproduced, other counts"
        elif predicted:
            verdict = "not reproduced"
        else:
            verdict = "unexpected" if hits else "ruled out"
        effects[key] = {"predicted": predicted, "verdict": verdict, "runs_seen": len(hits), "runs": runs,
                        "observed": hits[0] if hits else ({} if isinstance(predicted, dict) else 0)}
    other = {k: v for o in seen for k, v in o["counts"].items() if v and k not in ("duplicates",)}
    return {"id": case.id, "path": case.path, "cols": case.cols, "next_n": case.next_n,
            "context_lens": list(case.context_lens), "mode": case.mode, "k": case.k, "runs": runs,
            "valid_counts": signed_row_lengths(ctx, case.next_n).tolist(), "effects": effects,
            "other_counts": other, "set_disagreement_rows": sorted(set_rows),
            "first_broken": next((s for s in summaries if "broken" in s), summaries[0] if summaries else ""),
            "cause": case.cause,
            "seconds": round(time.perf_counter() - t0, 2)}


def markdown(record: dict) -> str:
    """The table a README can quote: one line per case and effect."""
    lines = [f"vLLM top_k_per_row_decode: {record.get('op', {}).get('source_tree', '?')} "
             f"({record.get('device', '?')}, {record.get('date', '?')}; `{record.get('command', '')}`)", "",
             "| case | path | effect | predicted | verdict | runs seen | rows: counts |", "|---|---|---|---|---|---|---|"]
    for c in record["cases"]:
        if "crashed" in c:
            lines.append(f"| {c['id']} | {c['path']} | crashed | - | the op's process died | - | {c['crashed']} |")
            continue
        for name, e in c["effects"].items():
            if not e["predicted"] and e["verdict"] == "ruled out":
                continue
            shown = e["observed"] if e["observed"] else "-"
            lines.append(f"| {c['id']} | {c['path']} | {name} | {e['predicted'] or '-'} | {e['verdict']} | "
                         f"{e['runs_seen']}/{e['runs']} | {shown} |")
        if all(not e["predicted"] and e["verdict"] == "ruled out" for e in c["effects"].values()):
            lines.append(f"| {c['id']} | {c['path']} | (none predicted) | - | ruled out | 0/{c['runs']} | - |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m parity.contract.topk_cases", description=__doc__.splitlines()[0])
    ap.add_argument("--vllm-src", default=None, help="root of a vLLM checkout (default $PARITY_VLLM_SRC)")
    ap.add_argument("--out", required=True, help="folder for topk-cases.json and topk-cases.md")
    ap.add_argument("--only", action="append", help="case id (repeatable; default every case)")
    ap.add_argument("--runs", type=int, default=None, help="calls per case (default: the case's own)")
    ap.add_argument("--list", action="store_true", help="print the cases and their predictions, run nothing")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one case, its record on stdout
    args = ap.parse_args(argv)
    chosen = [c for c in cases() if not args.only or c.id in args.only]
    unknown = sorted(set(args.only or ()) - {c.id for c in chosen})
    if unknown:
        print(f"error: --only {unknown}: no such case (see --list)", file=sys.stderr)
        return 2
    if args.runs is not None and args.runs < 1:
        print(f"error: --runs must be >= 1, got {args.runs}", file=sys.stderr)
        return 2
    if args.list:
        for c in chosen:
            print(c.id, c.path, json.dumps(predict(c)))
        return 0
    from parity.backends import vllm_topk_ext

    src = vllm_topk_ext.source_tree(args.vllm_src)
    if src is None:
        print(f"error: give --vllm-src DIR or set ${vllm_topk_ext.ENV}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("error: top_k_per_row_decode is a CUDA op: no GPU here", file=sys.stderr)
        return 2
    consumer = vllm_topk_ext.load(src)
    record = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name(), "torch": torch.__version__, "op": consumer.describe(),
              "command": " ".join(["python -m parity.contract.topk_cases", *(argv if argv is not None else sys.argv[1:])]),
              "cases": []}
    if args.child:
        rec = run_case(consumer.ops.top_k_per_row_decode, chosen[0], "cuda", args.runs)
        print("RECORD " + json.dumps(rec), flush=True)
        return 0
    # Each case in a process of its own: a case that faults the GPU (a sticky CUDA error) is recorded as
    # crashed with the error, and the cases after it still run on a fresh context.
    for c in chosen:
        cmd = [sys.executable, "-m", "parity.contract.topk_cases", "--child", "--out", args.out, "--only", c.id,
               "--vllm-src", str(src)] + (["--runs", str(args.runs)] if args.runs else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
        got = [ln[7:] for ln in proc.stdout.splitlines() if ln.startswith("RECORD ")]
        if proc.returncode == 0 and got:
            rec = json.loads(got[-1])
            print(f"{c.id}: " + ", ".join(f"{k} {e['verdict']}" for k, e in rec["effects"].items()), flush=True)
        else:
            err = [ln for ln in proc.stderr.splitlines() if "Error" in ln] or proc.stderr.splitlines()[-1:]
            rec = {"id": c.id, "path": c.path, "cols": c.cols, "runs": args.runs,
                   "crashed": f"exit {proc.returncode}: {(err[-1] if err else '').strip()[:300]}"}
            print(f"{c.id}: crashed: {rec['crashed']}", flush=True)
        record["cases"].append(rec)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "topk-cases.json"), "w") as fh:
        json.dump(record, fh, indent=1)
    with open(os.path.join(args.out, "topk-cases.md"), "w") as fh:
        fh.write(markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
