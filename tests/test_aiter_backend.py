"""The aiter backend on the user's aiter build (installed ``amd-aiter`` or ``--aiter-path``), and the
findings the suite must report for the PyPI build amd-aiter 0.1.7.post2.dev18 (SPEC sections 1, 4)
and for ROCm/aiter main at e4048607 (run with ``--aiter-path`` at such a checkout; skipped otherwise).

Without ROCm the build's Triton kernels run through its own wrapper, on the GPU when there is one,
else under the Triton interpreter (the parity plugin sets TRITON_INTERPRET=1). Expected values below come
from the case's context_lens and two facts about that build, never from the backend's output:
ChunkK = 64 with unmasked chunk stores, and row i of a sequence treating ``t <= context_len - i``
as valid (SPEC section 1).
"""
import importlib.util
import math
from pathlib import Path

import pytest
from findings import failing, finding, old_causal_rule_mask
import torch

from parity.reports import render, report
from parity.backends.aiter import NOT_RUNNABLE, find_build, make_backend
from parity.problem.cases import IndexerCase, build_inputs
from parity.run.harness import run_cell

pytest.importorskip("triton")

PYPI = "0.1.7.post2.dev18"
MAIN = "e4048607a535ace3a2b51ded31b1c8c2d45c0879"  # ROCm/aiter main, 2026-08-22
CHUNK_K = 64
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
HEADS = 16  # small enough for the interpreter
MML = 500
# next_n = 1, first sequence at max_model_len: only the chunk overshoot shows, no causal mismatch.
OOB_FIRST = IndexerCase(batch=2, next_n=1, heads=HEADS, block_size=64, max_model_len=MML, context="ctx_eq_max_first")
OOB_LAST = IndexerCase(batch=2, next_n=1, heads=HEADS, block_size=16, max_model_len=MML, context="ctx_eq_max")
MASK_CASES = [IndexerCase(batch=2, next_n=2, heads=HEADS, block_size=16, max_model_len=MML, context="random"),
              IndexerCase(batch=1, next_n=4, heads=HEADS, block_size=64, max_model_len=MML, context="random")]


def _load_fixer():
    path = Path(__file__).resolve().parent.parent / "ci" / "aiter-fixed-build.py"
    spec = importlib.util.spec_from_file_location("aiter_fixed_build", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def build(request):
    try:
        return find_build(request.config.getoption("--aiter-path"))
    except (ModuleNotFoundError, ValueError) as exc:
        pytest.skip(f"no aiter build to test: {exc}")


@pytest.fixture(scope="module")
def aiter(build):
    return make_backend(str(build.root))


@pytest.fixture(scope="module")
def pypi(aiter, build):
    """The backend, when the build is the one whose findings are recorded here."""
    if build.version != PYPI:
        pytest.skip(f"findings recorded for amd-aiter {PYPI}; the build at {build.root} is {build.version}")
    return aiter


def overshoot(ctx: int) -> int:
    """Columns past max_model_len that this build's last 64-column chunk of a row stores."""
    return max(0, math.ceil(ctx / CHUNK_K) * CHUNK_K - MML)


# --- the build, found and described ----------------------------------------------------------------

def test_describe_names_origin_version_and_kernels(aiter, build):
    info = aiter.describe()
    assert info["origin"] == str(build.root / "aiter") and info["version"] == build.version
    assert "deepgemm_fp8_paged_mqa_logits" in info["wrappers"], info
    if aiter.mode == "files":
        assert "_deepgemm_fp8_paged_mqa_logits" in info["kernels"], info


def test_pypi_build_paths_and_reasons(pypi):
    assert pypi.paths == ("stage1", "fused")
    inp = build_inputs(IndexerCase(heads=8, block_size=16), DEVICE)
    assert 'heads % config["ChunkQ"] == 0' in pypi.unsupported("stage1", inp)
    assert "no preshuffle" in pypi.unsupported("preshuffle", inp)
    cfg = pypi.launch_config("fused", inp)["_deepgemm_fp8_paged_mqa_logits"][0]
    assert cfg["constexprs"]["ChunkK"] == CHUNK_K, cfg  # the fact the expectations below rest on


# --- finding 1: unmasked chunk stores (SPEC section 4.1) --------------------------------------------

def test_exact_buffer_next_row_loses_leading_columns(pypi):
    r = run_cell(pypi, "fused", "exact", OOB_FIRST, DEVICE)
    ctx = build_inputs(OOB_FIRST).context_lens.tolist()
    over = overshoot(ctx[0])
    assert ctx[0] == MML and over == 12 and overshoot(ctx[1]) == 0 and ctx[1] > over
    assert failing(r) == ["mask", "oob", "topk", "values"], r["findings"]  # top-k: row 1 lost candidates
    # Row 0's chunk [448, 512) runs 12 columns into row 1: column 0 gets row 0's value at
    # t == context_len (a finite 0), columns 1..11 its -inf.
    assert finding(r, "oob", "next_row")["details"]["landed"]["next_row"] == {
        1: {"from_row": 0, "leading_cols_damaged": over}}
    values = finding(r, "values")["details"]
    assert values["rows"] == [1] and values["worst"]["col"] == 0 and values["worst"]["got"] == 0.0
    mask = finding(r, "mask")["details"]
    assert mask["rows"] == [1]
    assert mask["per_row"][1] == {"first_cols": list(range(1, 9)), "count": over - 1,
                                                 "spurious_finite": 0, "spurious_neg_inf": over - 1, "pos_inf_or_nan": 0}
    # The report's picture: row 1's first 12 columns are row 0's overshoot, and the zoom on row 0's
    # end shows the same 12 columns after it.
    m = r["map"]
    assert [(x["from_row"], x.get("overshoot_cols"), x["lands"]) for x in m["strays"]] == [(0, over, {"next_row": over})]
    row1 = render.decode(m)[m["grid"]["labels"].index(f"row 1 (ctx {ctx[1]})")].tolist()
    assert row1[:over + 1] == [render.NEXT_ROW] * over + [render.CORRECT]
    left = m["ends"]["left"]
    assert render.decode(m, "ends")[0][left:left + over + 1].tolist() == [render.NEXT_ROW] * over + [render.CORRECT]


def test_padded_buffer_takes_the_overshoot_and_rows_match(pypi):
    r = run_cell(pypi, "fused", "padded", OOB_FIRST, DEVICE)
    assert failing(r) == ["oob"], r["findings"]
    assert finding(r, "oob")["details"]["landed"] == {"row_padding": {"count": 12, "rows": [0], "max_overshoot_cols": 12}}
    assert finding(r, "values")["ok"] and finding(r, "mask")["ok"]
    m = r["map"]
    assert [(x["from_row"], x.get("overshoot_cols"), x["lands"]) for x in m["strays"]] == [(0, 12, {"row_padding": 12})]
    row0 = render.decode(m)[m["grid"]["labels"].index(f"row 0 (ctx {MML})")].tolist()
    assert row0[MML - 1:MML + 13] == [render.CORRECT] + [render.ROW_PADDING] * 12 + [render.SENTINEL]


def test_last_row_overshoot_leaves_the_allocation(pypi):
    r = run_cell(pypi, "fused", "exact", OOB_LAST, DEVICE)
    over = overshoot(build_inputs(OOB_LAST).context_lens.tolist()[-1])
    assert over == 12 and failing(r) == ["oob"], r["findings"]
    assert finding(r, "oob")["details"]["landed"] == {"outside_allocation_after": {"count": over, "max_overshoot_cols": over}}
    assert [(x["from_row"], x.get("overshoot_cols"), x["lands"]) for x in r["map"]["strays"]] == [
        (1, over, {"outside_allocation": over})]


# --- finding 2: causal rule for next_n > 1 (SPEC section 1) ------------------------------------------

@pytest.mark.parametrize("case", MASK_CASES, ids=lambda c: c.id)
def test_causal_rule_differs_for_speculative_rows(pypi, case):
    ctx = build_inputs(case).context_lens.tolist()
    # An unbounded reader sees every difference: row 0 gains next_n - 1 positions inside the context and
    # one at t == context_len, past it.
    r = run_cell(pypi, "fused", "padded", case, DEVICE, consumer="unbounded")
    want = old_causal_rule_mask(ctx, case.next_n, "unbounded", MML)
    assert 0 in want and want[0]["spurious_finite"] == case.next_n - (ctx[0] == MML)
    mask = finding(r, "mask")
    assert not mask["ok"] and {int(k): v for k, v in mask["details"]["per_row"].items()} == want
    assert finding(r, "values")["ok"], "in-row values must match where both are finite"
    # A length-bounded reader sees only the positions rows lose (the last rows, with next_n > 2).
    r = run_cell(pypi, "fused", "padded", case, DEVICE)
    lost = old_causal_rule_mask(ctx, case.next_n)
    assert bool(lost) is (case.next_n > 2)
    assert {int(k): v for k, v in finding(r, "mask")["details"]["per_row"].items()} == lost


# --- a build where the kernel is changed, and the diff of the two -----------------------------------

@pytest.fixture(scope="module")
def fixed(build, tmp_path_factory):
    fixer = _load_fixer()
    dest = fixer.make_fixed_build(build.root, tmp_path_factory.mktemp("aiter-fixed"), ("store", "causal"))
    return make_backend(str(dest))


def _report(results):
    return {"schema": report.SCHEMA, "results": results, "backends": {}}


def test_fixed_build_passes_and_the_diff_shows_it(pypi, fixed):
    assert fixed.describe()["version"] == f"{PYPI}+paritystorecausalfix"
    cells = [("fused", "exact", OOB_FIRST), ("fused", "padded", MASK_CASES[0])]
    # unbounded: MASK_CASES[0] has next_n = 2, where the old causal rule only gains positions
    before = [run_cell(pypi, p, b, c, DEVICE, consumer="unbounded") for p, b, c in cells]
    after = [run_cell(fixed, p, b, c, DEVICE, consumer="unbounded") for p, b, c in cells]
    assert [r["status"] for r in before] == ["fail", "fail"]
    assert [r["status"] for r in after] == ["pass", "pass"], [failing(r) for r in after]
    d = report.diff(_report(before), _report(after))
    assert not d["regressions"] and [f["id"] for f in d["fixed"]] == sorted(r["id"] for r in before)
    assert {c["id"]: (c["from"], c["to"]) for c in d["changed_overshoot"]} == {before[0]["id"]: (12, 0)}
    back = report.diff(_report(after), _report(before))
    assert len(back["regressions"]) == 2, "going back to the PyPI kernel must gate as a regression"


def test_fixer_refuses_a_kernel_it_does_not_know(tmp_path):
    src = tmp_path / "src" / "aiter/ops/triton"
    (src / "_triton_kernels").mkdir(parents=True)
    (src / "pa_mqa_logits.py").write_text("def deepgemm_fp8_paged_mqa_logits(q):\n    pass\n")
    (src / "_triton_kernels/pa_mqa_logits.py").write_text("def _deepgemm_fp8_paged_mqa_logits(q):\n    pass\n")
    with pytest.raises(ValueError, match="none of its patterns was found"):
        _load_fixer().make_fixed_build(tmp_path / "src", tmp_path / "dst", ("store",))


# --- ROCm/aiter main at e4048607: its kernels' masks, read from its source ------------------------------
# _deepgemm_fp8_paged_mqa_logits (fused): ChunkK 256, causal ``t <= context_length - next_n + pid_next_n``,
# store masked by ``< max_model_len``. _deepgemm_fp8_paged_mqa_logits_stage1: the same rule, store unmasked.
# The *_ragged_k kernels keep ``t <= context_length - pid_next_n``; the fused one masks its store.

MAIN_CHUNK_K = 256


@pytest.fixture(scope="module")
def main(aiter, build):
    if MAIN not in (build.version or ""):
        pytest.skip(f"findings recorded for ROCm/aiter {MAIN[:8]}; the build at {build.root} is {build.version}")
    return aiter


def test_main_paths_reasons_and_launch(main):
    assert main.paths == ("stage1", "fused", "preshuffle")
    inp = build_inputs(IndexerCase(heads=8, block_size=16), DEVICE)
    assert "ZeroDivisionError at `SplitKV = " in main.unsupported("stage1", inp)  # heads // ChunkQ (64) == 0
    assert main.unsupported("stage1", build_inputs(IndexerCase(heads=64), DEVICE)) is None
    assert main.unsupported("preshuffle", inp).startswith(NOT_RUNNABLE)
    cfg = main.launch_config("fused", inp)["_deepgemm_fp8_paged_mqa_logits"][0]
    cu = main.describe()["stand_ins"]["aiter.ops.triton.utils.device_info.get_num_sms"]["returned"]
    split = (max(1, cu // inp.rows) + 4) // 5 * 5 * 2  # the wrapper's rule, WavePerEU = 2
    assert cfg["constexprs"]["ChunkK"] == MAIN_CHUNK_K and cfg["constexprs"]["SplitKV"] == split, cfg


def test_main_fused_masks_its_store_and_uses_the_spec_causal_rule(main):
    for case in (OOB_FIRST, OOB_LAST, *MASK_CASES):
        r = run_cell(main, "fused", "exact", case, DEVICE)
        assert r["status"] == "pass", (case.id, failing(r), r["findings"])
    if DEVICE == "cpu":  # the wrapper's last line reads the launch result, None under the interpreter
        assert any("TRITON_INTERPRET" in t["why"] for t in main.describe()["tolerated_after_launch"])


STAGE1_CASE = IndexerCase(batch=2, next_n=1, heads=64, block_size=64, max_model_len=MML, context="ctx_eq_max_first")


def test_main_stage1_stores_whole_256_column_chunks(main):
    ctx = build_inputs(STAGE1_CASE).context_lens.tolist()
    over = [max(0, math.ceil(c / MAIN_CHUNK_K) * MAIN_CHUNK_K - MML) for c in ctx]
    assert over[0] == 12
    padded = run_cell(main, "stage1", "padded", STAGE1_CASE, DEVICE)
    assert failing(padded) == ["oob"], padded["findings"]
    assert finding(padded, "oob")["details"]["landed"]["row_padding"]["count"] == STAGE1_CASE.heads * sum(over)
    exact = run_cell(main, "stage1", "exact", STAGE1_CASE, DEVICE)
    assert "oob" in failing(exact)
    if DEVICE == "cpu":  # programs run in order: a row's last chunk lands after the next row's first
        assert "mask" in failing(exact)
    if over[-1]:
        assert finding(exact, "oob", "outside_allocation_after")["details"]["landed"]["outside_allocation_after"] == {
            "count": over[-1], "max_overshoot_cols": over[-1]}


@pytest.mark.parametrize("case", MASK_CASES, ids=lambda c: c.id)
def test_main_ragged_kernels_keep_the_old_causal_rule(main, build, case):
    ragged = make_backend(str(build.root), "ragged")
    r = run_cell(ragged, "fused", "padded", case, DEVICE, consumer="unbounded")
    want = old_causal_rule_mask(build_inputs(case).context_lens.tolist(), case.next_n, "unbounded", MML)
    assert failing(r) == ["mask"], r["findings"]  # no overshoot: the ragged fused store is masked
    assert {int(k) for k in finding(r, "mask")["details"]["per_row"]} == set(want)

