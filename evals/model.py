"""A tiny DeepSeek-V3.2-shaped decoder whose sparse attention is chosen by the indexer under test.

Per layer: a lightning indexer (fp8 q with per-(token, head) scales folded into the weights, fp8
keys with per-token scales in a block-paged cache shared by the batch, one shuffled block table per
sequence), the decode top-k consumer, and attention restricted to the selected tokens.

As in vLLM, the paged kernel under test serves decode: one call per layer and step computes the
logits of every sequence of the batch, rows ``(B, max_model_len)`` with ``max_model_len`` the
configured one, into a buffer of the chosen strategy. So an unmasked overshoot of one sequence's
row lands in the next sequence's leading columns, exactly as in a server. Prefill uses a plain
torch indexer (the role of vLLM's non-paged prefill kernel), not the backend under test. Weights are seeded random: the model is
untrained and scores about 0 on GSM8K. What it proves is that a kernel build, reached end to end
through an OpenAI-compatible server and lm-eval, selects the same tokens as the reference.

Byte-level tokenizer; generation is restricted to printable ASCII and newline so that every
response is valid text.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from parity.problem import layouts
from parity.backends import load_backend
from parity.judge.buffers import guarded_buffer, sentinel_mask
from parity.problem.cases import IndexerInputs
from parity.judge.topk import topk_reference

GUARDED = ("exact", "padded")
INDEXER_PATHS = ("fused", "stage1", "preshuffle")
OUTPUT_BYTES = [10] + list(range(32, 127))
NEG_INF = float("-inf")


@dataclass(frozen=True)
class ModelConfig:
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4  # attention heads over one shared key/value head (MQA, as MLA's absorbed form)
    head_dim: int = 16
    index_heads: int = 4
    index_head_dim: int = 32  # a multiple of 16, so the preshuffled layout exists
    rope_dim: int = 16  # leading dims of q/k that carry position (DSv3.2 ropes part of the indexer head)
    index_topk: int = 16  # small against the context, so selection decides what attention sees
    block_size: int = 64
    # Small, so CPU runs are fast (5-shot prompts of ~3 KB are left-truncated to fit), and not a
    # multiple of 256: a row near the end of its context then has a partial last 256-column chunk.
    max_model_len: int = 1000
    ffn: int = 128
    fp8: str = "e4m3fn"
    seed: int = 0

    def __post_init__(self):
        if self.index_head_dim % 16 or self.rope_dim > self.index_head_dim or self.rope_dim % 2:
            raise ValueError(f"index_head_dim must be a multiple of 16 and rope_dim even and <= it, got "
                             f"{self.index_head_dim}, {self.rope_dim}")
        if self.index_topk < 1 or self.block_size < 1 or self.max_model_len < 2:
            raise ValueError("index_topk, block_size must be >= 1 and max_model_len >= 2")
        layouts.fp8_dtype(self.fp8)


def _rope(x: torch.Tensor, pos: torch.Tensor, dims: int) -> torch.Tensor:
    """Rotary embedding on the leading ``dims`` of the last axis; ``pos`` (T,) broadcasts over heads."""
    if dims == 0:
        return x
    half = dims // 2
    freq = 10000.0 ** (-torch.arange(half, dtype=torch.float32) / half)
    ang = pos.float()[:, None] * freq[None, :]  # (T, half)
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (half,)
    cos, sin = ang.cos().view(shape), ang.sin().view(shape)
    a, b, rest = x[..., :half], x[..., half:dims], x[..., dims:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos, rest], dim=-1)


def _rmsnorm(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class Weights:
    def __init__(self, cfg: ModelConfig):
        g = torch.Generator().manual_seed(cfg.seed)

        def w(*shape):
            return torch.randn(*shape, generator=g) / math.sqrt(shape[0])

        d = cfg.d_model
        self.embed = torch.randn(256, d, generator=g)
        self.lm_head = w(d, 256)
        self.layers = []
        for _ in range(cfg.n_layers):
            self.layers.append({
                "wq_index": w(d, cfg.index_heads * cfg.index_head_dim),
                "wk_index": w(d, cfg.index_head_dim),
                "w_index_weights": w(d, cfg.index_heads),
                "wq": w(d, cfg.n_heads * cfg.head_dim),
                "wk": w(d, cfg.head_dim),
                "wv": w(d, cfg.head_dim),
                "wo": w(cfg.n_heads * cfg.head_dim, d),
                "w_up": w(d, cfg.ffn),
                "w_down": w(cfg.ffn, d),
            })


class Indexer:
    """Turns q/k/weights into the backend's logits and the selected token indices.

    ``buffer``: ``exact`` / ``padded`` are guarded allocations (an overshoot past the last row lands
    in a guard and is counted, instead of in someone else's memory); any other name is a strategy
    of ``parity.contract.strategies`` (its buffers are reused across layers, as a server's are)."""

    def __init__(self, backend: str = "torch", buffer: str = "exact", path: str = "fused", pad: int = 256):
        if path not in INDEXER_PATHS:
            raise ValueError(f"indexer path must be one of {INDEXER_PATHS}, got {path!r}")
        self.backend_spec, self.buffer, self.path, self.pad = backend, buffer, path, pad
        self.backend = load_backend(backend)
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
            raise RuntimeError(f"indexer backend {self.backend_spec!r} cannot run {self.path}: {why}")
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

    def __init__(self, cfg: ModelConfig, capacities: list[int]):
        bs = cfg.block_size
        need = [math.ceil(c / bs) for c in capacities]
        self.max_blocks = max(need)
        num_blocks = sum(need) + 2
        g = torch.Generator().manual_seed(cfg.seed + 1)
        physical = torch.randperm(num_blocks, generator=g).to(torch.int32)
        self.block_tables = torch.zeros(len(capacities), self.max_blocks, dtype=torch.int32)
        at = 0
        for b, n in enumerate(need):
            self.block_tables[b, :n] = physical[at: at + n]
            at += n
        self.fp8 = layouts.fp8_dtype(cfg.fp8)
        slots = num_blocks * bs
        L = cfg.n_layers
        self.k_fp8 = [torch.zeros(slots, cfg.index_head_dim).to(self.fp8) for _ in range(L)]
        self.k_scale = [torch.zeros(slots) for _ in range(L)]
        self.att_k = [torch.zeros(slots, cfg.head_dim) for _ in range(L)]
        self.att_v = [torch.zeros(slots, cfg.head_dim) for _ in range(L)]
        self.bs = bs
        self.lengths = [0] * len(capacities)

    def slots(self, b: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Physical slot of token ``pos`` of sequence ``b`` (broadcasting)."""
        return self.block_tables[b, pos // self.bs].long() * self.bs + pos % self.bs


class TinyIndexerLM:
    def __init__(self, cfg: ModelConfig | None = None, indexer: Indexer | None = None):
        self.cfg = cfg or ModelConfig()
        self.w = Weights(self.cfg)
        self.indexer = indexer or Indexer()

    def describe(self) -> dict:
        return {"name": "tiny-indexer-lm", "config": asdict(self.cfg), "indexer": self.indexer.describe()}

    # -- one forward over new tokens ------------------------------------------------------------
    def _forward(self, pool: BlockPool, seqs: list[int], tokens: torch.Tensor, pos: torch.Tensor,
                 decode: bool, observer=None, step: int = 0) -> torch.Tensor:
        """Prefill: one sequence ``seqs == [b]``, ``tokens``/``pos`` its T prompt tokens. Decode: one
        new token per sequence in ``seqs``. Returns the last position's vocabulary logits per row."""
        b = torch.tensor(seqs) if decode else torch.full((len(pos),), seqs[0])
        x = self.w.embed[tokens]
        slots = pool.slots(b, pos)
        for li, L in enumerate(self.w.layers):
            h = _rmsnorm(x)
            q_fp8, weights, k_fp8, k_scale = self._index_qk(L, h, pos, pool.fp8)
            pool.k_fp8[li][slots] = k_fp8
            pool.k_scale[li][slots] = k_scale
            if decode:
                sel = self._decode_select(pool, li, seqs, q_fp8, weights, pos, observer, step)
            else:
                sel = self._prefill_select(pool, li, slots, q_fp8, weights)
            x = x + self._attend(pool, li, L, h, b, pos, slots, sel)
            x = x + torch.relu(_rmsnorm(x) @ L["w_up"]) @ L["w_down"]
        return _rmsnorm(x) @ self.w.lm_head

    def _index_qk(self, L, h, pos, fp8):
        cfg, T = self.cfg, h.shape[0]
        H, D = cfg.index_heads, cfg.index_head_dim
        q = _rope((h @ L["wq_index"]).view(T, H, D), pos, cfg.rope_dim)
        k = _rope(torch.nn.functional.layer_norm(h @ L["wk_index"], (D,)), pos, cfg.rope_dim)
        q_scale = q.abs().amax(-1, keepdim=True).clamp_min(1e-12) / layouts.fp8_max(fp8)
        q_fp8 = (q / q_scale).to(fp8)
        # DSv3.2 folds the q scale, H^-0.5 and the softmax scale into the per-head weights.
        weights = ((h @ L["w_index_weights"]) * q_scale.squeeze(-1) * H**-0.5 * D**-0.5).float().contiguous()
        k_fp8, k_scale = layouts.quantize_per_token(k, fp8)
        return q_fp8, weights, k_fp8, k_scale

    def _prefill_select(self, pool, li, slots, q_fp8, weights):
        T = q_fp8.shape[0]
        k = pool.k_fp8[li][slots].float() * pool.k_scale[li][slots, None]  # (T, D) dequantized
        score = torch.einsum("thd,sd->ths", q_fp8.float(), k).clamp_min(0)
        logits = torch.einsum("ths,th->ts", score, weights)
        logits = logits.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), NEG_INF)
        return topk_reference(logits, torch.arange(1, T + 1, dtype=torch.int32), 1, self.cfg.index_topk)

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
        return sel

    def _attend(self, pool, li, L, h, b, pos, slots, sel):
        cfg, T = self.cfg, h.shape[0]
        q = _rope((h @ L["wq"]).view(T, cfg.n_heads, cfg.head_dim), pos, cfg.head_dim // 2)
        pool.att_k[li][slots] = _rope(h @ L["wk"], pos, cfg.head_dim // 2)
        pool.att_v[li][slots] = h @ L["wv"]
        sel_slots = pool.slots(b[:, None], sel.clamp_min(0))  # (T, k)
        ks, vs = pool.att_k[li][sel_slots], pool.att_v[li][sel_slots]
        scores = torch.einsum("thd,tkd->thk", q, ks) / math.sqrt(cfg.head_dim)
        scores = scores.masked_fill((sel < 0)[:, None, :], NEG_INF)
        o = torch.einsum("thk,tkd->thd", scores.softmax(-1), vs)
        return o.reshape(T, -1) @ L["wo"]

    # -- generation ----------------------------------------------------------------------------
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
        ids = [list(p.encode("utf-8"))[-room:] or [10] for p in prompts]
        truncated = [max(0, len(p.encode("utf-8")) - room) for p in prompts]
        pool = BlockPool(cfg, [len(x) + max_tokens for x in ids])
        allowed = torch.full((256,), NEG_INF)
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
            for b in active:
                tok = int(torch.argmax(last[b] + allowed))
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
            logits = self._forward(pool, active, toks, pos, decode=True, observer=observer, step=step)
            for row, b in enumerate(active):
                last[b] = logits[row]
                pool.lengths[b] += 1
        return [{"text": texts[b], "finish_reason": reasons[b], "prompt_tokens": len(ids[b]),
                 "completion_tokens": len(out[b]), "truncated_prompt_tokens": truncated[b]}
                for b in range(len(prompts))]
