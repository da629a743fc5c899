"""The HTTP API of `rollbackd run`: Alertmanager's webhook (through a real Alertmanager), the
bearer tokens, body limits, validation, and the operator's endpoints against the journal."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from daemon.journal import Journal
from tests.harness.alertmanager_server import running_alertmanager
from tests.harness.api import LABELS, Rollbackd, alert, new_token, webhook, write_config
from tests.harness.processes import start_daemon
from tests.harness.servers import require_binary, wait_for

pytestmark = pytest.mark.e2e

FIRING = {"scenario": "high_latency", "severity": "medium"}


@pytest.fixture
def rollbackd(tmp_path: Path) -> Iterator[Callable[..., Rollbackd]]:
    started: list[Rollbackd] = []

    def start(api: str | None = None) -> Rollbackd:
        started.append(Rollbackd(tmp_path, api))
        return started[-1]

    yield start
    for daemon in started:
        daemon.close()


def alert_events(journal: Journal) -> list[dict[str, Any]]:
    return [e.payload for e in journal.events_after(0) if e.payload["type"] == "alert"]


def open_incident(daemon: Rollbackd) -> None:
    posted = daemon.call("POST", "/api/v1/alertmanager", json=webhook(alert()))
    assert posted.status_code == 200, posted.text
    wait_for(lambda: daemon.metric("rollbackd_incident_open", severity="medium") == 1, 10,
             what="an incident opened by the alert")


def test_an_alert_raised_in_alertmanager_fires_the_rule_and_its_resolution_clears_it(
    rollbackd: Callable[..., Rollbackd],
) -> None:
    daemon = rollbackd()
    with running_alertmanager(f"{daemon.url}/api/v1/alertmanager", daemon.token_file) as am:
        assert daemon.metric("rollbackd_rule_firing", **FIRING) == 0
        am.post_alert(LABELS)
        wait_for(lambda: daemon.metric("rollbackd_alertmanager_alerts_received_total",
                                       status="firing") == 1, 15,
                 what=f"Alertmanager's notification ({am.log_tail()})")
        wait_for(lambda: daemon.metric("rollbackd_rule_firing", **FIRING) == 1, 5,
                 what="high_latency firing")
        [event] = alert_events(daemon.journal)
        assert event["status"] == "firing" and event["labels"] == LABELS
        assert event["fingerprint"] and event["startsAt"].startswith("20")

        am.post_alert(LABELS, resolved=True)
        wait_for(lambda: daemon.metric("rollbackd_alertmanager_alerts_received_total",
                                       status="resolved") == 1, 15,
                 what=f"the resolved notification ({am.log_tail()})")
        wait_for(lambda: daemon.metric("rollbackd_rule_firing", **FIRING) == 0, 5,
                 what="high_latency to clear")
        assert daemon.metric("rollbackd_api_requests_rejected_total", reason="unauthorized") == 0


def test_a_missing_or_wrong_token_is_refused_with_401_and_counted(
    rollbackd: Callable[..., Rollbackd],
) -> None:
    daemon = rollbackd()
    refused = [
        daemon.call("POST", "/api/v1/alertmanager", token=None, json=webhook(alert())),
        daemon.call("POST", "/api/v1/alertmanager", token=new_token(), json=webhook(alert())),
        daemon.call("POST", "/api/v1/alertmanager", token=daemon.token[:-1],
                    json=webhook(alert())),
        daemon.call("GET", "/api/v1/status", token=None,
                    headers={"Authorization": f"Basic {daemon.token}"}),
    ]
    for response in refused:
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "Bearer"
        assert "bearer token" in response.json()["error"]
    assert daemon.metric("rollbackd_api_requests_rejected_total", reason="unauthorized") == 4
    assert daemon.metric("rollbackd_alertmanager_alerts_received_total", status="firing") == 0
    assert alert_events(daemon.journal) == []
    accepted = daemon.call("POST", "/api/v1/alertmanager", json=webhook(alert()))
    assert accepted.status_code == 200 and accepted.json() == {"accepted": 1}


def test_token_files_are_reread_on_sighup_and_a_broken_one_keeps_the_tokens_in_force(
    rollbackd: Callable[..., Rollbackd], tmp_path: Path,
) -> None:
    second_file, second = tmp_path / "next.token", new_token()
    second_file.write_text(second)
    daemon = rollbackd(f'[api]\ntoken_files = ["{tmp_path / "api.token"}", "{second_file}"]\n')
    assert daemon.call("GET", "/api/v1/status").status_code == 200
    assert daemon.call("GET", "/api/v1/status", token=second).status_code == 200

    rotated = new_token()
    second_file.write_text(rotated + "\n")
    daemon.proc.signal(signal.SIGHUP)
    wait_for(lambda: daemon.call("GET", "/api/v1/status", token=rotated).status_code == 200, 5,
             what="the rotated token to be accepted")
    assert daemon.call("GET", "/api/v1/status", token=second).status_code == 401

    second_file.write_text("")
    daemon.proc.signal(signal.SIGHUP)
    wait_for(lambda: "reload rejected" in daemon.proc.output(), 5, what="the rejected reload")
    assert f"token file {second_file} is empty" in daemon.proc.output()
    assert daemon.call("GET", "/api/v1/status", token=rotated).status_code == 200
    assert daemon.call("GET", "/api/v1/status").status_code == 200


def test_an_empty_token_file_stops_the_daemon_at_start_with_exit_2_naming_the_file(
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "api.token"
    token_file.write_text("\n")
    config = write_config(tmp_path, f'[api]\ntoken_files = ["{token_file}"]\n')
    proc = start_daemon(config, ready=False)
    try:
        assert proc.popen.wait(20) == 2
        output = proc.output()
        assert "api.token_files[0]" in output and str(token_file) in output, output
    finally:
        proc.close()


def test_without_token_files_the_api_is_disabled_and_the_open_endpoints_stay_open(
    rollbackd: Callable[..., Rollbackd],
) -> None:
    daemon = rollbackd(api="")
    for method, path in (("POST", "/api/v1/alertmanager"), ("GET", "/api/v1/status"),
                         ("POST", "/api/v1/pause")):
        response = daemon.call(method, path, json=webhook(alert()))
        assert response.status_code == 403, response.text
        assert response.text.count("\n") == 0
        assert "disabled" in response.json()["error"]
        assert "api.token_files" in response.json()["error"]
    assert daemon.metric("rollbackd_api_requests_rejected_total", reason="disabled") == 3
    for path in ("/", "/metrics", "/healthz", "/readyz"):
        assert httpx.get(f"{daemon.url}{path}", timeout=5, trust_env=False).status_code == 200

    promtool = require_binary("promtool", "prometheus")
    exposition = httpx.get(f"{daemon.url}/metrics", timeout=5, trust_env=False).text
    assert 'rollbackd_alertmanager_alerts_received_total{status="resolved"} 0.0' in exposition
    assert 'rollbackd_api_requests_rejected_total{reason="too_large"} 0.0' in exposition
    checked = subprocess.run([promtool, "check", "metrics"], input=exposition,
                             capture_output=True, text=True, timeout=30, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_body_over_max_body_is_refused_with_413_with_or_without_content_length(
    rollbackd: Callable[..., Rollbackd], tmp_path: Path,
) -> None:
    daemon = rollbackd(f'[api]\ntoken_files = ["{tmp_path / "api.token"}"]\nmax_body = "2KiB"\n')
    big = json.dumps(webhook(*[alert(alertname="HighLatency", n=str(i)) for i in range(30)]))
    assert len(big) > 2048
    declared = daemon.call("POST", "/api/v1/alertmanager", content=big.encode(),
                           headers={"Content-Type": "application/json"})
    assert declared.status_code == 413, declared.text
    assert "api.max_body" in declared.json()["error"]

    def chunks() -> Iterator[bytes]:
        data = big.encode()
        for start in range(0, len(data), 512):
            yield data[start:start + 512]

    streamed = daemon.call("POST", "/api/v1/alertmanager", content=chunks())
    assert streamed.status_code == 413, streamed.text
    assert daemon.metric("rollbackd_api_requests_rejected_total", reason="too_large") == 2
    assert alert_events(daemon.journal) == []
    small = daemon.call("POST", "/api/v1/alertmanager", json=webhook(alert()))
    assert small.status_code == 200, small.text


def test_malformed_webhooks_are_400_naming_the_field_and_unknown_keys_are_ignored(
    rollbackd: Callable[..., Rollbackd],
) -> None:
    daemon = rollbackd()
    cases: list[tuple[bytes | dict[str, Any], str]] = [
        ({**webhook(alert()), "version": "3"}, "version: "),
        (webhook(alert(), alerts="HighLatency"), "alerts: "),
        (webhook(alert(alertname="HighLatency", severity=5)), "alerts[0].labels.severity: "),
        (webhook(alert(severity="warning")), "alerts[0].labels: alertname is missing"),
        (webhook({**alert(), "status": "pending"}), "alerts[0].status: "),
        ({"alerts": []}, "version: required key is missing"),
        (b'{"version": "4", "alerts": [', "body is not JSON"),
    ]
    for body, message in cases:
        kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
        response = daemon.call("POST", "/api/v1/alertmanager", **kwargs)
        assert response.status_code == 400, (body, response.text)
        error = response.json()["error"]
        assert message in error and "\n" not in error, (message, error)
    assert daemon.metric("rollbackd_api_requests_rejected_total", reason="invalid") == len(cases)
    assert alert_events(daemon.journal) == []

    newer = webhook(alert(), notification_reason="new", routeLabels={"team": "web"})
    newer["alerts"][0]["extraField"] = {"nested": True}
    accepted = daemon.call("POST", "/api/v1/alertmanager", json=newer)
    assert accepted.status_code == 200 and accepted.json() == {"accepted": 1}, accepted.text
    assert daemon.metric("rollbackd_alertmanager_alerts_received_total", status="firing") == 1


def test_a_journal_that_cannot_be_written_answers_503_so_alertmanager_retries(
    rollbackd: Callable[..., Rollbackd], tmp_path: Path,
) -> None:
    daemon = rollbackd()
    # Another process holding the write lock past the journal's busy timeout (5 s).
    blocker = sqlite3.connect(tmp_path / "state" / Journal.FILE, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        response = daemon.call("POST", "/api/v1/alertmanager", json=webhook(alert()))
        assert response.status_code == 503, response.text
        assert "journal" in response.json()["error"]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert daemon.metric("rollbackd_alertmanager_alerts_received_total", status="firing") == 0
    retried = daemon.call("POST", "/api/v1/alertmanager", json=webhook(alert()))
    assert retried.status_code == 200, retried.text
    assert len(alert_events(daemon.journal)) == 1


def test_status_and_incident_endpoints_return_what_the_journal_holds(
    rollbackd: Callable[..., Rollbackd],
) -> None:
    daemon = rollbackd()
    daemon.journal.begin_deploy("visionforge", "v7", time.time(), restore_point="rp-7",
                                verified=True)
    assert daemon.call("GET", "/api/v1/incidents").json() == []
    open_incident(daemon)

    status = daemon.call("GET", "/api/v1/status")
    assert status.status_code == 200
    assert status.json() == json.loads(daemon.cli("status", "--json").stdout)
    assert status.json()["deploy"]["version"] == "v7"
    assert status.json()["incident"]["scenario"] == "high_latency"

    listed = daemon.call("GET", "/api/v1/incidents").json()
    assert listed == json.loads(daemon.cli("incidents", "--json").stdout)
    assert [(i["incident"], i["scenario"], i["state"]) for i in listed] == [
        (1, "high_latency", "open")]

    shown = daemon.call("GET", "/api/v1/incidents/1").json()
    assert shown["incident"] == 1 and shown["state"] == "open"
    assert shown["decisions"] == [d.as_json() for d in daemon.journal.decisions(incident=1)]
    assert shown["decisions"][0]["kind"] == "open"
    missing = daemon.call("GET", "/api/v1/incidents/42")
    assert missing.status_code == 404 and "no incident 42" in missing.json()["error"]


def test_pause_resume_and_a_decision_through_the_api_act_like_the_cli(
    rollbackd: Callable[..., Rollbackd],
) -> None:
    daemon = rollbackd()
    assert daemon.metric("rollbackd_paused") == 0
    paused = daemon.call("POST", "/api/v1/pause", json={"reason": "database maintenance"})
    assert paused.status_code == 202, paused.text
    wait_for(lambda: daemon.metric("rollbackd_paused") == 1, 5, what="rollbackd_paused 1")
    assert "[PAUSED]" in daemon.cli("status").stdout
    event = daemon.journal.latest_event(("pause", "resume"))
    assert event is not None
    assert event.payload == {"type": "pause", "by": "api", "reason": "database maintenance"}

    assert daemon.call("POST", "/api/v1/resume").status_code == 202
    wait_for(lambda: daemon.metric("rollbackd_paused") == 0, 5, what="rollbackd_paused 0")

    open_incident(daemon)
    bad = daemon.call("POST", "/api/v1/incidents/1/decision",
                      json={"decision": "restore", "by": "alice"})
    assert bad.status_code == 400 and bad.json()["error"].startswith("decision: ")
    # rollback approves the incident's runbook; this incident's action runs none.
    no_runbook = daemon.call("POST", "/api/v1/incidents/1/decision",
                             json={"decision": "rollback", "by": "alice"})
    assert no_runbook.status_code == 409 and "runs no runbook" in no_runbook.json()["error"]
    anonymous = daemon.call("POST", "/api/v1/incidents/1/decision", json={"decision": "dismiss"})
    assert anonymous.status_code == 400 and anonymous.json()["error"].startswith("by: ")
    decided = daemon.call("POST", "/api/v1/incidents/1/decision",
                          json={"decision": "dismiss", "reason": "false alarm", "by": "alice"})
    assert decided.status_code == 202, decided.text
    wait_for(lambda: daemon.call("GET", "/api/v1/incidents/1").json()["state"] == "resolved", 5,
             what="incident 1 to resolve")
    last = daemon.journal.decisions(incident=1)[-1]
    assert last.kind == "resolve" and "alice decided: dismiss (false alarm)" in last.reason

    again = daemon.call("POST", "/api/v1/incidents/1/decision",
                        json={"decision": "fix_forward", "by": "alice"})
    assert again.status_code == 409 and "already resolved" in again.json()["error"]
    unknown = daemon.call("POST", "/api/v1/incidents/9/decision",
                          json={"decision": "dismiss", "by": "alice"})
    assert unknown.status_code == 404
    # The CLI refuses the same way, from the same code.
    assert "already resolved" in daemon.cli("decide", "1", "dismiss").stderr
