"""Named points where a test can stop rollbackd, to kill it (or disturb its world) exactly
there: ``ROLLBACKD_TEST_HOLD=swap:after_first_rename`` (several: comma-separated).

At a matching :func:`hold` the process writes ``rollbackd: test hold at <point> (pid N)`` on
stderr and waits: until the file named by ``ROLLBACKD_TEST_RELEASE`` exists when that is set,
else until it is killed. Without ``ROLLBACKD_TEST_HOLD`` a hold costs one environment lookup.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

HOLD_ENV = "ROLLBACKD_TEST_HOLD"
RELEASE_ENV = "ROLLBACKD_TEST_RELEASE"


def hold(point: str) -> None:
    wanted = os.environ.get(HOLD_ENV)
    if not wanted or point not in (p.strip() for p in wanted.split(",")):
        return
    release = os.environ.get(RELEASE_ENV)
    sys.stderr.write(f"rollbackd: test hold at {point} (pid {os.getpid()})\n")
    sys.stderr.flush()
    while release is None or not Path(release).exists():
        time.sleep(0.05)
