"""End to end: the example app on real PostgreSQL, watched by `rollbackd run` as a real process."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness.config import config_file
from tests.harness.processes import (
    Proc,
    daemon_url,
    migrate,
    scrape,
    set_faults,
    signal_value,
    start_app,
    start_daemon,
)
from tests.harness.servers import PgCluster, free_port, require_binary, wait_for

pytestmark = pytest.mark.e2e

INTERVAL = 1.0


def daemon_config(tmp_path: Path, app_url: str, dsn: str, *, extra: str = "",
                  port: int | None = None) -> Path:
    return config_file(
        tmp_path,
        daemon={"interval": f"{INTERVAL}s", "listen": f"127.0.0.1:{port or free_port()}",
                "mode": "dry-run", "log_format": "json"},
        app={"name": "visionforge"},
        database={"dsn": dsn, "migrations": "knex",
                  "expected_tables": ["users", "images", "audit_log"]},
        extra=f'[[probes.http]]\nname = "health"\nurl = "{app_url}/health"\nwindow = "3s"\n'
              f"{extra}")


@pytest.fixture
def watched_app(pg_private: PgCluster, tmp_path: Path) -> Iterator[tuple[PgCluster, str, str]]:
    dsn = pg_private.create_database("visionforge")
    result = migrate(dsn)
    assert result.returncode == 0, result.stderr
    app, url = start_app(dsn)
    yield pg_private, dsn, url
    app.close()


@pytest.fixture
def daemon_proc() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.close()


def test_a_failing_app_shows_on_metrics_within_two_intervals(
    watched_app: tuple[PgCluster, str, str], tmp_path: Path, daemon_proc: list[Proc]
) -> None:
    _, dsn, app_url = watched_app
    config = daemon_config(tmp_path, app_url, dsn)
    daemon_proc.append(start_daemon(config))
    url = daemon_url(config)
    wait_for(lambda: signal_value(url, "http.up") == 1, 5, what="http.up = 1")
    assert signal_value(url, "db.up") == 1
    assert signal_value(url, "migration.failed") == 0
    assert signal_value(url, "http.error_ratio") == 0

    set_faults(app_url, error_ratio=1.0)
    told = time.monotonic()
    wait_for(lambda: signal_value(url, "http.up") == 0, 2 * INTERVAL + 1, what="http.up = 0")
    ratio = signal_value(url, "http.error_ratio")
    assert ratio is not None and ratio > 0
    assert time.monotonic() - told <= 2 * INTERVAL + 1
    series = scrape(url)
    assert series[("rollbackd_probe_up", (("probe", "http.health"),))] == 1


def test_a_stopped_database_reads_db_up_0_and_the_daemon_keeps_running(
    watched_app: tuple[PgCluster, str, str], tmp_path: Path, daemon_proc: list[Proc]
) -> None:
    cluster, dsn, app_url = watched_app
    config = daemon_config(tmp_path, app_url, dsn)
    daemon = start_daemon(config)
    daemon_proc.append(daemon)
    url = daemon_url(config)
    wait_for(lambda: signal_value(url, "db.up") == 1, 5, what="db.up = 1")

    cluster.stop("immediate")
    wait_for(lambda: signal_value(url, "db.up") == 0, 2 * INTERVAL + 3, what="db.up = 0")
    assert signal_value(url, "db.latency_seconds") is None  # unknown, not a made-up value
    time.sleep(2 * INTERVAL)
    assert daemon.running(), daemon.output()[-2000:]
    assert httpx.get(f"{url}/healthz", timeout=2).status_code == 200

    cluster.start()
    wait_for(lambda: signal_value(url, "db.up") == 1, 10, what="db.up = 1 after restart")


def test_sighup_reloads_and_an_invalid_config_keeps_the_old_one(
    watched_app: tuple[PgCluster, str, str], tmp_path: Path, daemon_proc: list[Proc]
) -> None:
    _, dsn, app_url = watched_app
    config = daemon_config(tmp_path, app_url, dsn)
    daemon = start_daemon(config)
    daemon_proc.append(daemon)
    url = daemon_url(config)
    probe = ("rollbackd_probe_up", (("probe", "http.stats"),))
    assert probe not in scrape(url)

    good = config.read_text() + f'\n[[probes.http]]\nname = "stats"\nurl = "{app_url}/api/stats"\n'
    config.write_text(good)
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: scrape(url).get(probe) == 1, 5, what="the new probe after SIGHUP")

    config.write_text(good.replace("interval =", "intervall ="))
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: "reload rejected" in daemon.output(), 5, what="the rejected reload logged")
    assert "daemon.intervall: unknown key" in daemon.output()
    assert daemon.running()
    reloads = scrape(url)
    assert reloads[("rollbackd_config_reloads_total", (("outcome", "failure"),))] == 1
    assert reloads[("rollbackd_config_reloads_total", (("outcome", "success"),))] == 1
    assert reloads.get(probe) == 1  # the old config, with the new probe, stays in force


def test_sigterm_stops_the_daemon_cleanly_within_10_seconds(
    watched_app: tuple[PgCluster, str, str], tmp_path: Path, daemon_proc: list[Proc]
) -> None:
    _, dsn, app_url = watched_app
    # A probe slower than the interval is in flight when SIGTERM arrives.
    set_faults(app_url, latency_ms=5000)
    config = daemon_config(tmp_path, app_url, dsn)
    daemon = start_daemon(config)
    daemon_proc.append(daemon)
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.popen.wait(10) == 0
    assert time.monotonic() - started < 10
    assert '"event": "stopped"' in daemon.output()


def test_a_port_already_in_use_is_a_one_line_error_with_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = daemon_config(tmp_path, "http://127.0.0.1:1", "dbname=x", port=port)
        daemon = start_daemon(config, ready=False)
        try:
            assert daemon.popen.wait(20) == 2
        finally:
            daemon.close()
    lines = daemon.output().strip().splitlines()
    assert len(lines) == 1 and "address already in use" in lines[0] and "daemon.listen" in lines[0]


def test_promtool_accepts_the_exposition(
    watched_app: tuple[PgCluster, str, str], tmp_path: Path, daemon_proc: list[Proc]
) -> None:
    promtool = require_binary("promtool", "prometheus")
    _, dsn, app_url = watched_app
    config = daemon_config(tmp_path, app_url, dsn, extra='[probes.system]\npaths = ["/"]\n')
    daemon_proc.append(start_daemon(config))
    url = daemon_url(config)
    text = httpx.get(f"{url}/metrics", timeout=5).text
    for name in ("rollbackd_build_info", "rollbackd_probe_up", "rollbackd_probe_duration_seconds",
                 "rollbackd_signal", "rollbackd_paused"):
        assert f"\n{name}" in text, name
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_the_daemon_and_the_daemon_queries_prometheus(
    watched_app: tuple[PgCluster, str, str], tmp_path: Path, daemon_proc: list[Proc]
) -> None:
    from tests.harness.prometheus_server import PrometheusServer

    _, dsn, app_url = watched_app
    port = free_port()
    prometheus = PrometheusServer(targets=[f"127.0.0.1:{port}"], scrape_interval="1s")
    # The daemon asks the same Prometheus whether Prometheus can scrape it: a fleet-style signal.
    extra = f"""
[[probes.prometheus]]
name = "scraped"
url = "{prometheus.url}"
query = 'max(up{{job="targets"}})'
signal = "fleet.rollbackd_up"
"""
    config = daemon_config(tmp_path, app_url, dsn, port=port, extra=extra)
    prometheus.start()
    try:
        daemon_proc.append(start_daemon(config))
        url = daemon_url(config)
        up = prometheus.wait_for_series('up{job="targets"} == 1', timeout=20)
        assert up[0]["metric"]["instance"] == f"127.0.0.1:{port}"
        stored = prometheus.wait_for_series('rollbackd_signal{signal="db.up"}', timeout=20)
        assert float(stored[0]["value"][1]) == 1
        wait_for(lambda: signal_value(url, "fleet.rollbackd_up") == 1, 10,
                 what="the prometheus probe's signal")
        assert scrape(url)[("rollbackd_probe_up", (("probe", "prometheus.scraped"),))] == 1
    finally:
        prometheus.stop()
