"""In fleet mode a page goes out under the fleet's identity (app = the fleet, incident = the
fleet incident), so the on-call silences that alert: the silence still acknowledges the
host's own incident."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.config import PagingSettings
from daemon.journal import Journal
from daemon.paging.acks import acks_from_silences
from daemon.paging.outbox import NoPageObserver, Outbox
from policies.engine import Decision
from policies.schema import convert
from tests.harness.alertmanager_server import AlertmanagerServer, running_alertmanager_with
from tests.harness.paging import FleetOf, stand_in


@pytest.fixture
def alertmanager() -> Iterator[AlertmanagerServer]:
    with stand_in() as hook, running_alertmanager_with({
            "route": {"receiver": "hook", "group_wait": "0s", "group_interval": "1s"},
            "receivers": [{"name": "hook", "webhook_configs": [{"url": hook.url}]}]}) as am:
        yield am


async def test_a_silence_of_the_fleet_incident_s_alert_acknowledges_the_local_incident(
        tmp_path: Path, alertmanager: AlertmanagerServer) -> None:
    journal = Journal(tmp_path / "journal.db")
    journal.add_decision(Decision(1000.0, "open", 3, "slow", "medium", "evaluate", "evaluate",
                                  3600, "auto", "p95 held"))
    settings = convert(
        {"alertmanager": {"urls": [alertmanager.url], "timeout": "3s"}}, PagingSettings)
    outbox = Outbox(journal, "shop", settings, NoPageObserver())

    outbox.fleet = FleetOf("shop-fleet", {3: 42})
    journal.add_page("shop", t=1000.0, incident=3, run=None, level=1, template="decision",
                     summary="incident 3: slow", details={}, dedup_key="shop/incident-3/L1")
    assert await outbox.flush() == 1
    assert outbox.standing_incidents() == {3}
    assert outbox.standing_identities(3) == [
        {"alertname": "RollbackdIncident", "app": "shop-fleet", "incident": "42"}]

    assert await acks_from_silences(outbox, journal, 3) == []  # nothing silenced yet
    silence = alertmanager.amtool("silence", "add", "alertname=RollbackdIncident",
                                  "app=shop-fleet", "incident=42", "--author=alice",
                                  "--comment=on it", "--duration=1h")
    assert len(await acks_from_silences(outbox, journal, 3)) == 1
    [ack] = journal.events_of_type("ack")
    assert ack.payload == {"type": "ack", "incident": 3, "by": "alice",
                           "via": f"alertmanager silence {silence}", "comment": "on it"}
    assert await acks_from_silences(outbox, journal, 3) == []  # the same silence, once
