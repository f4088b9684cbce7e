"""Calling a build's own wrapper, with its kernel launches watched.

Every kernel object the wrapper module names is replaced by a :class:`Watched` proxy that records
each launch (grid, constexprs, the line of the wrapper that launched it, what the launch returned)
and, in a dry run, launches nothing. Two narrow adaptations, each recorded for ``describe()``:

* a wrapper that fails *after* its kernel ran, on its own line, only because it reads an attribute
  of the launch result and the launch returned None (what Triton returns under TRITON_INTERPRET=1,
  and what a dry run returns), is taken as having completed;
* launch options that only Triton's AMD backend knows (``waves_per_eu``) are dropped when compiling
  for another target, where Triton would reject the launch with "specified but unrecognised".
"""
from __future__ import annotations

import ast
import inspect
import linecache
import re
import sys
import textwrap
import types
from dataclasses import dataclass, field

AMD_ONLY_OPTIONS = ("waves_per_eu", "matrix_instr_nonkdim", "kpack")


@dataclass
class LaunchLog:
    dry: bool = False
    drop_amd_options: bool = False
    launches: list[dict] = field(default_factory=list)
    dropped: dict[str, object] = field(default_factory=dict)  # option -> last value dropped


class Watched:
    """Stands in for one kernel object of the wrapper module (see module docstring)."""

    def __init__(self, name: str, kernel, log: LaunchLog):
        self.name, self.kernel, self.log = name, kernel, log

    def __getattr__(self, attr):  # .fn, .arg_names ... of the real kernel
        return getattr(self.kernel, attr)

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            caller = sys._getframe(1)
            record = {"kernel": self.name, "grid": tuple(grid) if not callable(grid) else "callable",
                      "constexprs": {k: v for k, v in kwargs.items() if isinstance(v, (int, bool, str))},
                      "wrapper_code": caller.f_code, "line": caller.f_lineno}
            self.log.launches.append(record)
            if self.log.dry:
                record["returned"] = None
                return None
            if self.log.drop_amd_options:
                for opt in AMD_ONLY_OPTIONS:
                    if opt in kwargs:
                        self.log.dropped[opt] = kwargs.pop(opt)
            result = self.kernel[grid](*args, **kwargs)
            record["returned"] = result
            return result

        return launch


def is_kernel(name: str, value) -> bool:
    return (name.startswith("_") and "paged_mqa_logits" in name and hasattr(value, "__getitem__")
            and not isinstance(value, (type, types.ModuleType, dict, list, tuple, str)))


def watch(module: types.ModuleType, log: LaunchLog) -> list[str]:
    """Replace the kernel objects ``module`` names by watched proxies; the names replaced."""
    names = []
    for name, value in list(vars(module).items()):
        if is_kernel(name, value) and not isinstance(value, Watched):
            setattr(module, name, Watched(name, value, log))
            names.append(name)
    return names


def _launch_targets(fn, line: int) -> set[str]:
    """Names the wrapper binds to the result of its launch ``K[grid](...)`` spanning source ``line``."""
    try:
        lines, first = inspect.getsourcelines(fn)
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except (OSError, TypeError, SyntaxError):
        return set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) \
                and isinstance(node.value.func, ast.Subscript) \
                and node.lineno + first - 1 <= line <= node.end_lineno + first - 1:
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def failed_after_launch(exc: BaseException, fn, log: LaunchLog, start: int) -> dict | None:
    """When ``exc`` is the narrow case of the module docstring, what happened (for the report); else None.

    All must hold: the error is the one Python raises for reading from None (AttributeError /
    TypeError naming 'NoneType'); it is raised on the wrapper's own line, not in code it called;
    that line comes after a launch the wrapper made in this call, the launch returned None, and the
    line reads the name the wrapper bound to that launch's result."""
    if not isinstance(exc, (AttributeError, TypeError)) or "NoneType" not in str(exc):
        return None
    code = getattr(fn, "__code__", None)
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code is not code:
        tb = tb.tb_next
    if tb is None or tb.tb_next is not None:
        return None
    ours = [r for r in log.launches[start:] if r["wrapper_code"] is code]
    if not ours or ours[-1]["returned"] is not None or tb.tb_lineno <= ours[-1]["line"]:
        return None
    source = linecache.getline(code.co_filename, tb.tb_lineno).strip()
    targets = _launch_targets(fn, ours[-1]["line"])
    if not any(re.search(rf"\b{re.escape(name)}\b", source) for name in targets):
        return None
    return {"wrapper": code.co_name, "line": tb.tb_lineno, "source": source,
            "error": f"{type(exc).__name__}: {exc}", "after_kernel": ours[-1]["kernel"]}


def call(fn, args: tuple, kwargs: dict, log: LaunchLog) -> dict | None:
    """Run the wrapper; returns the record of a tolerated after-launch failure, or None."""
    start = len(log.launches)
    try:
        fn(*args, **kwargs)
    except (AttributeError, TypeError) as exc:
        tolerated = failed_after_launch(exc, fn, log, start)
        if tolerated is None:
            raise
        return tolerated
    return None
