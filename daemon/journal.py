"""The journal: SQLite in WAL mode under the state directory, the daemon's durable memory.

Deploys, the events the decision engine consumes (deploys, migrations, alerts, operators'
commands), the decisions it took, drills and restores are recorded here, so a restarted daemon
knows what happened before it and the CLI can say it. Rows come out as frozen dataclasses
whose ``as_json()`` is the JSON the CLI and the API print.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

from daemon.durable import fsync_dir
from policies.engine import Decision
from policies.policy import Action, Mode, Severity

SCHEMA_V0 = """
CREATE TABLE IF NOT EXISTS deploys (
    id INTEGER PRIMARY KEY,
    app TEXT NOT NULL,
    version TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    status TEXT NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'succeeded', 'failed')),
    code_version TEXT,
    restore_point TEXT,
    restore_point_verified INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    t REAL NOT NULL,
    type TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY,
    t REAL NOT NULL,
    incident INTEGER NOT NULL,
    kind TEXT NOT NULL,
    scenario TEXT NOT NULL,
    action TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS drills (
    id INTEGER PRIMARY KEY,
    t REAL NOT NULL,
    backup TEXT NOT NULL,
    ok INTEGER NOT NULL,
    duration REAL NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_t ON events (t);
"""
"""Version 0: the schema as the first release wrote it (``PRAGMA user_version`` 0). Never
edited: every journal, new or old, starts from it and goes through the same migrations."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of the schema: statements run in one transaction with ``user_version`` set to
    ``version`` (SQLite's DDL is transactional: a journal is at one version or the next)."""

    version: int
    summary: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "decisions found by incident without a scan", (
        "CREATE INDEX IF NOT EXISTS decisions_incident ON decisions (incident, id)",
    )),
    Migration(2, "the journal's id, so that another journal put in its place is told apart", (
        "CREATE TABLE journal_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "INSERT INTO journal_meta (key, value) VALUES ('id', lower(hex(randomblob(16))))",
    )),
    Migration(3, "restores, linked to their deploy (then rolled back) and incident", (
        """CREATE TABLE deploys_v3 (
            id INTEGER PRIMARY KEY,
            app TEXT NOT NULL,
            version TEXT NOT NULL,
            started_at REAL NOT NULL,
            ended_at REAL,
            status TEXT NOT NULL DEFAULT 'running'
                CHECK (status IN ('running', 'succeeded', 'failed', 'rolled_back')),
            code_version TEXT,
            restore_point TEXT,
            restore_point_verified INTEGER NOT NULL DEFAULT 0
        )""",
        "INSERT INTO deploys_v3 SELECT id, app, version, started_at, ended_at, status,"
        " code_version, restore_point, restore_point_verified FROM deploys",
        "DROP TABLE deploys",
        "ALTER TABLE deploys_v3 RENAME TO deploys",
        """CREATE TABLE restores (
            id INTEGER PRIMARY KEY,
            app TEXT NOT NULL,
            started_at REAL NOT NULL,
            finished_at REAL,
            source TEXT NOT NULL,
            strategy TEXT NOT NULL CHECK (strategy IN ('swap', 'in_place', 'tables', 'clone')),
            database TEXT NOT NULL,
            tables TEXT NOT NULL DEFAULT '[]',
            requested_by TEXT NOT NULL,
            deploy INTEGER REFERENCES deploys (id),
            incident INTEGER,
            status TEXT NOT NULL DEFAULT 'running' CHECK (status IN
                ('running', 'restored', 'validation_failed', 'failed', 'interrupted')),
            kept TEXT,
            kept_kind TEXT CHECK (kept_kind IN ('database', 'backup', 'tables')),
            safety_backup TEXT,
            data_window_start REAL,
            data_window_end REAL,
            error TEXT,
            report TEXT
        )""",
        "CREATE INDEX restores_incident ON restores (incident)",
        "CREATE INDEX restores_deploy ON restores (deploy)",
    )),
    Migration(4, "runbook runs, their steps, and pages", (
        """CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            app TEXT NOT NULL,
            incident INTEGER,
            runbook TEXT NOT NULL,
            action TEXT NOT NULL,
            scenario TEXT NOT NULL,
            requested_by TEXT NOT NULL,
            started_at REAL NOT NULL,
            deadline REAL NOT NULL,
            ended_at REAL,
            status TEXT NOT NULL DEFAULT 'running'
                CHECK (status IN ('running', 'succeeded', 'failed', 'abandoned')),
            deploy INTEGER,
            restore_point TEXT,
            plan TEXT NOT NULL,
            summary TEXT
        )""",
        "CREATE INDEX runs_incident ON runs (incident)",
        """CREATE TABLE run_steps (
            id INTEGER PRIMARY KEY,
            run INTEGER NOT NULL REFERENCES runs (id),
            idx INTEGER NOT NULL,
            kind TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            started_at REAL NOT NULL,
            ended_at REAL,
            outcome TEXT CHECK (outcome IN ('ok', 'failed', 'skipped')),
            message TEXT,
            output TEXT,
            details TEXT
        )""",
        "CREATE INDEX run_steps_run ON run_steps (run, idx, attempt)",
        """CREATE TABLE pages (
            id INTEGER PRIMARY KEY,
            t REAL NOT NULL,
            app TEXT NOT NULL,
            incident INTEGER,
            run INTEGER,
            level INTEGER NOT NULL DEFAULT 1,
            template TEXT NOT NULL,
            summary TEXT NOT NULL,
            details TEXT NOT NULL DEFAULT '{}',
            dedup_key TEXT NOT NULL UNIQUE
        )""",
        "CREATE INDEX pages_incident ON pages (incident)",
    )),
    Migration(5, "the paging outbox: each page's delivery state and its attempts", (
        "ALTER TABLE pages ADD COLUMN status TEXT NOT NULL DEFAULT 'pending'"
        " CHECK (status IN ('pending', 'delivered', 'recorded'))",
        "ALTER TABLE pages ADD COLUMN event TEXT NOT NULL DEFAULT 'trigger'"
        " CHECK (event IN ('trigger', 'acknowledge', 'resolve'))",
        "ALTER TABLE pages ADD COLUMN recipient TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE pages ADD COLUMN channels TEXT",
        "ALTER TABLE pages ADD COLUMN title TEXT",
        "ALTER TABLE pages ADD COLUMN text TEXT",
        "ALTER TABLE pages ADD COLUMN tries INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE pages ADD COLUMN next_at REAL",
        "ALTER TABLE pages ADD COLUMN delivered_at REAL",
        "ALTER TABLE pages ADD COLUMN delivered_by TEXT",
        "ALTER TABLE pages ADD COLUMN last_error TEXT",
        # Before the outbox the journal was the only channel: those pages were never meant
        # to be sent, and sending them now would page people about old incidents.
        "UPDATE pages SET status = 'recorded'",
        "CREATE INDEX pages_pending ON pages (status, next_at)",
        """CREATE TABLE page_attempts (
            id INTEGER PRIMARY KEY,
            page INTEGER NOT NULL REFERENCES pages (id),
            t REAL NOT NULL,
            channel TEXT NOT NULL,
            ok INTEGER NOT NULL,
            tries INTEGER NOT NULL,
            receipt TEXT NOT NULL,
            error TEXT NOT NULL
        )""",
        "CREATE INDEX page_attempts_page ON page_attempts (page)",
    )),
    Migration(6, "events found by type (the pager reads an incident's acks every cycle)", (
        "CREATE INDEX events_type ON events (type, id)",
    )),
    Migration(7, "a run's part in its fleet's incident (status and reports name it)", (
        "ALTER TABLE runs ADD COLUMN fleet TEXT",
    )),
    Migration(8, "a deploy's clone: its fast restore point, swapped in by renaming", (
        "ALTER TABLE deploys ADD COLUMN clone TEXT",
    )),
)
"""In order; append, never edit one that has shipped."""

SCHEMA_VERSION = MIGRATIONS[-1].version

_ROLL_BACK_DEPLOY = ("UPDATE deploys SET status = 'rolled_back', ended_at = coalesce(ended_at, ?)"
                     " WHERE id = ?")
"""A deploy whose database was put back to before it (by this host's restore, or on a host
of a fleet by the fleet's): ``(t, deploy id)``."""


def _statements(script: str) -> list[str]:
    """The statements of a script without triggers or string literals holding ``;``."""
    return [part.strip() for part in script.split(";") if part.strip()]


MARKER_SUFFIX = ".id"

BUSY_TIMEOUT = 5.0
"""Seconds a writer waits for another process's transaction (CLI and daemon share the file)."""


DeployStatus = Literal["running", "succeeded", "failed", "rolled_back"]
"""``rolled_back``: a restore of the database put it back to before the deploy."""
IncidentState = Literal["open", "resolved"]
RestoreStrategy = Literal["swap", "in_place", "tables", "clone"]
RestoreStatus = Literal["running", "restored", "validation_failed", "failed", "interrupted"]
"""``restored``: done and validated; ``validation_failed``: done, but the database failed
validation after it; ``failed``: refused or failed, nothing restored; ``interrupted``: the
process was stopped during the restore (look at the database); ``running``: not finished, or
the process was killed."""
KeptKind = Literal["database", "backup", "tables"]
RunStatus = Literal["running", "succeeded", "failed", "abandoned"]
"""``abandoned``: a crashed run that recovery could not continue (a page says why)."""
StepOutcome = Literal["ok", "failed", "skipped"]


@dataclass(frozen=True, slots=True)
class Run:
    """One execution of a runbook for an incident (or by hand)."""

    id: int
    app: str
    incident: int | None
    runbook: str
    action: str
    scenario: str
    requested_by: str
    started_at: float
    deadline: float
    """The decision's timeline as the run's budget (epoch seconds)."""
    ended_at: float | None
    status: RunStatus
    deploy: int | None
    restore_point: str | None
    plan: tuple[str, ...]
    """The steps' kinds, in order, as planned."""
    summary: str | None
    fleet: str | None = None
    """On a host of a fleet, the fleet incident the run was this host's part of, as it stood
    when the part ended (:meth:`Journal.note_run_fleet`)."""

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "app": self.app, "incident": self.incident,
                "runbook": self.runbook, "action": self.action, "scenario": self.scenario,
                "by": self.requested_by, "started_at": self.started_at,
                "deadline": self.deadline, "ended_at": self.ended_at, "status": self.status,
                "deploy": self.deploy, "restore_point": self.restore_point,
                "plan": list(self.plan), "summary": self.summary, "fleet": self.fleet}


@dataclass(frozen=True, slots=True)
class RunStep:
    """One attempt at one step of a run: journaled as begun before its side effect, and
    ended (outcome, output excerpt, facts) after it. ``ended_at`` None: it was interrupted."""

    id: int
    run: int
    idx: int
    kind: str
    attempt: int
    started_at: float
    ended_at: float | None
    outcome: StepOutcome | None
    message: str | None
    output: str | None
    details: Mapping[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "run": self.run, "step": self.idx, "kind": self.kind,
                "attempt": self.attempt, "started_at": self.started_at,
                "ended_at": self.ended_at, "outcome": self.outcome, "message": self.message,
                "output": self.output, "details": dict(self.details)}


PageStatus = Literal["pending", "delivered", "recorded"]
"""``pending``: journaled, not yet delivered (the outbox keeps trying); ``delivered``: a
channel took it; ``recorded``: journaled only (no channel is configured, or it predates the
outbox)."""
PageEvent = Literal["trigger", "acknowledge", "resolve"]
"""``trigger`` tells people; ``acknowledge`` and ``resolve`` update what was triggered under
the same key (PagerDuty's event actions; Alertmanager's ``endsAt``)."""


@dataclass(frozen=True, slots=True)
class Page:
    """A page in the outbox: journaled before it is sent, delivered at least once.
    ``dedup_key`` makes recording one twice (a recovered run, a restart) a no-op and is what
    every channel passes on, so a re-send is never a second page."""

    id: int
    t: float
    app: str
    incident: int | None
    run: int | None
    level: int
    template: str
    summary: str
    details: Mapping[str, Any]
    dedup_key: str
    status: PageStatus = "pending"
    event: PageEvent = "trigger"
    recipient: str = ""
    channels: tuple[str, ...] | None = None
    """The channels to try, in order; None: the configured order."""
    title: str | None = None
    """The rendered page (None until the outbox renders it, just before the first send)."""
    text: str | None = None
    tries: int = 0
    next_at: float | None = None
    delivered_at: float | None = None
    delivered_by: str | None = None
    last_error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "t": self.t, "app": self.app, "incident": self.incident,
                "run": self.run, "level": self.level, "template": self.template,
                "summary": self.summary, "details": dict(self.details),
                "dedup_key": self.dedup_key, "status": self.status, "event": self.event,
                "recipient": self.recipient,
                "channels": None if self.channels is None else list(self.channels),
                "title": self.title, "tries": self.tries, "next_at": self.next_at,
                "delivered_at": self.delivered_at, "delivered_by": self.delivered_by,
                "last_error": self.last_error}


@dataclass(frozen=True, slots=True)
class PageAttempt:
    """One channel's part in one delivery round of a page."""

    page: int
    t: float
    channel: str
    ok: bool
    tries: int
    receipt: str
    error: str


@dataclass(frozen=True, slots=True)
class Deploy:
    id: int
    app: str
    version: str
    started_at: float
    ended_at: float | None
    status: DeployStatus
    code_version: str | None
    restore_point: str | None
    restore_point_verified: bool
    clone: str | None = None
    """The database cloned from the live one at the deploy (``deploy begin --clone``): a
    rollback swaps it in by renaming, in seconds, instead of restoring the restore point."""

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "app": self.app, "version": self.version,
                "started_at": self.started_at, "ended_at": self.ended_at,
                "status": self.status, "code_version": self.code_version,
                "restore_point": self.restore_point,
                "restore_point_verified": self.restore_point_verified,
                # Only when there is one: incident reports made before clones stay current.
                **({"clone": self.clone} if self.clone is not None else {})}


@dataclass(frozen=True, slots=True)
class JournalEvent:
    id: int
    t: float
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Drill:
    id: int
    t: float
    backup: str
    ok: bool
    duration: float
    details: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "t": self.t, "backup": self.backup, "ok": self.ok,
                "duration": self.duration, "details": self.details}


@dataclass(frozen=True, slots=True)
class IncidentSummary:
    """How an incident opened and where it stands now (its first and latest decision)."""

    incident: int
    opened_at: float
    opened_by: str
    """The scenario that opened it."""
    scenario: str
    severity: Severity
    action: Action
    mode: Mode
    state: IncidentState
    updated_at: float
    reason: str

    @classmethod
    def of(cls, first: Decision, last: Decision) -> IncidentSummary:
        return cls(incident=first.incident, opened_at=first.t, opened_by=first.scenario,
                   scenario=last.scenario, severity=last.severity, action=last.action,
                   mode=last.mode, state="resolved" if last.kind == "resolve" else "open",
                   updated_at=last.t, reason=last.reason)

    def as_json(self) -> dict[str, Any]:
        return {"incident": self.incident, "opened_at": self.opened_at,
                "opened_by": self.opened_by, "scenario": self.scenario,
                "severity": self.severity, "action": self.action, "mode": self.mode,
                "state": self.state, "updated_at": self.updated_at, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Restore:
    """A restore of the database, by hand or by the executor, and what it is linked to: the
    deploy whose restore point it restored (else the app's latest deploy) and the incident
    open when it began."""

    id: int
    app: str
    started_at: float
    finished_at: float | None
    source: str
    """The backup restored, or the clone's name (strategy ``clone``)."""
    strategy: RestoreStrategy
    database: str
    tables: tuple[str, ...]
    requested_by: str
    deploy: int | None
    incident: int | None
    status: RestoreStatus
    kept: str | None
    """Where the data it replaced is: a database, a safety backup, or kept tables."""
    kept_kind: KeptKind | None
    safety_backup: str | None
    data_window_start: float | None
    data_window_end: float | None
    error: str | None

    @property
    def completed(self) -> bool:
        """The database was replaced (validated or not)."""
        return self.status in ("restored", "validation_failed")

    @property
    def rolls_back_deploy(self) -> bool:
        """A whole-database restore that completed rolls its deploy back; the rows of some
        tables do not."""
        return self.completed and self.strategy != "tables"

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "app": self.app, "started_at": self.started_at,
                "finished_at": self.finished_at, "source": self.source,
                "strategy": self.strategy, "database": self.database,
                "tables": list(self.tables), "by": self.requested_by, "deploy": self.deploy,
                "incident": self.incident, "status": self.status,
                "ok": self.status == "restored", "kept": self.kept, "kept_kind": self.kept_kind,
                "safety_backup": self.safety_backup,
                "data_window_start": self.data_window_start,
                "data_window_end": self.data_window_end, "error": self.error}

    def describe(self) -> str:
        """One line: ``restore 3 restored: swap of rp-1 by alice``."""
        what = f"tables {', '.join(self.tables)} from" if self.tables else f"{self.strategy} of"
        return f"restore {self.id} {self.status}: {what} {self.source} by {self.requested_by}"


@dataclass(frozen=True, slots=True)
class RestoreOutcome:
    """How a restore ended, for :meth:`Journal.finish_restore`."""

    status: RestoreStatus
    finished_at: float
    database: str | None = None
    kept: str | None = None
    kept_kind: KeptKind | None = None
    safety_backup: str | None = None
    data_window_start: float | None = None
    data_window_end: float | None = None
    error: str | None = None
    report: Mapping[str, Any] | None = None
    """The strategy's whole report (validation results, notes), kept as JSON."""


class JournalError(Exception):
    """The journal cannot be opened or written; ``str()`` names the file."""


class StateDirError(JournalError):
    """The configured state directory cannot be a directory (a file is in the way): a
    configuration error, where other journal errors are failed operations."""


_R = TypeVar("_R")


def _reads(method: Callable[..., _R]) -> Callable[..., _R]:
    """Reads fail like writes do, as a :class:`JournalError` naming the file."""

    @functools.wraps(method)
    def reading(self: Journal, *args: Any, **kwargs: Any) -> _R:
        self._check_file()
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: cannot read the journal: {exc}") from None

    return reading


class Journal:
    """One journal file, shared by the daemon and every CLI command (each its own connection;
    writers wait up to BUSY_TIMEOUT for one another).

    It owns the tables ``deploys``, ``events``, ``decisions``, ``drills``, ``restores``,
    ``runs``, ``run_steps``, ``pages`` and ``journal_meta``, the schema's version (``PRAGMA
    user_version``) and the marker file ``journal.id`` beside it. Invariants:

    * The schema is at SCHEMA_VERSION once opened: an older journal is migrated in place, in
      one transaction per migration, keeping every row; an up-to-date one is opened without a
      write; a newer one (another rollbackd's) is refused, not touched.
    * It is the journal of its state directory: a missing or empty file where the directory
      had one (the marker, or incident reports) is refused, never taken for a fresh journal;
      one whose id is not the marker's is refused. Every read and write first checks that the
      file at :attr:`path` is still the one opened (and, for writes, under the write lock, that
      its id is), so a journal replaced, removed or copied over while in use fails with
      :class:`JournalError` rather than writing where nobody reads.
    * A write is one transaction: all of it or none (a batch of events, a restore's end with
      its deploy and its incident's close), and never left open after a failure.
    * Events and decisions are appended, never changed; a deploy only goes from ``running``
      to ``succeeded`` or ``failed``, and to ``rolled_back`` only with the restore that did it
      (on a host of a fleet, another host's: :meth:`deploy_rolled_back`).
    * Every failure of the file is a :class:`JournalError` whose text starts with its path
      (:class:`StateDirError` when the state directory cannot be a directory); a request it
      refuses (ending a deploy that already ended) is a JournalError saying why.
    """

    FILE = "journal.sqlite3"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.marker = path.with_suffix(MARKER_SUFFIX)
        """Written beside the journal when it is created: its id, the state directory's
        memory that it had a journal (and which)."""
        self._make_dir()
        self._refuse_fresh_over_history()
        try:
            self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
        except sqlite3.Error as exc:
            raise JournalError(f"{path}: cannot open the journal: {exc}") from None
        try:
            self._refuse_newer(self._version())
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
            self.id = self._stored_id()
            self._file = self._identity()
            self._keep_marker()
        except sqlite3.Error as exc:
            self._db.close()
            raise JournalError(f"{path}: cannot open the journal: {exc}") from None
        except BaseException:
            self._db.close()
            raise
        self._db.row_factory = sqlite3.Row

    def _make_dir(self) -> None:
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise StateDirError(f"{directory}: not a directory (the journal {self.path.name} "
                                "goes in it)") from None
        except OSError as exc:
            raise JournalError(f"{self.path}: cannot create its directory: "
                               f"{exc.strerror}") from None

    def _refuse_fresh_over_history(self) -> None:
        """A missing or empty (0-byte) journal is a new one only where no journal was before:
        SQLite would take an emptied journal for a fresh one and the history would be gone
        without a word."""
        try:
            empty = self.path.stat().st_size == 0
        except FileNotFoundError:
            empty = True
        except OSError as exc:
            raise JournalError(f"{self.path}: cannot open the journal: {exc.strerror}") from None
        if not empty:
            return
        history = [str(p) for p in (self.marker, self.path.parent / "incidents") if p.exists()]
        with contextlib.suppress(OSError):
            if history and self.path.stat().st_size > 0:
                return  # created (and its marker written) by another process meanwhile
        if history:
            what = "empty (0 bytes)" if self.path.exists() else "missing"
            names = " and ".join(history)
            raise JournalError(
                f"{self.path}: the journal is {what} but this state directory had one "
                f"({names} {'exists' if len(history) == 1 else 'exist'}): refusing to start a "
                f"new journal over its history; put the journal back (from a backup), or move "
                f"{names} aside to start afresh")

    def _stored_id(self) -> str:
        row = self._db.execute("SELECT value FROM journal_meta WHERE key = 'id'").fetchone()
        if row is None:
            raise JournalError(f"{self.path}: the journal has no id (journal_meta is empty)")
        return str(row[0])

    def _identity(self) -> tuple[int, int]:
        st = self.path.stat()
        return st.st_dev, st.st_ino

    def _keep_marker(self) -> None:
        """Check the journal against the id its state directory recorded, or record it (a new
        journal, or one of the release before the marker)."""
        try:
            recorded: str | None = self.marker.read_text().strip()
        except FileNotFoundError:
            recorded = self._write_marker()
        except OSError as exc:
            raise JournalError(f"{self.marker}: cannot read: {exc.strerror}") from None
        if recorded is not None and recorded != self.id:
            raise JournalError(
                f"{self.path}: not the journal of this state directory: its id is {self.id} "
                f"but {self.marker} records {recorded or 'nothing'} (was the journal replaced?);"
                f" put the right one back, or remove {self.marker} to adopt this one")

    def _write_marker(self) -> str | None:
        """Create the marker whole or not at all (written aside, then linked: an existing one
        is never overwritten); the id a concurrent opener recorded first, or None when the
        directory is not writable (a reader's command: the next writer records it)."""
        temp = self.marker.with_name(f".{self.marker.name}.{os.getpid()}.tmp")
        try:
            temp.write_text(f"{self.id}\n")
            with temp.open("rb") as f:
                os.fsync(f.fileno())
            try:
                os.link(temp, self.marker)
            except FileExistsError:
                return self.marker.read_text().strip()
            fsync_dir(self.marker.parent)
            return self.id
        except OSError:
            return None
        finally:
            with contextlib.suppress(OSError):
                temp.unlink()

    def check(self) -> None:
        """Raise :class:`JournalError` when the file at :attr:`path` is no longer the journal
        opened here (removed, replaced by another file, or another journal copied over it)."""
        self._check_file()
        try:
            self._check_id(self._db)
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: cannot read the journal: {exc}") from None

    def _check_file(self) -> None:
        try:
            same = self._identity() == self._file
        except OSError as exc:
            raise JournalError(
                f"{self.path}: the journal rollbackd opened is gone ({exc.strerror}): nothing "
                "is journaled until it is back (or rollbackd restarts with a new one)"
            ) from None
        if not same:
            raise JournalError(
                f"{self.path}: the journal file was replaced while rollbackd had it open: "
                "nothing is journaled into either; restart rollbackd to use the new one")

    def _check_id(self, db: sqlite3.Connection) -> None:
        row = db.execute("SELECT value FROM journal_meta WHERE key = 'id'").fetchone()
        if row is None or row[0] != self.id:
            raise JournalError(
                f"{self.path}: the journal's id changed from {self.id} to "
                f"{None if row is None else row[0]} while rollbackd had it open (another "
                "journal copied over it?): nothing is journaled; restart rollbackd")

    def _version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _refuse_newer(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"{self.path}: the journal was written by a newer rollbackd (schema version "
                f"{version}; this one knows versions up to {SCHEMA_VERSION}): refusing to open "
                "it")

    def _migrate(self) -> None:
        """Bring the schema to SCHEMA_VERSION in place; nothing is written when it is there.
        Under the write lock the version is read again: of two processes opening an old
        journal at once, one migrates and the other finds it done."""
        if self._version() == SCHEMA_VERSION:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            version = self._version()
            self._refuse_newer(version)
            if version == 0:
                for statement in _statements(SCHEMA_V0):
                    self._db.execute(statement)
            for migration in MIGRATIONS:
                if migration.version > version:
                    for statement in migration.statements:
                        self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> Journal:
        return cls(state_dir / cls.FILE)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write: only into the journal opened here (checked under the write lock)."""
        self._check_file()
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._check_id(self._db)
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                # Also when COMMIT itself fails: never leave the connection inside a
                # transaction that would block every later write.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: cannot write the journal: {exc}") from None

    # -- deploys ---------------------------------------------------------------------------

    def begin_deploy(self, app: str, version: str, t: float, *, code_version: str | None = None,
                     restore_point: str | None = None, verified: bool = False,
                     clone: str | None = None) -> Deploy:
        """Record a deploy and the ``deploy begin`` event the decision engine reads."""
        with self._transaction() as db:
            cur = db.execute(
                "INSERT INTO deploys (app, version, started_at, code_version, restore_point,"
                " restore_point_verified, clone) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (app, version, t, code_version, restore_point, int(verified), clone),
            )
            deploy_id = int(cur.lastrowid or 0)
            self._insert_event(db, t, {"type": "deploy", "phase": "begin", "version": version,
                                       "deploy": deploy_id, "verified": verified})
        deploy = self.deploy(deploy_id)
        assert deploy is not None
        return deploy

    def end_deploy(self, deploy_id: int, status: str, t: float, *, migration: bool = False,
                   exit_code: int | None = None) -> Deploy:
        """End a running deploy as ``succeeded`` or ``failed`` (``rolled_back`` is set by
        :meth:`finish_restore`). With ``migration``, ``status`` is its migration's (and
        ``exit_code`` the command's): a migration event first, which the engine reads as
        ``migration.failed``, in the same transaction, so an ended deploy gets none."""
        if status not in ("succeeded", "failed"):
            raise JournalError(f"a deploy ends succeeded or failed, not {status!r}")
        with self._transaction() as db:
            row = db.execute("SELECT version, status FROM deploys WHERE id = ?",
                             (deploy_id,)).fetchone()
            if row is None:
                raise JournalError(f"{self.path}: no deploy {deploy_id}")
            if row["status"] != "running":
                raise JournalError(f"deploy {deploy_id} already ended ({row['status']})")
            if migration:
                self._insert_event(db, t, {"type": "migration", "status": status,
                                           "version": row["version"], "deploy": deploy_id,
                                           "exit_code": exit_code})
            db.execute("UPDATE deploys SET status = ?, ended_at = ? WHERE id = ?",
                       (status, t, deploy_id))
            self._insert_event(db, t, {"type": "deploy", "phase": "end", "status": status,
                                       "version": row["version"], "deploy": deploy_id})
        deploy = self.deploy(deploy_id)
        assert deploy is not None
        return deploy

    def deploy_rolled_back(self, deploy_id: int, t: float) -> Deploy:
        """A deploy of a host of a fleet that its follower run rolled back: its code and config
        on this host, its database by the restore another host made for the whole fleet (which
        that host's journal records). ``rolled_back`` as :meth:`finish_restore` sets it."""
        with self._transaction() as db:
            cur = db.execute(_ROLL_BACK_DEPLOY, (t, deploy_id))
            if cur.rowcount == 0:
                raise JournalError(f"{self.path}: no deploy {deploy_id}")
        deploy = self.deploy(deploy_id)
        assert deploy is not None
        return deploy

    @_reads
    def deploy(self, deploy_id: int) -> Deploy | None:
        row = self._db.execute("SELECT * FROM deploys WHERE id = ?", (deploy_id,)).fetchone()
        return _deploy(row) if row else None

    @_reads
    def latest_deploy(self, app: str | None = None) -> Deploy | None:
        query = "SELECT * FROM deploys"
        args: tuple[str, ...] = ()
        if app is not None:
            query += " WHERE app = ?"
            args = (app,)
        query += " ORDER BY started_at DESC, id DESC LIMIT 1"
        row = self._db.execute(query, args).fetchone()
        return _deploy(row) if row else None

    # -- events ----------------------------------------------------------------------------

    def add_event(self, t: float, payload: Mapping[str, Any]) -> int:
        with self._transaction() as db:
            return self._insert_event(db, t, payload)

    @staticmethod
    def _insert_event(db: sqlite3.Connection, t: float, payload: Mapping[str, Any]) -> int:
        cur = db.execute("INSERT INTO events (t, type, payload) VALUES (?, ?, ?)",
                         (t, str(payload["type"]), json.dumps(payload, sort_keys=True)))
        return int(cur.lastrowid or 0)

    def add_events(self, t: float, payloads: Sequence[Mapping[str, Any]]) -> list[int]:
        """Several events at ``t`` in one transaction: all of them or none (a webhook's batch
        is retried whole by its sender when this fails)."""
        with self._transaction() as db:
            return [self._insert_event(db, t, payload) for payload in payloads]

    def add_event_batches(self, batches: Sequence[tuple[float, Sequence[Mapping[str, Any]]]]
                          ) -> list[list[int]]:
        """Several senders' batches (each its own ``t``) in one transaction, so that they
        share one fsync (the webhook's group commit): all of them or none."""
        with self._transaction() as db:
            return [[self._insert_event(db, t, payload) for payload in payloads]
                    for t, payloads in batches]

    @_reads
    def events_after(self, event_id: int, limit: int = 10_000) -> list[JournalEvent]:
        rows = self._db.execute(
            "SELECT id, t, payload FROM events WHERE id > ? ORDER BY id LIMIT ?", (event_id, limit)
        ).fetchall()
        return [JournalEvent(int(r["id"]), float(r["t"]), json.loads(r["payload"])) for r in rows]

    @_reads
    def events_since(self, t: float) -> list[JournalEvent]:
        rows = self._db.execute(
            "SELECT id, t, payload FROM events WHERE t >= ? ORDER BY t, id", (t,)
        ).fetchall()
        return [JournalEvent(int(r["id"]), float(r["t"]), json.loads(r["payload"])) for r in rows]

    @_reads
    def last_event_id(self) -> int:
        row = self._db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()
        return int(row[0])

    # -- decisions -------------------------------------------------------------------------

    def add_decision(self, decision: Decision) -> int:
        with self._transaction() as db:
            cur = db.execute(
                "INSERT INTO decisions (t, incident, kind, scenario, action, payload)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (decision.t, decision.incident, decision.kind, decision.scenario,
                 decision.action, json.dumps(decision.as_json(), sort_keys=True)),
            )
            return int(cur.lastrowid or 0)

    @_reads
    def last_incident(self) -> int:
        row = self._db.execute("SELECT coalesce(max(incident), 0) FROM decisions").fetchone()
        return int(row[0])

    @_reads
    def decisions(self, limit: int = 100, incident: int | None = None) -> list[Decision]:
        """The newest ``limit`` decisions (of one incident), oldest first."""
        if incident is not None and not _fits(incident):
            return []
        where, args = ("", (limit,)) if incident is None else (
            " WHERE incident = ?", (incident, limit))
        rows = self._db.execute(
            f"SELECT id, payload FROM decisions{where} ORDER BY id DESC LIMIT ?", args
        ).fetchall()
        return [self._decision(r["id"], r["payload"]) for r in reversed(rows)]

    # One query for every summary: each incident's first and latest decision, by a join on
    # the ids the grouping found (never a query per incident).
    _SUMMARIES = (
        "WITH ends AS (SELECT incident, min(id) AS first, max(id) AS last FROM decisions"
        " {where} GROUP BY incident ORDER BY incident DESC LIMIT ?)"
        " SELECT ends.incident, f.id AS first_id, f.payload AS first,"
        " l.id AS last_id, l.payload AS last"
        " FROM ends JOIN decisions f ON f.id = ends.first JOIN decisions l ON l.id = ends.last"
        " ORDER BY ends.incident DESC"
    )

    @_reads
    def incidents(self, limit: int = 50) -> list[IncidentSummary]:
        """One summary per incident, newest first: how it opened and where it stands now."""
        rows = self._db.execute(self._SUMMARIES.format(where=""), (limit,)).fetchall()
        return [self._summary(row) for row in rows]

    @_reads
    def incident(self, number: int) -> IncidentSummary | None:
        """One incident's summary (as in :meth:`incidents`), or None."""
        if not _fits(number):
            return None
        row = self._db.execute(self._SUMMARIES.format(where="WHERE incident = ?"),
                               (number, 1)).fetchone()
        return None if row is None else self._summary(row)

    def _summary(self, row: sqlite3.Row) -> IncidentSummary:
        return IncidentSummary.of(self._decision(row["first_id"], row["first"]),
                                  self._decision(row["last_id"], row["last"]))

    def _decision(self, row_id: int, payload: str) -> Decision:
        try:
            return Decision.from_json(json.loads(payload))
        except ValueError as exc:  # json's errors are ValueErrors too
            raise JournalError(f"{self.path}: decision {row_id} is malformed: {exc}") from None

    @_reads
    def latest_event(self, types: tuple[str, ...]) -> JournalEvent | None:
        marks = ", ".join("?" for _ in types)
        row = self._db.execute(
            f"SELECT id, t, payload FROM events WHERE type IN ({marks})"
            " ORDER BY id DESC LIMIT 1", types,
        ).fetchone()
        return None if row is None else JournalEvent(int(row["id"]), float(row["t"]),
                                                     json.loads(row["payload"]))

    # -- deploy queries (backups: which restore points are still needed) ------------------

    @_reads
    def deploys(self, app: str | None = None, *, since: float | None = None,
                status: str | None = None) -> list[Deploy]:
        """Deploys, newest first; filtered by app, start time (``started_at >= since``), status."""
        where, args = _where(("app = ?", app), ("started_at >= ?", since),
                             ("status = ?", status))
        rows = self._db.execute(
            f"SELECT * FROM deploys{where} ORDER BY started_at DESC, id DESC", args).fetchall()
        return [_deploy(r) for r in rows]

    # -- restores --------------------------------------------------------------------------

    def begin_restore(self, app: str, *, source: str, strategy: RestoreStrategy, database: str,
                      tables: Sequence[str], by: str, t: float,
                      incident: int | None = None) -> Restore:
        """Journal a restore before it touches the database, linked to its deploy (the one
        whose restore point or clone is ``source``, else ``app``'s latest) and to ``incident``
        (default: the incident open now, if any)."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT id FROM deploys WHERE app = ?1"
                " ORDER BY (restore_point = ?2 OR coalesce(clone = ?2, 0)) DESC,"
                " started_at DESC, id DESC LIMIT 1", (app, source)).fetchone()
            deploy = None if row is None else int(row["id"])
            if incident is None:
                latest = db.execute(
                    "SELECT incident, kind FROM decisions ORDER BY id DESC LIMIT 1").fetchone()
                if latest is not None and latest["kind"] != "resolve":
                    incident = int(latest["incident"])
            cur = db.execute(
                "INSERT INTO restores (app, started_at, source, strategy, database, tables,"
                " requested_by, deploy, incident) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (app, t, source, strategy, database, json.dumps(list(tables)), by, deploy,
                 incident))
            restore_id = int(cur.lastrowid or 0)
        restore = self.restore(restore_id)
        assert restore is not None
        return restore

    def finish_restore(self, restore_id: int, outcome: RestoreOutcome, *,
                       close_incident: bool = True) -> Restore:
        """Journal how the restore ended, in one transaction with what follows from it: a
        whole-database restore that completed marks its deploy ``rolled_back`` (and, by hand,
        is journaled as a runbook end for the engine); one that was also validated, with
        ``close_incident``, closes its incident if still open (a ``close`` event, which the
        daemon turns into the incident's ``resolve`` decision)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE restores SET finished_at = ?, status = ?,"
                " database = coalesce(?, database), kept = ?, kept_kind = ?, safety_backup = ?,"
                " data_window_start = ?, data_window_end = ?, error = ?, report = ?"
                " WHERE id = ?",
                (outcome.finished_at, outcome.status, outcome.database, outcome.kept,
                 outcome.kept_kind, outcome.safety_backup, outcome.data_window_start,
                 outcome.data_window_end, outcome.error,
                 None if outcome.report is None else json.dumps(outcome.report, sort_keys=True),
                 restore_id))
            row = db.execute("SELECT * FROM restores WHERE id = ?", (restore_id,)).fetchone()
            if row is None:
                raise JournalError(f"{self.path}: no restore {restore_id}")
            restore = _restore(row)
            if restore.rolls_back_deploy and restore.deploy is not None:
                db.execute(_ROLL_BACK_DEPLOY, (outcome.finished_at, restore.deploy))
            if close_incident and restore.rolls_back_deploy:
                # A restore by hand is a rollback the engine must know of: it ends a journaled
                # migration failure's hold and leaves that deploy nothing to roll back to (the
                # executor journals its own runbook events instead).
                self._insert_event(db, outcome.finished_at, {
                    "type": "runbook", "phase": "end", "incident": None,
                    "runbook": "restore_by_hand", "status": "succeeded", "restored": True,
                    "restore": restore.id})
            if (close_incident and restore.status == "restored"
                    and restore.incident is not None
                    and self._incident_open(db, restore.incident)):
                self._insert_event(db, outcome.finished_at, {
                    "type": "close", "incident": restore.incident, "by": restore.requested_by,
                    "decision": f"rolled back by hand ({restore.describe()})"})
        return restore

    @staticmethod
    def _incident_open(db: sqlite3.Connection, incident: int) -> bool:
        row = db.execute("SELECT kind FROM decisions WHERE incident = ? ORDER BY id DESC"
                         " LIMIT 1", (incident,)).fetchone()
        return row is not None and row["kind"] != "resolve"

    @_reads
    def restore(self, restore_id: int) -> Restore | None:
        row = self._db.execute("SELECT * FROM restores WHERE id = ?", (restore_id,)).fetchone()
        return None if row is None else _restore(row)

    @_reads
    def restores(self, *, app: str | None = None, incident: int | None = None,
                 deploy: int | None = None, limit: int = 100) -> list[Restore]:
        """Restores, newest first; filtered by app, incident, deploy."""
        where, args = _where(("app = ?", app), ("incident = ?", incident),
                             ("deploy = ?", deploy))
        rows = self._db.execute(f"SELECT * FROM restores{where} ORDER BY id DESC LIMIT ?",
                                [*args, limit]).fetchall()
        return [_restore(r) for r in rows]

    # -- runbook runs, steps, pages --------------------------------------------------------

    def begin_run(self, app: str, *, incident: int | None, runbook: str, action: str,
                  scenario: str, by: str, t: float, deadline: float, deploy: int | None,
                  restore_point: str | None, plan: Sequence[str]) -> Run:
        with self._transaction() as db:
            cur = db.execute(
                "INSERT INTO runs (app, incident, runbook, action, scenario, requested_by,"
                " started_at, deadline, deploy, restore_point, plan)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (app, incident, runbook, action, scenario, by, t, deadline, deploy,
                 restore_point, json.dumps(list(plan))))
            run_id = int(cur.lastrowid or 0)
            # The engine's record of the run (policies.events): every decision of the
            # incident pages from now on, and the watch period follows the run's end.
            self._insert_event(db, t, {"type": "runbook", "phase": "begin",
                                       "incident": incident, "runbook": runbook,
                                       "run": run_id})
        run = self.run(run_id)
        assert run is not None
        return run

    def finish_run(self, run_id: int, status: RunStatus, summary: str, t: float) -> Run:
        """End a run, and tell the engine in the same transaction (a ``runbook`` end event:
        succeeded or failed, and whether the run put the database back)."""
        with self._transaction() as db:
            db.execute("UPDATE runs SET status = ?, summary = ?, ended_at = ? WHERE id = ?",
                       (status, summary, t, run_id))
            row = db.execute("SELECT incident, runbook FROM runs WHERE id = ?",
                             (run_id,)).fetchone()
            restored = db.execute(
                "SELECT count(*) FROM run_steps WHERE run = ? AND outcome = 'ok'"
                " AND kind IN ('restore_database', 'run_down_migration')",
                (run_id,)).fetchone()[0] > 0
            if row is not None:
                self._insert_event(db, t, {
                    "type": "runbook", "phase": "end", "incident": row["incident"],
                    "runbook": row["runbook"], "run": run_id,
                    "status": "succeeded" if status == "succeeded" else "failed",
                    "restored": bool(restored)})
        run = self.run(run_id)
        assert run is not None
        return run

    def note_run_fleet(self, run_id: int, fleet: str) -> Run:
        """Record the fleet incident ``run_id`` was this host's part of (its description)."""
        with self._transaction() as db:
            cur = db.execute("UPDATE runs SET fleet = ? WHERE id = ?", (fleet, run_id))
            if cur.rowcount == 0:
                raise JournalError(f"{self.path}: no run {run_id}")
        run = self.run(run_id)
        assert run is not None
        return run

    def begin_step(self, run_id: int, idx: int, kind: str, attempt: int, t: float) -> int:
        with self._transaction() as db:
            cur = db.execute(
                "INSERT INTO run_steps (run, idx, kind, attempt, started_at)"
                " VALUES (?, ?, ?, ?, ?)", (run_id, idx, kind, attempt, t))
            return int(cur.lastrowid or 0)

    def end_step(self, step_id: int, outcome: StepOutcome, message: str, output: str,
                 details: Mapping[str, Any], t: float) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE run_steps SET ended_at = ?, outcome = ?, message = ?, output = ?,"
                " details = ? WHERE id = ?",
                (t, outcome, message, output, json.dumps(details, sort_keys=True, default=str),
                 step_id))

    @_reads
    def run(self, run_id: int) -> Run | None:
        row = self._db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else _run(row)

    @_reads
    def runs(self, *, status: RunStatus | None = None, incident: int | None = None,
             limit: int = 100) -> list[Run]:
        """Runs, newest first."""
        where, args = _where(("status = ?", status), ("incident = ?", incident))
        rows = self._db.execute(f"SELECT * FROM runs{where} ORDER BY id DESC LIMIT ?",
                                [*args, limit]).fetchall()
        return [_run(r) for r in rows]

    @_reads
    def steps(self, run_id: int) -> list[RunStep]:
        """Every attempt at every step of a run, in the order they began."""
        rows = self._db.execute("SELECT * FROM run_steps WHERE run = ? ORDER BY id",
                                (run_id,)).fetchall()
        return [_run_step(r) for r in rows]

    def add_page(self, app: str, *, t: float, incident: int | None, run: int | None,
                 level: int, template: str, summary: str, details: Mapping[str, Any],
                 dedup_key: str, event: PageEvent = "trigger", recipient: str = "",
                 channels: Sequence[str] | None = None, next_at: float | None = None) -> Page:
        """Put a page in the outbox once per ``dedup_key``; the page already there when it
        exists. The running daemon renders and delivers it, from ``next_at`` when given (a
        process sending it itself keeps the daemon from sending it too)."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO pages (t, app, incident, run, level, template, summary,"
                " details, dedup_key, event, recipient, channels, next_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (t, app, incident, run, level, template, summary,
                 json.dumps(details, sort_keys=True, default=str), dedup_key, event,
                 recipient, None if channels is None else json.dumps(list(channels)),
                 next_at))
        row = self._db.execute("SELECT * FROM pages WHERE dedup_key = ?",
                               (dedup_key,)).fetchone()
        return _page(row)

    @_reads
    def pages(self, *, incident: int | None = None, limit: int = 100) -> list[Page]:
        """Pages, oldest first."""
        where, args = ("", [limit]) if incident is None else (
            " WHERE incident = ?", [incident, limit])
        rows = self._db.execute(f"SELECT * FROM pages{where} ORDER BY id LIMIT ?",
                                args).fetchall()
        return [_page(r) for r in rows]

    @_reads
    def page(self, page_id: int) -> Page | None:
        row = self._db.execute("SELECT * FROM pages WHERE id = ?", (page_id,)).fetchone()
        return None if row is None else _page(row)

    @_reads
    def pending_pages(self, now: float, limit: int = 50) -> list[Page]:
        """Pages the outbox must (try to) deliver now, oldest first."""
        rows = self._db.execute(
            "SELECT * FROM pages WHERE status = 'pending' AND (next_at IS NULL OR next_at <= ?)"
            " ORDER BY id LIMIT ?", (now, limit)).fetchall()
        return [_page(r) for r in rows]

    @_reads
    def undelivered(self) -> tuple[int, float | None]:
        """How many pages wait for delivery, and when the oldest was journaled."""
        row = self._db.execute(
            "SELECT count(*), min(t) FROM pages WHERE status = 'pending'").fetchone()
        return int(row[0]), None if row[1] is None else float(row[1])

    def render_page(self, page_id: int, title: str, text: str) -> None:
        """Keep what the page says before it is first sent: a re-send says the same."""
        with self._transaction() as db:
            db.execute("UPDATE pages SET title = ?, text = ? WHERE id = ? AND title IS NULL",
                       (title, text, page_id))

    def page_recorded(self, page_id: int) -> None:
        """No channel to send it through: the journal is where the page is."""
        with self._transaction() as db:
            db.execute("UPDATE pages SET status = 'recorded' WHERE id = ? AND status = 'pending'",
                       (page_id,))

    def page_attempted(self, page_id: int, t: float, attempts: Sequence[PageAttempt], *,
                       delivered_by: str | None, next_at: float | None) -> None:
        """One delivery round: each channel's attempt, and the page delivered (by the
        channel named) or due again at ``next_at``."""
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO page_attempts (page, t, channel, ok, tries, receipt, error)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(page_id, a.t, a.channel, int(a.ok), a.tries, a.receipt, a.error)
                 for a in attempts])
            errors = "; ".join(f"{a.channel}: {a.error}" for a in attempts if not a.ok)
            if delivered_by is not None:
                db.execute("UPDATE pages SET status = 'delivered', tries = tries + 1,"
                           " delivered_at = ?, delivered_by = ?, next_at = NULL WHERE id = ?",
                           (t, delivered_by, page_id))
            else:
                db.execute("UPDATE pages SET tries = tries + 1, next_at = ?, last_error = ?"
                           " WHERE id = ?", (next_at, errors or None, page_id))

    @_reads
    def page_attempts(self, page_id: int) -> list[PageAttempt]:
        rows = self._db.execute("SELECT * FROM page_attempts WHERE page = ? ORDER BY id",
                                (page_id,)).fetchall()
        return [PageAttempt(int(r["page"]), float(r["t"]), r["channel"], bool(r["ok"]),
                            int(r["tries"]), r["receipt"], r["error"]) for r in rows]

    @_reads
    def events_of_type(self, kind: str, since: float = 0.0,
                       incident: int | None = None) -> list[JournalEvent]:
        """Events of one type (``ack``, ``close``, ``annotate``...), oldest first; only those
        of ``incident`` when given."""
        query = "SELECT id, t, payload FROM events WHERE type = ? AND t >= ?"
        args: list[Any] = [kind, since]
        if incident is not None:
            if not _fits(incident):
                return []
            query += " AND json_extract(payload, '$.incident') = ?"
            args.append(incident)
        rows = self._db.execute(query + " ORDER BY id", args).fetchall()
        return [JournalEvent(int(r["id"]), float(r["t"]), json.loads(r["payload"])) for r in rows]

    # -- drills ----------------------------------------------------------------------------

    def add_drill(self, t: float, backup: str, ok: bool, duration: float,
                  details: Mapping[str, Any]) -> int:
        with self._transaction() as db:
            cur = db.execute(
                "INSERT INTO drills (t, backup, ok, duration, payload) VALUES (?, ?, ?, ?, ?)",
                (t, backup, int(ok), duration, json.dumps(details, sort_keys=True)),
            )
            return int(cur.lastrowid or 0)

    @_reads
    def latest_drill(self, *, ok: bool | None = None) -> Drill | None:
        """The newest drill, or the newest that succeeded (``ok=True``) or failed."""
        if ok is None:
            row = self._db.execute("SELECT * FROM drills ORDER BY t DESC, id DESC LIMIT 1")
        else:
            row = self._db.execute(
                "SELECT * FROM drills WHERE ok = ? ORDER BY t DESC, id DESC LIMIT 1", (int(ok),)
            )
        found = row.fetchone()
        if found is None:
            return None
        return Drill(id=int(found["id"]), t=float(found["t"]), backup=found["backup"],
                     ok=bool(found["ok"]), duration=float(found["duration"]),
                     details=json.loads(found["payload"]))

    # -- annotations (a person's root cause and prevention for an incident's report) --------

    @_reads
    def annotation(self, incident: int) -> Annotation:
        """The latest root cause and prevention written for ``incident`` (``annotate``
        events; each field keeps the latest event that gave it)."""
        if not _fits(incident):
            return Annotation()
        rows = self._db.execute(
            "SELECT t, payload FROM events WHERE type = 'annotate'"
            " AND json_extract(payload, '$.incident') = ? ORDER BY id", (incident,)).fetchall()
        found = Annotation()
        for row in rows:
            found = found.updated(float(row["t"]), json.loads(row["payload"]))
        return found


@dataclass(frozen=True, slots=True)
class Noted:
    """One field of an incident's annotation: the text, who wrote it, when."""

    text: str
    by: str
    t: float

    def as_json(self) -> dict[str, Any]:
        return {"text": self.text, "by": self.by, "t": self.t}


@dataclass(frozen=True, slots=True)
class Annotation:
    """What people wrote into an incident's report (``rollbackd incidents annotate``)."""

    root_cause: Noted | None = None
    prevention: Noted | None = None

    @property
    def complete(self) -> bool:
        return self.root_cause is not None and self.prevention is not None

    def updated(self, t: float, payload: Mapping[str, Any]) -> Annotation:
        by = str(payload.get("by", ""))
        root, prevention = payload.get("root_cause"), payload.get("prevention")
        return Annotation(
            root_cause=Noted(root, by, t) if isinstance(root, str) and root else self.root_cause,
            prevention=(Noted(prevention, by, t) if isinstance(prevention, str) and prevention
                        else self.prevention))

    def as_json(self) -> dict[str, Any]:
        return {"root_cause": None if self.root_cause is None else self.root_cause.as_json(),
                "prevention": None if self.prevention is None else self.prevention.as_json()}


_DEPLOY_STATUSES: tuple[DeployStatus, ...] = get_args(DeployStatus)


def _deploy_status(value: str) -> DeployStatus:
    return _one_of("deploy status", value, _DEPLOY_STATUSES)


def _deploy(row: sqlite3.Row) -> Deploy:
    return Deploy(
        id=int(row["id"]), app=row["app"], version=row["version"],
        started_at=float(row["started_at"]),
        ended_at=None if row["ended_at"] is None else float(row["ended_at"]),
        status=_deploy_status(row["status"]), code_version=row["code_version"],
        restore_point=row["restore_point"],
        restore_point_verified=bool(row["restore_point_verified"]),
        clone=row["clone"],
    )


_STRATEGIES: tuple[RestoreStrategy, ...] = get_args(RestoreStrategy)
_RESTORE_STATUSES: tuple[RestoreStatus, ...] = get_args(RestoreStatus)
_KEPT_KINDS: tuple[KeptKind, ...] = get_args(KeptKind)
_Choice = TypeVar("_Choice", bound=str)


def _one_of(what: str, value: object, allowed: tuple[_Choice, ...]) -> _Choice:
    for choice in allowed:
        if value == choice:
            return choice
    raise sqlite3.DataError(f"{what} {value!r} is not one of {', '.join(allowed)}")


def _restore(row: sqlite3.Row) -> Restore:
    kept_kind = row["kept_kind"]
    return Restore(
        id=int(row["id"]), app=row["app"], started_at=float(row["started_at"]),
        finished_at=None if row["finished_at"] is None else float(row["finished_at"]),
        source=row["source"], strategy=_one_of("restore strategy", row["strategy"], _STRATEGIES),
        database=row["database"], tables=tuple(json.loads(row["tables"])),
        requested_by=row["requested_by"], deploy=row["deploy"], incident=row["incident"],
        status=_one_of("restore status", row["status"], _RESTORE_STATUSES),
        kept=row["kept"],
        kept_kind=None if kept_kind is None else _one_of("kept kind", kept_kind, _KEPT_KINDS),
        safety_backup=row["safety_backup"], data_window_start=row["data_window_start"],
        data_window_end=row["data_window_end"], error=row["error"])


def _fits(number: int) -> bool:
    """Whether ``number`` can be an incident number: SQLite integers are 64-bit."""
    return -(2**63) <= number < 2**63


def _where(*filters: tuple[str, str | float | None]) -> tuple[str, list[str | float]]:
    """A WHERE clause of the filters given a value (``("app = ?", app)``), and its arguments."""
    given = [(clause, value) for clause, value in filters if value is not None]
    if not given:
        return "", []
    return (" WHERE " + " AND ".join(clause for clause, _ in given),
            [value for _, value in given if value is not None])


def _run(row: sqlite3.Row) -> Run:
    return Run(
        id=int(row["id"]), app=row["app"], incident=row["incident"], runbook=row["runbook"],
        action=row["action"], scenario=row["scenario"], requested_by=row["requested_by"],
        started_at=float(row["started_at"]), deadline=float(row["deadline"]),
        ended_at=None if row["ended_at"] is None else float(row["ended_at"]),
        status=_one_of("run status", row["status"], get_args(RunStatus)),
        deploy=row["deploy"], restore_point=row["restore_point"],
        plan=tuple(json.loads(row["plan"])), summary=row["summary"], fleet=row["fleet"])


def _run_step(row: sqlite3.Row) -> RunStep:
    outcome = row["outcome"]
    return RunStep(
        id=int(row["id"]), run=int(row["run"]), idx=int(row["idx"]), kind=row["kind"],
        attempt=int(row["attempt"]), started_at=float(row["started_at"]),
        ended_at=None if row["ended_at"] is None else float(row["ended_at"]),
        outcome=None if outcome is None else _one_of("step outcome", outcome,
                                                     get_args(StepOutcome)),
        message=row["message"], output=row["output"],
        details=json.loads(row["details"]) if row["details"] else {})


def _page(row: sqlite3.Row) -> Page:
    return Page(
        id=int(row["id"]), t=float(row["t"]), app=row["app"], incident=row["incident"],
        run=row["run"], level=int(row["level"]), template=row["template"],
        summary=row["summary"], details=json.loads(row["details"]),
        dedup_key=row["dedup_key"],
        status=_one_of("page status", row["status"], get_args(PageStatus)),
        event=_one_of("page event", row["event"], get_args(PageEvent)),
        recipient=row["recipient"],
        channels=None if row["channels"] is None else tuple(json.loads(row["channels"])),
        title=row["title"], text=row["text"], tries=int(row["tries"]), next_at=row["next_at"],
        delivered_at=row["delivered_at"], delivered_by=row["delivered_by"],
        last_error=row["last_error"])
