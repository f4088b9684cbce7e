"""Loading a build's wrapper and kernel files without its ``aiter`` package (which needs ROCm).

While the build's wrapper file executes, its ``aiter.*`` imports are answered by :class:`Shims`:

* kernel modules (Triton under ``_triton_kernels``, and the file that defines the Gluon kernels)
  come from the build's own files;
* the few ROCm-bound helpers a wrapper asks (arch, CU count, fp8 flavour) get a stand-in from
  :data:`STAND_INS`, and every value a stand-in hands out is recorded, with why, for ``describe()``;
* anything else raises ImportError naming the module, so an unknown dependency is seen, not faked.
"""
from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import torch

from parity.backends.aiter.discovery import AiterBuild, Layout, module_name

NOT_RUNNABLE = "not runnable on this device"
GFX = "none"  # what the chip-info stand-ins answer: not an AMD GPU
CDNA_VERSION = -1  # what aiter's own get_cdna_version() returns for an arch that is not gfx942/gfx950
CU_COUNT = 256  # MI355X (gfx950); MI300X has 304, MI325X 304


def cu_count() -> int:
    """aiter itself lets ``CU_NUM`` override the CU count it reads from rocminfo; so do we."""
    raw = os.environ.get("CU_NUM", "")
    if raw.strip():
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"CU_NUM must be a positive integer (a CU count), got {raw!r}") from None
        if value <= 0:
            raise ValueError(f"CU_NUM must be a positive integer (a CU count), got {raw!r}")
        return value
    return CU_COUNT


_WHY_GFX = ("aiter reads the arch from rocminfo; this is not an AMD GPU, so the build's own arch checks take "
            "their non-AMD branch (no Gluon kernels)")
_WHY_CU = (f"aiter reads the CU count from rocminfo; assumed {CU_COUNT} = MI355X (gfx950), or $CU_NUM as aiter "
           "honours it (MI300X: 304). The wrapper derives SplitKV and its grid from it")


@dataclass
class StandIns:
    """The stand-ins handed to one build: what each answers, why, and how often it was asked."""
    fp8: torch.dtype = torch.float8_e4m3fn
    calls: dict[str, int] = field(default_factory=dict)

    def table(self) -> dict[str, tuple[object, str]]:
        """``module.attr`` -> (value, why)."""
        cu = cu_count()
        return {
            "aiter.dtypes.fp8": ("the input's fp8 dtype", "aiter picks e4m3fnuz on gfx942, e4m3fn elsewhere; "
                                                         "set per call to the dtype of q_fp8"),
            "aiter.jit.utils.chip_info.get_gfx": (GFX, _WHY_GFX),
            "aiter.jit.utils.chip_info.get_cu_num": (cu, _WHY_CU),
            "aiter.ops.triton.utils.device_info.get_num_sms": (cu, _WHY_CU),
            "aiter.ops.triton.utils._triton.arch_info.get_arch": (GFX, _WHY_GFX),
            "aiter.ops.triton.gluon.pa_decode_gluon.get_cdna_version": (
                CDNA_VERSION, "aiter's own answer for an arch that is not gfx942/gfx950; only Gluon (AMD) code uses it"),
            "aiter.ops.triton.utils.core.AITER_TRITON_CONFIGS_PATH": (
                "the build's aiter/ops/triton/configs", "a constant, but its module imports ROCm tooling"),
            "aiter.utility.triton.triton_metadata_redirect.AOTMetadataContext": (
                "raises if used", "aiter's AOT Gluon loader; reached only on AMD"),
        }

    def _answer(self, key: str, value):
        self.calls[key] = self.calls.get(key, 0) + 1
        return value

    def modules(self, build: AiterBuild) -> dict[str, types.ModuleType]:
        """Stand-in modules by name; each function counts its calls."""
        mods: dict[str, types.ModuleType] = {}

        def module(name, **attrs):
            mod = mods.get(name) or types.ModuleType(name)
            vars(mod).update(attrs)
            mods[name] = mod

        def fn(key, value):
            return lambda *a, **k: self._answer(key, value() if callable(value) else value)

        standins = self

        class _Dtypes(types.ModuleType):
            @property
            def fp8(self):
                return standins._answer("aiter.dtypes.fp8", standins.fp8)

        mods["aiter.dtypes"] = _Dtypes("aiter.dtypes")
        for key in self.table():
            mod, _, attr = key.rpartition(".")
            if key == "aiter.dtypes.fp8":
                continue
            if attr == "AITER_TRITON_CONFIGS_PATH":
                module(mod, **{attr: str(build.root / "aiter/ops/triton/configs")})
            elif attr == "AOTMetadataContext":
                module(mod, **{attr: _AotOnly()})
            else:
                module(mod, **{attr: fn(key, cu_count if "num" in attr else self.table()[key][0])})
        return mods

    def report(self, imported: list[str]) -> dict:
        """For each stand-in module the build imported: value, why, and calls so far."""
        return {key: {"returned": value, "why": why, "calls": self.calls.get(key, 0)}
                for key, (value, why) in self.table().items() if key.rpartition(".")[0] in imported}


class _AotOnly:
    """aiter's AOT Gluon loader: reached only on AMD with AITER_ENABLE_AOT_GLUON_PA_MQA_LOGITS=1."""

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{NOT_RUNNABLE}: aiter's AOT Gluon kernels need an AMD GPU")


class Shims(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers ``aiter.*`` imports while the build's files execute (see module docstring)."""

    def __init__(self, build: AiterBuild, modules: dict[str, types.ModuleType], from_files: set[str]):
        self.build, self.modules, self.from_files = build, modules, from_files
        self.imported: list[str] = []

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "aiter" and not fullname.startswith("aiter."):
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec):
        name = spec.name
        self.imported.append(name)
        if name in self.modules:
            return self.modules[name]
        rel = Path(*name.split("."))
        file = self.build.root / rel.with_suffix(".py")
        if file.is_file() and (name in self.from_files or "._triton_kernels." in name):
            mod = load_file(file, private_name(self.build, name))
            self.modules[name] = mod
            return mod
        if (self.build.root / rel).is_dir() or any(m.startswith(name + ".") for m in self.modules):
            pkg = types.ModuleType(name)
            pkg.__path__ = []
            return pkg
        raise ImportError(f"the aiter wrapper imports {name}, which needs the aiter package (ROCm); "
                          "parity.backends.aiter has no stand-in for it")

    def exec_module(self, module):
        pass


def private_name(build: AiterBuild, name: str) -> str:
    tag = hashlib.sha1(str(build.root).encode()).hexdigest()[:10]
    return f"_parity_aiter_{tag}.{name}"


def load_file(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # Triton reads kernel sources through the module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


class Unrunnable:
    """A Gluon kernel the installed Triton cannot even define: launching it says why."""

    def __init__(self, name, reason):
        self.name, self.reason = name, reason

    def __getitem__(self, grid):
        raise RuntimeError(f"{self.name}: {NOT_RUNNABLE} ({self.reason})")


def _unrunnable_module(name: str, reason: str) -> types.ModuleType:
    mod = types.ModuleType(name)

    def __getattr__(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return Unrunnable(attr, reason)

    mod.__getattr__ = __getattr__
    return mod


@dataclass
class Loaded:
    wrappers: dict[str, types.ModuleType]  # wrapper file's module name -> module
    kernel_modules: dict[str, types.ModuleType]  # kernel file's module name -> module
    standins: StandIns
    imported: list[str]
    interpreted: bool
    gluon_error: str | None = None

    @property
    def kernels(self) -> types.ModuleType | None:
        """The module holding the Triton (non-Gluon) kernels."""
        for mod in self.kernel_modules.values():
            if any(n.startswith("_deepgemm_fp8_paged_mqa_logits") for n in vars(mod)):
                return mod
        return next(iter(self.kernel_modules.values()), None)


def load_from_files(build: AiterBuild, layout: Layout) -> Loaded:
    """The build's wrapper modules, executed with ``aiter.*`` shimmed; kernels come from its files."""
    standins = StandIns()
    modules = standins.modules(build)
    root_pkg = types.ModuleType("aiter")
    root_pkg.__path__ = []
    root_pkg.dtypes = modules["aiter.dtypes"]
    modules["aiter"] = root_pkg
    kernel_names = {module_name(build.root, p) for p in layout.kernel_files}
    gluon_error = None
    shims: list[Shims] = []
    for name in sorted(kernel_names):
        if ".gluon." not in name and "._gluon_kernels." not in name:
            continue
        try:  # the installed Triton may lack Gluon, or this Gluon may not define AMD layouts
            modules[name] = _load_with(build, modules, kernel_names, lambda: load_file(
                build.root / Path(*name.split(".")).with_suffix(".py"), private_name(build, name)), shims)
        except Exception as exc:
            gluon_error = f"{type(exc).__name__}: {exc}"
            modules[name] = _unrunnable_module(name, gluon_error)
    wrappers = {}
    for path in layout.wrapper_files:
        name = module_name(build.root, path)
        wrappers[name] = _load_with(build, modules, kernel_names,
                                    lambda: load_file(path, private_name(build, name)), shims)
    imported = [n for s in shims for n in s.imported]
    kernels = {n: m for n, m in modules.items() if getattr(m, "__file__", None)}  # from the build's files
    return Loaded(wrappers, kernels, standins, sorted(set(imported)), interpreting(), gluon_error)


def _load_with(build, modules, from_files, load, out: list):
    shims = Shims(build, modules, from_files)
    out.append(shims)
    saved = {n: m for n, m in sys.modules.items() if n == "aiter" or n.startswith("aiter.")}
    for n in saved:
        del sys.modules[n]
    sys.meta_path.insert(0, shims)
    try:
        return load()
    finally:
        sys.meta_path.remove(shims)
        for n in [n for n in sys.modules if n == "aiter" or n.startswith("aiter.")]:
            del sys.modules[n]
        sys.modules.update(saved)


def interpreting() -> bool:
    """True when Triton interprets: the env var was set before Triton itself was imported (its
    standard library is decorated at import; a late switch leaves it compiled and the kernels fail)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    import triton.language.standard as std
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(std.cdiv, InterpretedFunction)
