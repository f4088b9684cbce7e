"""aiter (AMD's kernel library) as a backend, taken from the build the user has: an installed
``amd-aiter`` package or a source tree (``aiter_path`` / ``$PARITY_AITER_PATH``, a directory holding
``aiter/``). Nothing of aiter is vendored here.

* ROCm with an importable ``aiter``: aiter's public wrappers are called as they are.
* Elsewhere (NVIDIA, CPU) the ``aiter`` package cannot import, but its Triton kernel module is plain
  Triton. We load that file under a private module name, then load the build's own wrapper file with
  its ``aiter.*`` imports answered by small shims, and call the wrapper: the launch configuration
  (grid, ChunkK, SplitKV, strides) is whatever this build's wrapper does. On the CPU this needs
  ``TRITON_INTERPRET=1`` before the kernels are decorated; :func:`make_backend` sets it when no GPU is
  visible. Gluon kernels are AMD-only: they are reported as not runnable on this device.

Argument mapping: builds whose fused wrapper takes ``KVBlockSize`` get our paged cache and block
tables as they are. Older builds (PyPI 0.1.7.post2.dev18) address the cache per token
(``(num_tokens, 1, 1, D + 4)`` with ``kv_indices[b, t]`` a token slot); for block_size > 1 we re-lay
the same keys and scales out per token, which is exactly the block_size 1 layout of SPEC section 1.
"""
from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import os
import re
import sys
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path

import torch

from parity import layouts
from parity.backends.base import PATHS
from parity.cases import IndexerInputs

ENV_PATH = "PARITY_AITER_PATH"
WRAPPER_FILE = "aiter/ops/triton/pa_mqa_logits.py"
KERNEL_FILE = "aiter/ops/triton/_triton_kernels/pa_mqa_logits.py"
GLUON_FILE = "aiter/ops/triton/gluon/pa_mqa_logits.py"
STAGE1 = "deepgemm_fp8_paged_mqa_logits_stage1"
FUSED = "deepgemm_fp8_paged_mqa_logits"
NOT_RUNNABLE = "not runnable on this device"


# --- where the build is ---------------------------------------------------------------------------

@dataclass
class AiterBuild:
    root: Path  # the directory that holds aiter/
    found_by: str  # aiter_path | PARITY_AITER_PATH | installed package
    version: str | None
    version_source: str | None

    @property
    def package_dir(self) -> Path:
        return self.root / "aiter"


def _version_of(root: Path) -> tuple[str | None, str | None]:
    """dist-info metadata beside the package (pip installs) first, then aiter/_version.py (source trees)."""
    for meta in sorted(root.glob("amd_aiter-*.dist-info/METADATA")):
        for line in meta.read_text(errors="replace").splitlines():
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip(), str(meta)
    vfile = root / "aiter" / "_version.py"
    if vfile.is_file():
        m = re.search(r"""__version__\s*=\s*['"]([^'"]+)['"]""", vfile.read_text(errors="replace"))
        if m:
            return m.group(1), str(vfile)
    return None, None


def find_build(aiter_path: str | None = None) -> AiterBuild:
    """The aiter build to judge. Never imports ``aiter``: on a machine without ROCm it cannot."""
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


# --- loading the build's files without its package -------------------------------------------------

class _Shims(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers ``aiter.*`` imports while the build's wrapper file executes: the kernel modules from
    the build's own files, and stand-ins for the few ROCm-bound helpers the wrapper names. Anything
    else raises, naming the module, so an unknown dependency is visible instead of faked."""

    def __init__(self, build: AiterBuild, modules: dict[str, types.ModuleType]):
        self.build, self.modules = build, modules

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "aiter" and not fullname.startswith("aiter."):
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec):
        name = spec.name
        if name in self.modules:
            return self.modules[name]
        rel = Path(*name.split(".")).with_suffix(".py")
        if (self.build.root / rel).is_file() and (".triton._triton_kernels." in name or ".triton.gluon." in name):
            return _load_file(self.build.root / rel, _private_name(self.build, name))
        if (self.build.root / Path(*name.split("."))).is_dir():
            pkg = types.ModuleType(name)
            pkg.__path__ = []
            return pkg
        raise ImportError(f"the aiter wrapper imports {name}, which needs the aiter package (ROCm); "
                          "parity.backends.aiter has no stand-in for it")

    def exec_module(self, module):
        pass


def _private_name(build: AiterBuild, name: str) -> str:
    tag = hashlib.sha1(str(build.root).encode()).hexdigest()[:10]
    return f"_parity_aiter_{tag}.{name}"


def _load_file(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # Triton reads kernel sources through the module
    spec.loader.exec_module(module)
    return module


def _gluon_stand_in(name: str, reason: str) -> types.ModuleType:
    """For builds whose wrapper imports Gluon kernels the installed Triton cannot even define."""
    mod = types.ModuleType(name)

    def __getattr__(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Unrunnable(attr, reason)

    mod.__getattr__ = __getattr__
    return mod


class _Unrunnable:
    def __init__(self, name, reason):
        self.name, self.reason = name, reason

    def __getitem__(self, grid):
        raise RuntimeError(f"{self.name}: {NOT_RUNNABLE} ({self.reason})")


@dataclass
class _Loaded:
    wrapper: types.ModuleType
    kernels: types.ModuleType
    dtypes: types.ModuleType
    interpreted: bool
    gluon: list[str] = field(default_factory=list)
    gluon_error: str | None = None


def _is_amd() -> bool:
    return bool(getattr(torch.version, "hip", None))


def load_from_files(build: AiterBuild) -> _Loaded:
    """The build's kernel module and wrapper, loaded from its files with ``aiter.*`` shimmed."""
    kernel_path, wrapper_path = build.root / KERNEL_FILE, build.root / WRAPPER_FILE
    for p in (kernel_path, wrapper_path):
        if not p.is_file():
            raise FileNotFoundError(f"aiter build at {build.root} has no {p.relative_to(build.root)}")
    kernels = _load_file(kernel_path, _private_name(build, "aiter.ops.triton._triton_kernels.pa_mqa_logits"))
    dtypes = types.ModuleType("aiter.dtypes")
    dtypes.fp8 = torch.float8_e4m3fn  # set per call to the input's flavour (aiter picks it per arch)
    chip = types.ModuleType("aiter.jit.utils.chip_info")
    chip.get_gfx = lambda: "none"  # not an AMD GPU: the build's own gfx checks then refuse Gluon
    core = types.ModuleType("aiter.ops.triton.utils.core")
    core.AITER_TRITON_CONFIGS_PATH = str(build.root / "aiter/ops/triton/configs")
    redirect = types.ModuleType("aiter.utility.triton.triton_metadata_redirect")
    redirect.AOTMetadataContext = None
    root_pkg = types.ModuleType("aiter")
    root_pkg.__path__ = []
    root_pkg.dtypes = dtypes
    modules = {"aiter": root_pkg, "aiter.dtypes": dtypes, "aiter.jit.utils.chip_info": chip,
               "aiter.ops.triton.utils.core": core, "aiter.utility.triton.triton_metadata_redirect": redirect,
               "aiter.ops.triton._triton_kernels.pa_mqa_logits": kernels}
    gluon_error = None
    gluon_name = "aiter.ops.triton.gluon.pa_mqa_logits"
    if (build.root / GLUON_FILE).is_file():
        try:
            modules[gluon_name] = _load_file(build.root / GLUON_FILE, _private_name(build, gluon_name))
        except Exception as exc:  # the installed Triton may lack Gluon altogether
            gluon_error = f"{type(exc).__name__}: {exc}"
            modules[gluon_name] = _gluon_stand_in(gluon_name, gluon_error)
    shims = _Shims(build, modules)
    saved = {n: m for n, m in sys.modules.items() if n == "aiter" or n.startswith("aiter.")}
    sys.meta_path.insert(0, shims)
    try:
        wrapper = _load_file(wrapper_path, _private_name(build, "aiter.ops.triton.pa_mqa_logits"))
    finally:
        sys.meta_path.remove(shims)
        for n in [n for n in sys.modules if n == "aiter" or n.startswith("aiter.")]:
            del sys.modules[n]
        sys.modules.update(saved)
    if hasattr(wrapper, "enable_gluon_pa_mqa_logits") and not _is_amd():
        wrapper.enable_gluon_pa_mqa_logits = False  # the build's own switch to its Triton kernel
    gluon = sorted(n for n in vars(wrapper) if "gluon" in n and callable(getattr(wrapper, n, None)))
    gluon += sorted(n for n in vars(kernels) if "gluon" in n)
    return _Loaded(wrapper, kernels, dtypes, _interpreting(), gluon, gluon_error)


def _interpreting() -> bool:
    """True when Triton interprets: the env var was set before Triton itself was imported (its
    standard library is decorated at import; a late switch leaves it compiled and the kernels fail)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    import triton.language.standard as std
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(std.cdiv, InterpretedFunction)


# --- the backend -----------------------------------------------------------------------------------

class _Recorder:
    """Stands in for a kernel during a dry run of the wrapper: records the launch, runs nothing."""

    def __init__(self, name):
        self.name, self.launches = name, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append({"grid": tuple(grid) if not callable(grid) else grid, "constexprs":
                                  {k: v for k, v in kwargs.items() if isinstance(v, (int, bool, str))}})

        return launch


def _per_token_view(inputs: IndexerInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """The same keys and scales as a block_size 1 cache, ``(num_blocks * block_size, 1, 1, D + 4)``,
    and per-token ``kv_indices`` ``(B, max_blocks * block_size)``; unused slots point at token 0."""
    bs = inputs.block_size
    keys, scales = layouts.split_kv_cache(inputs.kv_cache, inputs.q_fp8.dtype)
    tokens = keys.reshape(-1, keys.shape[-1])
    cache = layouts.pack_kv_cache(tokens, scales.reshape(-1), 1)
    t = torch.arange(inputs.block_tables.shape[1] * bs, device=inputs.block_tables.device)
    kv_indices = inputs.block_tables.long()[:, t // bs] * bs + t % bs
    return cache, kv_indices.to(torch.int32).contiguous()


class AiterBackend:
    name = "aiter"
    fp8_flavours = ("e4m3fn", "e4m3fnuz")

    def __init__(self, build: AiterBuild):
        self.build = build
        self.mode = "rocm" if _is_amd() else "files"
        self.load_error: str | None = None
        self._loaded: _Loaded | None = None
        self._rocm = None
        try:
            if self.mode == "rocm":
                self._rocm = self._import_on_rocm()
            else:
                self._loaded = load_from_files(build)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
        fns = self._functions()
        offered = {"stage1": STAGE1 in fns, "fused": FUSED in fns, "preshuffle": "Preshuffle" in self._fused_params()}
        self.paths = tuple(p for p in PATHS if offered[p])
        self.device_types = ("cuda",) if self.mode == "rocm" else ("cpu", "cuda")
        if self.load_error and not self.paths:
            raise RuntimeError(f"aiter build at {build.root} could not be loaded: {self.load_error}")

    def _import_on_rocm(self):
        if str(self.build.root) not in sys.path and self.build.found_by != "installed package":
            sys.path.insert(0, str(self.build.root))
        import importlib

        return importlib.import_module("aiter.ops.triton.pa_mqa_logits")

    def _module(self):
        return self._rocm if self._rocm is not None else (self._loaded.wrapper if self._loaded else None)

    def _functions(self) -> dict:
        mod = self._module()
        return {n: getattr(mod, n) for n in (STAGE1, FUSED) if mod is not None and callable(getattr(mod, n, None))}

    def _fused_params(self) -> set[str]:
        fn = self._functions().get(FUSED)
        return set(inspect.signature(fn).parameters) if fn else set()

    # -- argument mapping --
    def _arguments(self, path: str, inputs: IndexerInputs) -> tuple[tuple, dict]:
        params = self._fused_params()
        kwargs = {}
        if path == "fused" and "KVBlockSize" in params:
            cache, kv_indices = inputs.kv_cache, inputs.block_tables
            kwargs = {"Preshuffle": False, "KVBlockSize": inputs.block_size}
        elif path == "preshuffle":
            cache, kv_indices = inputs.kv_cache_preshuffled, inputs.block_tables
            kwargs = {"Preshuffle": True, "KVBlockSize": inputs.block_size}
        elif inputs.block_size == 1:
            cache, kv_indices = inputs.kv_cache, inputs.block_tables
        else:
            cache, kv_indices = _per_token_view(inputs)
        args = (inputs.q_fp8, cache, inputs.weights, None, inputs.context_lens, kv_indices, inputs.max_model_len)
        return args, kwargs

    def _call(self, path: str, inputs: IndexerInputs, out: torch.Tensor, dry: bool = False) -> dict:
        fn = self._functions()[STAGE1 if path == "stage1" else FUSED]
        args, kwargs = self._arguments(path, inputs)
        args = args[:3] + (out,) + args[4:]
        if self._loaded is not None:
            self._loaded.dtypes.fp8 = inputs.q_fp8.dtype
        if not dry:
            fn(*args, **kwargs)
            return {}
        wrapper = self._module()
        kernels = {n: v for n, v in vars(wrapper).items() if n.startswith("_") and "paged_mqa_logits" in n
                   and hasattr(v, "__getitem__") and not isinstance(v, type)}
        recorders = {n: _Recorder(n) for n in kernels}
        vars(wrapper).update(recorders)
        try:
            fn(*args, **kwargs)
        finally:
            vars(wrapper).update(kernels)
        return {n: r.launches for n, r in recorders.items() if r.launches}

    def launch_config(self, path: str, inputs: IndexerInputs) -> dict:
        """What this build's wrapper would launch for ``inputs`` (kernel, grid, ChunkK, SplitKV ...),
        found by running the wrapper with its kernels replaced by recorders."""
        out = torch.empty((inputs.heads, inputs.rows, inputs.max_model_len) if path == "stage1"
                          else (inputs.rows, inputs.max_model_len), device=inputs.device)
        return self._call(path, inputs, out, dry=True)

    def unsupported(self, path: str, inputs: IndexerInputs) -> str | None:
        if self.load_error and self._module() is None:
            return f"aiter build not loadable: {self.load_error}"
        if path == "preshuffle" and path in self.paths:
            if self.mode != "rocm":
                return f"{NOT_RUNNABLE}: aiter's preshuffle path is a Gluon kernel for AMD GPUs"
            if inputs.kv_cache_preshuffled is None:
                return "preshuffle needs block_size and head_dim multiples of 16"
        if path not in self.paths:
            return f"this aiter build ({self.build.version}) exposes no {path} wrapper"
        dev = inputs.device.type
        if dev not in self.device_types:
            return f"aiter on ROCm runs on the GPU only, not on {dev}"
        if self.mode == "files":
            if dev == "cpu" and not self._loaded.interpreted:
                return ("aiter's Triton kernels run on the CPU only under the Triton interpreter: set "
                        "TRITON_INTERPRET=1 in the environment before Triton is imported (e.g. "
                        "TRITON_INTERPRET=1 python -m parity run --backend aiter ...)")
            if dev == "cuda" and not self._loaded.interpreted:
                if inputs.q_fp8.dtype == torch.float8_e4m3fnuz:
                    return f"{NOT_RUNNABLE}: e4m3fnuz is an AMD fp8 format; Triton on NVIDIA has no such type"
        try:
            self.launch_config(path, inputs)
        except AssertionError as exc:
            line = (traceback.extract_tb(exc.__traceback__)[-1].line or "").strip()
            return (f"this aiter build's {path} wrapper rejects these inputs (heads={inputs.heads}, "
                    f"block_size={inputs.block_size}): {line or exc}")
        return None

    def run(self, path: str, inputs: IndexerInputs, out: torch.Tensor) -> None:
        self._call(path, inputs, out)

    def describe(self) -> dict:
        fns = self._functions()
        info = {"name": self.name, "origin": str(self.build.package_dir), "found_by": self.build.found_by,
                "version": self.build.version, "version_source": self.build.version_source, "mode": self.mode,
                "paths": list(self.paths),
                "wrappers": {n: str(inspect.signature(f)) for n, f in fns.items()}}
        if self.load_error:
            info["load_error"] = self.load_error
        if self._loaded is not None:
            info["kernel_file"] = str(self.build.root / KERNEL_FILE)
            info["wrapper_file"] = str(self.build.root / WRAPPER_FILE)
            info["kernels"] = sorted(n for n, v in vars(self._loaded.kernels).items()
                                     if n.startswith("_") and "paged_mqa_logits" in n and hasattr(v, "__getitem__"))
            info["triton_interpreter"] = self._loaded.interpreted
            if self._loaded.gluon or self._loaded.gluon_error:
                info["gluon"] = {"found": self._loaded.gluon, "status": NOT_RUNNABLE,
                                 **({"load_error": self._loaded.gluon_error} if self._loaded.gluon_error else {})}
            if "KVBlockSize" not in self._fused_params():
                info["cache_mapping"] = ("this build addresses the cache per token (block_size 1, kv_indices); "
                                         "block_size > 1 caches are re-laid out per token before the call")
        return info


_BACKENDS: dict[str, AiterBackend] = {}  # one per build root: its kernels load once per process


def make_backend(aiter_path: str | None = None) -> AiterBackend:
    """The aiter build at ``aiter_path`` (or ``$PARITY_AITER_PATH``, or the installed package)."""
    if not torch.cuda.is_available():
        # Triton decides at decoration time whether to interpret; without a GPU it is the only way.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    build = find_build(aiter_path)
    key = str(build.root)
    if key not in _BACKENDS:
        _BACKENDS[key] = AiterBackend(build)
    return _BACKENDS[key]
