"""How a server calls aiter's paged-MQA-logits wrapper in decode: the arguments it passes beside the inputs, the
path it takes at each cache block size and the buffer it hands in. A backend variant per server (``aiter:sglang``,
``aiter:atom``) judges a build under that call, since the arguments decide the kernel's chunking, and with it how
far an unmasked store reaches past a row and whether a later program stores over the damage: a build can look
clean under its defaults and leave the next row overwritten under a server's call.

Facts read from each server's source at the commit named; call sites move between releases, so each profile says
which one it is."""
from __future__ import annotations

from dataclasses import dataclass, field

# the wrapper's arguments the suite fills from the path and the inputs (KVBlockSize = the cache's block size,
# Preshuffle = the preshuffle path), which every server here passes too
FROM_INPUTS = ("KVBlockSize", "Preshuffle")
BLOCK_RULES = {"1": lambda bs: bs == 1, "above 1": lambda bs: bs > 1}


@dataclass(frozen=True)
class Caller:
    who: str
    kwargs: dict = field(default_factory=dict)  # its other arguments, as it passes them
    paths: dict = field(default_factory=dict)  # path -> the block sizes it takes it at (a key of BLOCK_RULES)
    buffer: str = ""  # the logits buffer it allocates
    source: str = ""  # where these facts were read

    def passes(self) -> set[str]:
        """Every keyword argument of its call: a wrapper without one of them fails under this server."""
        return set(self.kwargs) | set(FROM_INPUTS)

    def takes(self, path: str, block_size: int) -> bool:
        return path in self.paths and BLOCK_RULES[self.paths[path]](block_size)


CALLERS = {
    "sglang": Caller(
        who="SGLang's DSA indexer on ROCm",
        kwargs={"ChunkK": 128, "TotalCuCount": 256, "WavePerEU": 5},
        paths={"fused": "1"},  # Preshuffle=False, KVBlockSize=1: page size 1 is asserted
        buffer="(batch * next_n, max_seq_len) float32 filled with -inf: exact",
        source="sgl-project/sglang python/sglang/srt/layers/attention/nsa/nsa_indexer.py at 005e8bf8, "
               "Indexer._get_topk_paged, HIP branch"),
    "atom": Caller(
        who="ATOM's vLLM plugin (ROCm) sparse-attention indexer",
        kwargs={"ChunkK": 256, "WavePerEU": 2},
        paths={"fused": "1", "preshuffle": "above 1"},  # Preshuffle = (block size != 1), its cache written so
        buffer="torch.empty((batch * next_n, max_model_len)) float32: exact, not initialized",
        source="ROCm/ATOM atom/plugin/attention_mla_sparse.py at 268b560d, sparse_attn_indexer_plugin_mode, "
               "decode"),
}
