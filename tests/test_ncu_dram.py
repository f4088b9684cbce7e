"""``parity.perf.ncu_dram``: DRAM bytes per launch from Nsight Compute's CSV (a fixture in ncu's
``--csv --page details`` shape, the H200 figures of docs/h200-q-reread.md)."""
import pytest

from parity.perf import ncu_dram

HEADER = ('"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size",'
          '"Device","CC","Section Name","Metric Name","Metric Unit","Metric Value","Rule Name"')
OURS = "paged_mqa_logits_sm90_wg4_kernel"
DG = "void deep_gemm::sm90_fp8_paged_mqa_logits<2, 64, 128, 64, 1, 0, 3, 3, 256, 128, 512, float>(unsigned int, T12 *)"


def _rows(i, kernel, us_unit, us, read_unit, read, written):
    pre = f'"{i}","1","python3","h","{kernel}","1","7","(640, 1, 1)","(132, 1, 1)","0","9.0"'
    return [f'{pre},"GPU Speed Of Light Throughput","Duration","{us_unit}","{us}",""',
            f'{pre},"GPU Speed Of Light Throughput","DRAM Throughput","%","62.60",""',
            f'{pre},"Command line profiler metrics","dram__bytes_read.sum","{read_unit}","{read}",""',
            f'{pre},"Command line profiler metrics","dram__bytes_write.sum","Mbyte","{written}",""']


def _csv(labels=("default B128-n2-ctx8192 2", "deepgemm B128-n2-ctx8192 2")):
    lines = ["==PROF== Connected to process 1", *(f"profiled {lab}" for lab in labels), HEADER]
    lines += _rows(0, OURS, "ns", "43,200", "byte", "142,160,000", "7.90")  # the H200 image's ncu
    lines += _rows(1, OURS, "usecond", "42.02", "Kbyte", "142,160.00", "7.98")
    lines += _rows(2, DG, "msecond", "0.04144", "Mbyte", "140.69", "7.63")
    lines += _rows(3, DG, "usecond", "43.14", "Gbyte", "0.14069", "7.67")
    return "\n".join(lines) + "\n"


def test_each_launch_gets_its_kernel_time_and_bytes_in_launch_order():
    found, labels = ncu_dram.launches(_csv())
    assert [f["kernel"] for f in found] == [OURS, OURS] + ["sm90_fp8_paged_mqa_logits"] * 2
    assert [round(f["read"], 2) for f in found] == [142.16, 142.16, 140.69, 140.69]  # Mbyte, Kbyte, Gbyte
    assert [round(f["us"], 2) for f in found] == [43.20, 42.02, 41.44, 43.14]  # usecond, msecond
    assert [f["written"] for f in found] == [7.90, 7.98, 7.63, 7.67]
    assert labels == ["default B128-n2-ctx8192"] * 2 + ["deepgemm B128-n2-ctx8192"] * 2


def test_each_profiled_line_labels_as_many_launches_as_it_says():
    table = ncu_dram.markdown(_csv())
    assert f"| 2 | default B128-n2-ctx8192 | {OURS} | 42.02 | 142.16 | 7.98 |" in table
    assert "| 3 | deepgemm B128-n2-ctx8192 | sm90_fp8_paged_mqa_logits | 41.44 | 140.69 | 7.63 |" in table


def test_labels_that_do_not_match_the_launches_are_not_guessed():
    table = ncu_dram.markdown(_csv(labels=("default B128-n2-ctx8192 2", "deepgemm B128-n2-ctx8192 1")))
    assert "| 1 | unlabelled |" in table and "default B128" not in table.split("\n\n")[1]
    assert "labels for 3 launches, 4 profiled: not matched" in table
    # three and one: as many as the launches, so taken as they say
    table = ncu_dram.markdown(_csv(labels=("default B128-n2-ctx8192 3", "deepgemm B128-n2-ctx8192 1")))
    assert "| 3 | default B128-n2-ctx8192 | sm90_fp8_paged_mqa_logits |" in table


def test_bad_input_is_refused_with_what_was_expected(tmp_path):
    with pytest.raises(ValueError, match="no CSV rows"):
        ncu_dram.launches("profiled default B1-n2-ctx8192 2\n")
    with pytest.raises(ValueError, match="lacks the columns"):
        ncu_dram.launches('"ID","Kernel Name"\n"0","k"\n')
    with pytest.raises(ValueError, match="unknown unit 'Tbyte'"):
        ncu_dram.launches(_csv().replace('"Gbyte"', '"Tbyte"'))
    assert ncu_dram.main([str(tmp_path / "absent.csv")]) == 2
    assert ncu_dram.main([]) == 2
