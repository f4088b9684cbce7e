"""vLLM's decode top-k consumer, ``top_k_per_row_decode``, built from a user's vLLM source tree as a small
torch extension, for machines where the vLLM wheel is not installed (it is far too large to carry).

The op lives in one CUDA file of vLLM's ``csrc/`` (``sampler.cu`` in the releases seen so far) whose includes
are vLLM headers that only wrap torch and CUB (``cuda_compat.h``, ``dispatch_utils.h``, ``cub_helpers.h``).
That file is compiled as it is, with ``torch.utils.cpp_extension.load``, beside a binding written here that
registers the function under a namespace of our own (``torch.ops.parity_vllm_topk_<hash>``), so vLLM's own
``torch_bindings.cpp`` and the rest of its build are never needed. Nothing of vLLM is copied into this repo.

Two generations of the C++ function are known (vLLM's ``csrc/ops.h``)::

    void top_k_per_row_decode(const Tensor& logits, int64_t next_n, const Tensor& seq_lens, Tensor& indices,
                              int64_t num_rows, int64_t stride0, int64_t stride1[, int64_t top_k]);

without ``top_k`` the op selects 2048. Any other parameter list is refused with the list it found.

    python -m parity.backends.vllm_topk_ext --vllm-src DIR [--plan] [--build-dir DIR]

builds it (``--plan``: only checks the tree); ``PARITY_VLLM_SRC=DIR pytest tests/test_topk.py -k vllm`` runs
the top-k contract tests against it on a GPU.
"""
from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ENV = "PARITY_VLLM_SRC"
OP = "top_k_per_row_decode"
OLD_TOPK = 2048  # builds whose op takes no top_k select DSv3.2's index_topk
KNOWN_FILES = ("csrc/sampler.cu",)  # searched first; then every csrc/**/*.cu
# vLLM builds its kernels with torch's half/bfloat16 operators enabled (torch's extension flags disable them).
NVCC_FLAGS = ["-O3", "--expt-relaxed-constexpr", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", "-U__CUDA_NO_HALF2_OPERATORS__"]

_DEF = re.compile(r"\bvoid\s+" + OP + r"\s*\(([^)]*)\)\s*\{")
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
_PARAM = re.compile(r"^(?P<type>.*?)(?P<name>\w+)$")
_TENSOR_CONST, _TENSOR_MUT, _INT = "const torch::Tensor&", "torch::Tensor&", "int64_t"
# parameter types of the two known generations, in order
_BASE = (_TENSOR_CONST, _INT, _TENSOR_CONST, _TENSOR_MUT, _INT, _INT, _INT)


class VllmSourceError(ValueError):
    """The tree does not hold a ``top_k_per_row_decode`` this module can build; the message says why."""


def source_tree(vllm_src: str | os.PathLike | None = None) -> Path | None:
    """``vllm_src``, else ``$PARITY_VLLM_SRC``, as a path; None when neither is set."""
    src = vllm_src or os.environ.get(ENV)
    return Path(src).expanduser().resolve() if src else None


def _code(text: str) -> str:
    """``text`` without C++ comments (a commented-out definition is not one)."""
    return re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.S)


def parse_signature(text: str) -> list[tuple[str, str]]:
    """``(type, name)`` of each parameter of the definition of ``top_k_per_row_decode`` in ``text``."""
    m = _DEF.search(_code(text))
    if m is None:
        raise VllmSourceError(f"no definition of {OP}(...) {{ in this file")
    params = []
    for raw in m.group(1).split(","):
        p = _PARAM.match(" ".join(raw.split()))
        if p is None:
            raise VllmSourceError(f"cannot read parameter {raw.strip()!r} of {OP}")
        typ = p["type"].replace(" &", "&").replace("& ", "&").strip().replace("at::Tensor", "torch::Tensor")
        params.append((typ, p["name"]))
    return params


def takes_top_k(params: list[tuple[str, str]]) -> bool:
    """True for the generation with a ``top_k`` argument, False for the one fixed at 2048; else an error."""
    types = tuple(t for t, _ in params)
    if types == _BASE:
        return False
    if types == _BASE + (_INT,):
        return True
    listed = ", ".join(f"{t} {n}" for t, n in params)
    raise VllmSourceError(f"{OP}({listed}) is neither known form (logits, next_n, seq_lens, indices, num_rows, "
                          f"stride0, stride1[, top_k]); this module cannot call it")


def find_kernel(csrc: Path) -> Path:
    """The ``.cu`` file under ``csrc`` that defines ``top_k_per_row_decode``."""
    if not csrc.is_dir():
        raise VllmSourceError(f"{csrc} is not a directory: --vllm-src must be the root of a vLLM checkout "
                              "(the folder holding csrc/)")
    candidates = [csrc.parent / f for f in KNOWN_FILES] + sorted(csrc.rglob("*.cu"))
    for path in dict.fromkeys(candidates):
        if path.is_file() and OP in (text := path.read_text(errors="replace")) and _DEF.search(_code(text)):
            return path
    raise VllmSourceError(f"no .cu file under {csrc} defines {OP}")


def local_includes(path: Path, csrc: Path) -> list[Path]:
    """Every quoted include reached from ``path`` (resolved beside the including file, then in ``csrc``);
    an error naming each one that is missing. Angle-bracket includes are torch's, CUDA's and CUB's."""
    seen, todo, missing = {}, [path], []
    while todo:
        cur = todo.pop()
        for name in _INCLUDE.findall(cur.read_text(errors="replace")):
            hit = next((d / name for d in (cur.parent, csrc) if (d / name).is_file()), None)
            if hit is None:
                missing.append(f"{name} (included by {cur.relative_to(csrc.parent)})")
            elif hit.resolve() not in seen:
                seen[hit.resolve()] = hit
                todo.append(hit)
    if missing:
        raise VllmSourceError(f"headers missing from {csrc}: {', '.join(sorted(set(missing)))}")
    return list(seen.values())


def binding_source(namespace: str, with_top_k: bool) -> str:
    """C++ that declares the user's function and registers it as ``torch.ops.<namespace>.top_k_per_row_decode``."""
    top_k = ", int64_t top_k" if with_top_k else ""
    schema_top_k = ", int top_k" if with_top_k else ""
    return f"""// Written by parity.backends.vllm_topk_ext: the kernel is compiled from the user's vLLM tree;
// this file only gives it a schema under a namespace of the parity suite.
#include <torch/library.h>

void {OP}(const at::Tensor& logits, int64_t next_n, const at::Tensor& seq_lens, at::Tensor& indices,
          int64_t num_rows, int64_t stride0, int64_t stride1{top_k});

TORCH_LIBRARY({namespace}, m) {{
  m.def("{OP}(Tensor logits, int next_n, Tensor seq_lens, Tensor! indices, int num_rows, int stride0, "
        "int stride1{schema_top_k}) -> ()");
  m.impl("{OP}", c10::DispatchKey::CUDA, TORCH_FN({OP}));
}}
"""


@dataclass
class BuildPlan:
    src: Path
    kernel: Path
    headers: list[Path]
    params: list[tuple[str, str]]
    with_top_k: bool
    namespace: str


def plan(vllm_src: str | os.PathLike) -> BuildPlan:
    """Everything the build needs from ``vllm_src``, checked without compiling."""
    src = source_tree(vllm_src)
    kernel = find_kernel(src / "csrc")
    headers = local_includes(kernel, src / "csrc")
    params = parse_signature(kernel.read_text(errors="replace"))
    digest = hashlib.sha256()
    for f in [kernel, *sorted(headers)]:
        digest.update(f.read_bytes())
    return BuildPlan(src, kernel, headers, params, takes_top_k(params), f"parity_vllm_topk_{digest.hexdigest()[:12]}")


def arity(fn) -> int | None:
    """Number of arguments of a torch op (its schema) or a Python function; None when unknown."""
    schema = getattr(getattr(fn, "default", None), "_schema", None)
    if schema is not None:
        return len(schema.arguments)
    try:
        return len(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return None


def decode_topk(op, logits: torch.Tensor, context_lens: torch.Tensor, next_n: int, k: int,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """int32 ``(rows, k)`` indices chosen by a ``top_k_per_row_decode`` op, read through ``logits``' own
    strides; works with both generations (an op without ``top_k`` selects 2048 only). ``out``: the
    ``(rows, k)`` int32 buffer the op writes (a guarded one, parity.judge.topk.guarded_indices); default a
    fresh one prefilled with -1."""
    if logits.dim() != 2 or logits.dtype != torch.float32:
        raise ValueError(f"logits must be float32 (rows, cols), got {logits.dtype} {tuple(logits.shape)}")
    rows = logits.shape[0]
    if rows != context_lens.numel() * next_n:
        raise ValueError(f"logits has {rows} rows; context_lens ({context_lens.numel()}) x next_n ({next_n}) "
                         f"gives {context_lens.numel() * next_n}")
    if out is None:
        out = torch.full((rows, k), -1, dtype=torch.int32, device=logits.device)
    elif out.dtype != torch.int32 or tuple(out.shape) != (rows, k) or out.device != logits.device \
            or out.stride() != (k, 1):
        raise ValueError(f"out must be a contiguous int32 ({rows}, {k}) tensor on {logits.device}, got "
                         f"{out.dtype} {tuple(out.shape)} strides {out.stride()} on {out.device}")
    seq_lens = context_lens.to(device=logits.device, dtype=torch.int32).contiguous()
    args = [logits, next_n, seq_lens, out, rows, logits.stride(0), logits.stride(1)]
    if arity(op) == len(args):
        if k != OLD_TOPK:
            raise ValueError(f"this vLLM build's {OP} selects {OLD_TOPK} only; asked for k={k}")
        op(*args)
    else:
        op(*args, k)
    return out


class SourceTopk:
    """The top-k consumer under test, built from a vLLM source tree; same contract as
    ``VllmBackend.topk_decode``."""

    name = "vllm-src"

    def __init__(self, build: BuildPlan, ops):
        self.build, self.ops = build, ops

    def topk_decode(self, logits: torch.Tensor, context_lens: torch.Tensor, next_n: int, k: int) -> torch.Tensor:
        return decode_topk(self.ops.top_k_per_row_decode, logits, context_lens, next_n, k)

    def describe(self) -> dict:
        b = self.build
        return {"name": self.name, "source_tree": str(b.src), "kernel": str(b.kernel.relative_to(b.src)),
                "headers": [str(h.relative_to(b.src)) for h in b.headers], "takes_top_k": b.with_top_k,
                "op": f"torch.ops.{b.namespace}.{OP}"}


def load(vllm_src: str | os.PathLike, build_dir: str | os.PathLike | None = None, verbose: bool = False) -> SourceTopk:
    """Compile the tree's kernel file and our binding (once per tree content: the namespace is a hash of the
    sources) and return the consumer. Needs a CUDA build of torch and nvcc; raises with the reason otherwise."""
    if torch.version.cuda is None:
        raise RuntimeError(f"building {OP} needs a CUDA build of torch (this one is {torch.__version__})")
    p = plan(vllm_src)
    if not hasattr(torch.ops, p.namespace) or not hasattr(getattr(torch.ops, p.namespace), OP):
        from torch.utils.cpp_extension import load as load_extension

        root = os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions"
        out = Path(build_dir) if build_dir else Path(root) / p.namespace
        out.mkdir(parents=True, exist_ok=True)
        binding = out / "binding.cpp"
        text = binding_source(p.namespace, p.with_top_k)
        if not binding.is_file() or binding.read_text() != text:
            binding.write_text(text)
        load_extension(name=p.namespace, sources=[str(binding), str(p.kernel)],
                       extra_include_paths=[str(p.src / "csrc")], extra_cuda_cflags=NVCC_FLAGS,
                       extra_cflags=["-O3"], build_directory=str(out), is_python_module=False, verbose=verbose)
    return SourceTopk(p, getattr(torch.ops, p.namespace))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m parity.backends.vllm_topk_ext", description=__doc__.splitlines()[0])
    ap.add_argument("--vllm-src", default=None, help=f"root of a vLLM checkout (default ${ENV})")
    ap.add_argument("--plan", action="store_true", help="only check the tree (no compiler, no GPU needed)")
    ap.add_argument("--build-dir", default=None, help="default $TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions")
    args = ap.parse_args(argv)
    src = source_tree(args.vllm_src)
    if src is None:
        print(f"error: give --vllm-src DIR or set ${ENV}", file=sys.stderr)
        return 2
    try:
        if args.plan:
            p = plan(src)
            print(json.dumps({"kernel": str(p.kernel), "headers": [str(h) for h in p.headers],
                              "params": [f"{t} {n}" for t, n in p.params], "takes_top_k": p.with_top_k,
                              "namespace": p.namespace}, indent=1))
            return 0
        t0 = time.perf_counter()
        consumer = load(src, args.build_dir, verbose=True)
    except (VllmSourceError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({**consumer.describe(), "build_s": round(time.perf_counter() - t0, 1)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
