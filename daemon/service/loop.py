"""The main loop: probe, keep samples, export, say the state in words; signals only set flags.

The daemon imports what runs, pages, fleets and recordings need when they first happen, not
at start: most daemons never need them, and each import holds memory for the process's life
(bench/footprint.py). The start-up recovery of interrupted restores runs at every start, so
its modules come with this one's (imported later, in the running daemon, they held 0.7 MB
more).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import socket
import time
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn

from daemon import __version__
from daemon.config import Config, ConfigError, load_config, load_policy
from daemon.db.backups import BackupError, BackupStore
from daemon.db.restore import SwapRecovery
from daemon.journal import Journal, JournalError, JournalEvent, Page
from daemon.logs import get_logger
from daemon.ops.recovery import recover_interrupted_restores
from daemon.paging.acks import acks_from_silences
from daemon.paging.outbox import Outbox
from daemon.paging.pager import Pager, asks_for_decision
from daemon.paging.templates import require_templates
from daemon.runbooks.context import RunRequest
from daemon.runbooks.executor import Executor, RunRefusedError
from daemon.service.api import api_routes
from daemon.service.http import (
    GuardedH11Protocol,
    build_app,
    collect_refusals,
    connection_cap,
)
from daemon.service.intake import Intake
from daemon.service.live import LiveRecord, live_routes
from daemon.service.metrics import Metrics
from daemon.service.probeset import ProbeSet, build_probes
from daemon.service.sd_notify import Notifier
from daemon.service.status_line import describe
from policies.engine import Decision, Engine
from policies.events import EventError
from policies.policy import ROLLBACKS, Policy
from policies.runbooks import Runbook, RunbookError, resolve, table_names
from probes.base import one_line
from probes.runner import ProbeOutcome, probe_id

if TYPE_CHECKING:
    from daemon.db.fleet import FleetStatus
    from daemon.service.fleet import Fleet
    from daemon.service.recorder import Recorder

DATA_SAFETY_EVERY = 30.0
"""Seconds between reads of the backup store and drill results for the metrics."""

SILENCES_EVERY = 2.0
"""Seconds between looks at Alertmanager for silences that acknowledge the open incident."""

STOP_GRACE = 5.0
RECOVERY_TIMEOUT = 60.0
ACCEPT_BATCH = 64
"""Connections accepted at once; each is then served or, over the cap, closed."""
"""Longest the start-up recovery of interrupted restores may take before the loop starts."""
"""Seconds the HTTP server gets to finish in-flight requests at shutdown."""


class ListenError(Exception):
    """The HTTP listener cannot be bound; ``str()`` is the operator's one line."""


def bind_listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP
    # (accepted ones inherit it); without it, Nagle and delayed ACKs add 40 ms to every
    # request on a kept-alive connection after its first, as Alertmanager's are.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise ListenError(f"cannot listen on {host}:{port}: {reason}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the daemon owns SIGTERM, SIGINT and SIGHUP."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


PROBLEM_LOG_EVERY = 300.0
"""A problem whose wording keeps changing (counts, timings) is logged again at most this often."""


class ProblemLog:
    """Which probe problems (ProbeOutcome.problems) to log: a new one at once, a changed one
    at most every PROBLEM_LOG_EVERY seconds, and a cleared one once; a check failing every
    tick must not write a line every tick."""

    def __init__(self) -> None:
        self._logged: dict[tuple[str, str], tuple[str, float]] = {}

    def changes(self, outcomes: list[ProbeOutcome],
                now: float) -> list[tuple[str, str, str | None]]:
        """``(probe, about, problem)`` to log; ``problem`` is ``None`` when it cleared."""
        current = {(o.probe_id, about): text
                   for o in outcomes for about, text in o.problems.items()}
        due: list[tuple[str, str, str | None]] = []
        for key, text in current.items():
            logged = self._logged.get(key)
            if logged is None or (logged[0] != text and now - logged[1] >= PROBLEM_LOG_EVERY):
                self._logged[key] = (text, now)
                due.append((*key, text))
        measured = {o.probe_id for o in outcomes}
        for key in [k for k in self._logged if k not in current and k[0] in measured]:
            del self._logged[key]
            due.append((*key, None))
        return due


def _fleet(config: Config, journal: Journal) -> Fleet | None:
    """Fleet mode's coordinator, when ``[fleet]`` is configured."""
    if config.fleet is None:
        return None
    from daemon.service.fleet import Fleet

    return Fleet(config, journal)


class Daemon:
    """The long-running service of one application host.

    Owns the main loop (probe, feed the engine, journal its decisions, export, notify
    systemd), the HTTP server (metrics, health, the API) and the reload and stop signals. Its
    invariants: the loop keeps its interval whatever a probe, the journal or a webhook does (a
    failing cycle is logged and counted, never fatal); signal handlers only set flags; every
    decision the engine takes is journaled before it is exported; a restart resumes from the
    journal (the open incident, the rate limit, the frozen baselines) rather than from zero.
    """

    def __init__(self, config_path: Path, config: Config, policy: Policy, journal: Journal,
                 notifier: Notifier | None = None, recorder: Recorder | None = None) -> None:
        self.config_path = config_path
        self.config = config
        self.policy = policy
        self.journal = journal
        self.log = get_logger().bind(app=config.app_name)
        self.notifier = notifier or Notifier.from_env()
        self.metrics = Metrics()
        self.metrics.track_policy(policy)
        self.live = LiveRecord()  # the live page's signal history, backups and drill
        self.engine = Engine(policy, config.daemon.mode, journal.last_incident())
        self.recorder = recorder  # before the catch-up: its events are fed to the engine too
        self._event_cursor = self._catch_up(time.time())
        self._last_step = 0.0
        self._data_safety_read = -DATA_SAFETY_EVERY
        self._data_safety_task: asyncio.Task[None] | None = None
        self.probes: ProbeSet = build_probes(config)
        self.metrics.track(self._probe_ids(), self.probes.signals())
        self.executor = Executor(config, journal, observer=self.metrics,
                                 runbooks=policy.all_runbooks())
        self._run_task: asyncio.Task[None] | None = None
        self.outbox = Outbox(journal, config.app_name, config.paging, self.metrics)
        self.pager = Pager(journal, config.app_name, config.paging)
        self.metrics.track_paging(config.paging.order)
        self._page_task: asyncio.Task[None] | None = None
        # Fleet mode: the hosts sharing one database coordinate through it (daemon/service/
        # fleet.py); a fleet incident's pages go out under the fleet's identity.
        self.fleet = _fleet(config, journal)
        if self.fleet is not None:
            self.outbox.fleet = self.fleet
            self.fleet.observer = self.metrics
            self._rejoin_awaiting_decision()
        self._silences_read = -SILENCES_EVERY
        self._pages_counted: set[int] = set()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._reload_requested = False
        self._stop_reason = ""
        self._last_progress = time.monotonic()
        self._ready = False
        self._journal_problem: str | None = None
        self._failing: dict[str, str] = {}
        self._problems = ProblemLog()
        # The webhook's group commit (its own connection, in its own thread): see run().
        self.intake = Intake(journal, self.metrics)
        self._status_line = f"{config.app_name}: starting"
        self._notify_failing = False
        self._warn_about_slow_probes()

    # -- what the HTTP endpoints read -------------------------------------------------------

    @property
    def status_line(self) -> str:
        return self._status_line

    @property
    def stopping(self) -> asyncio.Event:
        """Set once the daemon is asked to stop (the API answers what would outlast it)."""
        return self._stop

    def fleet_status(self) -> FleetStatus | None:
        """The fleet as this host last saw it; None outside fleet mode."""
        return None if self.fleet is None else self.fleet.status()

    def is_alive(self) -> bool:
        # A cycle is bounded by the interval; allow two of them plus slack before calling it stuck.
        return time.monotonic() - self._last_progress < 2 * self.config.daemon.interval + 10

    def is_ready(self) -> bool:
        """A first cycle completed, and the journal is still the one opened at start (a
        daemon that cannot journal must not be sent alerts it would lose)."""
        return self._ready and self._journal_usable()

    def _journal_usable(self) -> bool:
        """Check the journal; log when it stops being the one opened, and when it is back."""
        try:
            self.journal.check()
        except JournalError as exc:
            if self._journal_problem != str(exc):
                self.log.error("the journal is unusable; refusing what cannot be journaled",
                               path=str(self.journal.path), error=str(exc))
            self._journal_problem = str(exc)
            return False
        if self._journal_problem is not None:
            self.log.info("the journal is usable again", path=str(self.journal.path))
            self._journal_problem = None
        return True

    # -- signal handlers: they only set flags ------------------------------------------------

    def request_stop(self, reason: str) -> None:
        self._stop_reason = reason
        self._stop.set()
        self._wake.set()

    async def _recover_interrupted_restores(self) -> SwapRecovery | None:
        """Before the first cycle: put right what a restore killed with a previous rollbackd
        left (a database refusing connections, no live database between a swap's renames),
        and record a page saying what was found and done. Returns what was done about an
        interrupted swap (None when that is not known), for the recovery of unfinished runs."""
        task = asyncio.create_task(asyncio.to_thread(recover_interrupted_restores, self.config))
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        while not task.done() and time.monotonic() < deadline:
            # The loop is alive meanwhile (the work is in a thread): keep the watchdog fed.
            self._last_progress = time.monotonic()
            await asyncio.wait({task}, timeout=1.0)
        if not task.done():
            self.log.error("recovery of interrupted restores did not finish in time; the next "
                           "restore will retry it", timeout=RECOVERY_TIMEOUT)
            return None
        try:
            recovery = task.result()
        except Exception as exc:  # a bug there must not stop the daemon from watching
            self.log.error("recovery of interrupted restores failed", error=one_line(exc),
                           exc_info=(type(exc), exc, exc.__traceback__))
            return None
        for problem in recovery.problems:
            self.log.warning("cannot check for interrupted restores", problem=problem)
        if not recovery.found:
            return recovery.swap
        lines = recovery.describe()
        self.log.warning("interrupted restore found at start-up", what=lines,
                         needs_operator=recovery.needs_operator)
        try:
            self.journal.add_page(
                self.config.app_name, t=time.time(), incident=None, run=None, level=1,
                template="emergency", summary="; ".join(lines), details=recovery.as_json(),
                dedup_key=f"{self.config.app_name}:recovery:{time.time():.0f}")
        except JournalError as exc:
            self.log.error("cannot journal the recovery's page", error=str(exc))
        return recovery.swap

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wake.set()

    # -- the loop ----------------------------------------------------------------------------

    async def run(self, listener: socket.socket) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self.request_stop, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        GuardedH11Protocol.cap = connection_cap()
        server = _EmbeddedServer(uvicorn.Config(
            build_app(self, self.metrics.registry, api_routes(self), live_routes(self)),
            log_config=None,
            access_log=False, lifespan="off", timeout_graceful_shutdown=int(STOP_GRACE),
            http=GuardedH11Protocol, ws="none",  # no websockets: uvicorn need not import wsproto
            # asyncio accepts up to ``backlog`` sockets in one go before any protocol sees
            # them: uvicorn's 2048 would run past the descriptor limit in a flood.
            backlog=ACCEPT_BATCH,
        ))
        await self.intake.start()  # before the server: a webhook needs its writer
        server_task = asyncio.create_task(server.serve(sockets=[listener]))
        watchdog_task = asyncio.create_task(self._watchdog())
        self.log.info(
            "started", version=__version__, config=str(self.config_path),
            listen=self.config.daemon.listen, interval=self.config.daemon.interval,
            mode=self.config.daemon.mode, probes=self._probe_ids(),
        )
        swap = await self._recover_interrupted_restores()
        # A run a crash cut short is continued or paged, in the background like any run, once
        # what an interrupted restore left is put right (its recovery reads what was done).
        self._run_task = asyncio.create_task(self.recover_runs(swap))
        self._notified(self.notifier.ready())
        try:
            await self._loop()
        finally:
            self._notified(self.notifier.stopping())
            self.log.info("stopping", reason=self._stop_reason)
            watchdog_task.cancel()
            await self._stop_run()
            await self._stop_paging()
            server.should_exit = True
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(server_task, STOP_GRACE + 1)
            # After the server: what it accepted until its last request is journaled first.
            await self.intake.stop()
            await self.probes.aclose()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if self.recorder is not None:
                self.recorder.close()
        self.log.info("stopped")
        return 0

    async def _loop(self) -> None:
        while not self._stop.is_set():
            if self._reload_requested:
                self._reload_requested = False
                await self._reload_guarded()
            started = time.monotonic()
            self._last_progress = started
            cycle = asyncio.create_task(self.cycle())
            stop = asyncio.create_task(self._stop.wait())
            await asyncio.wait({cycle, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not cycle.done():  # stopping: don't wait for slow probes
                cycle.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await cycle
                break
            self._cycle_outcome(cycle)
            self._last_progress = time.monotonic()
            await self._sleep(started + self.config.daemon.interval - time.monotonic())

    def _cycle_outcome(self, cycle: asyncio.Task[None]) -> None:
        """A cycle that raised is logged and counted; the loop goes on (the next cycle may
        well succeed, and a dead daemon watches nothing)."""
        error = cycle.exception()
        if error is None:
            return
        self.metrics.cycle_failures.inc()
        self.log.error("cycle failed; continuing with the next one",
                       error=one_line(error, with_type=True),
                       exc_info=(type(error), error, error.__traceback__))

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        if self._stop.is_set() or self._reload_requested:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, seconds))

    async def cycle(self) -> None:
        started = time.monotonic()
        # Leave a fifth of the interval for bookkeeping so cycles never pile up.
        outcomes, values = await self.probes.tick(bound=self.config.daemon.interval * 0.8)
        now = time.time()
        self._log_probe_changes(outcomes)
        self._decide(now, values)
        self._page(now)
        if self.fleet is not None:
            self.fleet.tick(self._run_going, self._launch, self.policy)
        self._refresh_data_safety()
        self._note_cut_connections()
        shown = self._as_decided(values)
        self.live.record(now, shown)
        self._status_line = describe(self.config.app_name, outcomes, shown, self.engine)
        fleet = None if self.fleet is None else self.fleet.status().words()
        if fleet is not None:
            self._status_line += f"; {fleet}"
        current = self.executor.current
        if current is not None and current.run is not None:
            self._status_line += (f"; running {current.request.runbook.name} "
                                  f"(run {current.run.id}): {current.left.describe()}")
        duration = time.monotonic() - started
        self.metrics.record_tick(outcomes, shown, duration, now)
        self.log.info("cycle", status=self._status_line, duration=round(duration, 4))
        self._notified(self.notifier.status(self._status_line))
        self._ready = True

    def _as_decided(self, values: dict[str, float | None]) -> dict[str, float | None]:
        """The signals as the engine uses them, for /metrics and the status line: every probed
        one and every one a rule reads. A migration failure journaled by ``deploy run`` holds
        ``migration.failed`` at 1 even though the tool's own table (knex records only
        successes) says nothing; ``alert.*`` count the firing alerts."""
        names = set(values) | self.policy.signals()
        return {name: self.engine.value(name) for name in names}

    def _note_cut_connections(self) -> None:
        """One line per cycle for the HTTP connections cut since the last one (a flood would
        otherwise log a line per connection)."""
        over_limit, too_slow = collect_refusals()
        if not (over_limit or too_slow):
            return
        self.metrics.http_refused.labels("limit").inc(over_limit)
        self.metrics.http_refused.labels("slow").inc(too_slow)
        self.log.warning("HTTP connections cut", over_the_limit=over_limit,
                         too_slow=too_slow, limit=GuardedH11Protocol.cap)

    def _catch_up(self, now: float) -> int:
        """Feed the engine the journal's recent events, so a restart remembers the last deploy."""
        horizon = now - self.policy.guards.rollback_window - self.policy.baseline.window
        recent = self.journal.events_since(horizon)
        # A pause outlives the horizon: it holds until someone resumes.
        pause = self.journal.latest_event(("pause", "resume"))
        if pause is not None and pause.t < horizon:
            recent.insert(0, pause)
        for event in recent:
            self._feed(event.t, event, catching_up=True)
        self._resume_from_journal(now)
        return self.journal.last_event_id()

    def _resume_from_journal(self, now: float) -> None:
        """What the engine decided before a restart: the open incident, and the automatic
        rollbacks that still count towards the rate limit."""
        cooldown = self.policy.guards.cooldown
        recent = [d for d in self.journal.decisions(limit=1000)
                  if d.kind in ("open", "escalate") and d.mode == "auto"
                  and d.action in ROLLBACKS and now - d.t < cooldown]
        self.engine.remember_auto_rollbacks(d.t for d in recent)
        latest = self.journal.incidents(limit=1)
        open_incident = bool(latest) and latest[0].state == "open"
        if self.recorder is not None and (recent or open_incident):
            self.log.warning("the recording cannot hold the open incident or the automatic "
                             "rollbacks taken back from the journal: simulate starts without "
                             "them", recording=str(self.recorder.path))
        if not open_incident:
            return
        summary = latest[0]
        lines = self.journal.decisions(limit=1000, incident=summary.incident)
        resumed = self.engine.resume_incident(
            summary.incident, summary.scenario, summary.action, summary.mode,
            summary.opened_at, [d.scenario for d in lines], decisions=lines)
        self.log.warning("resumed the open incident of the previous run" if resumed else
                         "the open incident's rule is no longer in the policy; not resumed",
                         incident=summary.incident, scenario=summary.scenario)

    def _rejoin_awaiting_decision(self) -> None:
        """Fleet mode, after a restart: the open incident's rollback still waits for a person
        (approve or dry-run mode), so it is still the fleet's incident awaiting a decision."""
        incident = self.engine.incident
        summary = None if incident is None else self.journal.incident(incident[0])
        if (self.fleet is None or summary is None or summary.state != "open"
                or summary.action not in ROLLBACKS
                or not asks_for_decision(summary.action, summary.mode)):
            return
        runbook = self._runbook_for(summary.scenario, summary.action, None)
        if runbook is not None:
            self.fleet.awaits_decision(summary.incident, summary.scenario, summary.action,
                                       runbook.name)

    def _feed(self, t: float, event: JournalEvent, catching_up: bool = False) -> None:
        """One journal event into the engine; a malformed one is logged and skipped (another
        tool may have written it), never allowed to stop the cycles."""
        try:
            self.engine.record(t, event.payload)
        except EventError as exc:
            self.log.error("ignoring a malformed journal event", event_id=event.id,
                           error=str(exc))
            return
        if self.recorder is not None:
            self.recorder.event(t, event.payload, self.engine)
        payload = event.payload
        if not catching_up and payload.get("type") == "deploy" and payload.get("phase") == "begin":
            # Journal the baselines frozen at this deploy: a restart could not recompute them.
            try:
                self.journal.add_event(t, {"type": "baseline", "deploy": payload.get("deploy"),
                                           "values": self.engine.baselines()})
            except JournalError as exc:
                self.log.warning("cannot journal the deploy's baselines", error=str(exc))

    def _decide(self, now: float, values: dict[str, float | None]) -> None:
        """One engine step: this cycle's samples, the events journaled since the last one."""
        now = max(now, self._last_step)  # the wall clock may step back; the engine may not
        self.engine.observe(now, values)
        if self.recorder is not None:
            self.recorder.signals(now, values, self.engine)
        events: list[JournalEvent] = []
        if self._journal_usable():
            try:
                events = self.journal.events_after(self._event_cursor)
            except JournalError as exc:
                self.log.error("cannot read the journal; its events wait", error=str(exc))
        approvals: list[JournalEvent] = []
        for event in events:
            self._event_cursor = event.id
            if event.payload.get("type") == "baseline":
                continue  # our own record of a deploy's baselines, already in force
            if event.payload.get("type") == "approve":
                approvals.append(event)
            self._feed(max(event.t, self._last_step), event)
        decisions = self.engine.decide(now)
        self._last_step = now
        for decision in decisions:
            self._journal_decision(decision)
        for approval in approvals:
            self._approved(approval)
        incident = self.engine.incident
        self.metrics.record_decisions(self.policy, self.engine.firing(), decisions,
                                      incident[1] if incident else None, self.engine.paused)

    def _refresh_data_safety(self) -> None:
        """Start a read of backups and drills every DATA_SAFETY_EVERY seconds, in the
        background: a hung backup mount must not hold up the cycle."""
        running = self._data_safety_task
        if running is not None and not running.done():
            return
        if time.monotonic() - self._data_safety_read < DATA_SAFETY_EVERY:
            return
        self._data_safety_read = time.monotonic()
        self._data_safety_task = asyncio.create_task(self._read_data_safety())

    async def _read_data_safety(self) -> None:
        """Backups and drills happen in other processes; their outcome reaches /metrics here."""
        store = BackupStore(self.config.backups)
        try:
            backups = await asyncio.to_thread(store.list)
        except (OSError, BackupError) as exc:
            self.log.warning("cannot list backups", dir=str(store.dir), error=str(exc))
            backups = []
        try:
            last, good = self.journal.latest_drill(), self.journal.latest_drill(ok=True)
        except JournalError as exc:
            self.log.warning("cannot read drills from the journal", error=str(exc))
            last = good = None
        self.metrics.record_data_safety(backups, last, good)
        self.live.data_safety(backups, last)

    def _journal_decision(self, decision: Decision) -> None:
        """Journal the decision, then act on it: an incident opened or escalated to a
        rollback in mode auto (not paused) starts its runbook in the background; the log line
        says whether it was executed, and why not."""
        record = decision.as_json()
        try:
            self.journal.add_decision(decision)
        except JournalError as exc:
            self.log.error("cannot journal a decision", error=str(exc), decision=record)
        executed, why, runbook = False, "", None
        if decision.kind in ("open", "escalate") and decision.action in ROLLBACKS:
            runbook = self._runbook_for(decision.scenario, decision.action, None)
            if runbook is None:
                why = "the rule names a runbook that is not defined"
            elif decision.mode == "approve":
                why = (f"waiting for a person: rollbackd decide {decision.incident} rollback")
            elif decision.mode != "auto" or self.engine.paused:
                why = f"mode {decision.mode}: nothing is executed"
            else:
                executed, why = self._launch(RunRequest(
                    runbook, decision.incident, decision.scenario, decision.action,
                    decision.reason, "rollbackd", decision.timeline_s))
        if (self.fleet is not None and runbook is not None
                and asks_for_decision(decision.action, decision.mode)):
            why += (f" (on {self.fleet.host}, a host of fleet {self.fleet.name}: decided on one "
                    "host, it is decided for every host)")
            self.fleet.awaits_decision(decision.incident, decision.scenario, decision.action,
                                       runbook.name)
        extra = {} if runbook is None else {"runbook": runbook.name}
        if why:
            extra["not_executed"] = why
        self.log.warning("decision", executed=executed, **record, **extra)
        self._page_for(decision, why)

    def _page_for(self, decision: Decision, waiting: str) -> None:
        """A decision that opens or escalates an incident tells L1 (an emergency, a planned
        rollback notice, or a decision request that waits for a person): journaled in the
        outbox, delivered beside the loop, once per incident, level and kind."""
        try:
            page = self.pager.page_decision(decision, self.policy, self.engine.paused, waiting)
        except JournalError as exc:
            self.metrics.page_recorded("journal", "failed")
            self.log.error("cannot journal a page", error=str(exc), incident=decision.incident)
            return
        if page is not None:
            self._count_pages([page])

    def _page(self, now: float) -> None:
        """Journal what escalation, runs and resolutions make due, then deliver the outbox
        in the background (a slow channel must not hold up the cycle)."""
        try:
            self._count_pages(self.pager.tick(self.policy, now))
        except JournalError as exc:
            self.log.error("cannot journal the pages due; trying next cycle", error=str(exc))
        task = self._page_task
        if task is None or task.done():
            self._page_task = asyncio.create_task(self._deliver_pages())

    def _count_pages(self, pages: list[Page]) -> None:
        for page in pages:
            if page.id in self._pages_counted or page.tries or page.status != "pending":
                continue
            self._pages_counted.add(page.id)
            self.metrics.page_recorded("journal", "recorded")
            self.log.warning("page journaled", page=page.id, template=page.template,
                             incident=page.incident, level=page.level,
                             page_event=page.event, summary=page.summary)

    async def _deliver_pages(self) -> None:
        try:
            await self.outbox.flush()
            await self.outbox.refresh_alerts(time.time())
            if time.monotonic() - self._silences_read >= SILENCES_EVERY:
                self._silences_read = time.monotonic()
                incident = self.engine.incident
                if incident is not None and incident[0] in self.outbox.standing_incidents():
                    await acks_from_silences(self.outbox, self.journal, incident[0])
        except Exception as exc:  # never let paging take the daemon down; retried next cycle
            self.log.error("paging failed; trying again next cycle",
                           error=one_line(exc, with_type=True),
                           exc_info=(type(exc), exc, exc.__traceback__))

    async def _stop_paging(self) -> None:
        """Stopping: a delivery going on gets a moment; what it did not send stays in the
        outbox for the next start."""
        task = self._page_task
        if task is None or task.done():
            return
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(task, STOP_GRACE)

    def _runbook_for(self, scenario: str, action: str, named: str | None) -> Runbook | None:
        """The runbook a decision (or a person's approval naming one) runs."""
        if named is None:
            rule = next((r for r in self.policy.rules if r.scenario == scenario), None)
            named = None if rule is None else rule.runbook
        return resolve(action, named, self.policy.runbooks)

    def _approved(self, event: JournalEvent) -> None:
        """A person's ``decide N <rollback kind>``: start the chosen action's runbook (or the
        one the approval names; with tables, made to restore those) for the open incident,
        through the executor and its checks. ``rollback`` (no action in the event) is the
        incident's own action."""
        from daemon.ops.operator import approved_runbook, approved_timeline

        payload = event.payload
        number, by = payload.get("incident"), str(payload.get("by", "a person"))
        log = self.log.bind(incident=number, by=by)
        incident = self.engine.incident
        if incident is None or incident[0] != number:
            log.warning("approval ignored: not the open incident", executed=False)
            return
        try:
            last = self.journal.decisions(limit=1, incident=number)[-1]
        except (JournalError, IndexError) as exc:
            log.error("approval ignored: the incident's decisions cannot be read",
                      executed=False, error=str(exc))
            return
        named, tables = payload.get("runbook"), list(payload.get("tables", []))
        action = str(payload.get("action") or last.action)
        try:
            runbook = approved_runbook(self.policy, last.scenario, action, named,
                                       table_names(tables) if tables else ())
        except RunbookError as exc:  # another tool wrote the event: its tables are not names
            log.warning("approval ignored: its tables cannot be used", executed=False,
                        tables=tables, error=str(exc))
            return
        if runbook is None:
            log.warning("approval ignored: no runbook to run", executed=False,
                        action=action, runbook=named)
            return
        why = f"approved by {by}" + (f": {payload['decision']}" if payload.get("decision")
                                     else "")
        timeline = (last.timeline_s if action == last.action
                    else approved_timeline(self.policy, last.scenario, action, last.timeline_s))
        request = RunRequest(runbook, number, last.scenario, action, f"{why}; {last.reason}",
                             by, timeline)
        if self.engine.paused:
            self.executor.record_refusal(request, "rollbackd is paused: resume it first")
            log.warning("approval", executed=False, runbook=runbook.name, not_executed="paused")
            return
        executed, not_executed = self._launch(request)
        log.warning("approval", executed=executed, runbook=runbook.name, action=action,
                    **({"not_executed": not_executed} if not_executed else {}))

    def _launch(self, request: RunRequest) -> tuple[bool, str]:
        """Start ``request``'s run in the background; the main loop keeps its interval."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # the engine stepped by hand, outside `run` (tests, tools)
            return False, "no event loop to run it in"
        running = self._run_task is not None and not self._run_task.done()
        if running or self.executor.busy:
            why = "another runbook run is going on"
            self.executor.record_refusal(request, why)
            return False, why
        self._run_task = loop.create_task(self._execute(request))
        return True, ""

    def _run_going(self) -> bool:
        return (self._run_task is not None and not self._run_task.done()) or self.executor.busy

    async def _execute(self, request: RunRequest) -> None:
        try:
            if self.fleet is not None:
                ran = await self.fleet.run(request, self.executor)
                if ran is None:
                    return
                result = ran
            else:
                result = await self.executor.run(request)
        except RunRefusedError as exc:
            self.executor.record_refusal(request, str(exc))
            self.log.error("runbook refused", runbook=request.runbook.name,
                           incident=request.incident, error=str(exc))
        except Exception as exc:  # never let a failed run take the daemon down
            self.log.error("runbook run failed with an error", runbook=request.runbook.name,
                           error=one_line(exc, with_type=True),
                           exc_info=(type(exc), exc, exc.__traceback__))
        else:
            self.log.warning("runbook run ended", run=result.run.id, status=result.run.status,
                             state=result.state)

    async def recover_runs(self, swap: SwapRecovery | None = None) -> None:
        """The runs the journal has as running from before this start: continued from the
        interrupted step, or abandoned with a page (:mod:`daemon.runbooks.recovery`)."""
        try:
            if self.fleet is not None:
                swap = await self.fleet.before_recovery(self.executor, swap)
            results = await self.executor.recover(swap)
            for result in results:
                self.log.warning("recovered run ended", run=result.run.id,
                                 status=result.run.status, state=result.state)
            if self.fleet is not None:
                await self.fleet.after_recovery(results)
        except Exception as exc:  # never let recovery take the daemon down
            self.log.error("recovery of unfinished runs failed",
                           error=one_line(exc, with_type=True),
                           exc_info=(type(exc), exc, exc.__traceback__))

    async def _stop_run(self) -> None:
        """Stopping: a run still going is cancelled; the executor journals it as interrupted
        and pages with the state it left."""
        task = self._run_task
        if task is None or task.done():
            return
        self.log.warning("stopping during a runbook run; it is interrupted")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def _log_probe_changes(self, outcomes: list[ProbeOutcome]) -> None:
        for outcome in outcomes:
            probe = outcome.probe_id
            if outcome.error is not None and self._failing.get(probe) != outcome.error:
                self.log.warning("probe failed", probe=probe, error=outcome.error)
                self._failing[probe] = outcome.error
            elif outcome.ok and probe in self._failing:
                del self._failing[probe]
                self.log.info("probe recovered", probe=probe)
        for probe, about, problem in self._problems.changes(outcomes, time.monotonic()):
            if problem is None:
                self.log.info("probe problem cleared", probe=probe, about=about)
            else:
                self.log.warning("probe problem", probe=probe, about=about, problem=problem)

    async def _reload_guarded(self) -> None:
        try:
            await self.reload()
        except Exception as error:  # an unforeseen failure must not take the daemon down
            self.metrics.reloads.labels("failure").inc()
            self.log.error("reload failed; keeping the configuration in force",
                           error=one_line(error, with_type=True),
                           exc_info=(type(error), error, error.__traceback__))

    async def reload(self) -> bool:
        """Re-read the config; an invalid one is rejected and the one in force stays."""
        self._notified(self.notifier.reloading())
        try:
            new = load_config(self.config_path)
            require_templates(new, self.config_path)
            policy = load_policy(new, self.config_path)
        except ConfigError as exc:
            self.metrics.reloads.labels("failure").inc()
            self.log.error("reload rejected; keeping the configuration in force", error=str(exc))
            return False
        finally:
            self._notified(self.notifier.ready())
        for key in ("listen", "state_dir"):
            if getattr(new.daemon, key) != getattr(self.config.daemon, key):
                self.log.warning("setting changes only on restart", key=f"daemon.{key}")
        if policy != self.policy or new.daemon.mode != self.config.daemon.mode:
            # Timers and the open incident start afresh under a new policy; say so.
            self.log.warning("policy changed; rule timers restart", policy=policy.path,
                             open_incident=self.engine.incident is not None)
            if self.recorder is not None:
                self.recorder.stop("the policy or the mode changed: a replay runs one engine")
            self.policy = policy
            self.executor.runbooks = policy.all_runbooks()
            self.engine = Engine(policy, new.daemon.mode, self.journal.last_incident())
            self._event_cursor = self._catch_up(self._last_step or time.time())
            self.metrics.track_policy(policy)
        old = self.probes
        self.probes = build_probes(new)
        await old.aclose()
        self.config = new
        self.executor.config = new  # a run going on keeps the config it began with
        self.outbox.settings = self.pager.settings = new.paging
        self.metrics.track_paging(new.paging.order)
        self.metrics.track(self._probe_ids(), self.probes.signals())
        self._warn_about_slow_probes()
        self.metrics.reloads.labels("success").inc()
        self.log.info("reloaded", config=str(self.config_path), probes=self._probe_ids())
        return True

    def _notified(self, sent: bool) -> None:
        """Log when talking to systemd starts failing and when it works again, not every cycle."""
        if not sent and not self._notify_failing:
            self.log.warning("cannot notify systemd", error=str(self.notifier.last_error))
        elif sent and self._notify_failing:
            self.log.info("notifying systemd again")
        self._notify_failing = not sent

    def _warn_about_slow_probes(self) -> None:
        # A probe gets at most 80 % of the interval; a longer timeout turns slowness into failure.
        bound = self.config.daemon.interval * 0.8
        for probe in self.probes.probes:
            if probe.timeout > bound:
                self.log.warning(
                    "probe timeout exceeds the tick; a slow answer will count as a probe failure",
                    probe=probe_id(probe), timeout=probe.timeout, tick_bound=bound,
                )

    def _probe_ids(self) -> list[str]:
        return [probe_id(p) for p in self.probes.probes]

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval
        if interval is None:
            return
        while True:
            await asyncio.sleep(interval)
            if self.is_alive():
                self._notified(self.notifier.watchdog())
            else:
                self.log.error("main loop stalled; withholding the watchdog ping")
