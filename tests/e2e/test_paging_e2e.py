"""Pages that arrive, escalate and are answered, with a real `rollbackd run`: through a real
Alertmanager first (which routes each level to its receiver and whose silences acknowledge),
to PagerDuty directly when Alertmanager is down, and delivered exactly once per dedup key
when the daemon is killed between journaling a page and recording it sent."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from daemon.durable import HOLD_ENV, RELEASE_ENV
from daemon.journal import Journal
from tests.harness.alertmanager_server import AlertmanagerServer, running_alertmanager_with
from tests.harness.api import POLICY, alert, new_token, webhook, write_config
from tests.harness.cli import ROLLBACKD, rollbackd
from tests.harness.config import config_file
from tests.harness.paging import StandIn, closed_port_url, smtp_server, stand_in
from tests.harness.processes import Proc, daemon_url, start_daemon
from tests.harness.servers import wait_for

pytestmark = pytest.mark.e2e


SHORT_CHAIN = """
[[escalation]]
who = "development lead"
after = "0s"
[[escalation]]
who = "technical director"
after = "2s"
[[escalation]]
who = "CTO"
after = "4s"
repeat = "2s"
"""


class Host:
    """A `rollbackd run` with the API on (one token) and the given [paging] section."""

    def __init__(self, tmp_path: Path, paging: str, policy: str = POLICY) -> None:
        self.token = new_token()
        token_file = tmp_path / "api.token"
        token_file.write_text(self.token + "\n")
        self.config = write_config(
            tmp_path, f'[api]\ntoken_files = ["{token_file}"]\n{paging}', policy)
        self.url = daemon_url(self.config)
        self.journal = Journal.in_state_dir(tmp_path / "state")
        self.daemon: Proc | None = None

    def start(self, env: dict[str, str] | None = None, ready: bool = True) -> Proc:
        self.daemon = start_daemon(self.config, env=env, ready=ready)
        return self.daemon

    def alert_fires(self) -> None:
        posted = httpx.post(f"{self.url}/api/v1/alertmanager", json=webhook(alert()),
                            headers={"Authorization": f"Bearer {self.token}"}, timeout=10,
                            trust_env=False)
        assert posted.status_code == 200, posted.text

    def output(self) -> str:
        return "" if self.daemon is None else self.daemon.output()[-3000:]

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.close()
        self.journal.close()


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[list[Host]]:
    made: list[Host] = []
    yield made
    for host in made:
        host.close()


def pagerduty_section(tmp_path: Path, pagerduty: StandIn, before: str = "") -> str:
    key = tmp_path / "pagerduty.key"
    key.write_text("R0LLBACKDR0UT1NGKEY0000000000001\n")
    return (f"[paging]\n{before}attempts = 2\nmax_retry_wait = \"1s\"\n"
            f"[paging.pagerduty]\nrouting_key_file = \"{key}\"\n"
            f"url = \"{pagerduty.url}/v2/enqueue\"\ntimeout = \"2s\"\n")


@pytest.mark.parametrize("point", ["page:decision:before_send", "page:decision:after_send"])
def test_a_daemon_killed_around_sending_a_page_delivers_it_once_per_dedup_key_after_restart(
        tmp_path: Path, hosts: list[Host], point: str) -> None:
    with stand_in() as pagerduty:
        pagerduty.default = pagerduty.default.__class__(status=202, body="{}")
        host = Host(tmp_path, pagerduty_section(tmp_path, pagerduty))
        hosts.append(host)
        daemon = host.start(env={**os.environ, HOLD_ENV: point})
        host.alert_fires()
        wait_for(lambda: f"test hold at {point}" in daemon.output(), 30, interval=0.05,
                 what=f"the daemon to reach {point} ({host.output()})")
        [page] = host.journal.pages(incident=1)
        assert page.status == "pending" and page.title is not None  # journaled, rendered
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.popen.wait(10)
        sent_before_kill = len(pagerduty.bodies())
        assert sent_before_kill == (0 if point.endswith("before_send") else 1)

        host.start()
        wait_for(lambda: host.journal.page(page.id).status == "delivered", 30,  # type: ignore[union-attr]
                 what=f"the page to be delivered after the restart ({host.output()})")
        triggers = [b for b in pagerduty.bodies() if b["event_action"] == "trigger"]
        assert {b["dedup_key"] for b in triggers} == {"visionforge/incident-1/L1"}
        assert {b["payload"]["custom_details"]["dedup_key"] for b in triggers} == {
            page.dedup_key}
        assert len(triggers) == (1 if point.endswith("before_send") else 2)
        assert host.journal.pages(incident=1)[0].id == page.id  # one page, never a second


def test_when_alertmanager_is_down_the_page_falls_back_to_pagerduty(
        tmp_path: Path, hosts: list[Host]) -> None:
    with stand_in() as pagerduty:
        pagerduty.default = pagerduty.default.__class__(status=202, body="{}")
        down = closed_port_url()
        paging = pagerduty_section(
            tmp_path, pagerduty, before='order = ["alertmanager", "pagerduty"]\n'
        ) + f'[paging.alertmanager]\nurls = ["{down}"]\ntimeout = "1s"\n'
        host = Host(tmp_path, paging)
        hosts.append(host)
        host.start()
        host.alert_fires()
        wait_for(lambda: pagerduty.bodies() != [], 30,
                 what=f"PagerDuty to be paged ({host.output()})")
        [page] = host.journal.pages(incident=1)
        wait_for(lambda: host.journal.page(page.id).status == "delivered", 10,  # type: ignore[union-attr]
                 what="the page to be journaled as delivered")
        attempts = host.journal.page_attempts(page.id)
        assert [(a.channel, a.ok) for a in attempts] == [("alertmanager", False),
                                                         ("pagerduty", True)]
        assert "alertmanager" in attempts[0].error or attempts[0].error
        body = pagerduty.bodies()[0]
        assert body["routing_key"] == "R0LLBACKDR0UT1NGKEY0000000000001"
        assert body["payload"]["severity"] == "warning"  # medium
        assert "DECISION" in body["payload"]["summary"]
        scraped = httpx.get(f"{host.url}/metrics", timeout=5).text
        assert 'rollbackd_pages_total{channel="pagerduty",outcome="delivered"} 1.0' in scraped
        assert 'rollbackd_pages_total{channel="alertmanager",outcome="failed"} 1.0' in scraped
        assert "rollbackd_page_queue_length 0.0" in scraped


def routed_alertmanager(receiver: StandIn) -> dict[str, Any]:
    """Alertmanager routing rollbackd's alerts by level, each level to its own receiver."""
    def hook(level: str) -> dict[str, Any]:
        return {"name": level, "webhook_configs": [
            {"url": f"{receiver.url}/{level}", "send_resolved": True}]}

    return {
        "route": {"receiver": "L1", "group_by": ["alertname", "incident", "level"],
                  "group_wait": "0s", "group_interval": "1s", "repeat_interval": "1h",
                  "routes": [{"matchers": [f'level="{lv}"'], "receiver": lv}
                             for lv in ("L1", "L2", "L3")]},
        "receivers": [hook(lv) for lv in ("L1", "L2", "L3")],
    }


def notified(receiver: StandIn, level: str, status: str = "firing") -> list[dict[str, Any]]:
    return [b for r in receiver.received if r.path == f"/{level}"
            for b in [r.json()] if b["status"] == status]


def active_alerts(am: AlertmanagerServer) -> list[dict[str, Any]]:
    answer = httpx.get(f"{am.url}/api/v2/alerts", params={
        "filter": 'alertname="RollbackdIncident"', "active": "true", "silenced": "true"},
        timeout=5, trust_env=False)
    answer.raise_for_status()
    alerts: list[dict[str, Any]] = answer.json()
    return alerts


def test_an_unanswered_incident_escalates_through_alertmanager_until_silenced_then_resolves(
        tmp_path: Path, hosts: list[Host]) -> None:
    """L1 at once, L2 and L3 as the (shortened) delays pass, each routed by Alertmanager to
    its level's receiver; a silence made with amtool acknowledges the incident and stops the
    re-paging; the incident's resolution resolves the alerts in Alertmanager."""
    with stand_in() as receiver, running_alertmanager_with(routed_alertmanager(receiver)) as am:
        paging = (f'[paging]\n[paging.alertmanager]\nurls = ["{am.url}"]\nresend = "2s"\n')
        host = Host(tmp_path, paging, POLICY + SHORT_CHAIN)
        hosts.append(host)
        host.start()
        host.alert_fires()
        for level in ("L1", "L2", "L3"):
            wait_for(lambda lv=level: notified(receiver, lv) != [], 30,  # type: ignore[misc]
                     what=f"Alertmanager to notify {level}'s receiver ({host.output()})")
        first = notified(receiver, "L1")[0]["alerts"][0]
        assert first["labels"]["incident"] == "1" and first["labels"]["app"] == "visionforge"
        assert first["labels"]["scenario"] == "high_latency"
        assert first["labels"]["severity"] == "medium"
        assert "rollbackd decide 1" in first["annotations"]["description"]
        assert first["annotations"]["dedup_key"] == "visionforge/incident-1/L1/decision"

        # Unanswered, the top level is paged again every `repeat` (2s here).
        wait_for(lambda: any("repeat" in p.dedup_key for p in host.journal.pages(incident=1)),
                 20, what=f"L3 to be paged again ({host.output()})")
        silence = am.amtool("silence", "add", "alertname=RollbackdIncident", "incident=1",
                            "--author=alice", "--comment=looking into it", "--duration=1h")
        wait_for(lambda: host.journal.events_of_type("ack") != [], 20,
                 what=f"the silence to acknowledge incident 1 ({host.output()})")
        [ack] = host.journal.events_of_type("ack")
        assert ack.payload["by"] == "alice"
        assert ack.payload["via"] == f"alertmanager silence {silence}"
        # Acknowledged, it is not: after two more repeats' time nothing new pages (a negative
        # check can only wait).
        time.sleep(max(0.0, ack.t + 4.5 - time.time()))
        after = [p.dedup_key for p in host.journal.pages(incident=1)
                 if p.t > ack.t + 1 and p.event == "trigger"]
        assert after == []

        decided = rollbackd("decide", "1", "dismiss", "--reason", "a load test",
                            config=host.config)
        assert decided.returncode == 0, decided.stderr
        wait_for(lambda: active_alerts(am) == [], 30,
                 what=f"Alertmanager's alerts to be resolved ({host.output()})")
        assert [p.template for p in host.journal.pages(incident=1)
                if p.event == "trigger"][-1] == "completion"


def test_page_test_reports_each_configured_channel(tmp_path: Path) -> None:
    """`rollbackd page test` sends through every channel and says which failed: PagerDuty,
    Slack, a webhook and e-mail here; a Slack that answers 500 fails alone (exit 1)."""
    with (stand_in() as pagerduty, stand_in() as slack, stand_in() as hook,
          smtp_server() as smtp):
        pagerduty.default = pagerduty.default.__class__(status=202, body="{}")
        slack_url = tmp_path / "slack.url"
        slack_url.write_text(f"{slack.url}/services/T000/B000/XXXX\n")
        paging = pagerduty_section(tmp_path, pagerduty) + (
            f'[paging.slack]\nwebhook_url_file = "{slack_url}"\n'
            f'[paging.webhook]\nurl = "{hook.url}/hook"\n'
            f'[paging.email]\nhost = "127.0.0.1"\nport = {smtp.port}\n'
            f'from = "rollbackd@example.net"\nto = ["oncall@example.net"]\nstarttls = false\n')
        (tmp_path / "policy.toml").write_text(POLICY)
        config = config_file(tmp_path, daemon={"policy": tmp_path / "policy.toml"},
                             app={"name": "visionforge"}, extra=paging)
        ok = rollbackd("page", "test", config=config)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        for channel in ("pagerduty", "slack", "email", "webhook"):
            assert f"{channel}" in ok.stdout and "FAILED" not in ok.stdout, ok.stdout
        assert len(pagerduty.bodies()) == 1 and len(hook.bodies()) == 1
        assert len(slack.bodies()) == 1 and len(smtp.mails) == 1
        assert "TEST PAGE" in smtp.mails[0].message["Subject"]

        slack.default = slack.default.__class__(status=500)
        failed = rollbackd("page", "test", "--json", config=config)
        assert failed.returncode == 1, failed.stdout + failed.stderr
        report = json.loads(failed.stdout)
        outcome = {c["channel"]: c["ok"] for c in report["channels"]}
        assert outcome == {"pagerduty": True, "slack": False, "email": True, "webhook": True}
        assert "services/T000" not in failed.stdout + failed.stderr  # the URL is the secret

        only = rollbackd("page", "test", "--channel", "webhook", config=config)
        assert only.returncode == 0 and "webhook" in only.stdout
        assert "pagerduty" not in only.stdout


def test_a_contact_paged_from_the_command_line_is_sent_once_not_also_by_the_daemon(
        tmp_path: Path, hosts: list[Host]) -> None:
    """`page --to` journals the page and sends it itself: held between the two, it leaves the
    running daemon's outbox (which flushes every cycle) nothing due to send."""
    with stand_in() as vendor:
        host = Host(tmp_path, '[paging]\n[paging.contacts.vendor]\nchannel = "webhook"\n'
                              f'url = "{vendor.url}/support"\nwho = "database vendor support"\n')
        hosts.append(host)
        host.start()
        host.alert_fires()
        wait_for(lambda: host.journal.incident(1) is not None, 20, what="incident 1 to open")
        point, release = "page:contact:before_send", tmp_path / "release"
        paging = Proc([*ROLLBACKD, "--config", str(host.config), "page", "--to", "vendor",
                       "--incident", "1"],
                      env={**os.environ, HOLD_ENV: point, RELEASE_ENV: str(release)})
        try:
            wait_for(lambda: f"test hold at {point}" in paging.output(), 30,
                     what=f"page --to to hold at {point} ({paging.output()})")
            time.sleep(2)  # four of the daemon's cycles, each flushing its outbox
            assert vendor.bodies() == [], host.output()
            release.touch()
            assert paging.popen.wait(30) == 0, paging.output()
        finally:
            paging.close()
        [body] = vendor.bodies()
        assert body["kind"] == "contact", body
        time.sleep(1)  # and the daemon does not send it afterwards either
        assert len(vendor.bodies()) == 1, vendor.bodies()


def test_ack_and_paging_a_named_contact_answer_an_open_incident(
        tmp_path: Path, hosts: list[Host]) -> None:
    """`rollbackd ack N` and `POST /api/v1/incidents/N/ack` journal who acknowledged;
    `rollbackd page --to vendor --incident N` pages a named external contact at once."""
    with stand_in() as vendor:
        host = Host(tmp_path, '[paging]\n[paging.contacts.vendor]\nchannel = "webhook"\n'
                              f'url = "{vendor.url}/support"\nwho = "database vendor support"\n')
        hosts.append(host)
        host.start()
        missing = rollbackd("ack", "9", config=host.config)
        assert missing.returncode == 1 and "no incident 9" in missing.stderr
        host.alert_fires()
        wait_for(lambda: host.journal.incident(1) is not None, 20, what="incident 1 to open")
        acked = rollbackd("ack", "1", "--by", "bob", config=host.config)
        assert acked.returncode == 0, acked.stderr
        assert "incident 1 acknowledged by bob" in acked.stdout
        auth = {"Authorization": f"Bearer {host.token}"}
        over_api = httpx.post(f"{host.url}/api/v1/incidents/1/ack", json={"by": "carol"},
                              headers=auth, timeout=10, trust_env=False)
        assert over_api.status_code == 202, over_api.text
        nobody = httpx.post(f"{host.url}/api/v1/incidents/1/ack", json={}, headers=auth,
                            timeout=10, trust_env=False)
        assert nobody.status_code == 400 and "by" in nobody.text
        assert [(e.payload["by"], e.payload["via"])
                for e in host.journal.events_of_type("ack")] == [("bob", "cli"), ("carol", "api")]

        paged = rollbackd("page", "--to", "vendor", "--incident", "1", "--message",
                          "replica lag after the restore", config=host.config)
        assert paged.returncode == 0, paged.stdout + paged.stderr
        assert "to database vendor support delivered" in paged.stdout
        [body] = vendor.bodies()
        assert (body["incident"], body["kind"], body["recipient"]) == (
            1, "contact", "database vendor support")
        assert "replica lag after the restore" in body["text"]
        unknown = rollbackd("page", "--to", "nobody", "--incident", "1", config=host.config)
        assert unknown.returncode == 1 and "known: vendor" in unknown.stderr


def test_a_bad_template_is_refused_by_check_and_run_with_one_line_and_exit_2(
        tmp_path: Path) -> None:
    """A templates_dir (relative to the config file) whose decision template names a fact
    that does not exist is found when rollbackd starts, not when it pages at 3 a.m."""
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "decision.txt").write_text("Decide on $incidnet\n\nbody\n")
    (tmp_path / "policy.toml").write_text(POLICY)
    config = config_file(tmp_path, daemon={"policy": tmp_path / "policy.toml"},
                         app={"name": "visionforge"},
                         extra='[paging]\ntemplates_dir = "templates"\n')
    for verb in ("check", "run"):
        refused = rollbackd(verb, config=config)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        [line] = refused.stderr.strip().splitlines()
        assert "paging.templates_dir" in line and "decision.txt" in line, line
        assert "incidnet" in line, line
    (tmp_path / "templates" / "decision.txt").write_text("Decide on $incident\n\nbody\n")
    good = rollbackd("check", config=config)
    assert good.returncode == 0, good.stderr
    assert f"templates {tmp_path / 'templates'}" in good.stdout
    assert "L2 technical director: after 15m" in good.stdout
