"""The fleet's shared state: several app hosts on one PostgreSQL, each with its own rollbackd,
coordinate through a small ``rollbackd`` schema in the maintenance database (DESIGN section 7:
PostgreSQL itself coordinates; no home-made consensus).

* ``rollbackd.fleet_incidents``: at most one open incident per fleet (a partial unique index
  makes a second one impossible, whatever the race), its runbook and restore point, and the
  state of its database part: ``awaiting`` (a rollback waits for a person's decision, taken
  on any host), ``pending`` (nothing done yet), ``restoring`` (a host holds the fleet's lock
  and works on the database), ``restored`` (done, or nothing to restore: every host may roll
  back its code), ``failed`` (not restored; the host that tried paged), ``dismissed`` (a
  person decided against the rollback, or every host's own incident cleared before anyone
  decided: nothing done, the incident is over).
* ``rollbackd.fleet_hosts``: each host's heartbeat, the incident it follows and how far its
  own part went (``code_state``: pending, done, failed). While an incident awaits a decision
  only the hosts whose own incident awaits it follow it, ``pending`` until that incident
  clears on its own (``done``: the host left it to the others); once a person decides the
  rollback every host follows it, its part ``pending``.
* The database part of a rollback is done under ``pg_try_advisory_lock(fleet_key(fleet))``
  held on a session of its own (:class:`FleetLock`); ``db_state`` changes only on that
  session. A host that dies releases the lock with its session: ``restoring`` with the lock
  free means the host doing it is gone, and the next host that takes the lock observes what
  it left (:mod:`daemon.db.restore`'s recovery rules) instead of restoring again.

Everything is synchronous with every wait bounded; the daemon calls it in threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, cast

import psycopg
from psycopg.types.json import Jsonb

from daemon.config import DatabaseSettings, FleetSettings
from daemon.db.admin import connect
from daemon.locks import LockError, advisory_lock
from probes.base import one_line
from probes.pg import with_dbname

SCHEMA = "rollbackd"
SCHEMA_VERSION = 2
"""2: ``db_state`` may also be ``awaiting`` and ``dismissed``, and an incident awaiting a
decision records who acknowledged it (approve mode)."""

DbState = Literal["awaiting", "pending", "restoring", "restored", "failed", "dismissed"]
CodeState = Literal["pending", "done", "failed"]

FINAL: tuple[DbState, ...] = ("restored", "failed")

_MOVES: dict[str, tuple[str, ...]] = {
    "awaiting": ("restoring", "restored", "failed", "dismissed"),
    "pending": ("restoring", "restored", "failed"),
    "restoring": ("restoring", "restored", "failed"),
    "restored": (),
    "failed": (),
    "dismissed": (),
}
"""db_state's moves: forward only (``restoring`` again: another host took over)."""

_STATES = ", ".join(f"'{state}'" for state in _MOVES)

_UPGRADE = f"""
ALTER TABLE {SCHEMA}.fleet_incidents DROP CONSTRAINT IF EXISTS fleet_incidents_db_state_check;
ALTER TABLE {SCHEMA}.fleet_incidents ADD CONSTRAINT fleet_incidents_db_state_check
    CHECK (db_state IN ({_STATES}));
ALTER TABLE {SCHEMA}.fleet_incidents ADD COLUMN IF NOT EXISTS acked_by text,
    ADD COLUMN IF NOT EXISTS acked_at timestamptz;
"""
"""Version 1 to 2: the new states and the acknowledgement (a version 1 host refuses the
upgraded schema: it is newer)."""

_SCHEMA_LOCK = 0x726264666C656574
"""``rbdfleet`` in ASCII: serialises the schema's creation by hosts starting together."""

_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS {SCHEMA}.fleet_incidents (
    id bigserial PRIMARY KEY,
    fleet text NOT NULL,
    opened_by text NOT NULL,
    scenario text NOT NULL,
    action text NOT NULL,
    runbook text NOT NULL,
    restore_point text,
    db_state text NOT NULL DEFAULT 'pending'
        CONSTRAINT fleet_incidents_db_state_check CHECK (db_state IN ({_STATES})),
    db_host text,
    note text NOT NULL DEFAULT '',
    facts jsonb NOT NULL DEFAULT '{{}}',
    opened_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    acked_by text,
    acked_at timestamptz
);
CREATE UNIQUE INDEX IF NOT EXISTS fleet_incidents_one_open
    ON {SCHEMA}.fleet_incidents (fleet) WHERE resolved_at IS NULL;
CREATE TABLE IF NOT EXISTS {SCHEMA}.fleet_hosts (
    fleet text NOT NULL,
    host text NOT NULL,
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    following bigint REFERENCES {SCHEMA}.fleet_incidents (id),
    code_state text CHECK (code_state IN ('pending', 'done', 'failed')),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (fleet, host)
);
"""

_INCIDENT_COLUMNS = """i.id, i.fleet, i.opened_by, i.scenario, i.action, i.runbook,
    i.restore_point, i.db_state, i.db_host, i.note, extract(epoch FROM i.opened_at)::float8,
    extract(epoch FROM i.updated_at)::float8, extract(epoch FROM i.resolved_at)::float8,
    i.facts, i.acked_by, extract(epoch FROM i.acked_at)::float8"""
_INCIDENT_WIDTH = 16
"""How many columns _INCIDENT_COLUMNS are (a look's own columns follow them)."""

_LOCK_HELD = """EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted
    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    AND l.classid = (%(key)s >> 32)::oid AND l.objid = (%(key)s & 4294967295)::oid
    AND l.objsubid = 1)"""

_HOSTS = f"""(SELECT coalesce(json_agg(json_build_object(
        'host', host, 'following', following, 'part', code_state,
        'beat_ago', extract(epoch FROM now() - heartbeat_at)) ORDER BY host), '[]'::json)
    FROM {SCHEMA}.fleet_hosts WHERE fleet = %(fleet)s)"""
"""Every host of the fleet as it stood before the statement: its part, its heartbeat's age."""

_LOOK = f"""
WITH beat AS (
    INSERT INTO {SCHEMA}.fleet_hosts AS h (fleet, host) VALUES (%(fleet)s, %(host)s)
    ON CONFLICT (fleet, host) DO UPDATE SET heartbeat_at = now()
    RETURNING h.following, h.code_state
)
SELECT {_INCIDENT_COLUMNS}, (SELECT following FROM beat), (SELECT code_state FROM beat),
       {_LOCK_HELD}, {_HOSTS}
FROM (SELECT 1) AS one
LEFT JOIN {SCHEMA}.fleet_incidents i ON i.fleet = %(fleet)s AND i.resolved_at IS NULL
"""

_GLANCE = f"""
SELECT {_INCIDENT_COLUMNS}, own.following, own.code_state, {_LOCK_HELD}, {_HOSTS}
FROM (SELECT 1) AS one
LEFT JOIN {SCHEMA}.fleet_incidents i ON i.fleet = %(fleet)s AND i.resolved_at IS NULL
LEFT JOIN {SCHEMA}.fleet_hosts own ON own.fleet = %(fleet)s AND own.host = %(host)s
"""
"""The look without the heartbeat: what ``rollbackd status`` reads (the command is not the
host's daemon, so it must not make a stopped one look alive)."""


_FOLLOW = f"""
INSERT INTO {SCHEMA}.fleet_hosts AS h (fleet, host, following, code_state)
VALUES (%(fleet)s, %(host)s, %(incident)s, 'pending')
ON CONFLICT (fleet, host) DO UPDATE SET following = excluded.following, code_state = 'pending',
    updated_at = now(), heartbeat_at = now()
WHERE h.following IS DISTINCT FROM excluded.following OR %(again)s
"""
"""This host follows an incident, its part still to do (unless it follows it already, or
``again``: an incident of its own awaits the decision again after it left it)."""

_EVERY_HOST_FOLLOWS = f"""
UPDATE {SCHEMA}.fleet_hosts SET following = %(incident)s, code_state = 'pending',
    updated_at = now()
WHERE fleet = %(fleet)s AND host <> %(host)s
"""
"""Every other host of the fleet follows the incident, its part to do: its rollback is
decided, and each host's code must match the database."""

_PENDING_ALIVE = f"""
SELECT 1 FROM {SCHEMA}.fleet_hosts h WHERE h.fleet = %(fleet)s AND h.following = %(incident)s
    AND h.code_state = 'pending' AND h.heartbeat_at > now() - make_interval(secs => %(alive)s)
"""
"""A host alive (a heartbeat within ``alive`` seconds) still has its part of the incident
pending: its code to roll back, or (while the incident awaits a decision) its own incident
awaiting it."""

_DISMISS = f"""
UPDATE {SCHEMA}.fleet_incidents i SET db_state = 'dismissed', db_host = %(host)s,
    note = %(note)s, facts = i.facts || %(facts)s, resolved_at = now(), updated_at = now()
WHERE i.id = %(incident)s AND i.db_state = 'awaiting'
"""
"""An incident awaiting a decision ends with nothing done (resolved at once)."""

CLEARED = "every host's own incident cleared before anyone decided: nothing was done"


class FleetError(Exception):
    """The fleet's state cannot be read or written; ``str()`` is one line naming why."""


ALIVE_HEARTBEATS = 3
"""A host whose heartbeat is older than this many heartbeats is gone (for resolving, for
paging in its place, and in the fleet's status)."""


def fleet_key(fleet: str) -> int:
    """The fleet's advisory lock key: a bigint derived from its name (distinct from the
    restore's own ``ROLLBACK_LOCK_KEY``, which the restore takes on a session of its own).
    Never negative: pg_locks shows a key's halves as oids, which a negative high half is not
    (looking for the holder would fail)."""
    digest = hashlib.blake2b(f"rollbackd fleet {fleet}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF


def can_move(current: str, new: str) -> bool:
    return new in _MOVES.get(current, ())


@dataclass(frozen=True, slots=True)
class FleetIncident:
    id: int
    fleet: str
    opened_by: str
    scenario: str
    action: str
    runbook: str
    restore_point: str | None
    db_state: DbState
    db_host: str | None
    """The host that did (or does) the database part."""
    note: str
    opened_at: float
    updated_at: float
    resolved_at: float | None
    facts: dict[str, Any]
    """What the database part found (a swap a host completed after another was lost)."""
    acked_by: str | None = None
    """Who acknowledged it while it awaited a decision, on whichever host."""
    acked_at: float | None = None

    @property
    def open(self) -> bool:
        return self.resolved_at is None

    @property
    def database_rolled_back(self) -> bool:
        """Its database part put the whole database back to before the deploy: a restore of
        the whole database, or a swap the host that took over completed (not some tables, and
        not a runbook without a database step)."""
        return self.db_state == "restored" and (self.facts.get("whole_database") is True
                                                or self.facts.get("swap_outcome") == "completed")

    def describe(self) -> str:
        by = f" by {self.db_host}" if self.db_host else ""
        return (f"fleet {self.fleet} incident {self.id} ({self.scenario} -> {self.action}, "
                f"opened by {self.opened_by}): database {self.db_state}{by}"
                + (f" ({self.note})" if self.note else ""))

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "fleet": self.fleet, "opened_by": self.opened_by,
                "scenario": self.scenario, "action": self.action, "runbook": self.runbook,
                "restore_point": self.restore_point, "db_state": self.db_state,
                "db_host": self.db_host, "note": self.note, "opened_at": self.opened_at,
                "updated_at": self.updated_at, "resolved_at": self.resolved_at,
                "facts": self.facts, "acked_by": self.acked_by, "acked_at": self.acked_at}


@dataclass(frozen=True, slots=True)
class FleetHost:
    """One host of the fleet as a look saw it."""

    host: str
    following: int | None
    part: CodeState | None
    """Its part in the incident it follows."""
    beat_ago: float
    """Seconds since its last heartbeat."""


@dataclass(frozen=True, slots=True)
class FleetView:
    """One look at the fleet (:meth:`FleetDb.look`): its open incident, what this host
    follows, whether some session holds the fleet's lock, and every host."""

    incident: FleetIncident | None
    following: int | None
    code_state: CodeState | None
    lock_held: bool
    hosts: tuple[FleetHost, ...] = ()
    alive_within: float = 15.0

    @property
    def alive(self) -> frozenset[str]:
        """The hosts whose heartbeat was recent before this look (within ``alive_within``)."""
        return frozenset(h.host for h in self.hosts if h.beat_ago <= self.alive_within)

    def awaiting_on(self, within: float) -> frozenset[str]:
        """The hosts whose own incident awaits the open incident's decision (it awaits one),
        with a heartbeat within ``within`` seconds before this look."""
        return self._in_decision("pending", within)

    @property
    def cleared(self) -> frozenset[str]:
        """The hosts that left the open incident's decision (their own incident cleared)."""
        return self._in_decision("done", math.inf)

    def _in_decision(self, part: CodeState, within: float) -> frozenset[str]:
        """The hosts following the open incident while it awaits a decision, their part
        ``part``, with a heartbeat within ``within`` seconds."""
        incident = self.incident
        if incident is None or incident.db_state != "awaiting":
            return frozenset()
        return frozenset(h.host for h in self.hosts if h.following == incident.id
                         and h.part == part and h.beat_ago <= within)

    @property
    def mine_pending(self) -> bool:
        """This host follows the open incident and has not done its part."""
        return (self.incident is not None and self.following == self.incident.id
                and self.code_state == "pending")


@dataclass(frozen=True, slots=True)
class FleetStatus:
    """The fleet as ``host`` last saw it, in words and JSON (``rollbackd status``, the API,
    the live page and the status line); ``problem`` when it could not be read."""

    name: str
    host: str
    view: FleetView | None
    problem: str | None = None

    @staticmethod
    def _doing(view: FleetView, h: FleetHost) -> str:
        """A host's part in the open incident, in words (while it awaits a decision: whether
        the host's own incident awaits it, or cleared)."""
        awaiting = view.incident is not None and view.incident.db_state == "awaiting"
        following = view.incident is not None and h.following == view.incident.id
        if not following or not h.part:
            return "no incident" if awaiting else "no part"
        if awaiting:
            return "awaiting" if h.part == "pending" else "cleared"
        return f"part {h.part}"

    def _hosts(self) -> str:
        view = self.view
        assert view is not None
        words = []
        for h in view.hosts:
            quiet = "" if h.host in view.alive else f", silent {h.beat_ago:.0f}s"
            words.append(f"{h.host} ({self._doing(view, h)}{quiet})")
        return ", ".join(words) or "none yet"

    def words(self) -> str | None:
        """For the status line: the open incident or the problem; None when all is quiet."""
        if self.problem is not None:
            return f"fleet {self.name} CANNOT BE READ: {self.problem}"
        if self.view is None or self.view.incident is None:
            return None
        incident = self.view.incident
        by = f" by {incident.db_host}" if incident.db_host else ""
        return (f"fleet incident {incident.id} ({incident.action}): database "
                f"{incident.db_state}{by}; {self._hosts()}")

    def describe(self) -> list[str]:
        head = f"fleet      {self.name} (this host: {self.host})"
        if self.problem is not None:
            return [f"{head}: CANNOT BE READ: {self.problem}"]
        if self.view is None:
            return [f"{head}: not looked at yet"]
        incident = self.view.incident
        lines = [f"{head}: {'no incident open' if incident is None else incident.describe()}"]
        return [*lines, f"hosts      {self._hosts()}"]

    def as_json(self) -> dict[str, Any]:
        view = self.view
        return {
            "name": self.name, "host": self.host, "problem": self.problem,
            "incident": None if view is None or view.incident is None
            else view.incident.as_json(),
            "hosts": [] if view is None else [
                {"host": h.host, "following": h.following, "part": h.part,
                 "doing": self._doing(view, h), "beat_ago": h.beat_ago,
                 "alive": h.host in view.alive} for h in view.hosts],
        }


def _incident(row: tuple[Any, ...]) -> FleetIncident | None:
    if row[0] is None:
        return None
    return FleetIncident(int(row[0]), str(row[1]), str(row[2]), str(row[3]), str(row[4]),
                         str(row[5]), row[6], row[7], row[8], str(row[9]), float(row[10]),
                         float(row[11]), None if row[12] is None else float(row[12]),
                         dict(row[13] or {}), row[14],
                         None if row[15] is None else float(row[15]))


class FleetDb:
    """The fleet's tables on the maintenance database, as host ``host`` of fleet ``fleet``
    sees and changes them. Each call is one short session (bounded: connect, statement and
    lock timeouts); :meth:`lock` holds a session of its own."""

    def __init__(self, dsn: str, fleet: str, host: str, *, connect_timeout: float = 5.0,
                 statement_timeout: float = 10.0, alive_within: float = 15.0) -> None:
        self.dsn = dsn
        self.fleet = fleet
        self.host = host
        self.key = fleet_key(fleet)
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        self.alive_within = alive_within
        """Seconds since its last heartbeat within which a host counts as alive (for
        resolving, for paging in its place, and in the fleet's status)."""

    @classmethod
    def of(cls, database: DatabaseSettings, fleet: FleetSettings) -> FleetDb:
        """The fleet's tables as a host configured so sees them: in the maintenance database,
        a host alive within ALIVE_HEARTBEATS of its heartbeats."""
        return cls(with_dbname(database.dsn, database.maintenance_db), fleet.name, fleet.id,
                   connect_timeout=float(database.connect_timeout),
                   alive_within=float(fleet.heartbeat) * ALIVE_HEARTBEATS)

    def _session(self) -> contextlib.AbstractContextManager[psycopg.Connection[Any]]:
        return connect(self.dsn, connect_timeout=self.connect_timeout,
                       statement_timeout=self.statement_timeout, lock_timeout=5.0,
                       error=FleetError)

    def ensure_schema(self) -> None:
        """Create the schema if it is missing (idempotent; hosts starting together wait for
        each other); FleetError when it was written by a newer rollbackd."""
        with self._session() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            conn.execute(_DDL)
            conn.execute(f"INSERT INTO {SCHEMA}.meta VALUES ('schema_version', %s) "
                         "ON CONFLICT (key) DO NOTHING", (str(SCHEMA_VERSION),))
            row = conn.execute(f"SELECT value FROM {SCHEMA}.meta "
                               "WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row is not None and str(row[0]).isdigit() else 0
            if version > SCHEMA_VERSION:
                raise FleetError(f"the {SCHEMA} schema in the maintenance database is version "
                                 f"{version}, newer than this rollbackd's {SCHEMA_VERSION}: "
                                 "upgrade rollbackd on this host")
            if version < SCHEMA_VERSION:
                conn.execute(_UPGRADE)
                conn.execute(f"UPDATE {SCHEMA}.meta SET value = %s "
                             "WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))

    def look(self) -> FleetView:
        """The cycle's one query: this host's heartbeat, the fleet's open incident, what this
        host follows, whether the fleet's lock is held, and every host."""
        return self._view(_LOOK)

    def glance(self) -> FleetView:
        """The same look, read only (no heartbeat): for a command that is not the daemon.
        FleetError when no host of any fleet has started yet (the schema is missing)."""
        return self._view(_GLANCE, schema_may_be_missing=True)

    def _view(self, query: str, *, schema_may_be_missing: bool = False) -> FleetView:
        with self._session() as conn:
            if schema_may_be_missing and conn.execute("SELECT to_regclass(%s)", (
                    f"{SCHEMA}.fleet_hosts",)).fetchone() == (None,):
                raise FleetError(f"no host of fleet {self.fleet} has started yet (the {SCHEMA} "
                                 "schema is not in the maintenance database)")
            row = conn.execute(query, {"fleet": self.fleet, "host": self.host,
                                       "key": self.key}).fetchone()
        assert row is not None
        own = row[_INCIDENT_WIDTH:]
        hosts = tuple(FleetHost(str(h["host"]), h["following"], h["part"], float(h["beat_ago"]))
                      for h in own[3])
        return FleetView(_incident(row), own[0], own[1], bool(own[2]), hosts, self.alive_within)

    def incident(self, incident_id: int) -> FleetIncident | None:
        with self._session() as conn:
            row = conn.execute(f"SELECT {_INCIDENT_COLUMNS} FROM {SCHEMA}.fleet_incidents i "
                               "WHERE i.id = %s", (incident_id,)).fetchone()
        return None if row is None else _incident(row)

    def latest(self) -> FleetIncident | None:
        """The fleet's newest incident, open or resolved."""
        with self._session() as conn:
            row = conn.execute(f"SELECT {_INCIDENT_COLUMNS} FROM {SCHEMA}.fleet_incidents i "
                               "WHERE i.fleet = %s ORDER BY i.id DESC LIMIT 1",
                               (self.fleet,)).fetchone()
        return None if row is None else _incident(row)

    def open_or_join(self, scenario: str, action: str, runbook: str,
                     restore_point: str | None, *, awaiting: bool = False
                     ) -> tuple[FleetIncident, bool]:
        """Open the fleet's incident (``awaiting``: a rollback that waits for a person's
        decision), or join the one open; ``(incident, opened)``. One transaction: opening a
        rollback makes every host of the fleet follow it at once, so none misses an incident
        that ends before its next look (one awaiting a decision is followed by the hosts
        that join it, until it is decided)."""
        state: DbState = "awaiting" if awaiting else "pending"
        with self._session() as conn, conn.transaction():
            row = conn.execute(
                f"INSERT INTO {SCHEMA}.fleet_incidents AS i (fleet, opened_by, scenario, "
                "action, runbook, restore_point, db_state) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (fleet) WHERE resolved_at IS NULL DO NOTHING "
                f"RETURNING {_INCIDENT_COLUMNS}",
                (self.fleet, self.host, scenario, action, runbook, restore_point,
                 state)).fetchone()
            opened = row is not None
            if row is None:
                row = conn.execute(f"SELECT {_INCIDENT_COLUMNS} FROM {SCHEMA}.fleet_incidents i "
                                   "WHERE i.fleet = %s AND i.resolved_at IS NULL",
                                   (self.fleet,)).fetchone()
                if row is None:  # resolved between the two statements: a new one is due
                    raise FleetError(f"fleet {self.fleet}: the open incident was resolved "
                                     "while joining it; try again")
            found = _incident(row)
            assert found is not None
            ids = {"fleet": self.fleet, "host": self.host, "incident": found.id}
            conn.execute(_FOLLOW, {**ids, "again": found.db_state == "awaiting"})
            if opened and not awaiting:
                conn.execute(_EVERY_HOST_FOLLOWS, ids)
            return found, opened

    def follow(self, incident_id: int) -> bool:
        """Join ``incident_id`` (a host that comes up during it); False when it already
        follows it."""
        with self._session() as conn:
            cur = conn.execute(_FOLLOW, {"fleet": self.fleet, "host": self.host,
                                         "incident": incident_id, "again": False})
            return cur.rowcount > 0

    def ack(self, incident_id: int, by: str) -> bool:
        """Record that ``by`` acknowledged the incident (on this host); False when it was
        acknowledged before (the first acknowledgement is the one kept)."""
        with self._session() as conn:
            cur = conn.execute(
                f"UPDATE {SCHEMA}.fleet_incidents SET acked_by = %s, acked_at = now(), "
                "updated_at = now() WHERE id = %s AND acked_at IS NULL",
                (f"{by} on {self.host}", incident_id))
            return cur.rowcount > 0

    def part(self, incident_id: int) -> CodeState | None:
        """This host's part in ``incident_id`` as it is now; None when it does not follow it."""
        with self._session() as conn:
            row = conn.execute(
                f"SELECT code_state FROM {SCHEMA}.fleet_hosts "
                "WHERE fleet = %s AND host = %s AND following = %s",
                (self.fleet, self.host, incident_id)).fetchone()
        return None if row is None else cast(CodeState, row[0])

    def set_code_state(self, incident_id: int, state: CodeState) -> None:
        with self._session() as conn:
            conn.execute(
                f"UPDATE {SCHEMA}.fleet_hosts SET code_state = %s, updated_at = now() "
                "WHERE fleet = %s AND host = %s AND following = %s",
                (state, self.fleet, self.host, incident_id))

    def resolve_if_done(self, incident_id: int) -> bool:
        """Resolve the incident once its database part is over and no host alive still has its
        part to do."""
        with self._session() as conn:
            cur = conn.execute(
                f"UPDATE {SCHEMA}.fleet_incidents i SET resolved_at = now(), updated_at = now() "
                "WHERE i.id = %(incident)s AND i.resolved_at IS NULL "
                f"AND i.db_state IN ('restored', 'failed') AND NOT EXISTS ({_PENDING_ALIVE})",
                {"fleet": self.fleet, "incident": incident_id, "alive": self.alive_within})
            return cur.rowcount > 0

    def lock(self, what: str) -> FleetLock:
        """Take the fleet's lock on a session of its own; LockError naming the holder when
        another session has it."""
        return FleetLock(self, what)


class FleetLock:
    """The fleet's advisory lock, held on a session of its own until :meth:`release` (or
    until this process dies: the server ends the session and frees the lock). ``db_state``
    changes only on this session, so only the holder moves it."""

    def __init__(self, db: FleetDb, what: str) -> None:
        self.db = db
        self._stack = contextlib.ExitStack()
        self.conn: psycopg.Connection[Any] = self._stack.enter_context(advisory_lock(
            db.dsn, f"fleet {db.fleet}: {what}", connect_timeout=db.connect_timeout,
            key=db.key, name=f"fleet {db.fleet}'s database lock"))

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """One transaction on the lock's session; FleetError saying it cannot ``what`` when
        PostgreSQL refuses it."""
        try:
            with self.conn.transaction():
                yield
        except psycopg.Error as exc:
            raise FleetError(f"cannot {what}: {one_line(exc)}") from None

    def set_db_state(self, incident_id: int, state: DbState, note: str = "",
                     facts: dict[str, Any] | None = None) -> FleetIncident:
        """Move the incident's database state (forward only); FleetError when it cannot."""
        with self._writing(f"set fleet incident {incident_id}'s database state"):
            row = self.conn.execute(
                f"SELECT db_state FROM {SCHEMA}.fleet_incidents WHERE id = %s FOR UPDATE",
                (incident_id,)).fetchone()
            if row is None:
                raise FleetError(f"fleet incident {incident_id} does not exist")
            if not can_move(str(row[0]), state):
                raise FleetError(f"fleet incident {incident_id}: its database state is "
                                 f"{row[0]}, it cannot become {state}")
            updated = self.conn.execute(
                f"UPDATE {SCHEMA}.fleet_incidents i SET db_state = %s, db_host = %s, "
                "note = %s, facts = %s, updated_at = now() WHERE i.id = %s "
                f"RETURNING {_INCIDENT_COLUMNS}",
                (state, self.db.host, note, Jsonb(facts or {}), incident_id)).fetchone()
        found = None if updated is None else _incident(updated)
        assert found is not None
        return found

    def decided(self, incident_id: int, action: str, runbook: str) -> None:
        """A person decided the ``awaiting`` incident's rollback on this host: the action and
        runbook chosen are the ones every host follows, each with its part to do (a host whose
        own incident cleared meanwhile too: its code must match the restored database)."""
        with self._writing(f"record the decision on fleet incident {incident_id}"):
            cur = self.conn.execute(
                f"UPDATE {SCHEMA}.fleet_incidents i SET action = %s, runbook = %s, "
                "updated_at = now() WHERE i.id = %s AND i.db_state = 'awaiting'",
                (action, runbook, incident_id))
            if cur.rowcount:
                ids = {"fleet": self.db.fleet, "host": self.db.host, "incident": incident_id}
                self.conn.execute(_FOLLOW, {**ids, "again": True})
                self.conn.execute(_EVERY_HOST_FOLLOWS, ids)

    def leave(self, incident_id: int, alive_within: float) -> bool:
        """This host's own incident cleared before anyone decided the ``awaiting`` incident's
        rollback: it leaves it to the hosts still seeing the problem (its part ``done``). When
        no host alive (a heartbeat within ``alive_within`` seconds) still awaits it, nobody
        needs the decision any more: it is ``dismissed`` and resolved; True then."""
        ids = {"fleet": self.db.fleet, "host": self.db.host, "incident": incident_id,
               "alive": alive_within}
        with self._writing(f"leave fleet incident {incident_id}"):
            self.conn.execute(
                f"UPDATE {SCHEMA}.fleet_hosts SET code_state = 'done', updated_at = now() "
                "WHERE fleet = %(fleet)s AND host = %(host)s AND following = %(incident)s "
                f"AND EXISTS (SELECT 1 FROM {SCHEMA}.fleet_incidents "
                "WHERE id = %(incident)s AND db_state = 'awaiting')", ids)
            row = self.conn.execute(f"SELECT EXISTS ({_PENDING_ALIVE})", ids).fetchone()
            if row is not None and row[0]:
                return False
            cur = self.conn.execute(_DISMISS, {**ids, "note": CLEARED,
                                               "facts": Jsonb({"cleared": True})})
        return cur.rowcount > 0

    def dismiss(self, incident_id: int, note: str) -> bool:
        """A person closed the ``awaiting`` incident on this host (dismiss, fix forward):
        ``dismissed`` and resolved at once; False when it no longer awaited a decision."""
        with self._writing(f"update fleet incident {incident_id}"):
            cur = self.conn.execute(_DISMISS, {"host": self.db.host, "note": note,
                                               "incident": incident_id, "facts": Jsonb({})})
        return cur.rowcount > 0

    def release(self) -> None:
        self._stack.close()


__all__ = ["FINAL", "SCHEMA", "SCHEMA_VERSION", "CodeState", "DbState", "FleetDb",
           "FleetError", "FleetIncident", "FleetLock", "FleetView", "LockError", "can_move",
           "fleet_key"]
