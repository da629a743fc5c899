"""The fleet's shared state on a real PostgreSQL (daemon/db/fleet.py): one open incident per
fleet whatever the race, the fleet's lock freed when its session dies, the database state's
moves, and when an incident resolves."""

from __future__ import annotations

import threading

import psycopg
import pytest

from daemon.db.fleet import SCHEMA_VERSION, FleetDb, FleetError, FleetIncident
from daemon.locks import LockError
from tests.harness.fleet import leave, parts, silent


def host(dsn: str, name: str, fleet: str = "vf") -> FleetDb:
    return FleetDb(dsn, fleet, name, connect_timeout=5.0)


def test_the_schema_is_created_once_by_hosts_starting_together_and_again_harmlessly(
        pg_db: str) -> None:
    errors: list[BaseException] = []

    def start(name: str) -> None:
        try:
            host(pg_db, name).ensure_schema()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(f"h{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    host(pg_db, "late").ensure_schema()
    with psycopg.connect(pg_db) as conn:
        version = conn.execute("SELECT value FROM rollbackd.meta "
                               "WHERE key = 'schema_version'").fetchone()
    assert version == (str(SCHEMA_VERSION),)


def test_a_schema_written_by_a_newer_rollbackd_is_refused_naming_both_versions(
        pg_db: str) -> None:
    host(pg_db, "a").ensure_schema()
    with psycopg.connect(pg_db) as conn:
        conn.execute("UPDATE rollbackd.meta SET value = '7' WHERE key = 'schema_version'")
    with pytest.raises(FleetError,
                       match=f"version 7, newer than this rollbackd.s {SCHEMA_VERSION}"):
        host(pg_db, "a").ensure_schema()


def test_hosts_deciding_together_open_one_incident_and_all_follow_it(pg_db: str) -> None:
    hosts = [host(pg_db, f"h{i}") for i in range(8)]
    hosts[0].ensure_schema()
    for h in hosts:
        h.look()  # each host's heartbeat
    barrier = threading.Barrier(len(hosts))
    got: list[tuple[FleetIncident, bool]] = []
    errors: list[BaseException] = []

    def decide(h: FleetDb) -> None:
        barrier.wait(10)
        try:
            got.append(h.open_or_join("migration_failed", "immediate_rollback",
                                      "immediate_rollback", "rp-1"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=decide, args=(h,)) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert sum(opened for _, opened in got) == 1
    assert len({incident.id for incident, _ in got}) == 1
    [opener] = [incident for incident, opened in got if opened]
    assert opener.db_state == "pending" and opener.restore_point == "rp-1"
    for h in hosts:
        view = h.look()
        assert view.incident == opener and view.following == opener.id
        assert view.code_state == "pending" and view.mine_pending
    # Another fleet on the same database has its own.
    other, opened = host(pg_db, "x", fleet="other").open_or_join("s", "a", "r", None)
    assert opened and other.id != opener.id


def test_the_fleets_lock_is_freed_when_the_session_holding_it_dies(pg_db: str) -> None:
    a, b = host(pg_db, "a"), host(pg_db, "b")
    a.ensure_schema()
    incident, _ = a.open_or_join("s", "immediate_rollback", "immediate_rollback", None)
    held = a.lock("incident 1")
    held.set_db_state(incident.id, "restoring")
    assert b.look().lock_held
    with pytest.raises(LockError, match="fleet vf's database lock is held by another session"):
        b.lock("take over")
    # The host doing the database part dies: the server ends its session, and the lock with
    # it, while the incident still says restoring.
    with psycopg.connect(pg_db, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s, 5000)", (held.conn.info.backend_pid,))
    view = b.look()
    assert not view.lock_held and view.incident is not None
    assert view.incident.db_state == "restoring" and view.incident.db_host == "a"
    taken = b.lock("take over")
    try:
        settled = taken.set_db_state(incident.id, "restored", "b completed a's swap",
                                     {"lost": "a", "swap_outcome": "completed"})
    finally:
        taken.release()
    assert (settled.db_state, settled.db_host, settled.facts["lost"]) == ("restored", "b", "a")
    held.release()  # its session is gone: releasing it is harmless
    assert not b.look().lock_held


def test_the_database_state_only_moves_forward(pg_db: str) -> None:
    a = host(pg_db, "a")
    a.ensure_schema()
    incident, _ = a.open_or_join("s", "immediate_rollback", "immediate_rollback", None)
    lock = a.lock("incident")
    try:
        assert lock.set_db_state(incident.id, "restoring").db_state == "restoring"
        assert lock.set_db_state(incident.id, "restoring", "taken over").note == "taken over"
        assert lock.set_db_state(incident.id, "failed", "reverted").db_state == "failed"
        with pytest.raises(FleetError, match="its database state is failed, it cannot "
                                             "become restoring"):
            lock.set_db_state(incident.id, "restoring")
        with pytest.raises(FleetError, match="fleet incident 999 does not exist"):
            lock.set_db_state(999, "restored")
        # The session is still usable after a refusal.
        assert a.incident(incident.id) is not None
    finally:
        lock.release()


def test_an_incident_resolves_once_its_database_is_over_and_no_live_host_is_pending(
        pg_db: str) -> None:
    a, b, gone = host(pg_db, "a"), host(pg_db, "b"), host(pg_db, "gone")
    a.ensure_schema()
    for h in (a, b, gone):
        h.look()
    incident, _ = a.open_or_join("s", "immediate_rollback", "immediate_rollback", None)
    assert not a.resolve_if_done(incident.id)  # the database part is not over
    lock = a.lock("incident")
    lock.set_db_state(incident.id, "restored")
    lock.release()
    a.set_code_state(incident.id, "done")
    silent(pg_db, "gone")
    assert not a.resolve_if_done(incident.id)  # b is alive and has not done its part
    b.set_code_state(incident.id, "failed")
    assert a.resolve_if_done(incident.id)
    assert a.look().incident is None
    latest = a.latest()
    assert latest is not None and latest.id == incident.id and latest.resolved_at is not None
    # The next incident is a new one; a host that starts during it joins it once.
    again, opened = b.open_or_join("s", "immediate_rollback", "immediate_rollback", None)
    assert opened and again.id != incident.id
    late = host(pg_db, "late")
    assert late.follow(again.id) and not late.follow(again.id)
    assert late.look().mine_pending


def test_a_rollback_awaiting_a_decision_is_one_incident_that_any_host_may_decide(
        pg_db: str) -> None:
    a, b = host(pg_db, "a"), host(pg_db, "b")
    a.ensure_schema()
    waiting, opened = a.open_or_join("s", "immediate_rollback", "immediate_rollback", None,
                                     awaiting=True)
    assert opened and waiting.db_state == "awaiting"
    joined, opened = b.open_or_join("s", "immediate_rollback", "immediate_rollback", None,
                                    awaiting=True)
    assert not opened and joined.id == waiting.id and b.look().following == waiting.id
    # A person decides a planned rollback on b: b records the choice and leads.
    lock = b.lock("decided")
    try:
        lock.decided(waiting.id, "planned_rollback", "planned_rollback")
        led = lock.set_db_state(waiting.id, "restoring")
    finally:
        lock.release()
    assert (led.action, led.runbook, led.db_state, led.db_host) == (
        "planned_rollback", "planned_rollback", "restoring", "b")
    # The first acknowledgement, on whichever host, is the fleet's.
    assert a.ack(waiting.id, "alice") and not b.ack(waiting.id, "bob")
    acked = b.incident(waiting.id)
    assert acked is not None and acked.acked_by == "alice on a" and acked.acked_at is not None
    lock = a.lock("too late")
    try:  # a decision is taken once: neither a second choice nor a dismissal moves it now
        lock.decided(waiting.id, "fix_forward", "none")
        assert not lock.dismiss(waiting.id, "dismissed on a")
    finally:
        lock.release()
    current = a.incident(waiting.id)
    assert current is not None and (current.action, current.db_state) == (
        "planned_rollback", "restoring")


def test_a_host_whose_incident_cleared_leaves_the_decision_to_the_hosts_still_awaiting_it(
        pg_db: str) -> None:
    a, b, calm = host(pg_db, "a"), host(pg_db, "b"), host(pg_db, "calm")
    a.ensure_schema()
    calm.look()  # a host of the fleet whose engine never saw the problem
    waiting, _ = a.open_or_join("s", "immediate_rollback", "immediate_rollback", None,
                                awaiting=True)
    b.open_or_join("s", "immediate_rollback", "immediate_rollback", None, awaiting=True)
    assert parts(a, waiting) == {"a": "pending", "b": "pending"}  # not calm: nothing awaits

    # a's rules cleared: b still sees the problem, so the incident still awaits a person.
    assert not leave(a, waiting)
    still = a.incident(waiting.id)
    assert still is not None and still.open and still.db_state == "awaiting", still
    assert parts(a, waiting) == {"a": "done", "b": "pending"}

    # a's rules fire again: its new incident awaits the same decision.
    a.open_or_join("s", "immediate_rollback", "immediate_rollback", None, awaiting=True)
    assert parts(a, waiting) == {"a": "pending", "b": "pending"}

    # Then both clear: the last one to leave ends it; nobody decided anything.
    assert not leave(a, waiting)
    assert leave(b, waiting)
    ended = a.incident(waiting.id)
    assert ended is not None and ended.db_state == "dismissed" and not ended.open, ended
    assert ended.facts == {"cleared": True} and "nothing was done" in ended.note, ended


def test_a_silent_host_does_not_hold_open_a_decision_nobody_else_awaits(pg_db: str) -> None:
    a, gone = host(pg_db, "a"), host(pg_db, "gone")
    a.ensure_schema()
    waiting, _ = gone.open_or_join("s", "immediate_rollback", "immediate_rollback", None,
                                   awaiting=True)
    a.open_or_join("s", "immediate_rollback", "immediate_rollback", None, awaiting=True)
    silent(pg_db, "gone")
    assert leave(a, waiting)


def test_a_decided_rollback_is_followed_by_every_host_the_ones_that_left_it_too(
        pg_db: str) -> None:
    """The database is restored for all of them: each host's code must match it."""
    a, b, calm = host(pg_db, "a"), host(pg_db, "b"), host(pg_db, "calm")
    a.ensure_schema()
    calm.look()
    waiting, _ = a.open_or_join("s", "immediate_rollback", "immediate_rollback", None,
                                awaiting=True)
    b.open_or_join("s", "immediate_rollback", "immediate_rollback", None, awaiting=True)
    assert not leave(a, waiting)
    lock = b.lock("decided")
    try:
        lock.decided(waiting.id, "immediate_rollback", "immediate_rollback")
        lock.set_db_state(waiting.id, "restoring")
    finally:
        lock.release()
    assert parts(a, waiting) == {"a": "pending", "b": "pending", "calm": "pending"}
    assert not leave(a, waiting)  # decided: a clearing no longer takes a host out of it
    assert parts(a, waiting) == {"a": "pending", "b": "pending", "calm": "pending"}


def test_a_dismissed_rollback_ends_the_fleet_incident_at_once(pg_db: str) -> None:
    a = host(pg_db, "a")
    a.ensure_schema()
    waiting, _ = a.open_or_join("s", "immediate_rollback", "immediate_rollback", None,
                                awaiting=True)
    lock = a.lock("dismiss")
    try:
        assert lock.dismiss(waiting.id, "dismiss on a by alice")
        with pytest.raises(FleetError, match="its database state is dismissed"):
            lock.set_db_state(waiting.id, "restoring")
    finally:
        lock.release()
    assert a.look().incident is None
    latest = a.latest()
    assert latest is not None and latest.db_state == "dismissed"
    assert latest.resolved_at is not None and latest.note == "dismiss on a by alice"


def test_a_version_1_schema_is_upgraded_to_hold_decisions(pg_db: str) -> None:
    with psycopg.connect(pg_db, autocommit=True) as conn:  # what version 1 created
        conn.execute("""
            CREATE SCHEMA rollbackd;
            CREATE TABLE rollbackd.meta (key text PRIMARY KEY, value text NOT NULL);
            INSERT INTO rollbackd.meta VALUES ('schema_version', '1');
            CREATE TABLE rollbackd.fleet_incidents (
                id bigserial PRIMARY KEY, fleet text NOT NULL, opened_by text NOT NULL,
                scenario text NOT NULL, action text NOT NULL, runbook text NOT NULL,
                restore_point text,
                db_state text NOT NULL DEFAULT 'pending'
                    CHECK (db_state IN ('pending', 'restoring', 'restored', 'failed')),
                db_host text, note text NOT NULL DEFAULT '',
                facts jsonb NOT NULL DEFAULT '{}',
                opened_at timestamptz NOT NULL DEFAULT now(),
                updated_at timestamptz NOT NULL DEFAULT now(), resolved_at timestamptz);
            INSERT INTO rollbackd.fleet_incidents (fleet, opened_by, scenario, action, runbook,
                db_state, resolved_at) VALUES ('vf', 'a', 's', 'immediate_rollback',
                'immediate_rollback', 'restored', now());""")
    a = host(pg_db, "a")
    a.ensure_schema()
    waiting, opened = a.open_or_join("s", "immediate_rollback", "immediate_rollback", None,
                                     awaiting=True)
    assert opened and waiting.db_state == "awaiting" and waiting.id == 2
    with psycopg.connect(pg_db) as conn:
        version = conn.execute("SELECT value FROM rollbackd.meta "
                               "WHERE key = 'schema_version'").fetchone()
    assert version == (str(SCHEMA_VERSION),)
