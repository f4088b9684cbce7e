"""The kernel keeps more than one key tile in flight, read from its TTGIR compiled for sm_90 (no GPU
needed), and the check catches the planted fault that once made the kernel latency-bound: the
block-table read back inside the iteration that uses it."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

# The compiler needs real @triton.jit functions, which TRITON_INTERPRET=1 (set by the parity plugin without a
# GPU) replaces at import: so compile in a child process without it.
CHILD = textwrap.dedent("""
    import json, pathlib, sys, tempfile, importlib.util
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from parity.kernels import pipelining, paged_mqa_logits as km
    except ImportError as exc:
        print(json.dumps({"skip": f"no Triton NVIDIA compiler: {exc}"})); sys.exit(0)
    if sys.argv[1] == "kernel":
        print(json.dumps(pipelining.kernel_report())); sys.exit(0)
    if sys.argv[1] == "fp4":
        print(json.dumps(pipelining.fp4_report())); sys.exit(0)
    src = pathlib.Path(km.__file__).read_text()
    carried = ("            blk = blk_next\\n"
               "            blk_next = _tile_blocks(table_row, t0 + BLOCK_T, table_cols, BS, BLOCK_T)\\n")
    assert carried in src, "the kernel no longer carries the block id as this test expects"
    src = src.replace(carried, "            blk = _tile_blocks(table_row, t0, table_cols, BS, BLOCK_T)\\n")
    path = pathlib.Path(tempfile.mkdtemp()) / "planted_kernel.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("planted_kernel", path)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    ttgir = pipelining.compile_ttgir(mod.paged_mqa_logits_kernel, pipelining.BAR_CONSTEXPRS, pipelining.POINTERS)
    print(json.dumps({"fused": pipelining.tiles_in_flight(ttgir)}))
""")


def _compile(what: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", CHILD, what], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if "skip" in result:
        pytest.skip(result["skip"])
    return result


def test_key_tiles_stay_in_flight():
    report = _compile("kernel")
    assert set(report) == {"fused", "preshuffle", "preshuffle-gather", "stage1", "fused-tma", "preshuffle-tma"}
    for path, r in report.items():
        assert r["buffers"] >= 2 and r["wait_depth"] >= 1, (path, r)


def test_the_fp4_kernel_compiles_for_sm90_and_keeps_tiles_in_flight():
    """bf16 operands and a bf16 store, compiled as the H200 would compile them (the interpreter accepts code
    the compiler refuses: a helper returning two types from a constexpr branch)."""
    report = _compile("fp4")
    assert set(report) == {"fused", "stage1-bf16"}
    for path, r in report.items():
        assert r["buffers"] >= 2 and r["wait_depth"] >= 1, (path, r)


def test_block_table_read_in_the_iteration_is_caught():
    r = _compile("planted")["fused"]
    assert r["wait_depth"] == 0, r
