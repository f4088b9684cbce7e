"""The aiter backend on fake builds laid out like amd-aiter 0.1.7 and like ROCm/aiter main (e4048607),
with kernels of our own that reproduce each build's store/mask behaviour (tests/fake_aiter.py).

What is checked: the build is found by what its files define; ROCm-bound helpers get recorded
stand-ins and anything else fails loudly; the build's own wrapper decides the launch; a wrapper that
reads from the None a Triton launch returns under the interpreter is tolerated only on that line;
the findings the suite reports for main's behaviour (fused clean, stage1 overshoot of a 256-column
chunk, the ragged kernels' causal rule); and the ROCm path, where ``import aiter`` works.
Expected values come from context_lens and the fake build's stated facts (ChunkK, causal rule).
"""
import dataclasses
import math
import subprocess
import sys

import pytest
from findings import failing, finding, old_causal_rule_mask

from parity.backends.aiter import NOT_RUNNABLE, AiterBackend, find_build, scan
from parity.backends.aiter import backend as backend_mod
from parity.backends.aiter.launch import LaunchLog, Watched
from parity.problem.cases import IndexerCase, build_inputs
from parity.run.harness import run_cell

from fake_aiter import make_tree  # noqa: E402  (tests/ is on sys.path under pytest's rootdir rules)

pytest.importorskip("triton")

MML = 200
# Small shapes for the interpreter: D = 32, fused with 16 heads, stage1 needs main's ChunkQ = 64.
FIRST_AT_MAX = IndexerCase(batch=2, next_n=1, heads=16, head_dim=32, block_size=16, max_model_len=MML,
                           context="ctx_eq_max_first")
SPECULATIVE = IndexerCase(batch=2, next_n=2, heads=16, head_dim=32, block_size=16, max_model_len=MML, context="random")
STAGE1 = IndexerCase(batch=1, next_n=2, heads=64, head_dim=16, block_size=16, max_model_len=MML, context="random")


@pytest.fixture(autouse=True)
def small_cu_count(monkeypatch):
    """A small CU count keeps main's SplitKV (and the interpreted grid) small; aiter honours CU_NUM."""
    monkeypatch.setenv("CU_NUM", "8")


@pytest.fixture(scope="module")
def main_tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("main"), "main")


@pytest.fixture(scope="module")
def main(main_tree):
    return AiterBackend(find_build(str(main_tree)))


def overshoot(ctx: int, chunk: int) -> int:
    return max(0, math.ceil(ctx / chunk) * chunk - MML)


# --- finding the build ------------------------------------------------------------------------------

@pytest.mark.parametrize("layout, wrapper, kernels", [
    ("0.1.7", "aiter/ops/triton/pa_mqa_logits.py", ["aiter/ops/triton/_triton_kernels/pa_mqa_logits.py"]),
    ("main", "aiter/ops/triton/attention/pa_mqa_logits.py",
     ["aiter/ops/triton/_triton_kernels/attention/pa_mqa_logits.py", "aiter/ops/triton/gluon/pa_mqa_logits.py"]),
])
def test_files_are_found_by_what_they_define(tmp_path, layout, wrapper, kernels):
    root = make_tree(tmp_path, layout)
    lay = scan(find_build(str(root)))
    assert {str(p.relative_to(root)) for p in lay.wrapper_files} == {wrapper}
    assert [str(p.relative_to(root)) for p in lay.kernel_files] == kernels
    moved = root / "aiter/ops/triton/somewhere/else.py"  # a future layout: still found, still loads
    moved.parent.mkdir()
    (root / wrapper).rename(moved)
    backend = AiterBackend(find_build(str(root)))
    assert backend.describe()["wrapper_files"] == ["aiter/ops/triton/somewhere/else.py"]
    assert "fused" in backend.paths


def test_ambiguous_or_missing_wrapper_is_refused(tmp_path):
    root = make_tree(tmp_path, "main")
    src = root / "aiter/ops/triton/attention/pa_mqa_logits.py"
    (root / "aiter/ops/triton/copy.py").write_text(src.read_text())
    with pytest.raises(RuntimeError, match=r"defines deepgemm_fp8_paged_mqa_logits\w* in several files"):
        scan(find_build(str(root)))
    (root / "aiter/ops/triton/copy.py").unlink()
    src.unlink()
    with pytest.raises(FileNotFoundError, match="searched by content"):
        scan(find_build(str(root)))


def test_a_git_checkout_is_versioned_by_its_commit(tmp_path):
    root = make_tree(tmp_path, "main")
    (root / "aiter/_version.py").unlink()  # a fresh clone: setup.py has not written it
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "x"], check=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert head in find_build(str(root)).version


# --- stand-ins and the build's own launch -------------------------------------------------------------

def test_stand_ins_are_listed_with_the_values_they_gave(main, monkeypatch):
    monkeypatch.delenv("CU_NUM")
    inp = build_inputs(SPECULATIVE)
    tiles = inp.rows
    for cu in (256, 304):  # the default (MI355X), then what CU_NUM says (MI300X)
        if cu == 304:
            monkeypatch.setenv("CU_NUM", "304")
        launch = main.launch_config("fused", inp)["_deepgemm_fp8_paged_mqa_logits"][0]
        split = (max(1, cu // tiles) + 4) // 5 * 5 * 2  # the build's own rule, WavePerEU = 2
        assert launch["grid"] == (tiles * split,) and launch["constexprs"]["CHUNK"] == 256, launch
    used = main.describe()["stand_ins"]
    cu = used["aiter.ops.triton.utils.device_info.get_num_sms"]
    assert cu["returned"] == 304 and "MI355X" in cu["why"] and cu["calls"] >= 2
    assert used["aiter.jit.utils.chip_info.get_gfx"]["returned"] == "none"
    assert used["aiter.ops.triton.gluon.pa_decode_gluon.get_cdna_version"]["returned"] == -1


def test_an_unknown_aiter_import_fails_loudly_naming_it(tmp_path):
    make_tree(tmp_path, "main", extra="from aiter.ops.triton.utils.logger import AiterTritonLogger")
    with pytest.raises(RuntimeError, match=r"imports aiter\.ops\.triton\.utils\.logger,"):
        AiterBackend(find_build(str(tmp_path)))
    assert not any(n == "aiter" or n.startswith("aiter.") for n in sys.modules)


def test_main_path_reasons(main):
    inp = build_inputs(SPECULATIVE)
    assert main.paths == ("stage1", "fused", "preshuffle")
    assert "ZeroDivisionError at `split = " in main.unsupported("stage1", inp)  # 16 heads < ChunkQ 64
    assert main.unsupported("stage1", build_inputs(STAGE1)) is None
    assert main.unsupported("preshuffle", inp).startswith(NOT_RUNNABLE)
    bf16 = IndexerCase(batch=2, next_n=2, heads=16, head_dim=32, block_size=16, logits_dtype="bfloat16")
    assert "float32 logits" in main.unsupported("fused", build_inputs(bf16))
    per_row = IndexerCase(batch=2, next_n=2, heads=16, head_dim=32, block_size=16, row_lens="per_row")
    assert "2-D context_lens" in main.unsupported("fused", build_inputs(per_row))


# --- the wrapper that reads its launch result ----------------------------------------------------------

@pytest.mark.parametrize("where", ["before", "after"])
def test_any_other_read_of_none_is_an_error(tmp_path, where):
    # before the launch; or after it, on a line that does not read the launch result
    make_tree(tmp_path, "main", **{where: "getattr(None, 'hash')"})
    r = run_cell(AiterBackend(find_build(str(tmp_path))), "fused", "exact", FIRST_AT_MAX, "cpu")
    assert r["status"] == "error" and "'NoneType' object has no attribute 'hash'" in r["findings"][0]["summary"]


def test_amd_only_launch_options_are_dropped_only_when_compiling_for_another_target():
    """main passes waves_per_eu to its Triton launches; Triton for NVIDIA rejects unknown options."""
    got = []

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: got.append(kwargs)

    for drop in (False, True):
        log = LaunchLog(drop_amd_options=drop)
        Watched("_deepgemm_fp8_paged_mqa_logits", Kernel(), log)[(1,)](0, waves_per_eu=2, ChunkK=256)
        assert log.dropped == ({"waves_per_eu": 2} if drop else {})
    assert got == [{"waves_per_eu": 2, "ChunkK": 256}, {"ChunkK": 256}]


# --- findings on main's behaviour -----------------------------------------------------------------

def test_main_fused_is_clean_at_max_model_len_and_for_speculative_rows(main):
    # Exact buffers: an unmasked store would damage the next row; row 0 of FIRST_AT_MAX is at max_model_len.
    for case in (FIRST_AT_MAX, SPECULATIVE):
        r = run_cell(main, "fused", "exact", case, "cpu")
        assert r["status"] == "pass", (case.id, r["findings"])
    # The wrapper's last line read the None its launch returned under the interpreter: tolerated, reported.
    seen = [t for t in main.describe()["tolerated_after_launch"] if "TRITON_INTERPRET" in t["why"]]
    assert seen and seen[0]["source"] == "return kernel.hash" and "'NoneType'" in seen[0]["error"]


def test_main_stage1_stores_whole_256_column_chunks(main):
    ctx = build_inputs(STAGE1).context_lens.tolist()
    rows = STAGE1.batch * STAGE1.next_n
    over = [overshoot(c, 256) for c in ctx for _ in range(STAGE1.next_n)]
    assert min(over) > 0  # every row of this case overshoots: ctx <= 200 < 256
    padded = run_cell(main, "stage1", "padded", STAGE1, "cpu")
    assert failing(padded) == ["oob"], padded["findings"]
    assert finding(padded, "oob")["details"]["landed"]["row_padding"]["count"] == STAGE1.heads * sum(over)
    exact = run_cell(main, "stage1", "exact", STAGE1, "cpu")
    assert finding(exact, "oob", "outside_allocation_after")["details"]["landed"]["outside_allocation_after"] == {
        "count": over[-1], "max_overshoot_cols": over[-1]}
    # Within a head, row r + 1's own chunk is stored after row r's overshoot and repairs it (one program
    # per row, in order); the last row of head h spills into head h + 1's row 0, stored earlier.
    spilled = finding(exact, "oob", "next_row")["details"]["landed"]["next_row"]
    assert spilled and all(int(r) % rows == 0 and v == {"from_row": int(r) - 1, "leading_cols_damaged": over[-1]}
                           for r, v in spilled.items()), spilled


def test_main_ragged_kernels_keep_the_old_causal_rule(main_tree):
    ragged = AiterBackend(find_build(str(main_tree)), "ragged")
    assert ragged.name == "aiter-ragged" and ragged.paths == ("stage1", "fused")
    assert "prefix_sum_context_lens" in ragged.describe()["contract"]
    ctx = build_inputs(SPECULATIVE).context_lens.tolist()
    # next_n = 2: row 0 gains positions past its valid length and no row loses one, so only an
    # unbounded reader sees the rule.
    assert run_cell(ragged, "fused", "exact", SPECULATIVE, "cpu")["status"] == "pass"
    r = run_cell(ragged, "fused", "exact", SPECULATIVE, "cpu", consumer="unbounded")
    want = old_causal_rule_mask(ctx, SPECULATIVE.next_n, "unbounded", MML)
    assert failing(r) == ["mask"], r["findings"]  # the ragged fused store is masked: no overshoot
    assert {int(k): v for k, v in finding(r, "mask")["details"]["per_row"].items()} == want


def test_a_variant_the_build_lacks_is_refused(tmp_path):
    make_tree(tmp_path, "0.1.7")
    with pytest.raises(RuntimeError, match="has no varctx variant"):
        AiterBackend(find_build(str(tmp_path)), "varctx")


def test_varctx_needs_a_gpu_where_the_builds_schedule_allocates_on_cuda(tmp_path):
    root = make_tree(tmp_path, "main")
    wrapper = root / "aiter/ops/triton/attention/pa_mqa_logits.py"
    wrapper.write_text(wrapper.read_text().replace("device=context_lens.device", 'device="cuda"'))  # as main has it
    varctx = AiterBackend(find_build(str(root)), "varctx")
    assert varctx.name == "aiter-varctx" and varctx.paths == ("fused", "preshuffle")
    assert varctx.unsupported("fused", build_inputs(SPECULATIVE)).startswith(NOT_RUNNABLE)


def test_main_varctx_on_the_triton_path_drops_trailing_splits(main_tree, monkeypatch):
    """main's wrapper, given a VarCtxSchedule, launches TotalCuCount * WavePerEU programs while its Triton
    kernel still gives each row SplitKV pieces: the pieces past the grid never run."""
    monkeypatch.setenv("CU_NUM", "4")
    varctx = AiterBackend(find_build(str(main_tree)), "varctx")
    case = IndexerCase(batch=2, next_n=2, heads=16, head_dim=32, block_size=16, max_model_len=600, context="ctx_eq_max")
    tiles = case.batch * case.next_n
    split = (max(1, 4 // tiles) + 4) // 5 * 5 * 2  # the wrapper's SplitKV at 4 CUs: 10 pieces per row
    launched = 4 * 2 // tiles  # pieces per row the 8 programs cover
    want = {}
    for b, ctx in enumerate(build_inputs(case).context_lens.tolist()):
        computed = launched * math.ceil(math.ceil(ctx / 256) / split) * 256  # columns those pieces hold
        for i in range(case.next_n):
            valid = ctx - case.next_n + i + 1
            if valid > computed:
                want[b * case.next_n + i] = (computed, valid - computed)
    assert want, "the case must have a row longer than the launched pieces"
    r = run_cell(varctx, "fused", "padded", case, "cpu")
    assert failing(r)[0] == "mask", r["findings"]
    got = finding(r, "mask")["details"]["per_row"]
    assert {int(k): (v["first_cols"][0], v["spurious_neg_inf"]) for k, v in got.items()} == want


# --- a server's call: aiter-sglang ---------------------------------------------------------------------------

# SGLang on ROCm calls with block size 1 (parity.backends.aiter.callers)
AT_MAX_BS1 = IndexerCase(batch=2, next_n=1, heads=16, head_dim=32, block_size=1, max_model_len=MML,
                         context="ctx_eq_max_first")


def _unmasked_fused_main(root):
    """main's tree with its fused store unmasked, the bug class of the preshuffle incident."""
    root = make_tree(root, "main")
    wrapper = root / "aiter/ops/triton/attention/pa_mqa_logits.py"
    text = wrapper.read_text()
    assert text.count("KVBlockSize, False, False, True, True,") == 1
    wrapper.write_text(text.replace("KVBlockSize, False, False, True, True,", "KVBlockSize, False, False, False, True,"))
    return root


def test_sglang_call_sets_the_chunk_that_decides_how_far_an_unmasked_store_reaches(tmp_path):
    root = _unmasked_fused_main(tmp_path)
    sglang, own = AiterBackend(find_build(str(root)), "sglang"), AiterBackend(find_build(str(root)))
    assert sglang.name == "aiter-sglang" and sglang.paths == ("fused",)
    assert sglang.describe()["caller"]["kwargs"]["ChunkK"] == 128
    ctx = build_inputs(AT_MAX_BS1).context_lens.tolist()
    assert ctx[0] == MML and ctx[1] > 56
    launched = sglang.launch_config("fused", build_inputs(AT_MAX_BS1))
    assert {r["constexprs"]["CHUNK"] for runs in launched.values() for r in runs} == {128}
    # Row 0 ends at max_model_len = 200. In chunks of 128 (SGLang's call) its second chunk, stored by a later
    # program than row 1's first, writes 56 columns into row 1 and they stay. In the wrapper's own chunks of 256
    # the same 56 columns land before row 1's program stores its first chunk over them: only the last row's
    # overshoot, past the allocation, shows. The same build and buffer; the call decides what a server reads.
    r = run_cell(sglang, "fused", "exact", AT_MAX_BS1, "cpu")
    assert finding(r, "oob", "next_row")["details"]["landed"]["next_row"] == {
        1: {"from_row": 0, "leading_cols_damaged": overshoot(ctx[0], 128)}}
    r = run_cell(own, "fused", "exact", AT_MAX_BS1, "cpu")
    assert failing(r) == ["oob"] and finding(r, "oob")["details"]["landed"] == {
        "outside_allocation_after": {"count": overshoot(ctx[1], 256), "max_overshoot_cols": overshoot(ctx[1], 256)}}


def test_sglang_call_on_a_correct_build_is_clean(main_tree):
    sglang = AiterBackend(find_build(str(main_tree)), "sglang")
    for case in (AT_MAX_BS1, dataclasses.replace(SPECULATIVE, block_size=1)):
        r = run_cell(sglang, "fused", "exact", case, "cpu")
        assert r["status"] == "pass", (case.id, r["findings"])


def test_a_servers_call_is_refused_where_the_server_never_makes_it(main_tree, tmp_path):
    sglang = AiterBackend(find_build(str(main_tree)), "sglang")
    why = sglang.unsupported("fused", build_inputs(SPECULATIVE))  # block_size 16
    assert why.startswith("SGLang's DSA indexer on ROCm takes the fused path at block_size 1 only, not 16")
    assert "nsa_indexer.py at 005e8bf8" in why
    # ATOM takes the preshuffle path above block size 1 and the fused one at 1 (Preshuffle = block size != 1)
    atom = AiterBackend(find_build(str(main_tree)), "atom")
    assert atom.paths == ("fused", "preshuffle")
    assert "takes the fused path at block_size 1 only, not 16" in atom.unsupported("fused", build_inputs(SPECULATIVE))
    assert atom.unsupported("preshuffle", build_inputs(SPECULATIVE)).startswith(NOT_RUNNABLE)  # Gluon, AMD only
    assert "preshuffle path at block_size above 1 only, not 1" in atom.unsupported("preshuffle", build_inputs(AT_MAX_BS1))
    launched = atom.launch_config("fused", build_inputs(AT_MAX_BS1))
    assert {(r["constexprs"]["CHUNK"], r["constexprs"]["waves_per_eu"]) for runs in launched.values() for r in runs} == {
        (256, 2)}
    # 0.1.7's wrapper takes none of the arguments SGLang passes: SGLang's call would fail there
    with pytest.raises(RuntimeError, match="has no sglang variant: its deepgemm_fp8_paged_mqa_logits takes no "
                                           "KVBlockSize, Preshuffle, TotalCuCount, WavePerEU, which SGLang"):
        AiterBackend(find_build(str(make_tree(tmp_path, "0.1.7"))), "sglang")


# --- the 0.1.7 layout ------------------------------------------------------------------------------------

def test_017_layout_per_token_cache_and_64_column_overshoot(tmp_path):
    old = AiterBackend(find_build(str(make_tree(tmp_path, "0.1.7"))))
    assert old.paths == ("stage1", "fused") and "cache_mapping" in old.describe()
    ctx = build_inputs(FIRST_AT_MAX).context_lens.tolist()
    over = overshoot(ctx[0], 64)
    assert ctx[0] == MML and over == 56 and ctx[1] > over
    r = run_cell(old, "fused", "exact", FIRST_AT_MAX, "cpu")
    assert finding(r, "oob", "next_row")["details"]["landed"]["next_row"] == {
        1: {"from_row": 0, "leading_cols_damaged": over}}


# --- ROCm: the package imports, its wrappers are called as users call them ------------------------------

def test_rocm_path_imports_the_package(tmp_path, monkeypatch):
    root = make_tree(tmp_path, "main", rocm=True)
    monkeypatch.setattr(backend_mod, "is_amd", lambda: True)
    monkeypatch.setattr(sys, "path", list(sys.path))
    saved = {n: m for n, m in sys.modules.items() if n == "aiter" or n.startswith("aiter.")}
    try:
        rocm = AiterBackend(find_build(str(root)))
        assert rocm.mode == "rocm" and rocm.device_types == ("cuda",) and "stand_ins" not in rocm.describe()
        assert rocm.unsupported("fused", build_inputs(SPECULATIVE)) == "aiter on ROCm runs on the GPU only, not on cpu"
        rocm.device_types = ("cpu",)  # no AMD GPU here: the package's kernels run interpreted
        r = run_cell(rocm, "fused", "exact", SPECULATIVE, "cpu")
        assert r["status"] == "pass", r["findings"]
        assert sys.modules["aiter.ops.triton.utils.device_info"].CALLS  # the package's own CU count, not ours
        reason = rocm.unsupported("preshuffle", build_inputs(SPECULATIVE))
        assert "Preshuffle mode is only supported on gluon kernel" in reason  # its own check, on a non-Gluon arch
    finally:
        for n in [n for n in sys.modules if n == "aiter" or n.startswith("aiter.")]:
            del sys.modules[n]
        sys.modules.update(saved)
