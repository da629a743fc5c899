"""A program rollbackd runs (pg_restore, pg_dump, git, a migration) dies with rollbackd, even
when rollbackd is killed with SIGKILL and runs it from a worker thread as the daemon does."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import psutil
import pytest

from tests.harness.processes import Proc
from tests.harness.servers import wait_for

pytestmark = pytest.mark.e2e

RUNNER = r"""
import sys, threading
from daemon.proc import run_process

def run():
    run_process(["sleep", "300"], env={"PATH": "/usr/bin:/bin"}, timeout=600)

if sys.argv[1] == "thread":
    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
else:
    run()
"""


def _sleeper(parent: int) -> psutil.Process | None:
    children = psutil.Process(parent).children()
    return children[0] if children and children[0].name() == "sleep" else None


@pytest.mark.parametrize("where", ["main", "thread"])
def test_a_child_dies_when_rollbackd_is_killed(tmp_path: Path, where: str) -> None:
    proc = Proc([sys.executable, "-c", RUNNER, where])
    try:
        wait_for(lambda: _sleeper(proc.pid), 20, what=f"the child ({proc.output()[-500:]})")
        child = _sleeper(proc.pid)
        assert child is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.popen.wait(10)
    finally:
        proc.close()

    def gone() -> bool:
        try:
            return child.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    try:
        wait_for(gone, 10, what=f"sleep (pid {child.pid}) to die with its parent")
    finally:
        if not gone():
            child.kill()  # the test's own grandchild, by its pid
