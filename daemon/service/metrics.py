"""The Prometheus exposition: every known series initialised, failures as their own counters."""

from __future__ import annotations

import math
import platform
from collections.abc import Iterable, Mapping
from typing import get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from daemon import __version__
from daemon.db.backups import KINDS as BACKUP_KINDS
from daemon.db.backups import BackupInfo
from daemon.journal import Drill, StepOutcome
from policies.engine import Decision
from policies.policy import SEVERITY_RANK, Policy, blind_rule
from policies.runbooks import BUILTIN as BUILTIN_RUNBOOKS
from policies.runbooks import StepKind
from probes.runner import ProbeOutcome

ALERT_STATUSES = ("firing", "resolved")
STEP_KINDS: tuple[str, ...] = get_args(StepKind)
STEP_OUTCOMES: tuple[str, ...] = get_args(StepOutcome)
RUN_ENDINGS = ("succeeded", "failed", "abandoned")
PAGE_OUTCOMES = ("delivered", "failed")
"""A channel's outcomes; the ``journal`` channel's are ``recorded`` (put in the outbox) and
``failed`` (the journal refused it)."""
RUNBOOK_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0)
"""Seconds: a runbook takes from seconds (code only) to its budget (up to an hour)."""
API_REJECTIONS = ("unauthorized", "too_large", "invalid", "disabled", "disconnected", "busy")
COMMIT_REQUEST_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)
"""Webhook requests per journal commit: 1 when quiet, up to the batch bound under a flood."""
COMMIT_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class Metrics:
    """rollbackd_* series on a registry of their own (one per daemon; tests build several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # Keep the standard process and platform series, as every Prometheus client does.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        r = self.registry
        self.build_info = Gauge(
            "rollbackd_build_info", "rollbackd version; always 1", ["version", "python"], registry=r
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.probe_up = Gauge(
            "rollbackd_probe_up", "1 when the probe's last measurement succeeded", ["probe"],
            registry=r,
        )
        self.probe_duration = Gauge(
            "rollbackd_probe_duration_seconds", "How long the probe's last measurement took",
            ["probe"], registry=r,
        )
        self.probe_runs = Counter(
            "rollbackd_probe_runs_total", "Measurements attempted per probe", ["probe"], registry=r
        )
        self.probe_failures = Counter(
            "rollbackd_probe_failures_total", "Measurements that failed or timed out per probe",
            ["probe"], registry=r,
        )
        self.signal = Gauge(
            "rollbackd_signal", "Latest value of each signal; NaN while it is unknown", ["signal"],
            registry=r,
        )
        self.signal_info = Gauge(
            "rollbackd_signal_info",
            "1 for the text that goes with a signal (e.g. the migration tool's own version)",
            ["signal", "text"], registry=r,
        )
        self.paused = Gauge("rollbackd_paused", "1 while rollbackd is paused", registry=r)
        self.cycles = Counter("rollbackd_cycles_total", "Main loop cycles completed", registry=r)
        self.cycle_failures = Counter(
            "rollbackd_cycle_failures_total", "Main loop cycles that failed with an error",
            registry=r,
        )
        self.cycle_duration = Gauge(
            "rollbackd_cycle_duration_seconds", "How long the last main loop cycle took",
            registry=r,
        )
        self.last_cycle = Gauge(
            "rollbackd_last_cycle_timestamp_seconds", "When the last main loop cycle ended",
            registry=r,
        )
        self.reloads = Counter(
            "rollbackd_config_reloads_total", "Configuration reloads by outcome", ["outcome"],
            registry=r,
        )
        for outcome in ("success", "failure"):
            self.reloads.labels(outcome)
        self.rule_firing = Gauge(
            "rollbackd_rule_firing", "1 while a policy rule fires", ["scenario", "severity"],
            registry=r,
        )
        self.decisions = Counter(
            "rollbackd_decisions_total", "Incidents opened or escalated, by scenario and action",
            ["scenario", "action"], registry=r,
        )
        self.incident_open = Gauge(
            "rollbackd_incident_open", "1 while an incident of this severity is open",
            ["severity"], registry=r,
        )
        for severity in SEVERITY_RANK:
            self.incident_open.labels(severity)
        self.backup_last_success = Gauge(
            "rollbackd_backup_last_success_timestamp_seconds",
            "When the newest complete, verified backup of this kind was taken", ["kind"],
            registry=r,
        )
        for kind in BACKUP_KINDS:
            self.backup_last_success.labels(kind)
        self.drill_last_success = Gauge(
            "rollbackd_drill_last_success_timestamp_seconds",
            "When the last successful restore drill ended", registry=r,
        )
        self.drill_duration = Gauge(
            "rollbackd_drill_duration_seconds", "How long the last restore drill took",
            registry=r,
        )
        self.alerts_received = Counter(
            "rollbackd_alertmanager_alerts_received_total",
            "Alerts received through the Alertmanager webhook, by status", ["status"], registry=r,
        )
        for status in ALERT_STATUSES:
            self.alerts_received.labels(status)
        self.api_rejected = Counter(
            "rollbackd_api_requests_rejected_total", "API requests refused, by reason",
            ["reason"], registry=r,
        )
        for reason in API_REJECTIONS:
            self.api_rejected.labels(reason)
        self.commit_requests = Histogram(
            "rollbackd_journal_commit_requests",
            "Webhook requests journaled per commit (group commit: they share one fsync)",
            buckets=COMMIT_REQUEST_BUCKETS, registry=r,
        )
        self.commit_duration = Histogram(
            "rollbackd_journal_commit_duration_seconds",
            "How long a group commit of webhook events took (in the writer's thread)",
            buckets=COMMIT_SECONDS_BUCKETS, registry=r,
        )
        self.http_refused = Counter(
            "rollbackd_http_connections_refused_total",
            "HTTP connections closed unserved: over the connection limit, or too slow to send "
            "their request", ["reason"], registry=r,
        )
        for reason in ("limit", "slow"):
            self.http_refused.labels(reason)
        self.runbook_duration = Histogram(
            "rollbackd_runbook_duration_seconds", "How long runbook runs took, by runbook",
            ["runbook"], buckets=RUNBOOK_BUCKETS, registry=r,
        )
        for name in BUILTIN_RUNBOOKS:
            self.runbook_duration.labels(name)
        self.runbook_runs = Counter(
            "rollbackd_runbook_runs_total",
            "Runbook runs ended, by runbook and status (succeeded, failed, abandoned)",
            ["runbook", "status"], registry=r,
        )
        for name in BUILTIN_RUNBOOKS:
            for status in RUN_ENDINGS:
                self.runbook_runs.labels(name, status)
        self.runbook_steps = Counter(
            "rollbackd_runbook_steps_total", "Runbook step attempts ended, by step and outcome",
            ["step", "outcome"], registry=r,
        )
        for kind in STEP_KINDS:
            for outcome in STEP_OUTCOMES:
                self.runbook_steps.labels(kind, outcome)
        self.runbook_running = Gauge(
            "rollbackd_runbook_running", "1 while a runbook runs", registry=r,
        )
        self.pages = Counter(
            "rollbackd_pages_total",
            "Pages by channel and outcome: journal (recorded in the outbox, or failed to be), "
            "then each channel's delivery attempts (delivered or failed)",
            ["channel", "outcome"], registry=r,
        )
        self.pages.labels("journal", "recorded")
        self.pages.labels("journal", "failed")
        self.page_queue_length = Gauge(
            "rollbackd_page_queue_length", "Pages journaled and not yet delivered", registry=r,
        )
        self.page_oldest_undelivered = Gauge(
            "rollbackd_page_oldest_undelivered_seconds",
            "Age of the oldest page not yet delivered; 0 when none waits", registry=r,
        )
        # Fleet mode's looks at the maintenance database; 0 outside a fleet, like every series.
        self.fleet_looks = Counter(
            "rollbackd_fleet_looks_total", "Looks at the fleet's tables (one per heartbeat)",
            registry=r,
        )
        self.fleet_look_failures = Counter(
            "rollbackd_fleet_look_failures_total",
            "Looks at the fleet's tables that failed: this host cannot take part in a fleet "
            "rollback (it refuses one that may restore the shared database)", registry=r,
        )
        self.fleet_incident_open = Gauge(
            "rollbackd_fleet_incident_open", "1 while the fleet has an open incident (last look)",
            registry=r,
        )
        self._page_channels: set[str] = set()
        self._probes: set[str] = set()
        self._signals: set[str] = set()
        self._info: dict[str, str] = {}

    # -- what the executor reports (daemon.runbooks.context.RunObserver) ------------------

    def run_started(self, runbook: str) -> None:
        self.runbook_running.set(1)

    def run_ended(self, runbook: str, status: str, duration: float) -> None:
        self.runbook_running.set(0)
        self.runbook_duration.labels(runbook).observe(duration)
        self.runbook_runs.labels(runbook, status).inc()

    def step_ended(self, kind: str, outcome: str) -> None:
        self.runbook_steps.labels(kind, outcome).inc()

    def page_recorded(self, channel: str, outcome: str) -> None:
        self.pages.labels(channel, outcome).inc()

    def page_queue(self, length: int, oldest_age: float) -> None:
        self.page_queue_length.set(length)
        self.page_oldest_undelivered.set(max(0.0, oldest_age))

    def track_paging(self, channels: Iterable[str]) -> None:
        """Initialise each configured channel's series (a reload may add one)."""
        for channel in set(channels) - self._page_channels:
            for outcome in PAGE_OUTCOMES:
                self.pages.labels(channel, outcome)
        self._page_channels |= set(channels)

    # -- what the fleet reports (daemon.service.fleet.FleetObserver) ----------------------

    def fleet_looked(self, ok: bool, incident_open: bool) -> None:
        self.fleet_looks.inc()
        if not ok:
            self.fleet_look_failures.inc()
        else:
            self.fleet_incident_open.set(1 if incident_open else 0)

    # -- what the webhook's writer reports (daemon.service.intake.CommitObserver) ----------

    def journal_committed(self, requests: int, events: int, seconds: float) -> None:
        self.commit_requests.observe(requests)
        self.commit_duration.observe(seconds)

    def track(self, probes: Iterable[str], signals: Iterable[str]) -> None:
        """Initialise the series of the configured probes and signals; drop those no longer in."""
        wanted_probes, wanted_signals = set(probes), set(signals)
        for metric in (self.probe_up, self.probe_duration, self.probe_runs, self.probe_failures):
            _sync_children(metric, self._probes, wanted_probes)
        _sync_children(self.signal, self._signals, wanted_signals, initial=math.nan)
        self._probes, self._signals = wanted_probes, wanted_signals

    def _record_info(self, info: Mapping[str, str]) -> None:
        """One series per signal with a text: the old one goes when the text changes, so the
        label set stays bounded; a text not measured this tick is dropped, not left stale."""
        for signal, text in set(self._info.items()) - set(info.items()):
            self.signal_info.remove(signal, text)
        for signal, text in info.items():
            self.signal_info.labels(signal, text).set(1)
        self._info = dict(info)

    def track_policy(self, policy: Policy) -> None:
        """Initialise the series of every rule, so that a rule that never fired reads 0."""
        self.rule_firing.clear()
        for rule in (*policy.rules, blind_rule(policy.guards)):
            self.rule_firing.labels(rule.scenario, rule.severity)
            for action in {rule.action, "page"}:
                self.decisions.labels(rule.scenario, action)

    def record_decisions(self, policy: Policy, firing: Mapping[str, bool],
                         decisions: Iterable[Decision], incident_severity: str | None,
                         paused: bool) -> None:
        for rule in (*policy.rules, blind_rule(policy.guards)):
            self.rule_firing.labels(rule.scenario, rule.severity).set(
                1 if firing.get(rule.scenario) else 0
            )
        for decision in decisions:
            # Attach lines repeat the incident's action without taking it again; count actions.
            if decision.kind in ("open", "escalate"):
                self.decisions.labels(decision.scenario, decision.action).inc()
        for severity in SEVERITY_RANK:
            self.incident_open.labels(severity).set(1 if severity == incident_severity else 0)
        self.paused.set(1 if paused else 0)

    def record_data_safety(self, backups: Iterable[BackupInfo], last_drill: Drill | None,
                           last_good_drill: Drill | None) -> None:
        newest: dict[str, float] = {}
        for info in backups:
            if info.complete and info.verified and info.created_at is not None:
                newest[info.kind] = max(newest.get(info.kind, 0.0), info.created_at)
        for kind in BACKUP_KINDS:
            self.backup_last_success.labels(kind).set(newest.get(kind, 0.0))
        if last_good_drill is not None:
            self.drill_last_success.set(last_good_drill.t)
        if last_drill is not None:
            self.drill_duration.set(last_drill.duration)

    def record_tick(self, outcomes: Iterable[ProbeOutcome], signals: Mapping[str, float | None],
                    duration: float, ended_at: float) -> None:
        for outcome in outcomes:
            probe = outcome.probe_id
            self.probe_runs.labels(probe).inc()
            if not outcome.ok:
                self.probe_failures.labels(probe).inc()
            self.probe_up.labels(probe).set(1 if outcome.ok else 0)
            self.probe_duration.labels(probe).set(outcome.duration)
        for name, value in signals.items():
            self.signal.labels(name).set(math.nan if value is None else value)
        self._record_info({name: text for outcome in outcomes
                           for name, text in outcome.info.items()})
        self.cycles.inc()
        self.cycle_duration.set(duration)
        self.last_cycle.set(ended_at)


def _sync_children(metric: Gauge | Counter, present: set[str], wanted: set[str],
                   initial: float | None = None) -> None:
    for stale in present - wanted:
        metric.remove(stale)
    for name in wanted - present:
        child = metric.labels(name)
        if initial is not None and isinstance(child, Gauge):
            child.set(initial)
