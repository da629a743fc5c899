"""The one way tests run the `rollbackd` command line as a child process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.harness.paths import ROOT

# `rollbackd` as the console script runs it, from the interpreter running the tests.
ROLLBACKD = [sys.executable, "-m", "daemon"]


def rollbackd(*args: str, config: Path | None = None, env: dict[str, str] | None = None,
              timeout: float = 90, cwd: Path | str = ROOT) -> subprocess.CompletedProcess[str]:
    """``rollbackd ARGS [--config CONFIG]`` to completion; its exit status is the caller's to
    check (never raised), its output is captured as text."""
    argv = [*ROLLBACKD, *args]
    if config is not None:
        argv += ["--config", str(config)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env=env or dict(os.environ), cwd=cwd, check=False)
