"""Real processes for end-to-end tests: the example app and ``rollbackd run``.

Each process is started by the test and ended by its own pid, never by name. The example
app's processes are the demo's own (examples/apprun.py, one implementation).
"""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from examples.apprun import Proc, migrate, set_faults
from examples.apprun import start_app as _start_app
from tests.harness.cli import ROLLBACKD
from tests.harness.servers import wait_for

__all__ = ["Proc", "daemon_url", "migrate", "scrape", "set_faults", "signal_value",
           "start_app", "start_daemon"]


def start_app(dsn: str, port: int | None = None, pidfile: Path | None = None,
              version: str = "v1") -> tuple[Proc, str]:
    """The example app on a free loopback port; returns it and its base URL once it answers
    (the test fails, with the app's output, when it does not within 20 s)."""
    try:
        return _start_app(dsn, port, pidfile, version)
    except TimeoutError as exc:
        pytest.fail(str(exc))


def start_daemon(config: Path, env: dict[str, str] | None = None, ready: bool = True,
                 limits: list[str] | None = None) -> Proc:
    """``limits``: prlimit(1) options for the daemon, e.g. ``["--nofile=1024:1024"]``."""
    wrapper = ["prlimit", *limits, "--"] if limits else []
    proc = Proc([*wrapper, *ROLLBACKD, "run", "--config", str(config)], env=env)
    if ready:
        wait_until_ready(proc, config)
    return proc


def wait_until_ready(proc: Proc, config: Path) -> None:
    """Until the daemon started with ``config`` answers /readyz (several started at once are
    waited for one after the other: they get ready side by side)."""
    url = daemon_url(config)
    wait_for(lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200, 20,
             what=f"rollbackd to become ready ({proc.output()[-2000:]})")


def daemon_url(config: Path) -> str:
    import tomllib

    listen = tomllib.loads(config.read_text())["daemon"]["listen"]
    return f"http://{listen}"


Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Series:
    """The daemon's /metrics as {(name, sorted labels): value}."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    series: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return series


def signal_value(url: str, name: str) -> float | None:
    """``rollbackd_signal{signal=name}``; None when the series is NaN (unknown) or absent."""
    value = scrape(url).get(("rollbackd_signal", (("signal", name),)))
    return None if value is None or math.isnan(value) else value
