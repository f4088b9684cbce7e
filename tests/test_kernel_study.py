"""The kernel study's CPU-runnable parts: every variant it times is a valid config of the Triton backend
that computes correct logits (under the interpreter), and its table puts each time beside DeepGEMM's."""
import pytest
import torch

from parity.perf import kernel_study
from parity.backends import load_backend
from parity.run.harness import failed_checks, run_cell
from parity.problem.grids import quick_cases

pytest.importorskip("triton")

H64 = next(c for c in quick_cases() if c.heads == 64 and c.block_size == 64 and c.next_n == 3)


@pytest.mark.parametrize("name", ["c4", "c4-g2"])
def test_variants_compute_correct_logits(name):
    backend = load_backend("triton", **kernel_study.VARIANTS[name])
    result = run_cell(backend, "fused", "padded", H64, "cuda" if torch.cuda.is_available() else "cpu")
    assert result["status"] == "pass", "\n".join(failed_checks(result))


def test_every_variant_is_a_backend_config():
    for name, opts in kernel_study.VARIANTS.items():
        backend = load_backend("triton", **opts)
        config, source = backend.config(torch.device("cpu"))
        assert all(config[k] == v for k, v in opts.items() if k != "probe"), name
        assert backend.opts["probe"] == opts.get("probe"), name
        assert ("given" in source) == bool(opts), name


def test_markdown_gives_each_variant_its_ratio_to_deepgemm():
    rows = [{"backend": "deepgemm", "path": "fused", "shape": "B64-n2-ctx8192", "us": 25.0, "read_us": 24.0},
            {"backend": "tma4", "path": "fused", "shape": "B64-n2-ctx8192", "us": 20.0, "read_us": 24.0},
            {"backend": "base", "path": "fused", "shape": "B64-n2-ctx8192", "us": 30.0, "read_us": 24.0},
            {"backend": "base", "path": "fused", "shape": "B8-n2-ctx8192", "skipped": "memory"}]
    text = kernel_study.markdown({"device": "dev", "started": "t", "copy_gbps": 4000.0, "rows": rows,
                                  "facts": {"base fused n2": {"compile_s": 1.5, "regs": 148, "smem": 41984}},
                                  "reads": [{"shape": "B64-n2-ctx8192", "form": "tma4", "per_sm": 2, "us": 21.0}],
                                  "skipped": [], "best_at_bar": "tma4"})
    assert "| fused | B64-n2-ctx8192 | 25.0 | 20.0 (0.80) | 30.0 (1.20) | 24.0 |" in text
    assert "| base fused n2 | 1.50 | 148 | None | 41984 |" in text
    assert "| B64-n2-ctx8192 | tma4 | 2 | 21.0 |" in text
    assert "| B8-n2-ctx8192" not in text  # skipped rows have no time to show
    assert "not checked" in text


def test_unknown_variant_is_refused(capsys):
    assert kernel_study.main(["--variants", "base,warp9"]) == 2
    assert "warp9" in capsys.readouterr().err


class _Zeros:
    """A planted fault: writes 0 where logits belong."""

    def run(self, path, inputs, out):
        out.zero_()


def test_check_variants_passes_a_correct_kernel_and_catches_a_wrong_one():
    from parity.perf import bench

    backends = {"c4": load_backend("triton", **kernel_study.VARIANTS["c4"]), "zeros": _Zeros()}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    verdicts = kernel_study.check_variants(backends, device, bench.Shape(2, 2, 200))
    assert verdicts["c4 fused"]["ok"] and verdicts["c4 preshuffle"]["ok"], verdicts
    assert not verdicts["zeros fused"]["ok"]


class _Probe:
    """A measurement probe (its logits are wrong by design): never run by the checks, never picked."""
    opts = {"probe": "reads"}

    def run(self, path, inputs, out):
        raise AssertionError("a probe's logits were checked")


def test_probes_are_neither_checked_nor_picked():
    from parity.perf import bench

    device = "cuda" if torch.cuda.is_available() else "cpu"
    verdicts = kernel_study.check_variants({"ws-probe-reads": _Probe(), "zeros": _Zeros()}, device,
                                           bench.Shape(2, 2, 200))
    assert verdicts["ws-probe-reads"]["ok"] is None and "not checked" in verdicts["ws-probe-reads"]["mask"]
    assert verdicts["zeros fused"]["ok"] is False
    variants = {"ws-n4-bal": kernel_study.VARIANTS["ws-n4-bal"],
                "ws-probe-reads": kernel_study.VARIANTS["ws-probe-reads"]}
    rows = [{"backend": "ws-probe-reads", "shape": kernel_study.BAR, "us": 20.0},
            {"backend": "ws-n4-bal", "shape": kernel_study.BAR, "us": 25.0}]
    assert kernel_study.best_at_bar(rows, variants) == "ws-n4-bal"
    text = kernel_study.markdown({"device": "dev", "started": "t", "copy_gbps": 4000.0, "rows": [], "facts": {},
                                  "reads": [], "skipped": [], "checks": {"ws-probe-reads": verdicts["ws-probe-reads"]}})
    assert "all variants pass" in text


def test_the_probes_take_the_variants_time_apart():
    rows = [{"backend": b, "path": "fused", "shape": "B64-n2-ctx32768", "us": us, "read_us": 71.2}
            for b, us in (("ws-n4-bal", 90.5), ("ws-probe-reads", 74.6), ("ws-probe-no-stores", 88.4),
                          ("ws-probe-no-products", 79.4), ("deepgemm", 85.8))]
    rows.append({"backend": "ws-n4-bal", "path": "fused", "shape": "B8-n2-ctx8192", "us": 8.0})  # no probes
    text = kernel_study.markdown({"device": "dev", "started": "t", "copy_gbps": 4000.0, "rows": rows, "facts": {},
                                  "reads": [], "skipped": []})
    # 74.6 for the copies, 88.4 - 74.6 = 13.8 for the products and epilogues, 90.5 - 88.4 = 2.1 for the stores
    assert "| B64-n2-ctx32768 | 71.2 | 74.6 | +13.8 | +2.1 | 90.5 | 85.8 |" in text
    assert "| B8-n2-ctx8192 | " not in text.split("taken apart")[1]
    assert "taken apart" not in kernel_study.markdown({"device": "dev", "started": "t", "copy_gbps": 4000.0,
                                                       "rows": rows[-1:], "facts": {}, "reads": [], "skipped": []})


@pytest.mark.parametrize("name, programs, slots", [("ws", 3, 3), ("ws-s4", 3, 4), ("ws-c4-s2", 4, 2),
                                                   ("ws-n4-bal", 3, 3), ("ws-probe-reads", 3, 3)])
def test_a_variant_runs_the_form_it_names_on_the_h200(name, programs, slots):
    """The H200's config gives the warp-specialized form 4 programs per SM and 2 slots of its own; a variant
    that names 3 and 3 (or 4 slots) must get them there, and the probes the form of the variant they probe."""
    from parity.backends import triton_configs
    from parity.backends.triton_sm90 import sm90_ws_programs_per_sm, sm90_ws_stages

    h200, _ = triton_configs.lookup("NVIDIA H200")
    given = {k: v for k, v in kernel_study.VARIANTS[name].items() if k in h200}
    o = {**h200, **given}
    assert (sm90_ws_programs_per_sm(2, o), sm90_ws_stages(2, o)) == (programs, slots)


def test_the_h200s_config_takes_its_next_n_2_calls_at_b128_in_the_four_warpgroup_program():
    """At B128-n2-ctx8192 (64-token tiles, 132 SMs) the H200's config, the study's ``default``, runs the
    four-warpgroup program."""
    from parity.backends import triton_configs
    from parity.backends.triton_sm90 import sm90_form

    h200, _ = triton_configs.lookup("NVIDIA H200")
    o = {**h200, **kernel_study.VARIANTS["default"]}
    assert sm90_form(2, 128 * 8192 // 64, o, 132, 128) == "wg4"
