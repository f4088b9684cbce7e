"""Where an aiter build is, what version it is, and which of its files hold the paged-MQA-logits
wrappers and kernels. Files are found by what they define (``def deepgemm_fp8_paged_mqa_logits(``),
never by a fixed path: the module moved between releases (0.1.7: ``aiter/ops/triton/pa_mqa_logits.py``;
later: ``aiter/ops/triton/attention/pa_mqa_logits.py``, kernels under ``_triton_kernels/attention/``).
Nothing here imports ``aiter``: without ROCm it cannot import.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

ENV_PATH = "PARITY_AITER_PATH"
TRITON_DIR = "aiter/ops/triton"

FUSED = "deepgemm_fp8_paged_mqa_logits"
STAGE1 = "deepgemm_fp8_paged_mqa_logits_stage1"
FUSED_RAGGED = "deepgemm_fp8_paged_mqa_logits_ragged_k"
STAGE1_RAGGED = "deepgemm_fp8_paged_mqa_logits_stage1_ragged_k"
SCHEDULE = "deepgemm_fp8_paged_mqa_logits_schedule"
WRAPPERS = (FUSED, STAGE1, FUSED_RAGGED, STAGE1_RAGGED, SCHEDULE)

_DEF = re.compile(r"^def ((?:_gluon)?_?deepgemm_fp8_paged_mqa_logits\w*)\(", re.M)


@dataclass
class AiterBuild:
    root: Path  # the directory that holds aiter/
    found_by: str  # aiter_path | PARITY_AITER_PATH | installed package
    version: str | None
    version_source: str | None

    @property
    def package_dir(self) -> Path:
        return self.root / "aiter"


def _git_version(root: Path) -> str | None:
    """A source checkout before ``setup.py`` wrote ``aiter/_version.py``: its git description."""
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--tags", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10, check=True)
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{out.stdout.strip()} ({commit.stdout.strip()})"


def _version_of(root: Path) -> tuple[str | None, str | None]:
    """dist-info metadata beside the package (pip installs), aiter/_version.py (built source trees),
    then the git checkout's description (fresh clones)."""
    for meta in sorted(root.glob("amd_aiter-*.dist-info/METADATA")):
        for line in meta.read_text(errors="replace").splitlines():
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip(), str(meta)
    vfile = root / "aiter" / "_version.py"
    if vfile.is_file():
        m = re.search(r"""__version__\s*=\s*['"]([^'"]+)['"]""", vfile.read_text(errors="replace"))
        if m:
            return m.group(1), str(vfile)
    described = _git_version(root)
    if described:
        return described, f"git describe in {root}"
    return None, None


def find_build(aiter_path: str | None = None) -> AiterBuild:
    """The aiter build to judge: ``aiter_path``, else ``$PARITY_AITER_PATH``, else the installed package."""
    given, found_by = aiter_path, "aiter_path"
    if not given and os.environ.get(ENV_PATH):
        given, found_by = os.environ[ENV_PATH], ENV_PATH
    if given:
        root = Path(given).expanduser().resolve()
        if root.name == "aiter" and (root / "ops").is_dir() and not (root / "aiter").is_dir():
            root = root.parent  # the package directory itself was given
        if not (root / "aiter").is_dir():
            raise ValueError(f"{found_by}={given!r} must be a directory containing aiter/ (a source tree or "
                             "site-packages), but it has no aiter/ directory")
    else:
        spec = importlib.util.find_spec("aiter")  # top-level: locates without importing
        if spec is None or not spec.origin or not spec.origin.endswith("__init__.py"):
            raise ModuleNotFoundError(
                "no aiter build found: install it (pip install --no-deps amd-aiter) or pass aiter_path / "
                f"--aiter-path DIR or set {ENV_PATH} to a directory containing aiter/")
        root, found_by = Path(spec.origin).resolve().parent.parent, "installed package"
    version, source = _version_of(root)
    return AiterBuild(root=root, found_by=found_by, version=version, version_source=source)


# --- which files define what -----------------------------------------------------------------------

@dataclass
class Layout:
    """The build's paged-MQA-logits files, keyed by the names they define."""
    wrappers: dict[str, Path] = field(default_factory=dict)  # public wrapper name -> file
    kernels: dict[str, list[Path]] = field(default_factory=dict)  # _kernel name -> files defining it

    @property
    def wrapper_files(self) -> list[Path]:
        return sorted(set(self.wrappers.values()))

    @property
    def kernel_files(self) -> list[Path]:
        return sorted({p for paths in self.kernels.values() for p in paths})


def module_name(root: Path, path: Path) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts)


def scan(build: AiterBuild) -> Layout:
    """Text search of the build's ``aiter/ops/triton`` tree for the definitions this backend uses."""
    base = build.root / TRITON_DIR
    if not base.is_dir():
        raise FileNotFoundError(f"aiter build at {build.root} has no {TRITON_DIR}/ directory")
    found: dict[str, list[Path]] = {}
    for path in sorted(base.rglob("*.py")):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if "deepgemm_fp8_paged_mqa_logits" not in text:
            continue
        for name in dict.fromkeys(_DEF.findall(text)):
            found.setdefault(name, []).append(path)
    layout = Layout()
    for name, paths in found.items():
        if name.startswith("_"):
            layout.kernels[name] = paths  # Gluon kernels have AOT signature stubs beside them
            continue
        if name not in WRAPPERS:
            continue
        if len(paths) > 1:
            listed = ", ".join(str(p.relative_to(build.root)) for p in paths)
            raise RuntimeError(f"aiter build at {build.root} defines {name} in several files ({listed}); "
                               "cannot tell which one is the build's wrapper")
        layout.wrappers[name] = paths[0]
    if FUSED not in layout.wrappers and STAGE1 not in layout.wrappers:
        raise FileNotFoundError(f"aiter build at {build.root}: no file under {TRITON_DIR}/ defines {FUSED} or "
                                f"{STAGE1} (searched by content)")
    return layout
