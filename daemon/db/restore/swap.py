"""The swap strategy: restore beside the live database, then trade names.

pg_restore -j N into a fresh ``<db>_shadow_<ts>``, database-level settings, grants, owner
and connection limit copied from the live database, ANALYZE, validation; then, from the
maintenance database (:func:`swap_in`, shared with the clone strategy):

1. the validated replacement is marked: ``COMMENT ON DATABASE <shadow> IS 'rollbackd swap in
   progress: {json}'`` naming live, the replacement and the name live goes aside as;
2. connections to live are blocked and its sessions terminated (bounded by
   ``backups.terminate_timeout``);
3. live is renamed to ``<db>_rolledback_<ts>``;
4. the replacement is renamed to the live name;
5. the kept copy takes connections again (people read the newer data from it);
6. the marker is removed.

Connections are refused only during 2-4 (``blocked_seconds``). A failure before 3 re-allows
connections and drops the shadow: live is untouched; a failure of 4 renames live back.

A process killed at any point leaves a state :func:`recover_interrupted_swap` recognises and
finishes: before 3 (a shadow being filled or unvalidated, or a marked one while live is
blocked) it is reverted (shadow dropped, live allowed again); after 3 it is completed (the
marked replacement was validated; it is renamed to live, the kept copy allowed, the marker
removed). Without a marker (a swap by an older rollbackd), live missing beside the newest
``_rolledback_`` copy still refusing connections, or with a shadow of the same timestamp, is
reverted by renaming that copy back. Anything else with live missing is left to a person, with
the exact statement naming the kept copy. Every restore runs the recovery first (under the
lock); the daemon runs it at start-up; ``status`` reports :func:`inspect_interrupted_swap`'s
read-only view.

``ROLLBACKD_TEST_HOLD`` (:func:`daemon.durable.hold_point`) stops the process at the named steps
``swap:shadow_created``, ``swap:shadow_filled``, ``swap:marked``, ``swap:connections_blocked``,
``swap:after_first_rename``, ``swap:after_second_rename`` and ``swap:aside_allowed``.
"""
from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg import sql

from daemon.db.admin import (
    DatabaseProperties,
    RestoreError,
    RestoreOptions,
    admin_session,
    apply_properties,
    create_like,
    database_properties,
    derived_name,
    drop_quietly,
    session,
    terminate_sessions,
)
from daemon.db.backups import BackupStore, Manifest
from daemon.db.restore.common import (
    RestoreReport,
    locked,
    pg_restore,
    validate_live,
    verified_manifest,
)
from daemon.db.validate import summary, validate_data, validate_database
from daemon.durable import hold_point
from daemon.fmt import db_stamp, when
from daemon.locks import ROLLBACK_LOCK_KEY
from probes.base import one_line
from probes.pg import with_dbname

SHADOW_INFIX = "_shadow_"
ASIDE_INFIX = "_rolledback_"
SWAP_MARKER = "rollbackd swap in progress: "
"""The comment on a validated replacement while it is being swapped in (JSON follows)."""


def name_pattern(live: str, infix: str) -> re.Pattern[str]:
    """Names ``derived_name(live, infix + <14 digits>)``; group 1 is the timestamp."""
    prefix = derived_name(live, infix + "0" * 14)[:-14]
    return re.compile(re.escape(prefix) + r"(\d{14})$")


@dataclass(frozen=True, slots=True)
class SwapMarker:
    """What a swap writes on the replacement before it touches live: enough for a later
    process to finish or undo it. Set only once the replacement passed validation."""

    live: str
    replacement: str
    aside: str
    kind: Literal["shadow", "clone"]
    source: str
    """The backup id (shadow) or the clone's name."""
    validated_at: float
    previous_comment: str | None = None
    """The replacement's own comment (a clone's), put back if the swap is reverted."""

    def comment(self) -> str:
        return SWAP_MARKER + json.dumps({
            "live": self.live, "replacement": self.replacement, "aside": self.aside,
            "kind": self.kind, "source": self.source, "validated_at": self.validated_at,
            "previous_comment": self.previous_comment}, sort_keys=True)

    @classmethod
    def parse(cls, comment: str | None) -> SwapMarker | None:
        if not comment or not comment.startswith(SWAP_MARKER):
            return None
        try:
            data = json.loads(comment[len(SWAP_MARKER):])
            return cls(live=str(data["live"]), replacement=str(data["replacement"]),
                       aside=str(data["aside"]),
                       kind="clone" if data["kind"] == "clone" else "shadow",
                       source=str(data["source"]), validated_at=float(data["validated_at"]),
                       previous_comment=None if data.get("previous_comment") is None
                       else str(data["previous_comment"]))
        except (ValueError, KeyError, TypeError):
            return None


def restore_swap(store: BackupStore, backup_id: str, options: RestoreOptions) -> RestoreReport:
    """Restore ``backup_id`` into a shadow database, validate it, and swap it in. A swap
    interrupted earlier is completed or reverted first (the report's notes say which)."""
    live = options.database
    manifest = verified_manifest(store, backup_id, live, whole=True)
    with locked(options, f"swap restore of {backup_id}"):
        started = time.time()
        stamp = db_stamp(started)
        shadow = derived_name(live, SHADOW_INFIX + stamp)
        aside = derived_name(live, ASIDE_INFIX + stamp)
        with admin_session(options) as admin:
            recovery = recover_swap_locked(admin, options)
            props = database_properties(admin, live)
            create_like(admin, shadow, props)
        try:
            hold_point("swap:shadow_created")
            restore_into(store, manifest, options, shadow, props)
            hold_point("swap:shadow_filled")
            validate_replacement(options, shadow, manifest)
            marker = SwapMarker(live=live, replacement=shadow, aside=aside, kind="shadow",
                                source=manifest.id, validated_at=time.time())
            with admin_session(options) as admin:
                blocked = swap_in(admin, options, marker)
        except BaseException:
            drop_quietly(options, shadow)
            raise
        validation = validate_live(options, manifest)
        return RestoreReport(
            strategy="swap", backup_id=manifest.id, source=manifest.id, database=live,
            started_at=started, finished_at=time.time(),
            data_window_start=manifest.created_at, data_window_end=started, kept=aside,
            kept_kind="database", blocked_seconds=round(blocked, 3),
            validation=validation, notes=recovery.notes())


def restore_into(store: BackupStore, manifest: Manifest, options: RestoreOptions, name: str,
                 props: DatabaseProperties | None) -> None:
    """Fill the new, empty database ``name`` from the backup (pg_restore -j N, stopping at
    the first error), give it ``props``' settings, grants and owner, and ANALYZE it: the
    swap's shadow and the drill's scratch database are made alike."""
    pg_restore(store, manifest, options, name, ["-j", str(options.jobs), "--exit-on-error"])
    finish_replacement(options, name, props)


def finish_replacement(options: RestoreOptions, name: str,
                        props: DatabaseProperties | None) -> None:
    if props is not None:
        with admin_session(options) as admin:
            apply_properties(admin, name, props)
    with session(with_dbname(options.dsn, name), options) as conn:
        conn.execute("ANALYZE")


def validate_replacement(options: RestoreOptions, name: str, manifest: Manifest | None) -> None:
    """The database to be swapped in must pass validation, or live stays as it is."""
    target = with_dbname(options.dsn, name)
    results = validate_database(target, expected_tables=options.expected_tables,
                                checks=options.checks, timeout=options.statement_timeout,
                                connect_timeout=options.connect_timeout)
    if manifest is not None and options.key_tables:
        results += validate_data(target, manifest, options.key_tables,
                                 timeout=options.statement_timeout,
                                 connect_timeout=options.connect_timeout)
    if not all(r.ok for r in results):
        raise RestoreError(f"the restored database {name} failed validation, so it was not "
                           f"swapped in (live is untouched): {summary(results)}")


def swap_in(admin: psycopg.Connection[Any], options: RestoreOptions,
            marker: SwapMarker) -> float:
    """Mark the validated replacement, rename live aside and the replacement to live (see the
    module docstring); seconds live refused connections."""
    live, replacement, aside = marker.live, marker.replacement, marker.aside
    _set_comment(admin, replacement, marker.comment())
    hold_point("swap:marked")
    blocked_at = time.monotonic()
    try:
        _allow_connections(admin, live, allow=False)
        hold_point("swap:connections_blocked")
        _rename_when_free(admin, live, aside, time.monotonic() + options.terminate_timeout)
    except BaseException:
        with contextlib.suppress(psycopg.Error):
            _allow_connections(admin, live, allow=True)
        with contextlib.suppress(psycopg.Error):
            _set_comment(admin, replacement, marker.previous_comment)
        raise
    hold_point("swap:after_first_rename")
    try:
        _rename_when_free(admin, replacement, live, time.monotonic() + options.terminate_timeout)
    except BaseException as exc:
        _put_back(admin, aside, live, exc)
        with contextlib.suppress(psycopg.Error):
            _set_comment(admin, replacement, marker.previous_comment)
        raise
    blocked = time.monotonic() - blocked_at
    hold_point("swap:after_second_rename")
    # The kept database is for people to read the newer data from: let them in. The swap
    # has happened by now, so a failure here must not make it look as if it had not (the
    # marker stays, and the next recovery finishes this).
    with contextlib.suppress(psycopg.Error):
        _allow_connections(admin, aside, allow=True)
        hold_point("swap:aside_allowed")
        _set_comment(admin, live, None)
    return blocked


def _allow_connections(admin: psycopg.Connection[Any], name: str, *, allow: bool) -> None:
    admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
        sql.Identifier(name), sql.SQL("true" if allow else "false")))


def _set_comment(admin: psycopg.Connection[Any], name: str, comment: str | None) -> None:
    admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
        sql.Identifier(name), sql.SQL("NULL") if comment is None else sql.Literal(comment)))


def _put_back(admin: psycopg.Connection[Any], aside: str, live: str, why: BaseException) -> None:
    try:
        admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
            sql.Identifier(aside), sql.Identifier(live)))
        _allow_connections(admin, live, allow=True)
    except psycopg.Error as exc:
        raise RestoreError(
            f"the swap failed after renaming {live} to {aside} ({one_line(why)}) and the old "
            f"name could not be put back ({one_line(exc)}): there is NO database {live} now; "
            f"run ALTER DATABASE {aside} RENAME TO {live}; ALTER DATABASE {live} "
            "ALLOW_CONNECTIONS true (or `rollbackd backup recover`)") from None


def _rename_when_free(admin: psycopg.Connection[Any], old: str, new: str,
                      deadline: float) -> None:
    """Terminate ``old``'s sessions and rename it, retrying while sessions linger."""
    while True:
        left = terminate_sessions(admin, old, deadline)
        try:
            admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                sql.Identifier(old), sql.Identifier(new)))
            return
        except psycopg.errors.ObjectInUse as exc:
            if time.monotonic() >= deadline:
                raise RestoreError(
                    f"database {old} could not be renamed: sessions would not end within "
                    f"backups.terminate_timeout ({len(left)} left: pids "
                    f"{', '.join(map(str, left)) or 'none visible'}; prepared transactions "
                    f"also hold it): {one_line(exc)}") from None
            time.sleep(0.05)


# -- recovery of an interrupted swap --------------------------------------------------------

RecoveryState = Literal["none", "shadow_left", "before_rename", "between_renames", "swapped",
                        "live_missing", "live_blocked", "unexpected"]
RecoveryOutcome = Literal["nothing", "reverted", "completed", "needs_operator"]


@dataclass(frozen=True, slots=True)
class _Step:
    do: str
    """What it will do (``drop database x``)."""
    done: str
    """What it did (``dropped database x``)."""
    run: Callable[[psycopg.Connection[Any], float], None]


@dataclass(slots=True)
class SwapRecovery:
    """What an interrupted swap of ``database`` left, and what recovery did (or, from
    :func:`inspect_interrupted_swap`, would do) about it.

    ``state``: ``none``; ``shadow_left`` (a shadow being filled, or not validated: live
    untouched); ``before_rename`` (validated and marked, live perhaps refusing connections,
    nothing renamed); ``between_renames`` (live renamed aside, the replacement not yet
    renamed: there is no live database); ``swapped`` (both renamed; the kept copy still
    refusing connections or the marker left); ``live_missing`` (no live database and nothing
    says which copy to bring back); ``live_blocked`` (live refuses connections and no swap
    explains it); ``unexpected`` (a marker that fits no step).

    ``outcome``: ``nothing``, ``reverted`` (live holds the data it had before the swap),
    ``completed`` (live holds the restored data; the previous data is kept in ``kept``), or
    ``needs_operator`` (nothing changed; ``advice`` says what to run).
    """

    database: str
    state: RecoveryState
    outcome: RecoveryOutcome
    found: str
    """What was found, in a person's words."""
    steps: list[_Step] = field(default_factory=list)
    live_holds: Literal["previous", "restored"] | None = None
    kept: str | None = None
    """The database holding live's data from before the interrupted swap (completed)."""
    advice: str | None = None
    applied: bool = False
    """Whether the steps were carried out (False: inspected only, or nothing to do)."""
    lock_holder: str | None = None
    """Inspection only: a rollback holds the lock now, so this may be a swap in progress."""

    @property
    def actions(self) -> list[str]:
        return [s.done if self.applied else s.do for s in self.steps]

    @property
    def needs_operator(self) -> bool:
        return self.outcome == "needs_operator"

    def describe(self) -> list[str]:
        live = self.database
        if self.state == "none":
            return [f"no interrupted swap of {live}"]
        lines = [f"interrupted swap of {live} found: {self.found}"]
        if self.lock_holder is not None:
            lines.append(f"note: a rollback holds the lock now ({self.lock_holder}): this may "
                         "be a swap in progress rather than an interrupted one")
        if self.needs_operator:
            lines.append(f"needs a person: {self.advice}")
            return lines
        if self.applied:
            lines.append(f"{self.outcome} the interrupted swap: {'; '.join(self.actions)}")
        else:
            verb = "complete" if self.outcome == "completed" else "revert"
            lines.append(f"would {verb} it: {'; '.join(self.actions)}")
        then = "" if self.applied else "then "
        if self.live_holds == "restored":
            lines.append(f"{live} {then}holds the restored data"
                         + (f"; the data as it was before the restore is kept in {self.kept}"
                            if self.kept else ""))
        elif self.live_holds == "previous":
            lines.append(f"{live} {then}holds the data it had before the restore")
        return lines

    def notes(self) -> list[str]:
        """For a restore's report: nothing when there was nothing to recover."""
        return [] if self.state == "none" else self.describe()

    def as_json(self) -> dict[str, Any]:
        return {"database": self.database, "state": self.state, "outcome": self.outcome,
                "found": self.found, "actions": self.actions, "live_holds": self.live_holds,
                "kept": self.kept, "advice": self.advice, "applied": self.applied,
                "lock_holder": self.lock_holder, "lines": self.describe()}


def recover_interrupted_swap(options: RestoreOptions) -> SwapRecovery:
    """Find what a killed swap (or clone swap) of ``options.database`` left and complete or
    revert it; the returned :class:`SwapRecovery` says which. Takes the rollback lock unless
    ``options.take_lock`` is false (:class:`daemon.locks.LockError` while another rollback
    holds it). ``RestoreError`` when a step fails (naming what was done before it); a state
    it must not decide alone comes back as ``outcome == "needs_operator"``, unchanged."""
    with locked(options, "recovery of an interrupted swap"), admin_session(options) as admin:
        return _recover(admin, options)


def swapped_in_since(options: RestoreOptions, since: float) -> SwapRecovery | None:
    """A swap of ``options.database`` that completed at or after ``since`` (this host's
    clock, like the names it gives): the newest kept copy set aside since then, with live in
    place; None when there is none. What is left to read when nothing was cut short but the
    process that swapped died before it could say so."""
    pattern = name_pattern(options.database, ASIDE_INFIX)
    with admin_session(options) as admin:
        names = [str(r[0]) for r in admin.execute("SELECT datname FROM pg_database")]
    if options.database not in names:
        return None
    stamp = db_stamp(since)
    aside = sorted((m.group(1), name) for name in names
                   if (m := pattern.fullmatch(name)) is not None and m.group(1) >= stamp)
    if not aside:
        return None
    kept = aside[-1][1]
    return SwapRecovery(database=options.database, state="none", outcome="completed",
                        found=f"{kept} was set aside since {when(since)}: a swap completed",
                        live_holds="restored", kept=kept)


def inspect_interrupted_swap(options: RestoreOptions) -> SwapRecovery:
    """:func:`recover_interrupted_swap`'s findings and plan, changing nothing and taking no
    lock (for ``status``); ``lock_holder`` is set when a rollback holds the lock now."""
    with admin_session(options) as admin:
        found = _plan(admin, options.database)
        found.lock_holder = _lock_holder(admin)
        return found


def recover_swap_locked(admin: psycopg.Connection[Any], options: RestoreOptions) -> SwapRecovery:
    """Recovery for a caller that holds the rollback lock (a restore about to swap): refuses
    with ``RestoreError`` when there is no live database to restore over."""
    recovery = _recover(admin, options)
    if recovery.needs_operator and recovery.state in ("live_missing", "unexpected"):
        raise RestoreError("refusing to restore: " + "; ".join(recovery.describe()))
    return recovery


def _recover(admin: psycopg.Connection[Any], options: RestoreOptions) -> SwapRecovery:
    plan = _plan(admin, options.database)
    if not plan.steps or plan.needs_operator:
        return plan
    done: list[str] = []
    for step in plan.steps:
        try:
            step.run(admin, time.monotonic() + options.terminate_timeout)
        except (psycopg.Error, RestoreError) as exc:
            raise RestoreError(
                f"recovering the interrupted swap of {options.database} ({plan.found}) failed "
                f"at: {step.do}: {one_line(exc)}; done before it: {'; '.join(done) or 'nothing'}"
                ) from None
        done.append(step.done)
    plan.applied = True
    return plan


@dataclass(frozen=True, slots=True)
class _Db:
    name: str
    allow: bool
    comment: str | None


def _plan(admin: psycopg.Connection[Any], live: str) -> SwapRecovery:
    dbs = {str(n): _Db(str(n), bool(a), None if c is None else str(c)) for n, a, c in
           admin.execute("SELECT datname, datallowconn, shobj_description(oid, 'pg_database')"
                         " FROM pg_database").fetchall()}
    marked = [(db, m) for db in dbs.values()
              if (m := SwapMarker.parse(db.comment)) is not None and m.live == live]
    shadow_re, aside_re = name_pattern(live, SHADOW_INFIX), name_pattern(live, ASIDE_INFIX)
    marked_names = {db.name for db, _ in marked}
    shadows = sorted(n for n in dbs if shadow_re.match(n) and n not in marked_names)
    asides = sorted(((g.group(1), n) for n in dbs if (g := aside_re.match(n))), reverse=True)
    if len(marked) > 1:
        names = ", ".join(sorted(db.name for db, _ in marked))
        return SwapRecovery(live, "unexpected", "needs_operator",
                            f"several databases are marked as being swapped in ({names})",
                            advice=f"decide which one is {live}; remove the others' comments")
    if marked:
        plan = _plan_marked(dbs, live, *marked[0])
    elif live not in dbs:
        return _plan_live_missing(dbs, live, shadows, asides)
    elif shadows:
        plan = SwapRecovery(live, "shadow_left", "reverted",
                            f"shadow {', '.join(shadows)} was being filled or had not passed "
                            f"validation; {live} was not touched", live_holds="previous")
    elif asides and not dbs[asides[0][1]].allow:
        aside = asides[0][1]
        return SwapRecovery(live, "swapped", "completed",
                            f"{live} was already swapped in; the copy kept of the previous "
                            f"{live}, {aside}, still refuses connections",
                            steps=[_allow(aside)], live_holds="restored", kept=aside)
    elif not dbs[live].allow:
        return SwapRecovery(live, "live_blocked", "needs_operator",
                            f"{live} refuses connections (ALLOW_CONNECTIONS false) and no "
                            "interrupted swap explains it",
                            advice="an interrupted in-place restore leaves it so too "
                                   "(recover_interrupted_in_place lets connections in again); "
                                   "otherwise, if nobody meant to block it, run ALTER DATABASE "
                                   f"{live} ALLOW_CONNECTIONS true")
    else:
        return SwapRecovery(live, "none", "nothing", "nothing left by a swap")
    if plan.needs_operator:
        return plan
    # Unmarked shadows never passed validation: live (there is one now) does not need them.
    live_blocked = live in dbs and not dbs[live].allow
    if live_blocked and not any(s.do == _allow(live).do for s in plan.steps):
        plan.steps.append(_allow(live))
    plan.steps += [_drop(name) for name in shadows]
    return plan


def _plan_marked(dbs: dict[str, _Db], live: str, holder: _Db,
                 marker: SwapMarker) -> SwapRecovery:
    aside = dbs.get(marker.aside)
    validated = f"validated at {when(marker.validated_at)}"
    what = (f"shadow {marker.replacement} restored from {marker.source}"
            if marker.kind == "shadow" else f"clone {marker.replacement}")
    if holder.name == live:
        steps = [] if aside is None or aside.allow else [_allow(marker.aside)]
        blocked = "" if aside is None or aside.allow else ", which still refuses connections"
        return SwapRecovery(
            live, "swapped", "completed",
            f"the {what} ({validated}) was already renamed to {live} and the previous {live} "
            f"to {marker.aside}{blocked}",
            steps=[*steps, _unmark(live)],
            live_holds="restored", kept=marker.aside if aside is not None else None)
    if holder.name != marker.replacement:
        return SwapRecovery(live, "unexpected", "needs_operator",
                            f"database {holder.name} carries the swap marker of "
                            f"{marker.replacement}", advice=f"check {holder.name} by hand")
    if live in dbs:
        if aside is not None:
            return SwapRecovery(live, "unexpected", "needs_operator",
                                f"{live}, {marker.aside} and {marker.replacement} all exist",
                                advice=f"decide which of them is {live}")
        blocked = "" if dbs[live].allow else f"; {live} refuses connections"
        undo = (_drop(marker.replacement) if marker.kind == "shadow" else
                _unmark_clone(marker.replacement, marker.previous_comment))
        return SwapRecovery(
            live, "before_rename", "reverted",
            f"the {what} ({validated}) was about to replace {live}, but nothing was renamed"
            + blocked,
            steps=([] if dbs[live].allow else [_allow(live)]) + [undo],
            live_holds="previous")
    if aside is None:
        return SwapRecovery(
            live, "live_missing", "needs_operator",
            f"there is no {live}, nor the copy {marker.aside} it was to be renamed to; the "
            f"{what} ({validated}) holds the restored data",
            advice=f"ALTER DATABASE {marker.replacement} RENAME TO {live}; COMMENT ON "
                   f"DATABASE {live} IS NULL")
    return SwapRecovery(
        live, "between_renames", "completed",
        f"{live} was renamed to {marker.aside}, but the {what} ({validated}) was not yet "
        f"renamed to {live}: there is no database {live}",
        steps=[_rename(marker.replacement, live),
               *([] if aside.allow else [_allow(marker.aside)]),
               _unmark(live)],
        live_holds="restored", kept=marker.aside)


def _plan_live_missing(dbs: dict[str, _Db], live: str, shadows: list[str],
                       asides: list[tuple[str, str]]) -> SwapRecovery:
    """No marker and no live database: only a swap by an older rollbackd explains it."""
    if not asides:
        return SwapRecovery(live, "live_missing", "needs_operator",
                            f"there is no database {live} and rollbackd kept no copy of it "
                            f"(no {live}{ASIDE_INFIX}* database)",
                            advice=f"restore {live} from a backup (rollbackd backup list)")
    stamp, newest = asides[0]
    twin = derived_name(live, SHADOW_INFIX + stamp)
    if dbs[newest].allow and twin not in dbs:
        return SwapRecovery(
            live, "live_missing", "needs_operator",
            f"there is no database {live}; the newest copy rollbackd kept of it is {newest} "
            "(it takes connections, so no interrupted swap left it: it was kept by a "
            "completed restore)",
            advice=f"to bring that copy back: ALTER DATABASE {newest} RENAME TO {live}")
    why = (f"shadow {twin} (not validated) was not yet swapped in" if twin in dbs
           else f"{newest} still refuses connections")
    return SwapRecovery(
        live, "between_renames", "reverted",
        f"{live} was renamed to {newest} but {why}: there is no database {live}",
        steps=[_rename(newest, live), _allow(live), *(_drop(s) for s in shadows)],
        live_holds="previous")


def _allow(name: str) -> _Step:
    return _Step(f"allow connections to {name}", f"allowed connections to {name}",
                 lambda admin, _: _allow_connections(admin, name, allow=True))


def _drop(name: str) -> _Step:
    def run(admin: psycopg.Connection[Any], _: float) -> None:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))
    return _Step(f"drop {name}", f"dropped {name}", run)


def _rename(old: str, new: str) -> _Step:
    return _Step(f"rename {old} to {new}", f"renamed {old} to {new}",
                 lambda admin, deadline: _rename_when_free(admin, old, new, deadline))


def _unmark(name: str) -> _Step:
    return _Step(f"remove the swap marker from {name}", f"removed the swap marker from {name}",
                 lambda admin, _: _set_comment(admin, name, None))


def _unmark_clone(name: str, comment: str | None) -> _Step:
    return _Step(f"put clone {name}'s own comment back", f"put clone {name}'s own comment back",
                 lambda admin, _: _set_comment(admin, name, comment))


def _lock_holder(admin: psycopg.Connection[Any]) -> str | None:
    row = admin.execute(
        "SELECT a.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a"
        " ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted"
        " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND l.classid = (%(key)s >> 32)::oid AND l.objid = (%(key)s & 4294967295)::oid"
        " AND l.objsubid = 1 LIMIT 1", {"key": ROLLBACK_LOCK_KEY}).fetchone()
    return None if row is None else f"session pid {row[0]} '{row[1]}'"
