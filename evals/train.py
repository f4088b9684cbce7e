"""``python -m evals train --out DIR``: the embedded model trained on the generated task, following
DeepSeek-V3.2's recipe for its indexer, in three stages:

1. **dense**: the main model (everything but the indexers) learns the task with dense causal
   attention; the indexers are not used.
2. **indexer warm-up**: the main model frozen, each layer's indexer learns to match that layer's
   attention distribution: the attention probabilities summed over heads and L1-normalised are
   the target ``p_t``; the loss is ``KL(p_t || softmax(I_t))`` over all causal positions.
3. **sparse**: attention sees only the top-``index_topk`` tokens by the indexer's logits, computed
   from fp8-quantized q and keys exactly as at inference; the main model trains on the language
   loss, the indexer on the KL restricted to the selected set, its input detached so that the two
   losses do not mix.

Simplified against the paper: the main model is trained from scratch here (stage 1 stands for
DSv3.2's pre-training; its dense warm-up of the indexer is our stage 2), MQA attention instead of
MLA, fp8 only where selection is decided (the indexer trains in float32), no MTP, one optimizer.

The sequences come from ``evals.synth``'s training stream (lm-eval's 5-shot layout, and the long
0-shot format), on their own seed, disjoint in practice from the test questions. Seeded; on a GPU
the backward of the gathers is not bitwise deterministic, so a rerun matches the manifest's
accuracy within a tolerance (README), not bit for bit.
"""
from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

from evals import synth
from evals.model import ModelConfig, embed, index_qk, init_weights, previous_tokens, rmsnorm, rope
from parity.problem import layouts

# The shipped model: 4 layers, width 128, 1.07 M parameters (4.3 MB of float32); index_topk 32
# against 5-shot prompts of ~1.3 KB (up to 1.9 KB) and long questions up to the 2000-token window.
TRAINED_CONFIG = ModelConfig(d_model=128, n_layers=4, n_heads=4, head_dim=32, index_heads=4, index_head_dim=32,
                             rope_dim=16, index_topk=32, block_size=64, max_model_len=2000, ffn=512, ngram=7)
GEN_ROOM = synth.MAX_GEN_TOKS  # the room training leaves for the answer in each window


@dataclass(frozen=True)
class TrainSpec:
    seed: int = 0  # model init and the order of everything random in training
    data_seed: int = 0  # the training stream
    # The shipped weights' recipe (evals/weights/manifest.json): ~4 minutes on one H200.
    dense_steps: int = 1500
    indexer_steps: int = 150
    sparse_steps: int = 500
    batch: int = 32
    seq_chars: int = TRAINED_CONFIG.max_model_len - GEN_ROOM
    lr: float = 3e-3
    indexer_lr: float = 1e-3
    warmup: int = 100
    long_share: float = 0.25
    context_weight: float = 0.1  # loss weight of tokens outside the answers (facts are random: noise)
    min_facts: int = synth.SynthSpec.min_facts
    max_facts: int = synth.SynthSpec.max_facts
    curriculum: float = 0.3  # share of the dense stage over which the facts per question grow (0: none)
    workers: int | None = None  # data-making processes (default: 8 with a GPU, none on the CPU)
    held_out_every: int = 500

    def __post_init__(self):
        for name in ("dense_steps", "indexer_steps", "sparse_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.batch < 1 or self.seq_chars < 64:
            raise ValueError(f"batch must be >= 1 and seq_chars >= 64, got {self.batch}, {self.seq_chars}")
        # named as the flags of `python -m evals train`; NaN fails every one of these comparisons
        for flag, value, ok, want in (
                ("--lr", self.lr, self.lr > 0, "a finite number > 0"),
                ("indexer_lr", self.indexer_lr, self.indexer_lr > 0, "a finite number > 0"),
                ("--context-weight", self.context_weight, self.context_weight >= 0, "a finite number >= 0"),
                ("--curriculum", self.curriculum, 0 <= self.curriculum <= 1, "a share in [0, 1]")):
            if not (ok and math.isfinite(value)):
                raise ValueError(f"{flag} must be {want}, got {value}")


def _fake_quant(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` through fp8 with one scale per vector of its last dim (layouts.quantize_per_token), in float32."""
    x8, scale = layouts.quantize_per_token(x.reshape(-1, x.shape[-1]), dtype)
    return (x8.float() * scale[:, None]).view(x.shape)


class Net(torch.nn.Module):
    """The inference model's tensors as parameters (same names), and a batched forward that
    computes what ``evals.model.TinyIndexerLM`` computes, for training."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.params = torch.nn.ParameterDict({k.replace(".", "__"): torch.nn.Parameter(v)
                                              for k, v in init_weights(cfg).items()})

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k.replace("__", "."): v.detach().cpu() for k, v in self.params.items()}

    def layer(self, i: int) -> dict[str, torch.Tensor]:
        pre = f"layers__{i}__"
        return {k[len(pre):]: v for k, v in self.params.items() if k.startswith(pre)}

    def indexer_params(self) -> list[torch.nn.Parameter]:
        return [v for k, v in self.params.items() if k.rsplit("__", 1)[-1] in ("wq_index", "wk_index", "w_index_weights")]

    def main_params(self) -> list[torch.nn.Parameter]:
        ids = {id(p) for p in self.indexer_params()}
        return [p for p in self.params.values() if id(p) not in ids]

    # -- the indexer --------------------------------------------------------------------------
    def index_logits(self, L: dict, h: torch.Tensor, pos: torch.Tensor, fp8: bool) -> torch.Tensor:
        """``(B, T, T)`` indexer logits, causal positions only (-inf elsewhere). ``fp8``: q and keys
        quantized as at inference (q per (token, head), keys per token), for selection."""
        with torch.autocast(h.device.type, enabled=False):  # selection is decided in float32, as at inference
            return self._index_logits({n: t.float() for n, t in L.items()}, h.float(), pos, fp8)

    def _index_logits(self, L, h, pos, fp8):
        q, k, w = index_qk(self.cfg, L, h, pos)
        if fp8:  # quantized and back, exactly as inference quantizes (q per token and head, keys per token)
            dt = layouts.fp8_dtype(self.cfg.fp8)
            q, k = (_fake_quant(x, dt) for x in (q, k))
        T = h.shape[1]
        out = torch.einsum("bthd,bsd->bths", q, k).clamp_min(0)
        out = torch.einsum("bths,bth->bts", out, w)
        return out.masked_fill(torch.ones(T, T, dtype=torch.bool, device=h.device).triu(1), float("-inf"))

    def index_logits_at(self, L: dict, h: torch.Tensor, pos: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``(B, T, k)`` indexer logits at the selected positions ``idx`` (float, differentiable)."""
        with torch.autocast(h.device.type, enabled=False):
            q, k, w = index_qk(self.cfg, {n: t.float() for n, t in L.items()}, h.float(), pos)
        ksel = _take(k, idx)  # (B, T, k, D)
        return torch.einsum("bthk,bth->btk", torch.einsum("bthd,btkd->bthk", q, ksel).clamp_min(0), w)

    # -- the model ------------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, mode: str, kl: bool = False):
        """``mode``: ``dense`` or ``sparse``. Returns (vocabulary logits ``(B, T, 256)``, summed KL
        of the indexers, or 0.0 when ``kl`` is False). Dense with ``kl``: stage 2 (the caller
        freezes the main model); sparse with ``kl``: stage 3."""
        cfg = self.cfg
        B, T = tokens.shape
        nh, hd = cfg.n_heads, cfg.head_dim
        pos = torch.arange(T, device=tokens.device)[None]
        prev_w = self.params["prev_embed"] if cfg.ngram else None
        x = embed(self.params["embed"], prev_w, tokens, previous_tokens(tokens, cfg.ngram) if cfg.ngram else None)
        kl_sum = x.new_zeros(())
        for i in range(cfg.n_layers):
            L = self.layer(i)
            h = rmsnorm(x)
            q = rope((h @ L["wq"]).view(B, T, nh, hd), pos, hd // 2)
            k = rope(h @ L["wk"], pos, hd // 2)
            v = h @ L["wv"]
            if mode == "dense" and not kl:
                # The shared key/value head repeated per query head (small: T x head_dim each), so
                # that the fused (flash) kernel takes it; enable_gqa falls back to a slower path.
                kk, vv = (t[:, None].expand(B, nh, T, hd).contiguous() for t in (k, v))
                o = F.scaled_dot_product_attention(q.transpose(1, 2).contiguous(), kk, vv, is_causal=True).transpose(1, 2)
            elif mode == "dense":
                s = torch.einsum("bthd,bsd->bhts", q, k) / math.sqrt(hd)
                s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=s.device).triu(1), float("-inf"))
                p = s.softmax(-1)
                o = torch.einsum("bhts,bsd->bthd", p, v)
                target = p.detach().sum(1) / nh  # (B, T, T)
                logq = self.index_logits(L, h.detach(), pos, fp8=False).log_softmax(-1)
                kl_sum = kl_sum + _kl(target, logq)
            elif mode == "sparse":
                with torch.no_grad():
                    sel_logits = self.index_logits(L, h.detach(), pos, fp8=True)
                    val, idx = sel_logits.topk(min(cfg.index_topk, T), dim=-1)  # (B, T, k)
                    valid = torch.isfinite(val)
                    idx = torch.where(valid, idx, 0)
                ks, vs = _take(k, idx), _take(v, idx)  # (B, T, k, hd)
                s = torch.einsum("bthd,btkd->bthk", q, ks) / math.sqrt(hd)
                p = s.masked_fill(~valid[:, :, None, :], float("-inf")).softmax(-1)
                o = torch.einsum("bthk,btkd->bthd", p, vs)
                if kl:
                    target = p.detach().sum(2) / nh  # (B, T, k), zero where not valid
                    at = self.index_logits_at(L, h.detach(), pos, idx).masked_fill(~valid, float("-inf"))
                    kl_sum = kl_sum + _kl(target, at.log_softmax(-1))
            else:
                raise ValueError(f"mode must be dense or sparse, got {mode!r}")
            x = x + o.reshape(B, T, nh * hd) @ L["wo"]
            x = x + torch.relu(rmsnorm(x) @ L["w_up"]) @ L["w_down"]
        return rmsnorm(x) @ self.params["lm_head"], kl_sum


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[b, idx[b, t, j]]`` as ``(B, T, k, D)``, through a flat index: a gather from an expanded
    ``(B, T, T, D)`` view would have a backward of that size."""
    B, T, D = x.shape
    flat = idx + torch.arange(B, device=idx.device)[:, None, None] * T
    return x.reshape(B * T, D)[flat]


def _kl(target: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Mean over query positions of KL(target || q); positions where target is 0 add nothing."""
    logq = torch.where(target > 0, logq, torch.zeros_like(logq))
    return (torch.xlogy(target, target) - target * logq).sum(-1).mean()


# -- data -------------------------------------------------------------------------------------------
def batch_tensors(rng: random.Random, spec: TrainSpec, data: synth.SynthSpec, long_share: float | None = None
                  ) -> tuple[torch.Tensor, ...]:
    """``(tokens, targets, weights)`` on the CPU, each ``(batch, seq_chars)``: next-byte targets,
    weight 1 on the answers (and the ``\n\nQuestion:`` that ends them), ``context_weight``
    elsewhere, 0 on padding."""
    T = spec.seq_chars
    tok = torch.zeros(spec.batch, T + 1, dtype=torch.long)
    wts = torch.zeros(spec.batch, T + 1)
    for b in range(spec.batch):
        text, spans = synth.training_text(rng, T + 1, data, spec.long_share if long_share is None else long_share)
        raw = text.encode()
        tok[b, :len(raw)] = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
        wts[b, :len(raw)] = spec.context_weight
        for s, e in spans:
            wts[b, s:e] = 1.0
    return tok[:, :-1], tok[:, 1:], wts[:, 1:]


def facts_cap(spec: TrainSpec, stage: str, step: int) -> int:
    """The curriculum: during the first ``curriculum`` share of the dense stage the most facts a
    question states grows from 1 to ``max_facts`` (one fact: copy the only number; then more and
    more distractors), so that the copy is learned before the lookup needs it."""
    if stage != "dense" or spec.curriculum <= 0:
        return spec.max_facts
    ramp = spec.curriculum * spec.dense_steps
    return max(1, min(spec.max_facts, 1 + int(spec.max_facts * step / max(ramp, 1))))


def make_batch(spec: TrainSpec, stage: str, step: int) -> tuple[torch.Tensor, ...]:
    """The batch of one step: a pure function of (data_seed, stage, step), whichever process makes it."""
    cap = facts_cap(spec, stage, step)
    data = synth.SynthSpec(seed=spec.data_seed, min_facts=min(spec.min_facts, cap), max_facts=cap)
    rng = random.Random(f"train-v{synth.GENERATOR_VERSION}-{spec.data_seed}-{stage}-{step}")
    return batch_tensors(rng, spec, data, long_share=spec.long_share if cap >= spec.max_facts else 0.0)


class Batches(torch.utils.data.IterableDataset):
    """A stage's batches in step order; with DataLoader workers, worker w makes steps w, w + W, ...
    and the loader hands them out round robin, so the order is the same for any worker count."""

    def __init__(self, spec: TrainSpec, stage: str, steps: int):
        self.spec, self.stage, self.steps = spec, stage, steps

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w, n = (info.id, info.num_workers) if info else (0, 1)
        for step in range(w, self.steps, n):
            yield make_batch(self.spec, self.stage, step)


def answer_accuracy(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> float:
    """Share of answers (runs of weight-1 targets) whose every byte is predicted, teacher-forced:
    a cheap stand-in for greedy generation (which derails at its first wrong byte)."""
    ans = weights >= 1.0
    wrong = (logits.argmax(-1) != targets) & ans
    start = ans & (F.pad(ans.int(), (1, 0))[:, :-1] == 0)  # first byte of each answer
    span = torch.cumsum(start.flatten().long(), 0).view_as(ans) * ans  # answer id per byte, 0 outside
    n = int(span.max())
    bad = torch.zeros(n + 1, dtype=torch.bool, device=ans.device).index_put_((span[wrong],), torch.tensor(True, device=ans.device))
    return 1.0 - float(bad[1:].sum()) / max(n, 1)


def _lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def train(spec: TrainSpec, cfg: ModelConfig = TRAINED_CONFIG, device: str | None = None, log=print,
          init: dict[str, torch.Tensor] | None = None) -> tuple[Net, dict]:
    """Runs the three stages (a stage of 0 steps is skipped); returns the net and a record of the
    run (losses, times). ``init``: start from these tensors (a continuation) instead of the seed's."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = replace(cfg, seed=spec.seed)
    torch.manual_seed(spec.seed)
    net = Net(cfg)
    if init is not None:
        with torch.no_grad():
            for k, v in init.items():
                net.params[k.replace(".", "__")].copy_(v)
    net = net.to(device)
    data = synth.SynthSpec(seed=spec.data_seed, min_facts=spec.min_facts, max_facts=spec.max_facts)
    if synth.max_prompt_chars(data) + GEN_ROOM > cfg.max_model_len:
        raise ValueError(f"max_model_len {cfg.max_model_len} is too small for 5-shot prompts of this data")
    held_rng = random.Random(f"held-out-{synth.GENERATOR_VERSION}-{spec.data_seed}")
    held = [t.to(device) for t in batch_tensors(held_rng, replace(spec, batch=min(spec.batch, 16)), data)]
    workers = spec.workers if spec.workers is not None else (min(8, (os.cpu_count() or 2) - 1) if device.type == "cuda" else 0)
    def amp():  # bf16 on a GPU; float32 on the CPU
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    record = {"device": str(device), "stages": {}}
    t_all = time.time()

    def held_out(mode: str) -> float:
        with torch.no_grad(), amp():
            logits, _ = net(held[0], mode)
        return answer_accuracy(logits.float(), held[1], held[2])

    stages = (("dense", spec.dense_steps, net.main_params(), spec.lr),
              ("indexer", spec.indexer_steps, net.indexer_params(), spec.indexer_lr),
              ("sparse", spec.sparse_steps, list(net.params.values()), spec.lr / 2))
    for name, steps, params, lr in stages:
        if steps == 0:
            continue
        for p in net.params.values():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
        t0, hist = time.time(), []
        loader = torch.utils.data.DataLoader(Batches(spec, name, steps), batch_size=None, num_workers=workers,
                                             pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None)
        for step, batch in enumerate(loader):
            for group in opt.param_groups:
                group["lr"] = _lr(step, steps, lr, min(spec.warmup, steps // 10 + 1))
            tok, tgt, wts = (t.to(device, non_blocking=True) for t in batch)
            with amp():
                logits, kl = net(tok, "dense" if name != "sparse" else "sparse", kl=name != "dense")
            lm = (F.cross_entropy(logits.float().reshape(-1, 256), tgt.reshape(-1), reduction="none")
                  * wts.reshape(-1)).sum() / wts.sum()
            loss = kl.float() if name == "indexer" else lm + kl.float()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if step % 100 == 0 or step == steps - 1:
                hist.append({"step": step, "lm": round(float(lm.detach()), 4), "kl": round(float(kl.detach()), 4)})
                if step % spec.held_out_every == 0 and step:
                    hist[-1]["held_out"] = round(held_out("sparse" if name != "dense" else "dense"), 4)
                log(f"[train] {name} {step + 1}/{steps}  lm {hist[-1]['lm']:.4f}  kl {hist[-1]['kl']:.4f}  "
                    + (f"held-out {hist[-1]['held_out']:.3f}  " if "held_out" in hist[-1] else "")
                    + f"({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
        acc = held_out("sparse" if name != "dense" else "dense")
        record["stages"][name] = {"steps": steps, "lr": lr, "wall_s": round(time.time() - t0, 1), "log": hist,
                                  "held_out_answer_accuracy": round(acc, 4)}
        log(f"[train] {name} done: held-out answers exact (teacher-forced) {acc:.4f}", file=sys.stderr, flush=True)
    record["wall_s"] = round(time.time() - t_all, 1)
    record["spec"] = asdict(spec)
    return net, record
