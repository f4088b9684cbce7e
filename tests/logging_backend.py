"""A backend file for runs in another process (the CLI's children, pytest subprocesses): the torch
reference that appends one line to a log at each call of ``run`` (and of ``precompile`` if asked), so a
test sees from outside which process did what, in which order."""
import textwrap
from pathlib import Path


def write_logging_backend(path: Path, log: Path, run_line: str, precompile_line: str | None = None) -> Path:
    """``run_line``/``precompile_line``: f-string bodies over ``path``, ``inputs``, ``os`` and ``torch``."""
    hook = "" if precompile_line is None else f'''
            def precompile(self, path, inputs, out):
                open({str(log)!r}, "a").write(f"{precompile_line}\\n")
    '''
    path.write_text(textwrap.dedent(f'''
        import os
        import torch
        from parity.backends.torch_ref import TorchBackend

        class Logged(TorchBackend):
            {hook.strip()}

            def run(self, path, inputs, out):
                open({str(log)!r}, "a").write(f"{run_line}\\n")
                return super().run(path, inputs, out)

        def make_backend():
            return Logged()
    '''))
    return path
