"""A small DeepSeek-V3.2-shaped decoder whose sparse attention is chosen by the indexer under test.

Per layer: a lightning indexer (fp8 q with per-(token, head) scales folded into the per-head
weights, fp8 keys with per-token scales in a block-paged cache shared by the batch, one shuffled
block table per sequence), the decode top-k consumer, and attention restricted to the selected
tokens (MQA: several query heads over one key/value head, as MLA's absorbed form).

As in vLLM, the paged kernel under test serves decode: one call per layer and step computes the
logits of every sequence of the batch, rows ``(B, max_model_len)`` with ``max_model_len`` the
configured one, into a buffer of the chosen strategy. So an unmasked overshoot of one sequence's
row lands in the next sequence's leading columns, exactly as in a server. Prefill uses a plain
torch indexer (the role of vLLM's non-paged prefill kernel), not the backend under test.

Weights: the trained ones shipped in ``evals/weights`` (``evals.weights`` loads and checks them;
``evals.train`` makes them), or seeded random ones (``--untrained``: today's small config, which
scores about 0 and only shows that two kernels select the same tokens). ``selection`` swaps the
indexer for a control: ``random`` (k tokens drawn at random) or ``dense`` (every token).

Byte-level tokenizer; generation is restricted to printable ASCII and newline so that every
response is valid text.
"""
from __future__ import annotations

import math
from dataclasses import asdict

import torch

from evals.layers import (NEG_INF, VOCAB, ModelConfig, causal_topk, embed, index_qk, init_weights,  # noqa: F401
                          previous_tokens, rmsnorm, rope, weight_shapes)
from parity.problem import layouts
from parity.backends import load_backend
from parity.judge.buffers import guarded_buffer, sentinel_mask
from parity.problem.cases import IndexerInputs
from parity.judge.topk import topk_reference

GUARDED = ("exact", "padded")
INDEXER_PATHS = ("fused", "stage1", "preshuffle")
SELECTIONS = ("indexer", "random", "dense")
OUTPUT_BYTES = [10] + list(range(32, 127))


class Weights:
    """The tensors by layer, on one device. ``tensors``: a ``weight_shapes`` dict (e.g. from the
    shipped safetensors file); default: seeded random."""

    def __init__(self, cfg: ModelConfig, tensors: dict[str, torch.Tensor] | None = None, device="cpu"):
        shapes = weight_shapes(cfg)
        tensors = init_weights(cfg) if tensors is None else tensors
        missing = sorted(set(shapes) - set(tensors))
        extra = sorted(set(tensors) - set(shapes))
        wrong = [f"{k} {tuple(tensors[k].shape)} (want {shapes[k]})" for k in shapes
                 if k in tensors and tuple(tensors[k].shape) != shapes[k]]
        if missing or extra or wrong:
            raise ValueError(f"weights do not fit the model config: missing {missing[:4]}, unexpected {extra[:4]}, "
                             f"wrong shape {wrong[:4]}")
        t = {k: v.detach().to(device=device, dtype=torch.float32).contiguous() for k, v in tensors.items()}
        self.embed, self.lm_head, self.prev_embed = t["embed"], t["lm_head"], t.get("prev_embed")
        self.layers = [{k.split(".", 2)[2]: v for k, v in t.items() if k.startswith(f"layers.{i}.")}
                       for i in range(cfg.n_layers)]


class BackendUnsupported(RuntimeError):
    """The backend declines the model's decode inputs (its ``unsupported`` reason)."""


class Indexer:
    """Turns q/k/weights into the backend's logits and the selected token indices.

    ``buffer``: ``exact`` / ``padded`` are guarded allocations (an overshoot past the last row lands
    in a guard and is counted, instead of in someone else's memory); any other name is a strategy
    of ``parity.contract.strategies`` (its buffers are reused across layers, as a server's are)."""

    def __init__(self, backend: str = "torch", buffer: str = "exact", path: str = "fused", pad: int = 256,
                 options: dict | None = None):
        if path not in INDEXER_PATHS:
            raise ValueError(f"indexer path must be one of {INDEXER_PATHS}, got {path!r}")
        self.backend_spec, self.buffer, self.path, self.pad = backend, buffer, path, pad
        self.backend = load_backend(backend, **(options or {}))
        self.strategy = None
        if buffer not in GUARDED:
            if path == "stage1":
                raise ValueError(f"buffer {buffer!r}: strategies hand out 2-D buffers; stage1 needs exact or padded")
            from parity.contract.strategies import make_strategy  # the servers' buffer strategies

            self.strategy = make_strategy(buffer)
        self.calls = 0
        self.oob_calls = 0  # calls whose kernel wrote outside its logical region (guarded buffers only)

    def describe(self) -> dict:
        info = self.backend.describe() if hasattr(self.backend, "describe") else {"name": self.backend.name}
        return {"backend": self.backend_spec, "backend_info": info, "buffer": self.buffer, "path": self.path}

    def logits(self, inp: IndexerInputs) -> torch.Tensor:
        """``(rows, max_model_len)`` float32 view (stride(0) may exceed max_model_len)."""
        why = self.backend.unsupported(self.path, inp)
        if why:
            raise BackendUnsupported(f"indexer backend {self.backend_spec!r} cannot run {self.path} on this model's "
                                     f"shape (heads={inp.heads}, head_dim={inp.head_dim}, block_size={inp.block_size}, "
                                     f"max_model_len={inp.max_model_len}): {why}")
        rows, cols = inp.rows, inp.max_model_len
        self.calls += 1
        if self.strategy is not None:
            out = self.strategy(inp.q_fp8, rows, cols)
            self.backend.run(self.path, inp, out)
            return out
        lead = (inp.heads, rows) if self.path == "stage1" else (rows,)
        gb = guarded_buffer(lead, cols, self.buffer, inp.device, pad=self.pad)
        self.backend.run(self.path, inp, gb.view)
        written_outside = int((~sentinel_mask(gb.storage)).sum()) - math.prod(lead) * cols
        self.oob_calls += written_outside > 0
        return gb.view.sum(0) if self.path == "stage1" else gb.view

    def select(self, inp: IndexerInputs, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits(inp)
        return logits, topk_reference(logits, inp.context_lens, 1, k)


class BlockPool:
    """The batch's caches, paged: physical blocks handed to sequences in a shuffled order (so a
    kernel that ignores the block table reads another sequence's keys), plus spare blocks."""

    def __init__(self, cfg: ModelConfig, capacities: list[int], device="cpu"):
        bs = cfg.block_size
        need = [math.ceil(c / bs) for c in capacities]
        self.max_blocks = max(need)
        num_blocks = sum(need) + 2
        g = torch.Generator().manual_seed(cfg.seed + 1)
        physical = torch.randperm(num_blocks, generator=g).to(torch.int32)
        tables = torch.zeros(len(capacities), self.max_blocks, dtype=torch.int32)
        at = 0
        for b, n in enumerate(need):
            tables[b, :n] = physical[at: at + n]
            at += n
        self.block_tables = tables.to(device)
        self.fp8 = layouts.fp8_dtype(cfg.fp8)
        slots = num_blocks * bs
        L = cfg.n_layers
        self.k_fp8 = [torch.zeros(slots, cfg.index_head_dim, device=device).to(self.fp8) for _ in range(L)]
        self.k_scale = [torch.zeros(slots, device=device) for _ in range(L)]
        self.att_k = [torch.zeros(slots, cfg.head_dim, device=device) for _ in range(L)]
        self.att_v = [torch.zeros(slots, cfg.head_dim, device=device) for _ in range(L)]
        self.bs = bs
        self.lengths = [0] * len(capacities)

    def slots(self, b: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Physical slot of token ``pos`` of sequence ``b`` (broadcasting)."""
        return self.block_tables[b, pos // self.bs].long() * self.bs + pos % self.bs


class TinyIndexerLM:
    def __init__(self, cfg: ModelConfig | None = None, indexer: Indexer | None = None,
                 weights: dict[str, torch.Tensor] | None = None, selection: str = "indexer", device="cpu",
                 info: dict | None = None):
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        self.cfg = cfg or ModelConfig()
        self.device = torch.device(device)
        self.w = Weights(self.cfg, weights, self.device)
        self.indexer = indexer or Indexer()
        self.selection = selection
        self.info = info or {"weights": "untrained (seeded random)"}
        self._rng = torch.Generator(device=self.device)

    def describe(self) -> dict:
        return {"name": "tiny-indexer-lm", "config": asdict(self.cfg), "indexer": self.indexer.describe(),
                "selection": self.selection, "device": str(self.device), **self.info}

    # -- one forward over new tokens ------------------------------------------------------------
    def _forward(self, pool: BlockPool, seqs: list[int], tokens: torch.Tensor, pos: torch.Tensor,
                 decode: bool, observer=None, step: int = 0, prev: torch.Tensor | None = None) -> torch.Tensor:
        """Prefill: one sequence ``seqs == [b]``, ``tokens``/``pos`` its T prompt tokens. Decode: one
        new token per sequence in ``seqs``. Returns the vocabulary logits of the last position
        (prefill, ``(1, 256)``) or of each row (decode)."""
        dev = self.device
        tokens, pos = tokens.to(dev), pos.to(dev)
        b = torch.tensor(seqs, device=dev) if decode else torch.full((len(pos),), seqs[0], device=dev)
        if prev is None and self.cfg.ngram:  # prefill: one sequence's tokens from its start
            prev = previous_tokens(tokens, self.cfg.ngram)
        x = embed(self.w.embed, self.w.prev_embed, tokens, None if prev is None else prev.to(dev))
        slots = pool.slots(b, pos)
        last = len(self.w.layers) - 1
        key_slots = slots  # prefill: the keys every row may select from (the whole prompt)
        for li, L in enumerate(self.w.layers):
            h = rmsnorm(x)
            q_fp8, weights, k_fp8, k_scale = self._index_qk(L, h, pos, pool.fp8)
            pool.k_fp8[li][slots] = k_fp8
            pool.k_scale[li][slots] = k_scale
            if li == last and not decode and len(pos) > 1:
                # Only the last position's output is read from here on; this layer's caches (index
                # keys above, attention keys and values here) still take every token.
                self._cache_kv(pool, li, L, h, pos, slots)
                x, h, pos, b, slots, q_fp8, weights = (t[-1:] for t in (x, h, pos, b, slots, q_fp8, weights))
            if self.selection != "indexer":
                sel = self._control_select(pos)
            elif decode:
                sel = self._decode_select(pool, li, seqs, q_fp8, weights, pos, observer, step)
            else:
                sel = self._prefill_select(pool, li, key_slots, q_fp8, weights, pos)
            x = x + self._attend(pool, li, L, h, b, pos, slots, sel)
            x = x + torch.relu(rmsnorm(x) @ L["w_up"]) @ L["w_down"]
        return rmsnorm(x[-1:] if not decode else x) @ self.w.lm_head

    def _index_qk(self, L, h, pos, fp8):
        q, k, w = index_qk(self.cfg, L, h, pos)
        q_fp8, q_scale = layouts.quantize_per_token(q.reshape(-1, q.shape[-1]), fp8)  # per (token, head)
        q_fp8, q_scale = q_fp8.view_as(q), q_scale.view(q.shape[:-1])
        weights = (w * q_scale).float().contiguous()  # the q scale folded in, as DSv3.2 does
        k_fp8, k_scale = layouts.quantize_per_token(k, fp8)
        return q_fp8, weights, k_fp8, k_scale

    def _control_select(self, pos: torch.Tensor) -> torch.Tensor:
        """The controls: every valid token (dense) or k of them at random; ``(rows, width)``, -1 pads."""
        n = int(pos.max()) + 1
        t = torch.arange(n, device=self.device)
        valid = t[None, :] <= pos[:, None]
        if self.selection == "dense":
            return torch.where(valid, t[None, :], -1)
        score = torch.rand(valid.shape, generator=self._rng, device=self.device).masked_fill(~valid, -1.0)
        k = min(self.cfg.index_topk, n)
        val, idx = score.topk(k, dim=-1)
        return torch.where(val >= 0, idx, -1)

    def _prefill_select(self, pool, li, key_slots, q_fp8, weights, pos):
        """Rows at ``pos`` (every prompt position, or the last one) over the prompt's keys."""
        k = pool.k_fp8[li][key_slots].float() * pool.k_scale[li][key_slots, None]  # (S, D) dequantized
        q = q_fp8.float()
        logits = torch.zeros(q.shape[0], k.shape[0], device=self.device)
        for h in range(q.shape[1]):  # one head at a time: no (T, H, S) temporary
            logits.addcmul_(torch.relu(q[:, h] @ k.T), weights[:, h:h + 1])
        return causal_topk(logits, self.cfg.index_topk, pos)

    def decode_inputs(self, pool, li, seqs, q_fp8, weights, pos) -> IndexerInputs:
        cfg = self.cfg
        kv = layouts.pack_kv_cache(pool.k_fp8[li], pool.k_scale[li], cfg.block_size)
        return IndexerInputs(
            q_fp8=q_fp8.view(len(seqs), 1, cfg.index_heads, cfg.index_head_dim), kv_cache=kv, weights=weights,
            context_lens=(pos + 1).to(torch.int32), block_tables=pool.block_tables[seqs].contiguous(),
            max_model_len=cfg.max_model_len,
            kv_cache_preshuffled=layouts.preshuffle_kv_cache(kv) if self.indexer.path == "preshuffle" else None)

    def _decode_select(self, pool, li, seqs, q_fp8, weights, pos, observer, step):
        inp = self.decode_inputs(pool, li, seqs, q_fp8, weights, pos)
        logits, sel = self.indexer.select(inp, self.cfg.index_topk)
        if observer is not None:
            sel = observer(step, li, seqs, inp, logits, sel)
        return sel.to(self.device)

    def _cache_kv(self, pool, li, L, h, pos, slots):
        pool.att_k[li][slots] = rope(h @ L["wk"], pos, self.cfg.head_dim // 2)
        pool.att_v[li][slots] = h @ L["wv"]

    def _attend(self, pool, li, L, h, b, pos, slots, sel):
        cfg, T = self.cfg, h.shape[0]
        q = rope((h @ L["wq"]).view(T, cfg.n_heads, cfg.head_dim), pos, cfg.head_dim // 2)
        self._cache_kv(pool, li, L, h, pos, slots)
        sel_slots = pool.slots(b[:, None], sel.clamp_min(0))  # (T, k)
        ks, vs = pool.att_k[li][sel_slots], pool.att_v[li][sel_slots]
        scores = torch.einsum("thd,tkd->thk", q, ks) / math.sqrt(cfg.head_dim)
        scores = scores.masked_fill((sel < 0)[:, None, :], NEG_INF)
        o = torch.einsum("thk,tkd->thd", scores.softmax(-1), vs)
        return o.reshape(T, -1) @ L["wo"]

    def probe(self) -> None:
        """One decode call on a two-token answer: raises :class:`BackendUnsupported` where the indexer's
        backend declines this model's shape (or whatever the backend raises); the indexer's call counts
        start from zero afterwards, so that a run counts its own calls only."""
        try:
            self.generate(["Question: a probe\nAnswer:"], 2, [])
        finally:
            self.indexer.calls = self.indexer.oob_calls = 0

    # -- generation ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[str], max_tokens: int, stop: list[str] | None = None,
                 observer=None) -> list[dict]:
        """Greedy, the prompts decoded together as one batch (the order of ``prompts`` is the row
        order of every decode call). Prompts are left-truncated to leave room for ``max_tokens``."""
        cfg = self.cfg
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
        room = cfg.max_model_len - max_tokens
        if room < 1:
            raise ValueError(f"max_tokens={max_tokens} leaves no room for a prompt in max_model_len={cfg.max_model_len}")
        self._rng.manual_seed(cfg.seed + 2)  # the random control draws the same tokens for the same batch
        ids = [list(p.encode("utf-8"))[-room:] or [10] for p in prompts]
        truncated = [max(0, len(p.encode("utf-8")) - room) for p in prompts]
        pool = BlockPool(cfg, [len(x) + max_tokens for x in ids], self.device)
        allowed = torch.full((VOCAB,), NEG_INF, device=self.device)
        allowed[OUTPUT_BYTES] = 0.0
        last = []
        for b, x in enumerate(ids):
            logits = self._forward(pool, [b], torch.tensor(x), torch.arange(len(x)), decode=False)
            last.append(logits[-1])
            pool.lengths[b] = len(x)
        out = [[] for _ in prompts]
        texts, reasons = [""] * len(prompts), ["length"] * len(prompts)
        active = list(range(len(prompts)))
        for step in range(max_tokens):
            still = []
            picks = torch.stack([last[b] for b in active]).add(allowed).argmax(-1).tolist()
            for b, tok in zip(active, picks):
                out[b].append(tok)
                texts[b] = bytes(out[b]).decode("utf-8", errors="replace")
                cut = min((texts[b].find(s) for s in (stop or []) if s and s in texts[b]), default=-1)
                if cut >= 0:
                    texts[b], reasons[b] = texts[b][:cut], "stop"
                elif len(out[b]) < max_tokens:
                    still.append(b)
            active = still
            if not active:
                break
            pos = torch.tensor([pool.lengths[b] for b in active])
            toks = torch.tensor([out[b][-1] for b in active])
            prev = None
            if cfg.ngram:  # each new token's predecessors: the prompt's and the generated bytes
                prev = torch.tensor([((ids[b] + out[b][:-1])[::-1] + [0] * cfg.ngram)[:cfg.ngram] for b in active])
            logits = self._forward(pool, active, toks, pos, decode=True, observer=observer, step=step, prev=prev)
            for row, b in enumerate(active):
                last[b] = logits[row]
                pool.lengths[b] += 1
        return [{"text": texts[b], "finish_reason": reasons[b], "prompt_tokens": len(ids[b]),
                 "completion_tokens": len(out[b]), "truncated_prompt_tokens": truncated[b]}
                for b in range(len(prompts))]
