"""ci/pack-triton.sh: a Triton wheel packed to carry to a GPU machine, on a fake wheel (a zip with a small
real shared object as libtriton.so), and its refusals of bad input."""
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "ci" / "pack-triton.sh"
TOOLS = [t for t in ("xz", "strip", "bash") if shutil.which(t) is None]
pytestmark = pytest.mark.skipif(bool(TOOLS), reason=f"missing tools: {TOOLS}")


def _so() -> Path:
    """A small ELF shared object of this Python's (strip needs a real one)."""
    import _json
    return Path(_json.__file__)


def _wheel(tmp: Path, sm90_uses_blackwell: bool, with_lib: bool = True) -> Path:
    wheel = tmp / "triton-0.0-cp312-abi3-linux_x86_64.whl"
    compiler = ("def get_ptxas(arch):\n    if arch < 90:\n        return 'ptxas'\n    return 'ptxas-blackwell'\n"
                if sm90_uses_blackwell else
                "def get_ptxas(arch):\n    return 'ptxas-blackwell' if arch >= 100 else 'ptxas'\n")
    with zipfile.ZipFile(wheel, "w") as z:
        if with_lib:
            z.write(_so(), "triton/_C/libtriton.so")
        z.writestr("triton/_C/libproton.so", b"proton")
        z.writestr("triton/__init__.py", "__version__ = '0.0'\n")
        z.writestr("triton/backends/nvidia/compiler.py", compiler)
        z.writestr("triton/backends/nvidia/bin/ptxas", b"old ptxas")
        z.writestr("triton/backends/nvidia/bin/ptxas-blackwell", b"new ptxas")
        z.writestr("triton/backends/nvidia/lib/cupti/libcupti_static.a", b"x" * 1000)
        z.writestr("triton/backends/amd/compiler.py", "")
    return wheel


def _run(*args):
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize("blackwell", [True, False], ids=["sm90-ptxas-blackwell", "sm90-ptxas"])
def test_packs_the_library_stripped_and_the_ptxas_triton_runs_for_sm90(tmp_path, blackwell):
    out = tmp_path / "out"
    r = _run(_wheel(tmp_path, blackwell), out)
    assert r.returncode == 0, r.stderr
    name = (out / "ptxas.name").read_text().strip()
    assert name == ("ptxas-blackwell" if blackwell else "ptxas")
    unpacked = subprocess.run(["xz", "-dc", str(out / "ptxas.xz")], capture_output=True, check=True).stdout
    assert unpacked == (b"new ptxas" if blackwell else b"old ptxas")
    with tarfile.open(out / "triton.tar.xz") as t:
        names = set(t.getnames())
        lib = t.extractfile("triton/_C/libtriton.so").read()
    assert {"triton/__init__.py", "triton/backends/nvidia/compiler.py", "triton/_C/libtriton.so"} <= names
    left_out = [n for n in names if n.startswith(("triton/backends/amd", "triton/backends/nvidia/bin",
                                                   "triton/backends/nvidia/lib/cupti", "triton/_C/libproton"))]
    assert left_out == []
    # the debug info gone (where this Python's library had some, as CPython builds of pyenv do)
    assert lib[:4] == b"\x7fELF" and b".debug_info" not in lib


def test_refuses_a_missing_wheel_and_a_wheel_without_the_library(tmp_path):
    r = _run(tmp_path / "nothing.whl", tmp_path / "out")
    assert r.returncode == 2 and "WHEEL" in r.stderr and "not a file" in r.stderr
    r = _run(_wheel(tmp_path, True, with_lib=False), tmp_path / "out")
    assert r.returncode == 2 and "libtriton.so" in r.stderr


def test_without_two_arguments_prints_its_usage_and_exits_2(tmp_path):
    r = _run(tmp_path)
    assert r.returncode == 2 and "pack-triton.sh WHEEL OUT_DIR" in r.stdout
