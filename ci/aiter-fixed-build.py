#!/usr/bin/env python3
"""Make "a build where the kernel is changed" from the aiter build the user has, for comparing builds.

Copies the files the parity backend loads (the paged-MQA-logits wrapper and kernel files, found by
what they define, and the version) from an aiter build into DEST and applies a small fix to the
copy's Triton kernel source by text substitution; nothing of aiter is stored in this repository. Then::

    ci/compare-builds.sh installed DEST     # the installed build against the fixed copy

Fixes (repeatable ``--fix``); each must change at least one line of the build's kernels:
  store   bound every unmasked output store of the paged-MQA-logits kernels by ``max_model_len`` (one
          added line per store): the overshoot of a row's last chunk no longer lands in the next row.
  causal  use SPEC section 1's causal rule ``t <= context_len - next_n + i`` in the kernels' masks.

Known to apply to amd-aiter 0.1.7.post2.dev18 (both fixes) and ROCm/aiter main at e4048607 (store:
its stage1 kernels; causal: its ragged kernels, the paged ones already use the rule).

Usage: python ci/aiter-fixed-build.py DEST [--from DIR] [--fix store] [--fix causal]
(DIR defaults to $PARITY_AITER_PATH, else the installed aiter package; it is never imported.)
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from parity.backends.aiter.discovery import find_build, scan  # noqa: E402

# (what the build has, what the fixed copy gets); a fix must match at least once in the kernel files.
_STORE_FUSED = ("            logits,\n        )",
                "            logits,\n            mask=context_idx + tl.arange(0, ChunkK) < max_model_len,\n        )")
_STORE_STAGE1 = ("            o[:, None, :],\n        )",
                 "            o[:, None, :],\n"
                 "            mask=context_idx + tl.arange(0, ChunkK)[None, None, :] < max_model_len,\n        )")
_CAUSAL = ("<= context_length - pid_next_n", "<= context_length - next_n + pid_next_n")
FIXES = {"store": (_STORE_FUSED, _STORE_STAGE1), "causal": (_CAUSAL,)}


def make_fixed_build(src_root: str | Path, dest: str | Path, fixes=("store",)) -> Path:
    """Copy the backend's files of the aiter build at ``src_root`` into ``dest`` and apply ``fixes``."""
    src_root, dest = Path(src_root), Path(dest)
    unknown = [f for f in fixes if f not in FIXES]
    if unknown or not fixes:
        raise ValueError(f"fixes must be a non-empty subset of {sorted(FIXES)}, got {list(fixes)}")
    build = find_build(str(src_root))
    layout = scan(build)
    kernel_files = [p for p in layout.kernel_files if "_triton_kernels" in p.parts]
    if not kernel_files:
        raise FileNotFoundError(f"{src_root} holds no Triton paged-MQA-logits kernels under _triton_kernels/")
    texts = {p: p.read_text() for p in kernel_files}
    for fix in fixes:
        hits = 0
        for p, text in texts.items():
            for old, new in FIXES[fix]:
                hits += text.count(old)
                text = text.replace(old, new)
            texts[p] = text
        if not hits:
            raise ValueError(f"fix {fix!r}: none of its patterns was found in {[str(p) for p in kernel_files]}; "
                             "this build's kernels differ from the ones the fix was written for "
                             "(amd-aiter 0.1.7.post2.dev18, ROCm/aiter e4048607)")
    for p in sorted(set(layout.wrapper_files) | set(layout.kernel_files)):
        out = dest / p.relative_to(build.root)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, out)
    for p, text in texts.items():
        (dest / p.relative_to(build.root)).write_text(text)
    tag = "parity" + "".join(fixes) + "fix"
    for meta in build.root.glob("amd_aiter-*.dist-info/METADATA"):
        out = dest / meta.parent.name / "METADATA"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(re.sub(r"^Version: (.*)$", rf"Version: \1+{tag}", meta.read_text(), count=1, flags=re.M))
    if build.version and not list(build.root.glob("amd_aiter-*.dist-info/METADATA")):
        (dest / "aiter/_version.py").write_text(f"__version__ = {build.version + '+' + tag!r}\n")
    return dest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dest", help="directory to create the fixed build in (it gets aiter/ inside)")
    p.add_argument("--from", dest="src", help="aiter build to copy (a directory containing aiter/)")
    p.add_argument("--fix", action="append", choices=sorted(FIXES), help="default: store")
    args = p.parse_args(argv)
    root = make_fixed_build(find_build(args.src).root, args.dest, tuple(args.fix or ["store"]))
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
