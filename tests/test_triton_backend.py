"""The project's Triton kernels through the parity harness: every path x buffer x quick case, on the GPU
when there is one, else on the CPU under the Triton interpreter (the parity plugin sets TRITON_INTERPRET=1)."""
import os
import subprocess
import sys

import pytest
import torch

from parity.backends import load_backend
from parity.problem.cases import IndexerCase, build_inputs
from parity.problem.grids import quick_cases
from parity.run.harness import failed_checks, run_cell

pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The parity matrix (tests/test_parity.py) runs triton over every quick case; these tests cover what
# it does not: the kernel's tuning options, its argument checks, and its refusal without a GPU.
CASES = quick_cases()


@pytest.fixture(scope="module")
def triton_backend():
    return load_backend("triton")


VARIANTS = [
    {"upcast": "fp16"},  # targets without an fp8 dot
    {"upcast": "decode"},  # fp8 flavours the target cannot load (e4m3fnuz on NVIDIA): bit decoding
    {"programs": 1},  # one program walks every sequence: q reloads at each sequence boundary
    {"programs": 1000, "block_t": 16},  # more programs than tiles
    {"flat": False},  # key tiles gathered row by row even where a tile sits in one block
    {"num_stages": 1, "block_t": 32},  # no multi-buffering
    {"max_dot_n": 16},  # speculative rows split over two dots
    # key tiles and scales through tensor descriptors (bulk copies on a GPU), at every tile count and next_n
    {"tma": True, "tma_min_tiles": 0, "tma_max_next_n": 4},
    {"tma": True, "tma_min_tiles": 0, "tma_max_next_n": 4, "block_t": 16, "max_dot_n": 16},  # tiles per block
    # shares of the tiles the batch really has, by context length: as many programs as tiles, and one
    {"balanced": True, "programs": 1000, "block_t": 16},
    {"balanced": True, "programs": 1},
]
FNUZ_CASE = next(c for c in quick_cases() if c.fp8 == "e4m3fnuz" and c.block_size == 16)


H64_CASE = next(c for c in quick_cases() if c.heads == 64 and c.block_size == 64 and c.next_n == 3)
SHORT_CASES = [c for c in quick_cases() if "random" in c.id][:2]  # contexts well under max_model_len


@pytest.mark.parametrize("case", SHORT_CASES, ids=lambda c: c.id)
def test_balanced_shares_compute_the_same_logits(case):
    """Programs that split the tiles the batch really has (by context length) write what the even split
    over B x max_model_len writes, on every path."""
    backend = load_backend("triton", balanced=True, programs=3)
    for path in ("stage1", "fused", "preshuffle"):
        result = run_cell(backend, path, "padded", case, DEVICE)
        if path == "preshuffle" and case.block_size % 16:  # no preshuffled layout for this block size
            assert result["status"] == "skip"
            continue
        assert result["status"] == "pass", "\n".join(failed_checks(result))


@pytest.mark.parametrize("case", [CASES[0], FNUZ_CASE, H64_CASE], ids=lambda c: c.id)
@pytest.mark.parametrize("options", VARIANTS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_tuning_variants_agree(options, case):
    """Every tuning option computes the same logits, on both fp8 flavours."""
    backend = load_backend("triton", **options)
    for path in ("fused", "preshuffle"):
        result = run_cell(backend, path, "padded", case, DEVICE)
        assert result["status"] == "pass", "\n".join(failed_checks(result))


def test_rejects_wrong_out(triton_backend):
    inp = build_inputs(IndexerCase(), DEVICE)
    wrong = torch.full((inp.rows, inp.max_model_len + 1), float("-inf"), device=DEVICE)
    with pytest.raises(ValueError, match=r"out must be float32"):
        triton_backend.run("fused", inp, wrong)
    with pytest.raises(ValueError, match="block_t"):
        load_backend("triton", block_t=48)
    with pytest.raises(ValueError, match="upcast"):
        load_backend("triton", upcast="bf16")
    with pytest.raises(ValueError, match="probe must be None or one of"):
        load_backend("triton", probe="loads")


# each option a caller may fix: a value it refuses, and the edge value it takes (written out, not read from the
# backend's own table)
OPTION_EDGES = [
    ("block_t", 48, 16), ("block_t", 8, 256), ("ctas_per_sm", 0, 1), ("num_warps", 6, 1), ("num_stages", 0, 1),
    ("maxnreg", 23, 255), ("maxnreg", 256, 24), ("sm90_ws_ctas_per_sm", 0, 1), ("sm90_ws_stages", 1, 2),
    ("sm90_ws_min_tiles", -1, 0), ("sm90_wg4_min_batch", -1, 0), ("programs", -1, 0),
]


@pytest.mark.parametrize("name, refused, taken", OPTION_EDGES, ids=lambda v: str(v))
def test_an_option_out_of_range_is_refused_by_name(name, refused, taken):
    with pytest.raises(ValueError, match=rf"^{name} must be .*got {refused}$"):
        load_backend("triton", **{name: refused})
    info = load_backend("triton", **{name: taken}).describe()
    assert {**info, **info["config"]}[name] == taken  # the config's options, or the call options beside it


def test_a_probe_is_refused_where_the_portable_kernel_runs():
    """The sm90 kernels' measurement probes (wrong logits by design) never run silently as the portable
    kernel, which has none: on the CPU, and for a call the sm90 kernels do not take."""
    inp = build_inputs(IndexerCase(), DEVICE)
    out = torch.full((inp.rows, inp.max_model_len), float("-inf"), device=DEVICE)
    with pytest.raises(ValueError, match="probe='reads' measures the sm90 kernels"):
        load_backend("triton", probe="reads", kernel="portable").run("fused", inp, out)
    fp4 = build_inputs(IndexerCase(key_format="mxfp4"), DEVICE)
    with pytest.raises(ValueError, match="an mxfp4 cache runs the FP4 kernel"):
        load_backend("triton", probe="no-stores").run("fused", fp4, out)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the cpu refusal only matters without a GPU")
def test_cpu_without_interpreter_is_unsupported():
    code = ("from parity.backends import load_backend; from parity.problem.cases import IndexerCase, build_inputs;"
            "print(load_backend('triton').unsupported('fused', build_inputs(IndexerCase())))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "TRITON_INTERPRET" in out.stdout


@pytest.mark.parametrize("batch, mml, programs", [(1, 512, 4), (2, 512, 4), (3, 512, 6), (5, 512, 6)])
def test_few_tiles_get_one_program_fewer_per_multiprocessor(batch, mml, programs):
    """ctas_per_sm (3) programs per multiprocessor (2 on the CPU), one fewer where each would get fewer
    than 4 tiles of 64 tokens (fewer than 24 tiles here); an explicit ``programs`` is taken as given."""
    case = IndexerCase(batch=batch, next_n=2, max_model_len=mml, block_size=64)
    inputs = build_inputs(case, "cpu")
    out = torch.empty(batch * 2, mml)
    _, grid, *_ = load_backend("triton")._launch("fused", inputs, out)
    assert grid == (programs,)
    _, grid, *_ = load_backend("triton", programs=7)._launch("fused", inputs, out)
    assert grid == (min(7, batch * mml // 64),)
