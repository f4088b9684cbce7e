"""Running the matrix under xdist in a child pytest, for the tests of scaling out and of start-up."""
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from parity.run import devices

CHECKOUT = Path(__file__).resolve().parent.parent


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_ADDOPTS", devices.FAKE_ENV)}
    return {**env, **extra}


def plugin_args() -> list[str]:
    """``-p parity.pytest_plugin`` where the package is on PYTHONPATH but not installed (no entry point)."""
    from importlib.metadata import entry_points

    return [] if any(e.value == "parity.pytest_plugin" for e in entry_points(group="pytest11")) \
        else ["-p", "parity.pytest_plugin"]


def cells_by_worker(tmp_path, env, *args):
    xml = tmp_path / "cells.xml"
    quiet = ["-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:benchmark", "-p", "no:anyio"]  # startup
    proc = subprocess.run([sys.executable, "-m", "pytest", *quiet, *plugin_args(), "-q", "-n", "2", "-m", "parity",
                           "--device", "cuda", "--junitxml", str(xml), "-o", "junit_family=xunit1", *args],
                          cwd=CHECKOUT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    cells = []
    for case in ET.parse(xml).iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        if case.find("skipped") is None:
            cells.append({"id": case.get("name"), **props})
    return cells
