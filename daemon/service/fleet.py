"""Fleet mode (``[fleet]``): this host's part in a rollback of several app hosts on one
database (DESIGN section 7), on top of :mod:`daemon.db.fleet`.

* A rollback this host's engine decides opens the fleet's incident, or joins the one open.
  The host that opened it takes the fleet's lock and runs the whole runbook; the database
  state (``restoring`` -> ``restored``/``failed``) is set as soon as its database steps are
  over, and the lock released then.
* Every other host follows: each cycle (at most every ``heartbeat``) one query says what is
  open; once the database is ``restored`` the host runs the runbook's follower part
  (:func:`policies.runbooks.fleet_follower`: its own app, code and configuration, no database
  step, no page) and records its ``code_state``. The followers do not stop their app while
  the database is restored: a follower runs only once the database part is over, so a fleet
  whose database turns out unchanged never goes down as a whole; what they write meanwhile
  lands in the kept copy, which the data window reports. Once its part succeeded after the
  whole database was put back, a host's own deploy reads ``rolled_back``, as the leader's
  does from its restore.
* ``restoring`` with the lock free: the host doing it died (its session ended). The next host
  whose look sees it takes the lock and observes the database by the recovery rules: a swap
  cut short is completed (``restored``: every host follows) or reverted (``failed``: nothing
  restored); nothing found is ``failed`` too (an in-place restore cut short, or a restore
  that ended unrecorded: the state is not known). Never a second restore for one incident;
  ``failed`` pages, from that host.
* Pages: the pages of this host's runs for a fleet incident carry the fleet's identity (app =
  the fleet's name, incident = the fleet incident's id: :meth:`Fleet.alias`), so Alertmanager
  and PagerDuty see one alert whichever host sends it; followers page nothing of their own
  but a failure.
* Approve and dry-run modes: a rollback that waits for a person is one fleet incident
  (``awaiting``), which each host's incident joins. The host that opened it pages for the
  fleet (the others leave their pages to it while its heartbeat is fresh and its own
  incident awaits: :meth:`Fleet.sending`). A person decides on any host: a rollback leads
  the database part from that host, and every other host approves its own incident for the
  fleet and follows (every host of the fleet, its incident open or not: its code must match
  the restored database); a dismissal or fix-forward ends the fleet incident, and every
  other host closes its own the same way. An acknowledgement on any host is recorded on the
  fleet incident and journaled by every other host: escalation stops everywhere.
* A host's incident that clears on its own before anyone decides is not a decision: the
  host leaves the fleet incident to the hosts still awaiting it (its page, the fleet's,
  stays up while one does) and the last one to leave ends it, nothing done. A host that
  was silent meanwhile and still awaits asks the fleet anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from daemon.config import Config
from daemon.db.fleet import (
    FINAL,
    CodeState,
    DbState,
    FleetDb,
    FleetError,
    FleetIncident,
    FleetLock,
    FleetStatus,
    FleetView,
)
from daemon.db.restore import RestoreError, RestoreOptions, SwapRecovery
from daemon.db.restore.swap import recover_interrupted_swap, swapped_in_since
from daemon.journal import IncidentSummary, Journal, JournalError, Page, Run, RunStep
from daemon.locks import LockError
from daemon.logs import get_logger
from daemon.ops.operator import DecisionError, record_decision
from daemon.paging.acks import acks_of, record_ack
from daemon.paging.outbox import Sending
from daemon.runbooks.context import RunRequest
from daemon.runbooks.executor import Executor, RunRefusedError, RunResult
from policies.policy import Policy
from policies.runbooks import (
    DATABASE_STEPS,
    FOLLOWER_SUFFIX,
    Runbook,
    fleet_follower,
    with_fleet_followers,
)

WATCH_EVERY = 0.25
"""Seconds between two looks at the leader's run for the end of its database steps."""

STALE_PENDING = 30.0
"""Seconds (beyond ALIVE_HEARTBEATS heartbeats, for the hosts' clocks) after which an
incident still ``pending`` with the lock free was opened by a host that died before taking
the lock: another host does the database part."""

JOIN_GRACE = 10.0
"""Seconds (beyond ALIVE_HEARTBEATS heartbeats) a page of a rollback awaiting a decision is
held back while this host joins the fleet incident it belongs to; then it goes out under this
host's own identity: better paged twice than not at all."""

DID_PART: frozenset[CodeState] = frozenset({"done", "failed"})
"""This host's part of a fleet incident is over: each host does its part once (a failed one
paged; a person takes it from there)."""


class FleetObserver(Protocol):
    """What the fleet reports (the daemon's metrics)."""

    def fleet_looked(self, ok: bool, incident_open: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class Awaiting:
    """A rollback this host's engine decided that waits for a person (approve, dry-run)."""

    scenario: str
    action: str
    runbook: str
    since: float
    """time.monotonic() when it was decided."""


def database_part(plan: Sequence[str], steps: Sequence[RunStep]) -> str | None:
    """Where a run's database steps stand: ``done`` (each ended ok or skipped), ``failed``
    (one's last attempt failed) or None (not over yet). A plan without database steps is
    ``done`` at once."""
    wanted = [i for i, kind in enumerate(plan, 1) if kind in DATABASE_STEPS]
    latest: dict[int, RunStep] = {}
    for s in steps:
        if s.idx not in latest or s.attempt >= latest[s.idx].attempt:
            latest[s.idx] = s
    for index in wanted:
        last = latest.get(index)
        if last is None or last.ended_at is None:
            return None
        if last.outcome == "failed":
            return "failed"
    return "done"


def lost_verdict(incident: FleetIncident, host: str, swap: SwapRecovery | None,
                 problem: str | None) -> tuple[DbState, str, dict[str, Any]]:
    """What a host that took the lock over from a lost one makes of the database:
    ``(db_state, note, facts)``; the facts let the lost host, once back, continue its own
    run after the restore that was completed for it."""
    lost = incident.db_host or incident.opened_by
    facts: dict[str, Any] = {"lost": lost, "observed_by": host}
    if swap is not None:
        facts.update({"swap_outcome": swap.outcome, "database": swap.database,
                      "kept": swap.kept, "found": swap.found})
    if problem is not None:
        return "failed", (f"{lost} was lost during the database part; {host} could not "
                          f"observe the database ({problem}): not restored again, look at "
                          "it"), facts
    if swap is not None and swap.applied and swap.outcome == "completed":
        kept = f"; the data it replaced is kept in {swap.kept}" if swap.kept else ""
        return "restored", (f"{lost} was lost during the restore; {host} completed its "
                            f"swap{kept}"), facts
    if swap is not None and swap.outcome == "completed":
        return "restored", (f"{lost} was lost after its swap completed ({swap.found}); the "
                            f"data it replaced is kept in {swap.kept}"), facts
    if swap is not None and swap.applied and swap.outcome == "reverted":
        return "failed", (f"{lost} was lost during the restore; {host} reverted its swap: "
                          "nothing was restored and a second restore is not started"), facts
    if swap is not None and swap.needs_operator:
        return "failed", (f"{lost} was lost during the restore; its swap needs a person: "
                          f"{swap.advice}"), facts
    return "failed", (f"{lost} was lost during the database part and no swap was found cut "
                      "short: the database's state is not known (an in-place restore cut "
                      "short, or a restore that ended unrecorded); look at it before anything "
                      "restores it"), facts


def completed_for(incident: FleetIncident | None, host: str) -> SwapRecovery | None:
    """The swap another host completed for ``host`` after it was lost mid-restore, as the
    recovery of ``host``'s own unfinished run reads it (None when there is none)."""
    if incident is None:
        return None
    facts = incident.facts
    if (facts.get("lost") != host or facts.get("swap_outcome") != "completed"
            or incident.db_state != "restored" or not isinstance(facts.get("database"), str)):
        return None
    kept = facts.get("kept")
    return SwapRecovery(database=facts["database"], state="swapped", outcome="completed",
                        found=f"{incident.note} (fleet incident {incident.id})",
                        live_holds="restored", kept=kept if isinstance(kept, str) else None,
                        applied=True)


class Fleet:
    """This host's side of the fleet; the daemon calls :meth:`tick` from each cycle,
    :meth:`run` for the runs it launches, and :meth:`before_recovery`/:meth:`after_recovery`
    around the start-up recovery of unfinished runs."""

    def __init__(self, config: Config, journal: Journal) -> None:
        fleet, db = config.fleet, config.database
        assert fleet is not None and db is not None
        self.config = config
        self.journal = journal
        self.name = fleet.name
        self.host = fleet.id
        self.heartbeat = float(fleet.heartbeat)
        self.db = FleetDb.of(db, fleet)
        self.gone_after = self.db.alive_within + STALE_PENDING
        """Seconds of silence after which a host is gone: its incident no longer holds a
        decision open, and an incident it opened without beginning it is another's to do."""
        self.log = get_logger().bind(app=config.app_name, fleet=fleet.name, host=fleet.id)
        self.view: FleetView | None = None
        self.observer: FleetObserver | None = None
        self._schema = False
        self._looked = -float("inf")
        self._task: asyncio.Task[None] | None = None
        self._problem: str | None = None
        self._followers: dict[int, tuple[RunRequest, int]] = {}
        """Follower runs launched, by id(request): (the request, the fleet incident)."""
        self._leaders: dict[int, tuple[RunRequest, int]] = {}
        """Runs launched to do a stale incident's database part, likewise."""
        self._incidents: dict[int, int] = {}
        """Local incident -> fleet incident, for the pages' identity."""
        self._runs: dict[int, int] = {}
        """Local run -> fleet incident."""
        self._recovering: int | None = None
        """The fleet incident unfinished runs found at start-up belong to."""
        self._joining: dict[int, Awaiting] = {}
        """Local incidents awaiting a decision, not yet joined to the fleet's incident."""
        self._undecided: set[int] = set()
        """Local incidents joined to a fleet incident awaiting a decision, until decided (the
        fleet incident is in ``_incidents``)."""
        self._shared: dict[int, str] = {}
        """Local incidents joined to a fleet incident awaiting a decision -> the host that
        pages for the fleet: its opener, then the host that leads the decided rollback."""

    def status(self) -> FleetStatus:
        """The fleet as this host's last look saw it (no I/O: the API and live page read it)."""
        return FleetStatus(self.name, self.host, self.view, self._problem)

    # -- pages ---------------------------------------------------------------------------

    def alias(self, page: Page) -> tuple[str, int] | None:
        """The identity a page of a fleet incident goes out under (the fleet's name and the
        fleet incident), the same from every host; None for a page of this host alone."""
        number = page.details.get("fleet_incident")
        if not isinstance(number, int):
            number = (self._incidents.get(page.incident) if page.incident is not None
                      else None)
            if number is None and page.run is not None:
                number = self._runs.get(page.run)
        return None if number is None else (self.name, number)

    def sending(self, page: Page) -> Sending:
        """Whether this host sends ``page``: a page of a rollback awaiting a decision is held
        until this host has joined the fleet incident (at most JOIN_GRACE beyond a few
        heartbeats), then left to the host that opened it, unless that host went quiet. A
        run's own pages (its runbook's page steps, its failure) are this host's to send, and
        acknowledgements and resolutions follow this host's own triggers (the outbox sends
        them only where those went)."""
        if page.incident is None or page.run is not None:
            return "send", ""
        if page.event == "resolve" and self._awaited_elsewhere(page.incident):
            return "hold", "another host still awaits the fleet's decision"
        if page.event != "trigger":
            return "send", ""
        joining = self._joining.get(page.incident)
        if joining is not None:
            waited = time.monotonic() - joining.since
            if waited < self.db.alive_within + JOIN_GRACE:
                return "hold", "joining the fleet incident it belongs to"
            return "send", ""
        opener, view = self._shared.get(page.incident), self.view
        if (opener is None or opener == self.host or view is None or opener not in view.alive
                or opener in view.cleared):
            return "send", ""
        return "leave", opener

    def _awaited_elsewhere(self, number: int) -> bool:
        """Another host's own incident still awaits the decision of the fleet incident this
        host's incident ``number`` joined: its page (the fleet's) stays up for that host."""
        view, fleet_id = self.view, self._incidents.get(number)
        return (view is not None and view.incident is not None and view.incident.id == fleet_id
                and bool(view.awaiting_on(self.gone_after) - {self.host}))

    def awaits_decision(self, incident: int, scenario: str, action: str, runbook: str) -> None:
        """This host's engine decided a rollback that waits for a person (approve or dry-run
        mode): at the next look, open the fleet's incident awaiting a decision, or join the
        one open."""
        if incident not in self._undecided and incident not in self._shared:
            self._joining.setdefault(incident, Awaiting(scenario, action, runbook,
                                                        time.monotonic()))
            self._looked = -float("inf")

    # -- each cycle ----------------------------------------------------------------------

    def tick(self, busy: Callable[[], bool], launch: Callable[[RunRequest], tuple[bool, str]],
             policy: Policy) -> None:
        """At most every ``heartbeat``: look at the fleet in the background (a slow database
        must not hold up the cycle) and act on what is open."""
        if self._task is not None and not self._task.done():
            return
        if time.monotonic() - self._looked < self.heartbeat:
            return
        self._looked = time.monotonic()
        self._task = asyncio.create_task(self._look_and_act(busy, launch, policy))

    async def _look_and_act(self, busy: Callable[[], bool],
                            launch: Callable[[RunRequest], tuple[bool, str]],
                            policy: Policy) -> None:
        try:
            view = await asyncio.to_thread(self._look)
        except FleetError as exc:
            self._report_problem(str(exc))
            return
        self.view = view  # before joining: which hosts are alive to page for the fleet
        self._report_problem(None)
        try:
            await self._join_awaiting()
        except FleetError as exc:
            self.log.error("cannot join the fleet incident; trying again", error=str(exc))
            return
        try:
            if await self._carry_decisions(view, policy):
                return  # the approvals start this host's runs through the loop
            if view.incident is not None:
                await self._act(view, view.incident, busy, launch, policy.all_runbooks())
        except (FleetError, LockError, JournalError) as exc:
            self.log.error("cannot take part in the fleet incident; trying again",
                           incident=None if view.incident is None else view.incident.id,
                           error=str(exc))

    # -- decisions awaiting a person (approve, dry-run) ----------------------------------

    async def _join_awaiting(self) -> None:
        """Open or join the fleet incident of each rollback awaiting a decision here."""
        for number, waiting in list(self._joining.items()):
            incident, opened = await asyncio.to_thread(
                self._open, waiting.scenario, waiting.action, waiting.runbook,
                self._restore_point(), awaiting=True)
            del self._joining[number]
            self._incidents[number] = incident.id
            self._shared[number] = incident.opened_by
            self._undecided.add(number)
            self.log.warning("the rollback awaiting a decision is the fleet's" if opened else
                             "joined the fleet incident", incident=number,
                             fleet_incident=incident.describe())

    async def _carry_decisions(self, view: FleetView, policy: Policy) -> bool:
        """A decision a person took on any host, carried to this host's own incidents: a
        closing one here ends the fleet incident (an incident here that cleared on its own
        only leaves it); one taken elsewhere is recorded here (an approval of the fleet's
        rollback, or the same closing). True when this host approved a rollback (the loop
        starts it at its next cycle)."""
        approved = False
        for number in sorted(self._undecided):
            fleet_id = self._incidents[number]
            local = self.journal.incident(number)
            incident = (view.incident if view.incident is not None
                        and view.incident.id == fleet_id
                        else await asyncio.to_thread(self.db.incident, fleet_id))
            if local is None or local.state != "open":
                if (incident is None or incident.db_state != "awaiting"
                        or await self._ended_here(number, local, incident)):
                    self._undecided.discard(number)
                continue
            if incident is None or incident.db_state == "awaiting":
                if incident is not None:
                    await self._share_ack(number, incident)
                continue
            self._undecided.discard(number)
            if incident.facts.get("cleared") is True:
                # Ended while this host was silent, every other host's incident cleared: not
                # a person's decision, so this host's own still awaits one (a fleet's anew).
                self._incidents.pop(number, None)
                self._shared.pop(number, None)
                self.awaits_decision(number, local.scenario, local.action, incident.runbook)
                continue
            self._pages_from(number, incident.db_host or incident.opened_by)
            approved |= self._record(number, incident, policy)
        return approved

    async def _ended_here(self, number: int, local: IncidentSummary | None,
                          incident: FleetIncident) -> bool:
        """This host's incident ``number`` ended before the fleet's decision: a person closed
        it (the decision, against the rollback, for every host), or it cleared on its own
        (the decision is left to the hosts still awaiting it). False when the fleet's lock is
        busy: the next look tries again."""
        if local is not None and self.journal.events_of_type("close", incident=number):
            return await self._dismiss(incident, local.reason)
        if not await self._leave(incident):
            return False
        self.log.warning("this host's incident cleared on its own: the fleet's decision is "
                         "left to the hosts still awaiting it", incident=number,
                         fleet_incident=incident.id)
        return True

    def _pages_from(self, number: int | None, host: str) -> None:
        """``host`` pages for the fleet about this host's incident ``number`` from now on (the
        one that leads the decided rollback: its status updates and completion notice)."""
        if number is not None and number in self._shared:
            self._shared[number] = host

    async def _share_ack(self, number: int, incident: FleetIncident) -> None:
        """An acknowledgement on any host stops every host's escalation of the decision: the
        first one here is recorded on the fleet incident, and one recorded there elsewhere
        is journaled here."""
        acks = acks_of(self.journal, number)
        if acks and incident.acked_at is None:
            by = str(acks[0].payload.get("by") or "a person")
            if await asyncio.to_thread(self.db.ack, incident.id, by):
                self.log.warning("acknowledged for the fleet", incident=number, by=by,
                                 fleet_incident=incident.id)
        elif not acks and incident.acked_at is not None:
            record_ack(self.journal, number, incident.acked_by or "a person",
                       f"fleet {self.name}", t=incident.acked_at)
            self.log.warning("acknowledged on another host of the fleet", incident=number,
                             by=incident.acked_by, fleet_incident=incident.id)

    async def _dismiss(self, incident: FleetIncident, why: str) -> bool:
        """A person closed this host's incident: the fleet's decision is taken, against the
        rollback. False when the fleet's lock is busy."""
        note = f"closed on {self.host}" + (f": {why}" if why else "")
        dismissed = await self._under_lock(f"incident {incident.id} closed",
                                           lambda lock: lock.dismiss(incident.id, note))
        if dismissed:
            self.log.warning("the fleet's rollback was decided against here: the fleet "
                             "incident is over", fleet_incident=incident.id, note=note)
        return dismissed is not None

    async def _leave(self, incident: FleetIncident) -> bool:
        """This host's incident cleared on its own before anyone decided: the decision is
        left to the hosts still seeing the problem, and ends with the last of them. False
        when the fleet's lock is busy."""
        ended = await self._under_lock(f"incident {incident.id} cleared on {self.host}",
                                       lambda lock: lock.leave(incident.id, self.gone_after))
        if ended:
            self.log.warning("no host's own incident awaits the fleet's decision any more: the "
                             "fleet incident is over, nothing was done",
                             fleet_incident=incident.id)
        return ended is not None

    async def _under_lock(self, what: str, act: Callable[[FleetLock], bool]) -> bool | None:
        """``act`` under the fleet's lock; None when another session holds it."""
        try:
            lock = await asyncio.to_thread(self.db.lock, what)
        except LockError:
            return None
        try:
            return await asyncio.to_thread(act, lock)
        finally:
            await asyncio.to_thread(lock.release)

    def _record(self, number: int, incident: FleetIncident, policy: Policy) -> bool:
        """Record on this host's incident the decision taken for the fleet elsewhere."""
        where = incident.db_host or incident.opened_by
        by = f"fleet {self.name}"
        try:
            if incident.db_state == "dismissed":
                record_decision(self.journal, number, "dismiss",
                                f"decided for the fleet on {where}: {incident.note}", by,
                                policy=policy, app=self.config.app_name)
                self.log.warning("closed this host's incident as the fleet decided",
                                 incident=number, fleet_incident=incident.describe())
                return False
            record_decision(self.journal, number, "rollback",
                            f"{incident.action} decided for the fleet on {where}", by,
                            incident.runbook.removesuffix(FOLLOWER_SUFFIX), policy=policy,
                            app=self.config.app_name)
        except DecisionError as exc:
            self.log.error("cannot record the fleet's decision on this host's incident",
                           incident=number, fleet_incident=incident.id, error=str(exc))
            return False
        self.log.warning("approved this host's incident as the fleet decided",
                         incident=number, fleet_incident=incident.describe())
        return True

    def _look(self) -> FleetView:
        return self._tables().look()

    def _tables(self) -> FleetDb:
        """The fleet's tables, their schema made sure of at the first use."""
        if not self._schema:
            self.db.ensure_schema()
            self._schema = True
        return self.db

    def _report_problem(self, problem: str | None) -> None:
        """After each look: the metrics hear of it, the log of a change."""
        if self.observer is not None:
            incident = self.view is not None and self.view.incident is not None
            self.observer.fleet_looked(problem is None, incident)
        if problem is not None and problem != self._problem:
            self.log.error("cannot look at the fleet", error=problem)
        elif problem is None and self._problem is not None:
            self.log.info("looking at the fleet again")
        self._problem = problem

    async def _act(self, view: FleetView, incident: FleetIncident, busy: Callable[[], bool],
                   launch: Callable[[RunRequest], tuple[bool, str]],
                   runbooks: Mapping[str, Runbook]) -> None:
        if incident.db_state in FINAL:
            await asyncio.to_thread(self.db.resolve_if_done, incident.id)
        if incident.db_state == "awaiting":
            # Followed by the hosts whose own incident awaits the decision (until a person
            # decides, when every host does); ended once none of them still does.
            if not view.awaiting_on(self.gone_after):
                await self._leave(incident)
            return
        if busy():
            return  # this host's own run (leader or follower) takes care of it
        if view.following != incident.id:
            if await asyncio.to_thread(self.db.follow, incident.id):
                self.log.warning("joined the fleet incident", incident=incident.id,
                                 fleet_incident=incident.describe())
            view = replace(view, following=incident.id, code_state="pending")
        if incident.db_state == "restoring" and not view.lock_held:
            await self._take_over(incident)
            return
        if incident.db_state == "pending" and not view.lock_held and self._stale(incident):
            runbook = runbooks.get(incident.runbook)
            if runbook is not None:
                stale = RunRequest(
                    runbook, None, incident.scenario, incident.action,
                    f"fleet {self.name} incident {incident.id} was opened by "
                    f"{incident.opened_by}, which never began its database part: {self.host} "
                    "does it", "rollbackd")
                self._leaders[id(stale)] = (stale, incident.id)
                if not launch(stale)[0]:
                    self._leaders.pop(id(stale), None)
            return
        if not view.mine_pending or incident.db_state not in FINAL:
            return
        if incident.db_state == "failed":
            await asyncio.to_thread(self.db.set_code_state, incident.id, "failed")
            self.log.error("the fleet's database part failed: this host's code and "
                           "configuration are not rolled back (the host that tried paged)",
                           fleet_incident=incident.describe())
            return
        # The look may be older than the end of this host's own run (it ended meanwhile):
        # only its part as it is now, with no run going, starts one.
        if await asyncio.to_thread(self.db.part, incident.id) != "pending" or busy():
            return
        request = self._follower_request(incident, None, runbooks)
        if request is None:  # its runbook is not this host's
            await asyncio.to_thread(self.db.set_code_state, incident.id, "failed")
            self.log.error("the fleet incident's runbook is not defined on this host",
                           runbook=incident.runbook, fleet_incident=incident.id)
            return
        self._followers[id(request)] = (request, incident.id)
        launched, why = launch(request)
        if not launched:
            self._followers.pop(id(request), None)
            self.log.warning("cannot follow the fleet incident yet", incident=incident.id,
                             why=why)

    def _stale(self, incident: FleetIncident) -> bool:
        return time.time() - incident.updated_at > self.gone_after

    def _follower_request(self, incident: FleetIncident, base: RunRequest | None,
                          runbooks: Mapping[str, Runbook]) -> RunRequest | None:
        name = incident.runbook.removesuffix(FOLLOWER_SUFFIX)
        runbook = runbooks.get(name) if base is None else base.runbook
        if runbook is None:
            return None
        reason = (f"fleet {self.name} incident {incident.id} (opened by "
                  f"{incident.opened_by}): the database is {incident.db_state}"
                  + (f" ({incident.note})" if incident.note else ""))
        return RunRequest(fleet_follower(runbook), None if base is None else base.incident,
                          incident.scenario, incident.action,
                          reason if base is None else f"{reason}; {base.reason}",
                          "rollbackd" if base is None else base.by,
                          None if base is None else base.timeline_s)

    # -- the database part, taken over from a host that was lost ---------------------------

    async def _take_over(self, incident: FleetIncident) -> None:
        try:
            lock = await asyncio.to_thread(self.db.lock, f"incident {incident.id} taken over")
        except LockError:
            return  # another host took it first (or the lost one is back)
        try:
            current = await asyncio.to_thread(self.db.incident, incident.id)
            if current is None or current.db_state != "restoring":
                return
            self.log.error("the host doing the fleet's database part was lost; observing "
                           "what it left", fleet_incident=current.describe())
            try:
                swap, problem = await asyncio.to_thread(self._observe, current)
            except LockError as exc:
                # The restore's own lock is still held: the lost host's sessions are still
                # ending, or a restore runs by hand. Nothing is decided; the next look retries.
                self.log.warning("the restore lock is held; observing the database again at "
                                 "the next look", error=str(exc))
                return
            state, note, facts = lost_verdict(current, self.host, swap, problem)
            settled = await asyncio.to_thread(lock.set_db_state, current.id, state, note,
                                              facts)
            self.log.warning("fleet database part settled", fleet_incident=settled.describe())
            if state == "failed":
                self._page_failed(settled)
        finally:
            await asyncio.to_thread(lock.release)

    def _observe(self, incident: FleetIncident) -> tuple[SwapRecovery | None, str | None]:
        """The database as a lost host left it: a swap cut short completed or reverted, else
        a swap that completed since the lost host began (it died before it could say so);
        LockError while a restore's lock is held."""
        options = RestoreOptions.from_config(self.config)
        try:
            swap = recover_interrupted_swap(options)
            began = incident.facts.get("restoring_since")
            if swap.outcome == "nothing" and isinstance(began, (int, float)):
                return swapped_in_since(options, float(began)) or swap, None
            return swap, None
        except RestoreError as exc:
            return None, str(exc)

    def _page_failed(self, incident: FleetIncident) -> None:
        line = (f"{self.name} fleet incident {incident.id} ({incident.scenario}): the database "
                f"was NOT restored: {incident.note}")
        try:
            self.journal.add_page(
                self.config.app_name, t=time.time(), incident=None, run=None, level=1,
                template="emergency", summary=line,
                details={"fleet": self.name, "fleet_incident": incident.id,
                         "host": self.host, **incident.as_json()},
                dedup_key=f"{self.name}/fleet-incident-{incident.id}/database-failed")
        except JournalError as exc:
            self.log.critical("CANNOT RECORD A PAGE", summary=line, error=str(exc))

    # -- the runs the daemon launches ----------------------------------------------------

    async def run(self, request: RunRequest, executor: Executor) -> RunResult | None:
        """Carry out ``request`` as a host of the fleet: a follower run launched by
        :meth:`tick`; otherwise this host's engine (or a person) decided a rollback: open or
        join the fleet incident, then restore once (leader) or follow. None when nothing ran
        (the database part failed elsewhere). RunRefusedError when the fleet cannot be read
        (a rollback that might restore the database a second time does not run)."""
        if request.incident is not None:
            self._undecided.discard(request.incident)  # this run carries its decision
        follower = self._followers.pop(id(request), None)
        if follower is not None:
            return await self._follow(request, follower[1], executor)
        leading = self._leaders.pop(id(request), None)
        if leading is not None:
            stale = await asyncio.to_thread(self.db.incident, leading[1])
            if stale is None or not stale.open:
                return None
            return await self._lead_or_follow(request, stale, executor, try_lead=True)
        try:
            incident, opened = await asyncio.to_thread(
                self._open, request.scenario, request.action, request.runbook.name,
                self._restore_point())
            part = None if opened else await asyncio.to_thread(self.db.part, incident.id)
        except FleetError as exc:
            raise RunRefusedError(f"the fleet's state cannot be read, so no rollback that "
                                  f"may restore the shared database runs: {exc}") from None
        if request.incident is not None:
            self._incidents[request.incident] = incident.id
        if part in DID_PART:
            # A rule here fired on what the fleet's rollback already answered (the app
            # errors while it restarts): a second run would only stop the app again.
            self.log.warning("this host already did its part of the fleet incident: the "
                             "rollback decided here is not run again",
                             incident=request.incident, scenario=request.scenario,
                             fleet_incident=incident.describe())
            return None
        # Awaiting a decision: the host where a person decided it leads.
        mine = opened or incident.db_state == "awaiting" or (
            incident.db_state == "pending" and incident.opened_by == self.host)
        return await self._lead_or_follow(request, incident, executor, try_lead=mine)

    async def _lead_or_follow(self, request: RunRequest, incident: FleetIncident,
                              executor: Executor, *, try_lead: bool) -> RunResult | None:
        """Lead (take the lock; the database part is still ``pending`` under it) or follow."""
        if try_lead:
            try:
                lock = await asyncio.to_thread(self.db.lock, f"incident {incident.id}")
            except LockError as exc:
                self.log.warning("another host holds the fleet's lock; following",
                                 error=str(exc), fleet_incident=incident.id)
            else:
                # Read again under the lock: another host may have taken it over meanwhile.
                current = await asyncio.to_thread(self.db.incident, incident.id)
                if current is not None and current.db_state == "awaiting":
                    await asyncio.to_thread(lock.decided, current.id, request.action,
                                            request.runbook.name)
                    self._pages_from(request.incident, self.host)
                if current is not None and current.db_state in ("awaiting", "pending"):
                    return await self._lead(request, current, lock, executor)
                await asyncio.to_thread(lock.release)
                incident = current or incident
        self.log.warning("following the fleet incident", fleet_incident=incident.describe())
        base = self._follower_request(incident, request, {})
        assert base is not None
        return await self._follow(base, incident.id, executor, wait=True)

    def _open(self, scenario: str, action: str, runbook: str, restore_point: str | None,
              awaiting: bool = False) -> tuple[FleetIncident, bool]:
        return self._tables().open_or_join(scenario, action, runbook, restore_point,
                                           awaiting=awaiting)

    def _restore_point(self) -> str | None:
        """The restore point of this host's latest deploy (recorded with the incident)."""
        with contextlib.suppress(JournalError):
            deploy = self.journal.latest_deploy(self.config.app_name)
            return None if deploy is None else deploy.restore_point
        return None

    async def _lead(self, request: RunRequest, incident: FleetIncident, lock: FleetLock,
                    executor: Executor) -> RunResult:
        log = self.log.bind(fleet_incident=incident.id, runbook=request.runbook.name)
        settled = False
        try:
            state: DbState = "restoring" if request.runbook.needs_database else "restored"
            note = "" if state == "restoring" else "the runbook has no database step"
            # When, by this host's clock (the one its swap names its copies with): a host
            # taking over can tell a swap that completed since from older ones.
            await asyncio.to_thread(lock.set_db_state, incident.id, state, note,
                                    {"restoring_since": time.time()})
            settled = state == "restored"
            log.warning("leading the fleet incident: this host does its database part",
                        db_state=state)
            task = asyncio.create_task(executor.run(request))
            await asyncio.sleep(0)  # the run journals itself (and a first page) at once
            self._note_run(executor, request, incident.id)
            if not settled:
                await self._watch(task, request, incident, lock, executor, log)
                settled = True
            result = await task
        except RunRefusedError:
            if not settled:
                with contextlib.suppress(FleetError):
                    await asyncio.to_thread(lock.set_db_state, incident.id, "failed",
                                            f"{self.host} could not begin its run")
            raise
        finally:
            await asyncio.to_thread(lock.release)
        self._runs[result.run.id] = incident.id
        await self._done(incident.id, result.ok, result.run)
        return result

    def _note_run(self, executor: Executor, request: RunRequest, incident_id: int) -> None:
        """The run's pages go out under the fleet incident's identity."""
        current = executor.current
        if current is not None and current.request is request and current.run is not None:
            self._runs[current.run.id] = incident_id

    async def _watch(self, task: asyncio.Task[RunResult], request: RunRequest,
                     incident: FleetIncident, lock: FleetLock, executor: Executor,
                     log: Any) -> None:
        """Set the database state once the run's database steps are over (or it ended)."""
        plan = [s.kind for s in request.runbook.steps]
        run_id: int | None = None
        verdict: str | None = None
        while verdict is None:
            await asyncio.wait({task}, timeout=WATCH_EVERY)
            current = executor.current
            if run_id is None and current is not None and current.request is request \
                    and current.run is not None:
                run_id = current.run.id
                self._runs[run_id] = incident.id
            if task.done():
                if task.cancelled() or task.exception() is not None:
                    verdict = "failed"
                    break
                result = task.result()
                verdict = database_part(plan, result.steps) or "failed"
                break
            if run_id is not None:
                with contextlib.suppress(JournalError):
                    verdict = database_part(plan, self.journal.steps(run_id))
        state: DbState = "restored" if verdict == "done" else "failed"
        note = "" if state == "restored" else f"{self.host}'s database steps did not succeed"
        # A whole database put back (not some tables): every host's deploy is rolled back.
        whole = "restore_database" in plan and not request.runbook.tables
        try:
            settled = await asyncio.to_thread(lock.set_db_state, incident.id, state, note,
                                              {"whole_database": whole})
            log.warning("fleet database part over", fleet_incident=settled.describe())
        except FleetError as exc:
            log.error("cannot record the fleet's database state", error=str(exc))

    async def _follow(self, request: RunRequest, incident_id: int, executor: Executor,
                      wait: bool = False) -> RunResult | None:
        """The follower part, once the database part is over (``wait``: until then, within
        the request's budget)."""
        log = self.log.bind(fleet_incident=incident_id)
        if wait:
            deadline = time.monotonic() + request.budget
            while True:
                found = await asyncio.to_thread(self.db.incident, incident_id)
                if found is None or found.db_state in FINAL:
                    break
                if time.monotonic() > deadline:
                    raise RunRefusedError(f"fleet incident {incident_id}'s database part did "
                                          "not end within the budget")
                await asyncio.sleep(self.heartbeat)
            if found is None or found.db_state == "failed":
                await self._done(incident_id, False)
                log.error("the fleet's database part failed: this host's code and "
                          "configuration are not rolled back")
                return None
        task = asyncio.create_task(executor.run(request))
        await asyncio.sleep(0)
        self._note_run(executor, request, incident_id)
        result = await task
        await self._done(incident_id, result.ok, result.run)
        log.warning("followed the fleet incident", run=result.run.id,
                    status=result.run.status, state=result.state)
        return result

    async def _done(self, incident_id: int, ok: bool, run: Run | None = None) -> None:
        """This host's part is over (``ok``: its ``run`` succeeded)."""
        try:
            await asyncio.to_thread(self.db.set_code_state, incident_id,
                                    "done" if ok else "failed")
            await asyncio.to_thread(self.db.resolve_if_done, incident_id)
            incident = await asyncio.to_thread(self.db.incident, incident_id)
        except FleetError as exc:
            self.log.error("cannot record this host's part in the fleet incident",
                           fleet_incident=incident_id, error=str(exc))
            return
        if run is None or incident is None:
            return
        try:
            self.journal.note_run_fleet(run.id, incident.describe())
            if ok and run.deploy is not None and incident.database_rolled_back:
                # Its code and config are back, its database too (restored once, maybe from
                # another host): the deploy has nothing left to roll back.
                self.journal.deploy_rolled_back(run.deploy, time.time())
        except JournalError as exc:
            self.log.error("cannot record this host's part in the journal", run=run.id,
                           error=str(exc))

    # -- start-up ------------------------------------------------------------------------

    async def before_recovery(self, executor: Executor,
                              swap: SwapRecovery | None) -> SwapRecovery | None:
        """Before unfinished runs are recovered: they may be follower runs; a swap this
        host's start-up completed or reverted settles the fleet's database part when this
        host was doing it; and a swap another host completed for this one (lost mid-restore)
        is what the recovery of its run reads."""
        executor.runbooks = with_fleet_followers(executor.runbooks)
        try:
            view = await asyncio.to_thread(self._look)
            latest = view.incident or await asyncio.to_thread(self.db.latest)
        except FleetError as exc:
            self._report_problem(str(exc))
            return swap
        self.view = view
        self._report_problem(None)  # a look like each heartbeat's: counted, and its problem over
        self._rejoin_left(view)
        if latest is not None:
            self._recovering = latest.id
            with contextlib.suppress(JournalError):
                for run in self.journal.runs(status="running"):
                    self._runs[run.id] = latest.id
                    if run.incident is not None:
                        self._incidents[run.incident] = latest.id
        if swap is None or not swap.applied:
            return completed_for(latest, self.host) or swap
        if latest is None or latest.db_state != "restoring" or view.lock_held:
            return swap
        try:
            lock = await asyncio.to_thread(self.db.lock, f"incident {latest.id} recovered")
        except LockError:
            return swap
        try:
            state, note, facts = lost_verdict(latest, self.host, swap, None)
            settled = await asyncio.to_thread(lock.set_db_state, latest.id, state, note, facts)
            self.log.warning("fleet database part settled at start-up",
                             fleet_incident=settled.describe())
            if state == "failed":
                self._page_failed(settled)
        except FleetError as exc:
            self.log.error("cannot settle the fleet's database part", error=str(exc))
        finally:
            await asyncio.to_thread(lock.release)
        return swap

    def _rejoin_left(self, view: FleetView) -> None:
        """After a restart: this host left the decision the fleet's incident still awaits
        (its own incident cleared), so its latest incident is that one's, and the pages of it
        are still the fleet's (its resolution is held while another host awaits)."""
        if view.incident is None or self.host not in view.cleared:
            return
        with contextlib.suppress(JournalError):
            latest = self.journal.incidents(limit=1)
            if latest and latest[0].state != "open":
                self._incidents[latest[0].incident] = view.incident.id

    async def after_recovery(self, results: Sequence[RunResult]) -> None:
        """A recovered run of this host is its part in the incident it followed."""
        if results and self._recovering is not None:
            await self._done(self._recovering, all(r.ok for r in results), results[-1].run)
