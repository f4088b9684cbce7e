"""Shards over machines: pytest-split groups and ``run --shard K/N`` are the whole matrix once, and
``merge`` of the CLI's shards gives the verdicts of one unsharded run (a missing, duplicate or foreign
shard makes the merge UNUSABLE, never silently smaller)."""
import json
import subprocess
import sys
import textwrap

import pytest

from parity.run import harness, shards
from parity.cli import main
from parity.problem.grids import cases_for_level
from xdist_runs import CHECKOUT, clean_env

BACKEND = textwrap.dedent('''
    from parity.backends.faults import UnmaskedChunkStore
    from parity.backends.torch_ref import TorchBackend

    def make_backend():
        b = {cls}()
        b.name = "mybuild"
        return b
''')


class _Collected:
    def __init__(self):
        self.ids = []

    def pytest_collection_finish(self, session):
        self.ids = [item.nodeid for item in session.items]


def _collect(*args):
    seen = _Collected()
    # the CPU matrix, as CI runs it and as .test_durations records it (a GPU host adds its cuda cells)
    code = pytest.main(["-q", "-p", "no:cacheprovider", "-p", "no:xdist", "--collect-only", "-m", "parity",
                        "--parity-level", "quick", "--device", "cpu", "--rootdir", str(CHECKOUT), *args],
                       plugins=[seen])
    assert code == 0
    return seen.ids


def test_pytest_split_groups_are_the_whole_matrix_once_with_cases_together(monkeypatch):
    monkeypatch.chdir(CHECKOUT)
    whole = _collect()
    groups = [_collect("--splits", "3", "--group", str(g), "--durations-path", str(CHECKOUT / ".test_durations"))
              for g in (1, 2, 3)]
    assert all(groups) and sorted(sum(groups, [])) == sorted(whole)
    assert len(whole) == len(set(whole))
    # the committed durations cover the matrix, so the groups are balanced by time, not by count
    durations = json.loads((CHECKOUT / ".test_durations").read_text())
    assert set(whole) <= set(durations), "regenerate .test_durations (see docs/scale-out.md)"
    # the cells of a case are neighbours in the collection, so a worker's case caches hit
    case_of = [nid.split("[", 1)[1].split("-", 3)[3] for nid in whole]
    runs = [c for i, c in enumerate(case_of) if i == 0 or case_of[i - 1] != c]
    assert len(runs) == len(set(case_of))


@pytest.mark.parametrize("level", ["quick", "full"])
@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_cli_shards_are_the_whole_matrix_once_and_keep_twins_together(level, n):
    from parity.backends import PATHS
    from parity.judge.buffers import BUFFER_KINDS

    cells = [(p, b, c.id) for c in cases_for_level(level) for p in PATHS for b in BUFFER_KINDS]
    picked = [cell for k in range(1, n + 1) for cell in cells if shards.shard_of(cell[0], cell[2], n) == k]
    assert sorted(picked) == sorted(cells)
    twins = {(p, c): {shards.shard_of(p, c, n) for b in BUFFER_KINDS} for p, _, c in cells}
    assert all(len(s) == 1 for s in twins.values())
    if n == 3:
        sizes = [sum(shards.shard_of(p, c, n) == k for p, _, c in cells) for k in (1, 2, 3)]
        assert min(sizes) > len(cells) / 3 / 2, f"a hash that lumps cells together: {sizes}"


def test_a_cells_shard_is_the_same_in_every_process():
    """Not Python's hash(), which is salted per process."""
    code = "from parity.run.shards import shard_of; print([shard_of(p, 'B3-n2-bs64-ctx_eq_max', 5) for p in " \
           "('stage1', 'fused', 'preshuffle')])"
    outs = {subprocess.run([sys.executable, "-c", code], env=clean_env(PYTHONHASHSEED=seed), cwd=CHECKOUT,
                           capture_output=True, text=True, check=True).stdout for seed in ("1", "2")}
    here = str([shards.shard_of(p, "B3-n2-bs64-ctx_eq_max", 5) for p in ("stage1", "fused", "preshuffle")])
    assert outs == {here + "\n"}


def test_bad_shard_option_is_named(capsys):
    for bad in ("0/3", "4/3", "2", "a/b"):
        assert main(["run", "--shard", bad, "--backend", "torch"]) == 2
        assert "--shard must be K/N" in capsys.readouterr().err


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """Two builds (good, planted fault), each run whole and as 3 shards (quick level, fused path,
    exact buffer: the fault then damages the next row)."""
    tmp = tmp_path_factory.mktemp("shards")
    out = {}
    for build, cls in (("good", "TorchBackend"), ("bad", "UnmaskedChunkStore")):
        spec = tmp / f"{build}.py"
        spec.write_text(BACKEND.format(cls=cls))
        for shard in (None, "1/3", "2/3", "3/3"):
            name = f"{build}-{shard.replace('/', 'of') if shard else 'whole'}"
            path = tmp / f"{name}.json"
            args = ["run", "--in-process", "--backend", str(spec), "--path", "fused", "--buffer", "exact",
                    "--out", str(path), "--no-progress", "--quiet"] + (["--shard", shard] if shard else [])
            out[name] = (main(args), path)
    return tmp, out


def _merge(tmp, out, build, shard_names, capsys):
    merged = tmp / f"{build}-merged-{'-'.join(shard_names)}.json"
    code = main(["merge", *[str(out[f"{build}-{s}"][1]) for s in shard_names], "--out", str(merged), "--quiet"])
    capsys.readouterr()
    return code, merged


def _diff(a, b, capsys):
    code = main(["diff", str(a), str(b)])
    return code, capsys.readouterr().out


def test_merged_shards_give_the_verdicts_of_one_unsharded_run(builds, capsys):
    tmp, out = builds
    assert out["good-whole"][0] == 0 and out["bad-whole"][0] == 1
    merged = {}
    for build in ("good", "bad"):
        code, merged[build] = _merge(tmp, out, build, ["1of3", "2of3", "3of3"], capsys)
        assert code == out[f"{build}-whole"][0], f"merge of {build} shards exits as the unsharded run"
        whole = json.loads(out[f"{build}-whole"][1].read_text())["results"]
        got = json.loads(merged[build].read_text())["results"]
        summary = lambda rs: sorted((r["id"], r["status"], tuple(harness.failed_checks(r))) for r in rs)  # noqa: E731
        assert summary(got) == summary(whole)
        assert all(json.loads(out[f"{build}-{s}"][1].read_text())["results"] for s in ("1of3", "2of3", "3of3"))
    code_whole, text_whole = _diff(out["good-whole"][1], out["bad-whole"][1], capsys)
    code_merged, text_merged = _diff(merged["good"], merged["bad"], capsys)
    assert code_whole == code_merged == 1
    regressions = lambda text: sorted(l for l in text.splitlines() if ": pass -> fail" in l)  # noqa: E731
    assert regressions(text_merged) == regressions(text_whole) and regressions(text_whole)
    assert _diff(merged["good"], merged["good"], capsys)[0] == 0


def test_a_missing_shard_makes_the_merge_unusable(builds, capsys):
    tmp, out = builds
    code, merged = _merge(tmp, out, "bad", ["1of3", "3of3"], capsys)
    report = json.loads(merged.read_text())
    assert code == 2 and any("missing shard(s) 2/3" in why for why in report["incomplete"])
    assert report["verdict"]["exit_code"] == 2
    code, text = _diff(out["good-whole"][1], merged, capsys)
    assert code == 2 and "UNUSABLE" in text and "missing shard" in text


def test_a_duplicate_shard_makes_the_merge_unusable(builds, capsys):
    tmp, out = builds
    code, merged = _merge(tmp, out, "good", ["1of3", "2of3", "2of3", "3of3"], capsys)
    report = json.loads(merged.read_text())
    assert code == 2 and any("shard 2/3 given twice" in why for why in report["incomplete"])
    code, text = _diff(out["good-whole"][1], merged, capsys)
    assert code == 2 and "UNUSABLE" in text


def test_a_lone_shard_is_not_compared_with_a_whole_run(builds, capsys):
    _, out = builds
    code, text = _diff(out["good-whole"][1], out["bad-2of3"][1], capsys)
    assert code == 2 and "merge the shards" in text
    assert _diff(out["good-2of3"][1], out["bad-2of3"][1], capsys)[0] == 1  # shard against the same shard


def test_a_shard_of_another_matrix_makes_the_merge_unusable(builds, capsys):
    tmp, out = builds
    other = tmp / "other-matrix.json"
    assert main(["run", "--in-process", "--backend", "torch", "--path", "fused", "--buffer", "padded",
                 "--shard", "2/3", "--out", str(other), "--no-progress", "--quiet"]) in (0, 1)
    code = main(["merge", str(out["good-1of3"][1]), str(other), str(out["good-3of3"][1]),
                 "--out", str(tmp / "mixed.json"), "--quiet"])
    report = json.loads((tmp / "mixed.json").read_text())
    assert code == 2 and any("different matrices" in why for why in report["incomplete"])
