"""Paging through a real Alertmanager (Debian's prometheus-alertmanager): rollbackd's alert is
posted, read back, routed by Alertmanager's own webhook, Slack and PagerDuty receivers to
stand-ins that check what Alertmanager made of it, silenced with amtool (which is how an
on-call person answers it) and resolved."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from daemon.paging.channels import AlertmanagerChannel, DeliveryError
from daemon.paging.channels.alertmanager import alert_labels
from daemon.paging.message import Message
from tests.harness.alertmanager_server import (
    AlertmanagerServer,
    running_alertmanager_with,
)
from tests.harness.paging import Answer, StandIn, closed_port_url, stand_in
from tests.harness.paging import page as any_page
from tests.harness.servers import wait_for

PD_ROUTING_KEY = "a" * 32


def page(**changes: Any) -> Message:
    """A page journaled a minute ago (Alertmanager compares its times with its own clock)."""
    return any_page(**{"sent_at": time.time() - 60, **changes})


class Routed:
    def __init__(self, am: AlertmanagerServer, hook: StandIn, slack: StandIn,
                 pd: StandIn) -> None:
        self.am, self.hook, self.slack, self.pd = am, hook, slack, pd

    def channel(self, *extra_urls: str) -> AlertmanagerChannel:
        return AlertmanagerChannel([self.am.url, *extra_urls], timeout=5.0, resend=60.0)

    def alerts(self, incident: int) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.am.url}/api/v2/alerts",
                             params=[("filter", 'alertname="RollbackdIncident"'),
                                     ("filter", f'incident="{incident}"')],
                             timeout=5.0, trust_env=False)
        response.raise_for_status()
        alerts: list[dict[str, Any]] = response.json()
        return alerts


def am_config(hook: StandIn, slack: StandIn, pd: StandIn) -> dict[str, Any]:
    return {
        "route": {"receiver": "on-call", "group_by": ["alertname", "incident"],
                  "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"},
        "receivers": [{
            "name": "on-call",
            "webhook_configs": [{"url": f"{hook.url}/alertmanager", "send_resolved": True}],
            "slack_configs": [{"api_url": f"{slack.url}/services/T0/B0/x", "channel": "#oncall",
                               "send_resolved": True,
                               "title": '{{ .CommonAnnotations.summary }}',
                               "text": '{{ .CommonAnnotations.description }}'}],
            "pagerduty_configs": [{"url": f"{pd.url}/v2/enqueue",
                                   "routing_key": PD_ROUTING_KEY, "send_resolved": True}],
        }],
    }


@pytest.fixture(scope="module")
def routed() -> Iterator[Routed]:
    with stand_in() as hook, stand_in(Answer(200, body="ok")) as slack, \
            stand_in(Answer(202, body='{"status":"success"}')) as pd, \
            running_alertmanager_with(am_config(hook, slack, pd)) as am:
        yield Routed(am, hook, slack, pd)


def for_incident(bodies: list[Any], incident: str, key: str = "alerts") -> list[Any]:
    return [b for b in bodies if any(a["labels"].get("incident") == incident
                                     for a in b.get(key, []))]


async def test_a_page_is_posted_to_alertmanager_and_read_back_active_with_our_labels(
        routed: Routed) -> None:
    message = page(incident=11, alert_key="visionforge/incident-11/L2",
                   dedup_key="visionforge/incident-11/L2/decision")
    channel = routed.channel()
    receipt = await channel.send(message)
    await channel.aclose()

    assert receipt == "1 of 1 Alertmanagers accepted"
    [alert] = routed.alerts(11)
    assert alert["status"]["state"] == "active"
    assert alert["labels"] == {"alertname": "RollbackdIncident", "app": "visionforge",
                               "incident": "11", "severity": "high", "level": "L2",
                               "scenario": "db_errors", "action": "evaluate"}
    assert alert["annotations"] == {"summary": message.title, "description": message.text,
                                    "dedup_key": "visionforge/incident-11/L2/decision"}


async def test_a_label_of_the_incident_never_overrides_the_pages_own_labels(
        routed: Routed) -> None:
    message = page(incident=12, labels={"incident": "99", "alertname": "Other",
                                        "scenario": "db_errors", "bad-name": "x"})
    channel = routed.channel()
    await channel.send(message)
    await channel.aclose()
    [alert] = routed.alerts(12)
    assert alert["labels"] == alert_labels(message)
    assert alert["labels"]["alertname"] == "RollbackdIncident"
    assert alert["labels"]["bad_name"] == "x"


async def test_one_alertmanager_of_an_ha_pair_down_still_delivers_and_says_so(
        routed: Routed) -> None:
    down = closed_port_url()
    channel = routed.channel(down)
    receipt = await channel.send(page(incident=13))
    await channel.aclose()
    assert receipt == (f"1 of 2 Alertmanagers accepted (alertmanager: {down}: cannot reach "
                       "the receiver: Connection refused)")
    assert len(routed.alerts(13)) == 1


async def test_no_alertmanager_answering_is_a_delivery_error_naming_each() -> None:
    first, second = closed_port_url(), closed_port_url()
    channel = AlertmanagerChannel([first, second], timeout=2.0, resend=60.0)
    with pytest.raises(DeliveryError) as failed:
        await channel.send(page())
    with pytest.raises(DeliveryError) as unread:
        await channel.silenced_by({"incident": "7"})
    await channel.aclose()
    assert str(failed.value).startswith("alertmanager: none of 2 accepted: ")
    assert not failed.value.permanent
    assert first in str(failed.value) and second in str(failed.value)
    assert str(unread.value).startswith("alertmanager: none of 2 answered: ")


async def test_alertmanager_routes_the_page_to_its_webhook_slack_and_pagerduty_receivers(
        routed: Routed) -> None:
    message = page(incident=14, title="visionforge: incident 14 needs a decision",
                   text="evidence: db.error_ratio 0.42",
                   dedup_key="visionforge/incident-14/L2/decision",
                   alert_key="visionforge/incident-14/L2")
    channel = routed.channel()
    await channel.send(message)
    await channel.aclose()

    def slack_messages() -> list[Any]:
        return [b for b in routed.slack.bodies() if "incident 14" in str(b)]

    def pagerduty_events() -> list[Any]:
        return [b for b in routed.pd.bodies() if "incident = 14" in str(b)]

    wait_for(lambda: for_incident(routed.hook.bodies(), "14") and slack_messages()
             and pagerduty_events(), 20, what="Alertmanager to notify its three receivers")

    [notification] = for_incident(routed.hook.bodies(), "14")
    assert notification["status"] == "firing"
    [alert] = notification["alerts"]
    assert alert["labels"] == alert_labels(message)
    assert alert["annotations"]["summary"] == "visionforge: incident 14 needs a decision"
    assert alert["annotations"]["dedup_key"] == message.dedup_key

    [slack] = slack_messages()
    [attachment] = slack["attachments"]
    assert attachment["title"] == "visionforge: incident 14 needs a decision"
    assert attachment["text"] == "evidence: db.error_ratio 0.42"
    assert slack["channel"] == "#oncall"

    [event] = pagerduty_events()
    assert event["routing_key"] == PD_ROUTING_KEY
    assert event["event_action"] == "trigger"
    assert "RollbackdIncident" in event["payload"]["summary"]
    firing = event["payload"]["custom_details"]["firing"]
    assert "dedup_key = visionforge/incident-14/L2/decision" in firing
    assert "summary = visionforge: incident 14 needs a decision" in firing
    assert "level = L2" in firing and "scenario = db_errors" in firing


async def test_a_silence_made_with_amtool_is_found_with_its_author_and_comment(
        routed: Routed) -> None:
    message = page(incident=15)
    channel = routed.channel(closed_port_url())  # the unreachable member is skipped
    await channel.send(message)
    assert await channel.silenced_by(alert_labels(message)) == []

    silence_id = routed.am.amtool("silence", "add", "alertname=RollbackdIncident",
                        "incident=15", "--comment=looking at it, rollback is on me",
                        "--author=alice", "--duration=1h")
    silences = await channel.silenced_by(alert_labels(message))
    other = await channel.silenced_by(alert_labels(page(incident=11)))
    await channel.aclose()

    assert [(s.id, s.created_by, s.comment) for s in silences] == [
        (silence_id, "alice", "looking at it, rollback is on me")]
    assert other == []


async def test_a_resolved_page_ends_the_alert_and_alertmanager_says_resolved(
        routed: Routed) -> None:
    message = page(incident=16)
    channel = routed.channel()
    await channel.send(message)
    wait_for(lambda: for_incident(routed.hook.bodies(), "16"), 20,
             what="the firing notification")
    await channel.send(page(incident=16, event="resolve",
                            dedup_key="visionforge/incident-16/L2/completion"))
    await channel.aclose()

    assert routed.alerts(16) == []
    wait_for(lambda: any(b["status"] == "resolved"
                         for b in for_incident(routed.hook.bodies(), "16")), 20,
             what="the resolved notification")
