"""Weights that vouch for themselves (a corrupt or mismatched file is exit 2, never a model that
quietly scores 0), and training that computes what inference computes."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch

from evals import weights
from evals.__main__ import main
from evals.model import BlockPool, ModelConfig, TinyIndexerLM, rmsnorm
from evals.train import Net, TrainSpec, train

TINY = ModelConfig(d_model=32, n_layers=2, n_heads=2, head_dim=16, index_heads=2, index_head_dim=16, rope_dim=8,
                   index_topk=8, block_size=16, max_model_len=2000, ffn=64, seed=3)


@pytest.fixture
def saved(tmp_path):
    net = Net(TINY)
    weights.save(tmp_path / "w", net.tensors(), TINY, training={"command": "test"})
    return tmp_path / "w", net


def test_round_trip_checks_the_hash(saved):
    path, net = saved
    cfg, tensors, manifest = weights.load(path)
    assert cfg == TINY and manifest["sha256"] == weights.sha256_file(path / weights.WEIGHTS_FILE)
    assert all(torch.equal(tensors[k], v) for k, v in net.tensors().items())
    model = weights.embedded_model(path)
    assert model.describe()["weights"]["sha256"] == manifest["sha256"]


def test_corrupt_file_is_refused(saved):
    path, _ = saved
    f = path / weights.WEIGHTS_FILE
    raw = bytearray(f.read_bytes())
    raw[-3] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(weights.WeightsError, match="sha256 .* does not match the manifest"):
        weights.load(path)


def test_mismatched_config_is_refused(saved):
    path, _ = saved
    m = json.loads((path / weights.MANIFEST).read_text())
    m["config"]["d_model"] = 48  # the file is intact, the manifest describes another model
    (path / weights.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(weights.WeightsError, match="does not fit the manifest's config"):
        weights.load(path)


def test_missing_and_bad_manifests(tmp_path, saved):
    with pytest.raises(weights.WeightsError, match="no weights manifest"):
        weights.load(tmp_path / "nowhere")
    path, _ = saved
    (path / weights.MANIFEST).write_text("{not json")
    with pytest.raises(weights.WeightsError, match="not valid JSON"):
        weights.load(path)


def test_cli_exit_2_names_the_file(saved, tmp_path, capsys):
    path, _ = saved
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    (bad / weights.WEIGHTS_FILE).write_bytes(b"\0" * 100)
    rc = main(["gsm8k", "run", "--weights", str(bad), "--out", str(tmp_path / "run"), "--limit", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and str(bad / weights.WEIGHTS_FILE) in err and "sha256" in err
    assert main(["gsm8k", "run", "--weights", str(path), "--untrained", "--out", str(tmp_path / "r2")]) == 2
    assert main(["gsm8k", "run", "--weights", str(path), "--max-model-len", "4000", "--out",
                 str(tmp_path / "r3"), "--limit", "1"]) == 2
    assert "may be made smaller, not larger" in capsys.readouterr().err


def test_training_forward_is_the_inference_forward():
    """The batched training model computes the inference model's outputs: dense exactly, sparse on
    the same selected sets (the fp8 indexer logits agree, so only exact ties may pick differently)."""
    cfg = replace(TINY, index_topk=16)
    net = Net(cfg)
    torch.manual_seed(0)
    T = 200
    tok = torch.randint(32, 127, (1, T))
    model = TinyIndexerLM(cfg, weights=net.tensors(), selection="dense")
    with torch.no_grad():
        dense, _ = net(tok, "dense")
        ref = model._forward(BlockPool(cfg, [T]), [0], tok[0], torch.arange(T), decode=False)
    assert torch.allclose(dense[0, -1], ref[0], atol=1e-4)
    model = TinyIndexerLM(cfg, weights=net.tensors())
    pool = BlockPool(cfg, [T])
    pos = torch.arange(T)
    L = model.w.layers[0]
    h = rmsnorm(model.w.embed[tok[0]])
    q8, w, k8, ks = model._index_qk(L, h, pos, pool.fp8)
    slots = pool.slots(torch.zeros(T, dtype=torch.long), pos)
    pool.k_fp8[0][slots], pool.k_scale[0][slots] = k8, ks
    infer = model._prefill_select(pool, 0, slots, q8, w, pos)
    with torch.no_grad():
        logits = net.index_logits(net.layer(0), rmsnorm(net.params["embed"][tok]), pos[None], fp8=True)[0]
    k = cfg.index_topk
    for t in range(T):
        a = set(infer[t][infer[t] >= 0].tolist())
        row = logits[t, : t + 1]
        if t + 1 <= k:
            assert a == set(range(t + 1))
            continue
        kth = row.topk(k).values[-1]
        clear = set(torch.nonzero(row > kth + 1e-5).flatten().tolist())  # above any tie at the k-th value
        assert clear <= a and len(a) == k


def test_three_stages_run_and_their_weights_load():
    cfg = replace(TINY, max_model_len=2000)
    spec = TrainSpec(dense_steps=3, indexer_steps=2, sparse_steps=2, batch=2, seq_chars=300, min_facts=2,
                     max_facts=3, warmup=1, long_share=0.5)
    net, record = train(spec, cfg, device="cpu", log=lambda *a, **k: None)
    assert set(record["stages"]) == {"dense", "indexer", "sparse"}
    dense_log = record["stages"]["dense"]["log"]
    assert dense_log[-1]["lm"] < dense_log[0]["lm"]  # it learns something in three steps
    assert record["stages"]["indexer"]["log"][0]["kl"] > 0
    out = TinyIndexerLM(net.cfg, weights=net.tensors()).generate(["Question: x\nAnswer:"], 3)
    assert out[0]["completion_tokens"] == 3
