"""One Alertmanager notification of 10,000 alerts (under the 1 MiB body limit) against a real
`rollbackd run`: accepted, journaled, ingested without stalling the main loop, and a restart
with those events journaled becomes ready."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.api import Rollbackd, webhook
from tests.harness.processes import start_daemon

pytestmark = pytest.mark.e2e

ALERTS = 10_000
STALL = 5.0
"""A cycle this long means ingestion is not linear (it took 70 s before the fix)."""


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Rollbackd]:
    started = Rollbackd(tmp_path)
    yield started
    started.close()


def cycle_durations(output: str) -> list[float]:
    durations = []
    for raw in output.splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if line.get("event") == "cycle":
            durations.append(float(line["duration"]))
    return durations


def test_ten_thousand_alerts_in_one_webhook_do_not_stall_the_loop(daemon: Rollbackd) -> None:
    # As small as Alertmanager's alerts get, so that 10,000 fit under the body limit.
    alerts = [{"status": "firing", "labels": {"alertname": "HighLatency", "i": str(i)}}
              for i in range(ALERTS)]
    body = json.dumps(webhook(*alerts)).encode()
    assert len(body) < 1024 * 1024
    before = len(cycle_durations(daemon.proc.output()))
    response = daemon.call("POST", "/api/v1/alertmanager", content=body,
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": ALERTS}
    deadline = time.monotonic() + 60
    while daemon.metric("rollbackd_signal", signal="alert.HighLatency") != ALERTS:
        assert time.monotonic() < deadline, "the alerts never reached the engine"
        time.sleep(0.2)
    after = cycle_durations(daemon.proc.output())[before:]
    assert after and max(after) < STALL, after

    daemon.proc.close()
    restarted = start_daemon(daemon.config)  # waits for /readyz
    try:
        assert restarted.running()
    finally:
        restarted.close()
