"""How a server calls aiter's fused paged-MQA-logits wrapper: the arguments it passes beside the inputs, the
cache block sizes it uses and the buffer it hands in. A backend variant per server (``aiter:sglang``) judges a
build under that call, since the arguments decide the kernel's chunking, and with it how far an unmasked store
reaches past a row: a build can be clean under its defaults and write into the next row under a server's call.

Facts read from each server's source at the commit named; the call sites move between releases, so each
profile says which one it is."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Caller:
    who: str
    kwargs: dict = field(default_factory=dict)  # passed to the fused wrapper beside the suite's arguments
    block_sizes: tuple[int, ...] = ()  # the cache block sizes it calls with; () for any
    buffer: str = ""  # the logits buffer it allocates
    source: str = ""  # where these facts were read


CALLERS = {
    "sglang": Caller(
        who="SGLang's DSA indexer on ROCm (decode)",
        kwargs={"Preshuffle": False, "KVBlockSize": 1, "ChunkK": 128, "TotalCuCount": 256, "WavePerEU": 5},
        block_sizes=(1,),
        buffer="(batch * next_n, max_seq_len) float32 filled with -inf: the exact buffer",
        source="sgl-project/sglang python/sglang/srt/layers/attention/nsa/nsa_indexer.py at 005e8bf8 "
               "(Indexer._get_topk_paged, its HIP branch: page_size 1 asserted)"),
}
