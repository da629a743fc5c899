"""The live page's data (/live.json) and the page itself, from a daemon built in process: the
incident's timeline in time order, each rule's signals with their threshold and the deploy,
restore points and the last drill, a bounded hour of history, and nothing secret in any of
it (the page is open without a token)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from daemon.config import load_config, load_policy
from daemon.db.backups import BackupInfo
from daemon.journal import Drill, Journal
from daemon.service.http import build_app
from daemon.service.live import HOUR, POINTS, SignalHistory, live_data, live_routes, thresholds
from daemon.service.loop import Daemon
from daemon.service.sd_notify import Notifier
from policies.policy import parse_policy
from tests.harness.config import config_file

PASSWORD = "Pw-SuperSecret-42"
TOKEN = "tok-live-page-secret-0123456789"
WEBHOOK = "https://hooks.slack.com/services/T000/B000/XyZsecretHook"

POLICY = """\
[[rule]]
scenario = "app_compromised"
when = "http.up == 0 or http.error_ratio > 0.25"
for = "0s"
severity = "high"
action = "planned_rollback"
timeline = "30m"

[[rule]]
scenario = "performance_degraded"
when = "http.latency_p95 > 1.5 * baseline(http.latency_p95)"
for = "5m"
severity = "medium"
action = "evaluate"
timeline = "60m"

[[rule]]
scenario = "slow_database"
when = "avg(db.latency_seconds, 5m) >= 0.5 and changed(migration.version)"
for = "1m"
severity = "low"
action = "fix_forward"
timeline = "next release"
"""


class Ctx:
    """A condition's context with a fixed baseline of 0.2 for every signal."""

    def value(self, signal: str) -> float | None:
        return None

    def window(self, signal: str, seconds: float) -> Sequence[float]:
        return ()

    def baseline(self, signal: str) -> float | None:
        return 0.2

    def changed(self, signal: str) -> bool | None:
        return None

    def age(self, signal: str) -> float | None:
        return None


def lines(condition: str) -> list[tuple[str, str, float]]:
    policy = parse_policy(f'[[rule]]\nscenario = "r"\nwhen = "{condition}"\nseverity = "low"\n'
                          'action = "evaluate"\ntimeline = "60m"\n', "p.toml")
    return [(t.subject, t.op, t.value) for t in thresholds(policy.rules[0], Ctx())]


def test_a_rule_s_threshold_is_read_from_its_condition_where_it_names_a_number() -> None:
    assert lines("http.error_ratio > 0.25") == [("http.error_ratio", ">", 0.25)]
    assert lines("0.25 < http.error_ratio") == [("http.error_ratio", ">", 0.25)]
    assert lines("http.up == 0 or http.error_ratio > 0.25") == [
        ("http.up", "==", 0.0), ("http.error_ratio", ">", 0.25)]
    assert lines("http.latency_p95 > 1.5 * baseline(http.latency_p95)") == [
        ("http.latency_p95", ">", pytest.approx(0.3))]
    assert lines("avg(http.error_ratio, 5m) >= 0.1") == [("avg(http.error_ratio, 5m)", ">=", 0.1)]
    assert lines("quantile(0.9, http.latency_p95, 5m) > -1") == [
        ("quantile(0.9, http.latency_p95, 5m)", ">", -1.0)]


def test_a_condition_that_names_no_number_draws_no_threshold() -> None:
    assert lines("http.error_ratio > http.latency_p95") == []
    assert lines("http.error_ratio * 100 > 25") == []
    assert lines("changed(migration.version)") == []
    assert lines("age(http.up) > 60") == []


def test_the_signal_history_keeps_one_hour_in_at_most_one_point_per_slot() -> None:
    history = SignalHistory()
    start = 1_000_000.0
    for i in range(3 * 7200):  # three hours at a 500 ms interval
        history.record(start + i * 0.5, {"http.error_ratio": i % 7 / 10,
                                         "http.up": float("nan")})
    now = start + 3 * 3600
    points = history.points("http.error_ratio", now)
    assert 0 < len(points) <= POINTS + 1
    assert all(now - t <= HOUR for t, _ in points)
    assert points[-1][0] == now - 0.5  # the newest reading is always the last point
    assert {v for _, v in history.points("http.up", now)} == {None}  # NaN is a gap


def write_secrets(tmp_path: Path) -> str:
    (tmp_path / "policy.toml").write_text(POLICY)
    (tmp_path / "api.token").write_text(TOKEN + "\n")
    (tmp_path / "slack.url").write_text(WEBHOOK + "\n")
    return (f'[api]\ntoken_files = ["{tmp_path / "api.token"}"]\n\n'
            f'[paging.slack]\nwebhook_url_file = "{tmp_path / "slack.url"}"\n')


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    path = config_file(
        tmp_path, daemon={"mode": "dry-run", "policy": tmp_path / "policy.toml"},
        app={"name": "visionforge"},
        database={"dsn": f"postgresql://rollbackd:{PASSWORD}@127.0.0.1:1/visionforge"},
        extra=write_secrets(tmp_path))
    config = load_config(path)
    d = Daemon(path, config, load_policy(config, path),
               Journal.in_state_dir(config.daemon.state_dir), notifier=Notifier(None))
    yield d
    d.journal.close()


def open_an_incident_with_a_run_a_page_and_an_ack(d: Daemon, now: float) -> None:
    journal = d.journal
    journal.begin_deploy("visionforge", "v2", now - 600, restore_point="rp-1", verified=True)
    d._decide(now - 500, {"http.up": 1.0, "http.error_ratio": 0.0})
    d.live.record(now - 500, {"http.up": 1.0, "http.error_ratio": 0.0})
    d._decide(now - 300, {"http.up": 1.0, "http.error_ratio": 0.6})
    d.live.record(now - 300, {"http.up": 1.0, "http.error_ratio": 0.6})
    run = journal.begin_run("visionforge", incident=1, runbook="planned_rollback",
                            action="planned_rollback", scenario="app_compromised", by="alice",
                            t=now - 200, deadline=now + 1600, deploy=None,
                            restore_point="rp-1", plan=["stop_app", "restore_database"])
    step = journal.begin_step(run.id, 0, "stop_app", 1, now - 199)
    journal.end_step(step, "ok", "app stopped", f"output naming {PASSWORD}",
                     {"dsn": f"postgresql://u:{PASSWORD}@h/db"}, now - 197)
    journal.begin_step(run.id, 1, "restore_database", 1, now - 196)
    journal.add_page("visionforge", t=now - 250, incident=1, run=None, level=1,
                     template="emergency", summary="app_compromised on visionforge",
                     details={"url": WEBHOOK}, dedup_key="visionforge:1:L1",
                     recipient="dev-lead")
    journal.add_event(now - 100, {"type": "ack", "incident": 1, "by": "bob", "via": "cli",
                                  "comment": "looking"})
    d.live.data_safety(
        [BackupInfo("rp-1", "restore_point", "visionforge", now - 700, 1, 4096, True, True,
                    version="v1"),
         BackupInfo("nightly-1", "scheduled", "visionforge", now - 90000, None, 8192, None,
                    True)],
        Drill(1, now - 3000, "nightly-1", True, 12.5, {}))


def test_live_json_has_the_open_incident_s_timeline_in_time_order(daemon: Daemon) -> None:
    now = time.time()
    open_an_incident_with_a_run_a_page_and_an_ack(daemon, now)
    data = live_data(daemon, now)
    assert data["level"] == "incident"
    assert data["headline"].startswith("Incident 1 open: app_compromised (high)")
    incident = data["incident"]
    assert (incident["incident"], incident["state"]) == (1, "open")
    kinds = [e["kind"] for e in incident["timeline"]]
    # The decision's own page (the daemon's), then the emergency page journaled after it.
    assert kinds == ["decision", "page", "page", "run", "step", "step", "ack"]
    times = [e["t"] for e in incident["timeline"]]
    assert times == sorted(times)
    done, running = [e for e in incident["timeline"] if e["kind"] == "step"]
    assert (done["name"], done["outcome"], done["duration"]) == ("stop_app", "ok",
                                                                 pytest.approx(2.0))
    assert (running["name"], running["outcome"]) == ("restore_database", "running")
    page = next(e for e in incident["timeline"] if e.get("template") == "emergency")
    assert (page["level"], page["template"], page["recipient"], page["status"]) == (
        1, "emergency", "dev-lead", "pending")
    ack = incident["timeline"][-1]
    assert (ack["by"], ack["via"], ack["comment"]) == ("bob", "cli", "looking")


def test_live_json_charts_each_rule_signal_with_threshold_and_the_deploy(
        daemon: Daemon) -> None:
    now = time.time()
    open_an_incident_with_a_run_a_page_and_an_ack(daemon, now)
    data = live_data(daemon, now)
    signals = {s["name"]: s for s in data["signals"]}
    assert set(signals) == {"http.up", "http.error_ratio", "http.latency_p95",
                            "db.latency_seconds", "migration.version"}
    ratio = signals["http.error_ratio"]
    assert ratio["points"] == [[now - 500, 0.0], [now - 300, 0.6]]
    assert [(t["op"], t["value"], t["rule"]) for t in ratio["thresholds"]] == [
        (">", 0.25, "app_compromised")]
    assert signals["migration.version"]["thresholds"] == []
    assert data["deploy"]["version"] == "v2"
    assert data["deploy"]["started_at"] == pytest.approx(now - 600)
    assert [b["id"] for b in data["restore_points"]] == ["rp-1", "nightly-1"]
    assert data["restore_points"][0] | {"created_at": 0} == {
        "id": "rp-1", "kind": "restore_point", "created_at": 0, "state": "verified",
        "verified": True, "size": 4096, "version": "v1", "deploy": 1}
    assert data["drill"] == {"t": now - 3000, "ok": True, "duration": 12.5,
                             "backup": "nightly-1"}


def test_a_daemon_with_nothing_open_says_all_clear_and_has_no_incident(daemon: Daemon) -> None:
    daemon._status_line = "visionforge: app up; 1/1 probes ok"
    data = live_data(daemon, time.time())
    assert (data["headline"], data["level"], data["incident"]) == (
        "All clear: no incident", "ok", None)


async def test_the_page_and_its_data_are_open_strict_and_show_no_secret(daemon: Daemon) -> None:
    now = time.time()
    open_an_incident_with_a_run_a_page_and_an_ack(daemon, now)
    daemon._status_line = "visionforge: incident 1 open (high); <b>app</b> up"
    app = build_app(daemon, CollectorRegistry(), pages=live_routes(daemon))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://rollbackd") as client:
        page, data = await client.get("/"), await client.get("/live.json")
        script, style = await client.get("/live.js"), await client.get("/live.css")
    for response in (page, data, script, style):
        assert response.status_code == 200, response.text
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp
        assert "'unsafe-inline'" not in csp
        for secret in (PASSWORD, TOKEN, WEBHOOK, "hooks.slack.com", "XyZsecretHook"):
            assert secret not in response.text, (response.request.url, secret)
    assert "&lt;b&gt;app&lt;/b&gt; up" in page.text  # the status line, escaped
    assert '<script src="/live.js"' in page.text and "<script>" not in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing external
    assert "innerHTML" not in script.text and "fetch(\"/live.json\"" in script.text
    assert data.json()["incident"]["incident"] == 1
