"""A rollback awaiting the fleet's decision (approve mode) when one host's own incident clears
on its own: that host leaves the decision to the hosts still seeing the problem (the fleet
incident stays open for them, and its page stays up), and only the last one to clear ends
it; a person's dismissal on any host still ends it for every host. Host h1 is a ``Daemon``
whose fleet the test drives; h0 is another host of the fleet, through its ``FleetDb``."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.db.fleet import CLEARED, FleetDb, FleetIncident
from daemon.journal import Page
from daemon.runbooks.context import RunRequest
from daemon.service.fleet import Fleet
from daemon.service.loop import Daemon
from policies.engine import Decision
from tests.harness.fleet import fleet_daemon, leave, maintenance_dsn, parts, silent

RUNBOOK = "immediate_rollback"
SCENARIO = "data_validation_failed"
LOCAL = 1
"""h1's own incident."""


@pytest.fixture
def host(pg_db: str, tmp_path: Path) -> Iterator[Daemon]:
    daemon = fleet_daemon(tmp_path, pg_db, f"vf-{secrets.token_hex(4)}", heartbeat="30s")
    yield daemon
    daemon.journal.close()


def the_fleet(host: Daemon) -> Fleet:
    assert host.fleet is not None
    return host.fleet


def other_host(host: Daemon, pg_db: str) -> FleetDb:
    other = FleetDb(maintenance_dsn(pg_db), the_fleet(host).name, "h0")
    other.ensure_schema()
    other.look()
    return other


def decided(host: Daemon, t: float, kind: str, reason: str) -> None:
    """h1's engine: its own incident opens (awaiting a person) or resolves."""
    host.journal.add_decision(Decision(t, kind, LOCAL, SCENARIO, "critical", RUNBOOK, RUNBOOK,
                                       1800, "approve", reason))


async def look(host: Daemon) -> list[RunRequest]:
    """One look of h1 at the fleet, acted on; the runs it would launch."""
    fleet = the_fleet(host)
    launched: list[RunRequest] = []

    def launch(request: RunRequest) -> tuple[bool, str]:
        launched.append(request)
        return True, ""

    fleet._looked = -float("inf")
    fleet.tick(lambda: False, launch, host.policy)
    assert fleet._task is not None
    await fleet._task
    return launched


async def awaiting(host: Daemon, pg_db: str, *, opener: str) -> tuple[FleetDb, FleetIncident]:
    """h0 and h1 each have an incident awaiting the fleet's decision; ``opener`` opened the
    fleet incident (and pages for it)."""
    other = other_host(host, pg_db)
    if opener == "h0":
        other.open_or_join(SCENARIO, RUNBOOK, RUNBOOK, None, awaiting=True)
    decided(host, 1000.0, "open", "db.validation_failures > 0")
    the_fleet(host).awaits_decision(LOCAL, SCENARIO, RUNBOOK, RUNBOOK)
    await look(host)
    incident, _ = other.open_or_join(SCENARIO, RUNBOOK, RUNBOOK, None, awaiting=True)
    assert incident.opened_by == opener and incident.db_state == "awaiting", incident
    await look(host)  # h1 sees h0 with it
    return other, incident


def current(db: FleetDb, incident: FleetIncident) -> FleetIncident:
    found = db.incident(incident.id)
    assert found is not None
    return found


def page(host: Daemon, event: str, level: int = 1) -> Page:
    return host.journal.add_page(
        host.config.app_name, t=1100.0, incident=LOCAL, run=None, level=level,
        template="decision", summary=f"incident {LOCAL}", details={},
        dedup_key=f"app/incident-{LOCAL}/L{level}/{event}", event=event)  # type: ignore[arg-type]


async def test_a_host_whose_incident_cleared_leaves_the_decision_to_the_hosts_still_awaiting_it(
        host: Daemon, pg_db: str) -> None:
    other, incident = await awaiting(host, pg_db, opener="h0")

    decided(host, 1060.0, "resolve", "every rule of the incident has been clear for its "
                                     "clear_for")
    assert await look(host) == []

    still = current(other, incident)
    assert still.open and still.db_state == "awaiting", still  # h0 still awaits a person
    assert parts(other, incident) == {"h0": "pending", "h1": "done"}

    # h0's incident clears too: the last one to leave ends the fleet incident.
    assert leave(other, incident)
    ended = current(other, incident)
    assert (ended.db_state, ended.note, ended.open) == ("dismissed", CLEARED, False), ended


async def test_a_persons_dismissal_on_one_host_still_ends_the_decision_for_every_host(
        host: Daemon, pg_db: str) -> None:
    other, incident = await awaiting(host, pg_db, opener="h0")

    host.journal.add_event(1050.0, {"type": "close", "incident": LOCAL, "by": "alice",
                                    "decision": "dismiss (known noise)"})
    decided(host, 1050.0, "resolve", "alice decided: dismiss (known noise)")
    await look(host)

    ended = current(other, incident)
    assert ended.db_state == "dismissed" and not ended.open, ended
    assert "known noise" in ended.note, ended


async def test_the_host_paging_for_the_fleet_keeps_its_page_up_while_another_host_awaits(
        host: Daemon, pg_db: str) -> None:
    """Its page is the fleet's (one alert whichever host sends it): resolving it when its own
    incident clears would take the alert away from the hosts still seeing the problem."""
    other, incident = await awaiting(host, pg_db, opener="h1")
    fleet = the_fleet(host)
    decided(host, 1060.0, "resolve", "every rule of the incident has been clear")
    await look(host)

    assert fleet.sending(page(host, "resolve"))[0] == "hold"

    assert leave(other, incident)  # h0 clears too: the fleet incident is over
    await look(host)
    assert fleet.sending(page(host, "resolve")) == ("send", "")


async def test_a_host_still_awaiting_pages_once_the_host_that_paged_has_left(
        host: Daemon, pg_db: str) -> None:
    other, incident = await awaiting(host, pg_db, opener="h0")
    fleet = the_fleet(host)
    assert fleet.sending(page(host, "trigger", level=2)) == ("leave", "h0")

    assert not leave(other, incident)  # h0's incident cleared: it no longer pages
    await look(host)

    assert fleet.sending(page(host, "trigger", level=2)) == ("send", "")


async def test_a_decision_awaited_only_by_a_host_gone_silent_ends_at_the_next_look(
        host: Daemon, pg_db: str) -> None:
    other = other_host(host, pg_db)
    incident, _ = other.open_or_join(SCENARIO, RUNBOOK, RUNBOOK, None, awaiting=True)
    silent(maintenance_dsn(pg_db), "h0")

    await look(host)  # h1 has no incident of its own

    ended = current(other, incident)
    assert (ended.db_state, ended.note, ended.open) == ("dismissed", CLEARED, False), ended


async def test_a_host_back_after_the_fleet_ended_a_decision_it_still_awaits_asks_it_anew(
        host: Daemon, pg_db: str) -> None:
    """Ended because every other host's incident cleared while this one was silent: nobody
    decided, so this host's incident (still firing) is not closed as if a person had."""
    other, incident = await awaiting(host, pg_db, opener="h0")
    silent(maintenance_dsn(pg_db), "h1")
    assert leave(other, incident)

    await look(host)  # h1 is back: its incident still awaits a decision
    await look(host)

    assert host.journal.incident(LOCAL).state == "open"  # type: ignore[union-attr]
    anew = other.look().incident
    assert anew is not None and anew.id != incident.id, anew
    assert (anew.db_state, anew.opened_by) == ("awaiting", "h1"), anew


async def test_the_host_paging_for_the_fleet_keeps_its_page_up_across_its_restart(
        host: Daemon, pg_db: str, tmp_path: Path) -> None:
    """It no longer remembers which fleet incident its resolved incident joined: what the
    fleet says of it (it left the decision the others still await) tells it again."""
    other, incident = await awaiting(host, pg_db, opener="h1")
    decided(host, 1060.0, "resolve", "every rule of the incident has been clear")
    await look(host)
    host.journal.close()

    again = fleet_daemon(tmp_path, pg_db, the_fleet(host).name, heartbeat="30s")
    try:
        fleet = the_fleet(again)
        await fleet.before_recovery(again.executor, None)

        assert fleet.sending(page(again, "resolve"))[0] == "hold"
        assert leave(other, incident)  # the last host awaiting clears: the page may go
        await look(again)
        assert fleet.sending(page(again, "resolve")) == ("send", "")
    finally:
        again.journal.close()
