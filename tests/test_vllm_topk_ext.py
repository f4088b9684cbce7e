"""Building vLLM's decode top-k from a source tree: what is found, refused and generated, on synthetic
trees written here (the compile itself needs nvcc and a CUDA torch: tests/test_topk.py runs it on a GPU)."""
import json

import pytest
import torch

from parity.backends import vllm_topk_ext as ext

EIGHT = """void top_k_per_row_decode(const torch::Tensor& logits, int64_t next_n,
                          const torch::Tensor& seqLens, torch::Tensor& indices,
                          int64_t numRows, int64_t stride0, int64_t stride1,
                          int64_t topK) {
  launch();
}
"""
SEVEN = """void top_k_per_row_decode(const torch::Tensor &logits, int64_t next_n, const torch::Tensor &seq_lens,
                          torch::Tensor &indices, int64_t numRows, int64_t stride0, int64_t stride1) {}
"""
AUX = """void top_k_per_row_decode(const torch::Tensor& logits, int64_t next_n,
                          const torch::Tensor& seqLens, torch::Tensor& indices,
                          torch::Tensor& auxIndices, torch::Tensor& auxLogits,
                          int64_t numRows, int64_t stride0, int64_t stride1,
                          int64_t splitWorkThreshold) {}
"""


def tree(tmp_path, body=EIGHT, headers=("cuda_compat.h", "sub/helpers.h"), name="sampler.cu"):
    csrc = tmp_path / "csrc"
    (csrc / "sub").mkdir(parents=True)
    (csrc / "ops.h").write_text("void top_k_per_row_decode(const torch::Tensor& logits, int64_t next_n);\n")
    (csrc / "other.cu").write_text('#include "ops.h"\nvoid caller() { top_k_per_row_decode(x, 1); }\n')
    for h in headers:
        (csrc / h).write_text('#pragma once\n' + ('#include "inner.h"\n' if h.startswith("sub/") else ""))
    (csrc / "sub" / "inner.h").write_text("#pragma once\n")
    includes = "".join(f'#include "{h}"\n' for h in ("cuda_compat.h", "sub/helpers.h"))
    (csrc / name).write_text(includes + "#include <cub/cub.cuh>\n// void top_k_per_row_decode(int bait) {\n" + body)
    return tmp_path


def test_plan_finds_the_defining_file_its_headers_and_the_generation(tmp_path):
    p = ext.plan(tree(tmp_path))
    assert p.kernel == tmp_path / "csrc" / "sampler.cu"  # not ops.h (a declaration) nor other.cu (a call)
    assert sorted(h.relative_to(tmp_path).as_posix() for h in p.headers) == [
        "csrc/cuda_compat.h", "csrc/sub/helpers.h", "csrc/sub/inner.h"]  # inner.h: beside its includer
    assert [n for _, n in p.params] == ["logits", "next_n", "seqLens", "indices", "numRows", "stride0", "stride1",
                                        "topK"]
    assert p.with_top_k is True and p.namespace.startswith("parity_vllm_topk_")


def test_the_namespace_follows_the_sources(tmp_path):
    first = ext.plan(tree(tmp_path)).namespace
    (tmp_path / "csrc" / "sub" / "inner.h").write_text("#pragma once\n#define CHANGED 1\n")
    assert ext.plan(tmp_path).namespace != first


def test_the_older_generation_takes_no_top_k(tmp_path):
    p = ext.plan(tree(tmp_path, body=SEVEN, name="topk_decode.cu"))
    assert p.kernel.name == "topk_decode.cu" and p.with_top_k is False


def test_an_unknown_parameter_list_is_refused_with_the_list(tmp_path):
    with pytest.raises(ext.VllmSourceError, match=r"torch::Tensor& auxIndices.*neither known form"):
        ext.plan(tree(tmp_path, body=AUX))


def test_missing_headers_are_named(tmp_path):
    root = tree(tmp_path, headers=("sub/helpers.h",))
    with pytest.raises(ext.VllmSourceError, match=r"headers missing.*cuda_compat\.h \(included by csrc/sampler\.cu\)"):
        ext.plan(root)


def test_a_tree_without_the_op_or_without_csrc(tmp_path):
    with pytest.raises(ext.VllmSourceError, match="root of a vLLM checkout"):
        ext.plan(tmp_path)
    root = tree(tmp_path, body="void top_k_per_row_prefill(int x) {}\n")
    with pytest.raises(ext.VllmSourceError, match="no .cu file under .* defines top_k_per_row_decode"):
        ext.plan(root)


@pytest.mark.parametrize("with_top_k", [True, False])
def test_binding_declares_what_it_registers(with_top_k):
    text = ext.binding_source("parity_vllm_topk_abc", with_top_k)
    tail = ", int top_k) -> ()" if with_top_k else "int stride1) -> ()"
    assert "TORCH_LIBRARY(parity_vllm_topk_abc, m)" in text and tail in text
    assert ("int64_t stride1, int64_t top_k);" in text) is with_top_k
    assert ("int64_t stride1);" in text) is not with_top_k
    assert "Tensor! indices" in text and "c10::DispatchKey::CUDA" in text


@pytest.mark.skipif(torch.version.cuda is not None, reason="checks the refusal of a CPU-only torch")
def test_load_refuses_a_cpu_only_torch(tmp_path):
    with pytest.raises(RuntimeError, match="needs a CUDA build of torch"):
        ext.load(tree(tmp_path))


def test_cli_plan_and_missing_tree(tmp_path, capsys, monkeypatch):
    assert ext.main(["--vllm-src", str(tree(tmp_path)), "--plan"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["takes_top_k"] is True and out["params"][-1] == "int64_t topK"
    monkeypatch.delenv(ext.ENV, raising=False)
    assert ext.main([]) == 2 and "--vllm-src" in capsys.readouterr().err
    assert ext.main(["--vllm-src", str(tmp_path / "nowhere"), "--plan"]) == 2


# --- ci/vllm-topk-cases.sh and python -m parity.contract.topk_cases, the parts a CPU can run --------------------------

def _script(*args, env=None):
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    return subprocess.run(["bash", str(root / "ci" / "vllm-topk-cases.sh"), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_cases_script_usage_and_missing_tree(tmp_path):
    assert _script().returncode == 2
    proc = _script(str(tmp_path / "out"), env={"PARITY_VLLM_SRC": str(tmp_path / "nowhere")})
    assert proc.returncode == 1 and "no vLLM tree with csrc/sampler.cu" in proc.stdout
    proc = _script(str(tmp_path / "out"), "--only", "no-such-case", env={"PARITY_VLLM_SRC": str(tree(tmp_path))})
    assert proc.returncode == 2 and "no such case" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cases_script_stops_at_a_build_that_cannot_run(tmp_path):
    proc = _script(str(tmp_path / "out"), "--only", "zeros-c8192", env={"PARITY_VLLM_SRC": str(tree(tmp_path))})
    assert proc.returncode == 1 and "build: exit 2" in proc.stdout
    assert "zeros-c8192 insertion" in (tmp_path / "out" / "predictions.txt").read_text()


def test_topk_cases_cli_refuses_bad_options(tmp_path, capsys):
    from parity.contract import topk_cases

    assert topk_cases.main(["--out", str(tmp_path), "--runs", "0"]) == 2
    assert topk_cases.main(["--out", str(tmp_path), "--only", "nope"]) == 2
    assert "no such case" in capsys.readouterr().err
    assert topk_cases.main(["--out", str(tmp_path), "--list", "--only", "short-rows-c200000"]) == 0
    assert '"1": 1000' in capsys.readouterr().out
