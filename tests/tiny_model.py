"""A small embedded-model config and its weights on disk, for tests that need a model but not its accuracy."""
from evals import weights
from evals.model import ModelConfig
from evals.train import Net

TINY = ModelConfig(d_model=32, n_layers=2, n_heads=2, head_dim=16, index_heads=2, index_head_dim=16, rope_dim=8,
                   index_topk=8, block_size=16, max_model_len=2000, ffn=64, seed=3, ngram=3)


def save_tiny(dest, cfg: ModelConfig = TINY):
    """Seeded untrained weights of ``cfg`` saved as a weights directory ``dest``; returns (dest, net)."""
    net = Net(cfg)
    weights.save(dest, net.tensors(), cfg, training={"command": "test"})
    return dest, net
