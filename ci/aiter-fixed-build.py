#!/usr/bin/env python3
"""Make "a build where the kernel is changed" from the aiter build the user has, for comparing builds.

Copies the files the parity backend loads (the paged-MQA-logits wrapper and Triton kernels, the
version metadata) from an aiter build into DEST and applies a small fix to the copy's kernel source
by text substitution; nothing of aiter is stored in this repository. Then::

    ci/compare-builds.sh installed DEST     # the installed build against the fixed copy

Fixes (repeatable ``--fix``):
  store   bound every output store of the paged-MQA-logits kernels by ``max_model_len`` (one added
          line per store): the overshoot of a row's last chunk no longer lands in the next row.
  causal  use SPEC section 1's causal rule ``t <= context_len - next_n + i`` in the kernels' masks.

Usage: python ci/aiter-fixed-build.py DEST [--from DIR] [--fix store] [--fix causal]
(DIR defaults to $PARITY_AITER_PATH, else the installed aiter package; it is never imported.)
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

KERNELS = "aiter/ops/triton/_triton_kernels/pa_mqa_logits.py"
COPIED = ("aiter/_version.py", "aiter/ops/triton/pa_mqa_logits.py", KERNELS,
          "aiter/ops/triton/gluon/pa_mqa_logits.py")

# (what the build has, what the fixed copy gets); each must occur at least once in the kernel file.
_STORE_FUSED = ("            logits,\n        )",
                "            logits,\n            mask=context_idx + tl.arange(0, ChunkK) < max_model_len,\n        )")
_STORE_STAGE1 = ("            o[:, None, :],\n        )",
                 "            o[:, None, :],\n"
                 "            mask=context_idx + tl.arange(0, ChunkK)[None, None, :] < max_model_len,\n        )")
_CAUSAL = ("<= context_length - pid_next_n", "<= context_length - next_n + pid_next_n")
FIXES = {"store": (_STORE_FUSED, _STORE_STAGE1), "causal": (_CAUSAL,)}


def source_root(given: str | None) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from parity.backends.aiter import find_build

    return find_build(given).root


def make_fixed_build(src_root: str | Path, dest: str | Path, fixes=("store",)) -> Path:
    """Copy the backend's files of the aiter build at ``src_root`` into ``dest`` and apply ``fixes``."""
    src_root, dest = Path(src_root), Path(dest)
    unknown = [f for f in fixes if f not in FIXES]
    if unknown or not fixes:
        raise ValueError(f"fixes must be a non-empty subset of {sorted(FIXES)}, got {list(fixes)}")
    if not (src_root / KERNELS).is_file():
        raise FileNotFoundError(f"{src_root} holds no {KERNELS}: not an aiter build with paged MQA logits")
    for rel in COPIED:
        if (src_root / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src_root / rel, dest / rel)
    tag = "parity" + "".join(fixes) + "fix"
    for meta in src_root.glob("amd_aiter-*.dist-info/METADATA"):
        out = dest / meta.parent.name / "METADATA"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(re.sub(r"^Version: (.*)$", rf"Version: \1+{tag}", meta.read_text(), count=1, flags=re.M))
    vfile = dest / "aiter/_version.py"
    if vfile.is_file():
        vfile.write_text(re.sub(r"""(__version__\s*=\s*['"])([^'"]+)""", rf"\g<1>\g<2>+{tag}", vfile.read_text()))
    kernel = dest / KERNELS
    text = kernel.read_text()
    for fix in fixes:
        for old, new in FIXES[fix]:
            if old not in text:
                raise ValueError(f"fix {fix!r}: {old.strip()!r} not found in {kernel}; this build's kernel differs "
                                 "from the one the fix was written for (amd-aiter 0.1.7.post2.dev18)")
            text = text.replace(old, new)
    kernel.write_text(text)
    return dest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dest", help="directory to create the fixed build in (it gets aiter/ inside)")
    p.add_argument("--from", dest="src", help="aiter build to copy (a directory containing aiter/)")
    p.add_argument("--fix", action="append", choices=sorted(FIXES), help="default: store")
    args = p.parse_args(argv)
    root = make_fixed_build(source_root(args.src), args.dest, tuple(args.fix or ["store"]))
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
