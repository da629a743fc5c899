"""``rollbackd demo``: a bad release of the example app, caught and rolled back, on a fresh machine.

It starts a throwaway PostgreSQL, VisionForge v1 with data and live traffic (a thread creating
users through the app's API and recording every write the app acknowledged), and ``rollbackd
run`` in ``auto`` mode probing every second. The app runs under rollbackd's ``process`` control
adapter, its code under the ``symlink`` adapter (releases v1 and v2 side by side), its config
file is kept at each deploy. Then it ships v2 with ``rollbackd deploy run --version v2 --
deploy.py ...`` and follows rollbackd (its API's status and incidents, /metrics, the journal's
runbook runs) while it detects the fault, decides, runs the runbook, validates and resolves.

It ends by checking, from the outside, that v1 serves again, that code and config are v1's,
that every write acknowledged before the deploy is in the live database, that those after it
are kept in the ``visionforge_rolledback_*`` database the restore set aside (and says which),
that the incident resolved; then prints the incident report. Exit status: 0 when all of that
is verified, 1 naming the first step that did not happen or the check not met, 2 when the demo
cannot run here (no PostgreSQL server binaries), 130 on Ctrl-C. Every process it started is
stopped by its pid at the end, unless ``--keep``.

Scenarios (the procedures' drills): ``bad-migration`` (v2's second migration fails after its
first changed the database: immediate rollback with a real restore), ``error-spike`` (v2's
config makes half the requests fail: planned rollback), ``slow-release`` (v2 answers slower:
evaluate, a person is paged; the demo answers ``rollbackd decide N dismiss``),
``data-corruption`` (rows of v1's users deleted after the deploy: the data check fails,
planned rollback).

With ``record``, rollbackd runs with ``--record FILE`` (what its decision engine was fed, as a
replay), and at the end, once rollbackd has stopped, the demo writes its decisions beside it
as ``FILE.decisions.jsonl`` (as ``rollbackd incidents show N --json`` prints them, every
incident in turn) and the policy it ran under as ``FILE.policy.toml``, in mode ``auto``:
``rollbackd simulate --policy FILE.policy.toml --replay FILE`` takes those decisions.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import httpx
import psycopg

from examples.apprun import Proc, migrate, seed
from examples.demochecks import Check, Phase, RowReport, classify_rows, recovery_phases
from examples.demofollow import Follower, Seen
from examples.demosite import (
    DATABASE,
    RELEASES,
    V1_MIGRATIONS,
    Site,
    build_site,
    demo_policy,
    rollbackd_config,
)
from examples.demoview import View
from examples.pgcluster import PgCluster, PgUnavailableError, free_port
from examples.traffic import Traffic

ROLLBACKD = [sys.executable, "-m", "daemon"]
"""``rollbackd`` as the console script runs it, from this very interpreter and checkout."""

EXIT_OK, EXIT_UNMET, EXIT_CANNOT_RUN, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_TIMEOUT = 90.0
POLL = 0.25
READY_TIMEOUT = 30.0
RUN_START_TIMEOUT = 20.0
"""A rollback decided in ``auto`` mode starts its runbook within a cycle or two."""
PAGE_TIMEOUT = 15.0
AFTER_RECOVERY = 3.0
"""Seconds of traffic kept going once the rolled back app serves, so that writes after the
rollback are checked too."""
WATCH_FOR = "10s"
"""The demo's watch period after a rollback (production: 1h), when rollbackd knows the key."""


class DemoFailedError(Exception):
    """A step of the story that did not happen: ``step`` names it, ``detail`` says what was
    seen instead."""

    def __init__(self, step: str, detail: str) -> None:
        super().__init__(f"{step}: {detail}")
        self.step = step
        self.detail = detail


class CannotRunError(Exception):
    """The demo cannot run on this machine; ``str()`` says what to install."""


# -- the scenarios -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    v2_migrations: tuple[Path, ...]
    """Release v2's migrations beyond v1's."""
    v2_settings: Mapping[str, str]
    """What v2's deploy changes in the app's config file."""
    rule: str
    """The rule of the demo's policy that must fire."""
    action: str
    """The action rollbackd must take for it."""
    deploy_fails: bool = False
    rolls_back: bool = True


SCENARIOS: Mapping[str, Scenario] = {s.name: s for s in (
    Scenario("bad-migration",
             "v2's first migration rewrites every user, its second fails: immediate rollback",
             (RELEASES / "v2-partial",), {"VF_FEATURE_FLAGS": "display-names"},
             rule="migration_failed", action="immediate_rollback", deploy_fails=True),
    Scenario("error-spike",
             "v2's config makes half the requests fail: planned rollback",
             (RELEASES / "v2-good",), {"VF_ERROR_RATIO": "0.5"},
             rule="app_compromised", action="planned_rollback"),
    Scenario("slow-release",
             "v2 answers slower than v1: evaluate, a person is paged and dismisses it",
             (RELEASES / "v2-good",), {},  # the latency is set from the measured baseline
             rule="performance_degraded", action="evaluate", rolls_back=False),
    Scenario("data-corruption",
             "v1's users are deleted after v2's deploy: data validation fails, planned rollback",
             (RELEASES / "v2-good",), {},
             rule="data_validation_failed", action="planned_rollback"),
)}


FLEET_SCENARIO = "fleet"
"""Three app hosts on one database (examples/demofleet.py): one restore, every host rolled
back."""


# -- what the demo started ---------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM ``pid``, then SIGKILL after ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


@dataclass
class Stack:
    """Everything the demo started, to be stopped by pid in reverse order."""

    workdir: Path
    cluster: PgCluster | None = None
    site: Site | None = None
    procs: list[Proc] = field(default_factory=list)
    traffic: Traffic | None = None

    def app_pid(self) -> int | None:
        """The app now running from the demo's site (whoever started it: the demo, deploy.py
        or rollbackd's process adapter), by its pidfile, checked against its command line."""
        if self.site is None:
            return None
        try:
            pid = int(self.site.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) and str(self.site.root) in _cmdline(pid) else None

    def site_pids(self) -> list[int]:
        """Every process running from the demo's site: the app whoever started it, and a
        deploy.py cut short (which may have started an app it never recorded in the pidfile).
        The site is a fresh temporary directory, so its path in a command line names a
        process the demo started, directly or not."""
        if self.site is None:
            return []
        root, pids = str(self.site.root), []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid() \
                    and root in _cmdline(int(entry.name)) and _alive(int(entry.name)):
                pids.append(int(entry.name))
        return pids

    def stop_all(self, *, remove: bool = True) -> None:
        if self.traffic is not None:
            self.traffic.stop()
        for proc in reversed(self.procs):  # the daemon first, so that it restarts nothing
            proc.close()
        for _ in range(3):  # a deploy.py stopped mid-restart may have started one more app
            pids = self.site_pids()
            for pid in pids:
                stop_pid(pid)
            if not pids:
                break
        if self.cluster is not None:
            self.cluster.destroy()
        if remove:
            shutil.rmtree(self.workdir, ignore_errors=True)


# -- the demo ----------------------------------------------------------------------------------


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rollbackd_command() -> str:
    """How a person runs this rollbackd: the console script beside this interpreter."""
    script = Path(sys.executable).parent / "rollbackd"
    return str(script) if script.exists() else " ".join(ROLLBACKD)


def executor_available() -> bool:
    """Whether this rollbackd has the runbook executor (daemon/runbooks/)."""
    return importlib.util.find_spec("daemon.runbooks") is not None


def knows_watch_for() -> bool:
    from policies.policy import GuardSettings

    return "watch_for" in GuardSettings.__struct_fields__


@dataclass
class Outcome:
    code: int
    checks: list[Check] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)
    """Where the time of the rollback went (bench/recovery.py prints them)."""
    steps: list[Any] = field(default_factory=list)
    """The run's steps as the journal has them (daemon.journal.RunStep)."""
    plan: tuple[str, ...] = ()
    """The run's plan: its steps' kinds in order."""
    unmet: str | None = None


class Demo:
    def __init__(self, scenario: Scenario, *, keep: bool = False,
                 timeout: float = DEFAULT_TIMEOUT, out: TextIO | None = None,
                 live: bool | None = None, quiet: bool = False,
                 record: Path | None = None) -> None:
        self.scenario = scenario
        self.record = None if record is None else record.resolve()
        self.keep = keep
        self.timeout = timeout
        self.view = View(out, live=live, quiet=quiet)
        self.stack = Stack(Path(tempfile.mkdtemp(prefix="rollbackd-demo-")))
        self.checks: list[Check] = []
        self.phases: list[Phase] = []
        self.follower: Follower | None = None
        self.config = self.stack.workdir / "rollbackd.toml"
        self.deployed_at = 0.0
        self.fault_at: float | None = None
        self.healthy_at: float | None = None
        self.deadline = math.inf
        self.dsn = ""
        self.app_url = ""
        self.api = ""
        self.v1_config_sha = ""
        self.deleted: dict[str, int] = {}
        self._daemon: Proc | None = None

    # -- running it --------------------------------------------------------------------------

    def run(self) -> Outcome:
        """The whole story, then the clean-up, which happens whatever went wrong (unless
        ``keep``, and then not on Ctrl-C)."""
        outcome = Outcome(EXIT_UNMET)
        keep = self.keep
        try:
            with self.view:
                self._tell(outcome)
            keep = keep and outcome.code not in (EXIT_INTERRUPTED, EXIT_CANNOT_RUN)
            self._conclude(outcome)
        except KeyboardInterrupt:  # while concluding: stop everything all the same
            outcome.code, keep = EXIT_INTERRUPTED, False
        finally:
            if keep:
                self._print_keep()
                if self.stack.traffic is not None:
                    self.stack.traffic.stop()
            else:
                with _signals_deferred():
                    self._save_recording()
                    self.stack.stop_all()
                self.view.line("demo: stopped everything it started")
        return outcome

    def _tell(self, outcome: Outcome) -> None:
        try:
            outcome.code, outcome.unmet = tell(self.view, self._story, self.checks,
                                               self._daemon_tail)
        finally:
            self.phases = self._phases()
            if self.follower is not None:
                outcome.steps = list(self.follower.seen.steps)
                run = self.follower.seen.run
                outcome.plan = tuple(run.plan) if run is not None else ()
                self.follower.close()
        outcome.checks, outcome.phases = self.checks, self.phases

    def _story(self) -> None:
        self.view.event(f"scenario {self.scenario.name}: {self.scenario.title}", "head")
        self.setup()
        self.ship()
        self.follow()
        self.verify()
        self.report()

    def _conclude(self, outcome: Outcome) -> None:
        outcome.unmet = conclude(self.view, self.checks, outcome.code, outcome.unmet)

    def _left(self) -> float:
        return self.deadline - time.monotonic()

    def wait(self, step: str, done: Callable[[Seen], object], *, within: float | None = None,
             otherwise: Callable[[Seen], str] | None = None) -> Seen:
        """Poll rollbackd until ``done(seen)``; DemoFailedError naming ``step`` otherwise."""
        assert self.follower is not None
        limit = min(self._left(), within if within is not None else math.inf)
        end = time.monotonic() + max(0.0, limit)
        while True:
            seen = self.follower.poll()
            self._check_daemon()
            if done(seen):
                return seen
            if time.monotonic() >= end:
                why = otherwise(seen) if otherwise else f"not seen within {limit:.0f}s"
                raise DemoFailedError(step, why)
            time.sleep(POLL)

    def _check_daemon(self) -> None:
        daemon = self._daemon
        if daemon is not None and not daemon.running():
            raise DemoFailedError("rollbackd keeps running",
                                  f"rollbackd run exited with status {daemon.popen.returncode}")

    # -- set-up ------------------------------------------------------------------------------

    def setup(self) -> None:
        stack, view = self.stack, self.view
        self.dsn = start_database(view, stack)
        app_port = free_port()
        self.app_url = f"http://127.0.0.1:{app_port}"
        site = stack.site = build_site(
            stack.workdir / "site", dsn=self.dsn, port=app_port,
            releases={"v1": [V1_MIGRATIONS],
                      "v2": [V1_MIGRATIONS, *self.scenario.v2_migrations]})
        self.v1_config_sha = _sha(site.env_file)
        stack.procs.append(Proc(site.app_argv(), log=site.app_log, new_session=True))
        self._wait_app("v1", READY_TIMEOUT, "VisionForge v1 serving")
        view.event(f"VisionForge v1 serving at {self.app_url} (site {site.root}: releases v1 "
                   f"and v2, current -> v1, config {site.env_file.name})")
        self._start_rollbackd()
        stack.traffic = Traffic(self.app_url, tag=f"demo{os.getpid()}", every=0.1)
        stack.traffic.start()
        view.event("live traffic: a user created every 100 ms through the app's API, every "
                   "acknowledged write recorded")
        self.deadline = time.monotonic() + READY_TIMEOUT
        settle = 8.0 if self.scenario.name == "slow-release" else 3.0
        until = time.monotonic() + settle
        self.wait("rollbackd sees the app and the database", lambda s: (
            time.monotonic() >= until and s.signals.get("http.up") == 1
            and s.signals.get("db.up") == 1 and stack.traffic is not None
            and len(stack.traffic.writes) >= 10),
            otherwise=lambda s: f"signals {s.signals}, traffic "
                                f"{stack.traffic.describe() if stack.traffic else '-'}")
        line = self.follower.seen.status_line if self.follower else ""
        view.event(f"rollbackd sees v1 healthy: {line}")

    def _start_rollbackd(self) -> None:
        stack, view = self.stack, self.view
        assert stack.site is not None
        token_file = stack.workdir / "api.token"
        token = write_token(token_file)
        policy = stack.workdir / "policy.toml"
        policy.write_text(demo_policy(watch_for=WATCH_FOR if knows_watch_for() else None))
        listen = f"127.0.0.1:{free_port()}"
        self.config.write_text(rollbackd_config(
            stack.workdir, stack.site, dsn=self.dsn, app_url=self.app_url, listen=listen,
            token_file=token_file, policy=policy))
        self.api = f"http://{listen}"
        log = stack.workdir / "rollbackd.log"
        record = [] if self.record is None else ["--record", str(self.record)]
        self._daemon = Proc([*ROLLBACKD, "run", "--config", str(self.config), *record], log=log,
                            new_session=True)
        stack.procs.append(self._daemon)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.api}/readyz", timeout=1, trust_env=False).status_code == 200:
                    break
            if not self._daemon.running() or time.monotonic() >= deadline:
                raise DemoFailedError("rollbackd run ready", self._daemon.output()[-1500:])
            time.sleep(0.2)
        self.follower = Follower(view, api=self.api, token=token,
                                 state_dir=stack.workdir / "state", app_url=self.app_url,
                                 daemon_log=log, not_before=time.time())
        mode = "auto" if executor_available() else "auto (this rollbackd has no runbook " \
            "executor: it will decide, not act)"
        view.event(f"rollbackd run: mode {mode}, every 1s, API at {self.api}, config "
                   f"{self.config}")

    def _wait_app(self, version: str, within: float, step: str) -> None:
        end = time.monotonic() + within
        last = "no answer"
        while time.monotonic() < end:
            try:
                answer = httpx.get(f"{self.app_url}/health", timeout=1, trust_env=False)
                body = answer.json()
                if answer.status_code == 200 and body.get("version") == version:
                    return
                last = f"HTTP {answer.status_code} {body}"
            except (httpx.HTTPError, ValueError) as exc:
                last = type(exc).__name__
            time.sleep(0.2)
        raise DemoFailedError(step, f"{self.app_url}/health: {last}")

    # -- the deploy --------------------------------------------------------------------------

    def ship(self) -> None:
        stack, view, scenario = self.stack, self.view, self.scenario
        assert stack.site is not None and self.follower is not None
        settings = dict(scenario.v2_settings)
        if scenario.name == "slow-release":
            settings["VF_LATENCY_MS"] = str(self._slow_latency_ms())
        argv = stack.site.deploy_argv("v2", settings)
        shown = " ".join(["rollbackd", "deploy", "run", "--version", "v2", "--",
                          "deploy.py", "--release", "v2",
                          *(f"--set {k}={v}" for k, v in settings.items())])
        view.event(f"shipping v2: {shown}", "head")
        self.deadline = time.monotonic() + self.timeout
        self.deployed_at = time.time()
        self.follower.not_before = self.deployed_at
        deploy = Proc([*ROLLBACKD, "deploy", "run", "--config", str(self.config), "--version",
                       "v2", "--", *argv], log=stack.workdir / "deploy.log", new_session=True)
        stack.procs.insert(0, deploy)
        shown_upto = 0
        while deploy.running():
            shown_upto = self._echo(deploy, shown_upto)
            self.follower.poll()
            if self._left() <= 0:
                raise DemoFailedError("the deploy ends", "rollbackd deploy run still runs")
            time.sleep(0.2)
        self._echo(deploy, shown_upto)
        code = deploy.popen.returncode
        if scenario.deploy_fails:
            if code == 0:
                raise DemoFailedError("v2's migration fails", "rollbackd deploy run exited 0")
            self.fault_at = self._migration_failed_at()
            view.event(f"v2's migration failed: rollbackd deploy run exited {code}, the "
                       "failure journaled (migration.failed = 1)", "bad")
        elif code != 0:
            raise DemoFailedError("v2 deployed", f"rollbackd deploy run exited {code}: "
                                  f"{deploy.output()[-800:]}")
        else:
            self.fault_at = time.time()  # v2 serves from now on
            view.event("v2 deployed: restore point verified, config and code switched, app "
                       "restarted, migrations applied")
        if scenario.name == "data-corruption":
            self._corrupt()

    def _echo(self, proc: Proc, shown: int) -> int:
        output = proc.output()
        complete = output[shown:].rpartition("\n")[0]
        for line in complete.splitlines():
            if line.strip():
                self.view.event(f"  | {line.rstrip()}", "note")
        return shown + (len(complete) + 1 if complete else 0)

    def _migration_failed_at(self) -> float | None:
        from daemon.journal import Journal

        journal = Journal.in_state_dir(self.stack.workdir / "state")
        try:
            event = journal.latest_event(("migration",))
            return None if event is None else event.t
        finally:
            journal.close()

    def _slow_latency_ms(self) -> int:
        """What makes v2's p95 70 % worse than the p95 rollbackd measured for v1: at least
        100 ms (the noise of a busy machine must not hide it), at most 200 ms (the probes give
        up on an answer at 300 ms)."""
        assert self.follower is not None
        p95 = self.follower.poll().signals.get("http.latency_p95") or 0.05
        return min(200, max(100, round(p95 * 1000 * 0.7) + 20))

    def _corrupt(self) -> None:
        """v2's "bug": three of v1's users deleted (their images go with them; their audit
        rows stay, naming users that no longer exist: the data check fails)."""
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
            rows = conn.execute("DELETE FROM users WHERE id IN (SELECT id FROM users ORDER BY id"
                                " LIMIT 3) RETURNING id, email").fetchall()
        self.deleted = {str(email): int(row_id) for row_id, email in rows}
        self.fault_at = time.time()
        self.view.event(f"v2's bug: users {', '.join(str(i) for i in self.deleted.values())} "
                        "deleted (with their images)", "bad")

    # -- following rollbackd -----------------------------------------------------------------

    def follow(self) -> None:
        scenario = self.scenario
        seen = self.wait(f"rollbackd decides ({scenario.rule})",
                         lambda s: s.decision("open") is not None,
                         otherwise=lambda s: f"no incident opened within "
                                             f"{self.timeout:.0f}s; rollbackd: {s.status_line}")
        opened = seen.decision("open")
        assert opened is not None
        if self.fault_at is None:
            self.fault_at = self.deployed_at
        if (opened["scenario"], opened["action"], opened["mode"]) != (
                scenario.rule, scenario.action, "auto"):
            raise DemoFailedError(
                f"{scenario.rule} -> {scenario.action} [auto]",
                f"incident {opened['incident']} opened as {opened['scenario']} -> "
                f"{opened['action']} [{opened['mode']}]: {opened['reason']}")
        if scenario.rolls_back:
            self._follow_rollback()
        else:
            self._follow_evaluate()

    def _follow_rollback(self) -> None:
        action = self.scenario.action
        no_executor = ("" if executor_available() else
                       " (this rollbackd has no runbook executor: daemon/runbooks/ is missing)")
        self.wait(f"the {action} runbook starts", lambda s: s.run is not None,
                  within=RUN_START_TIMEOUT,
                  otherwise=lambda s: f"no runbook run journaled for incident {s.incident} "
                                      f"within {RUN_START_TIMEOUT:.0f}s of the decision"
                                      f"{no_executor}")
        seen = self.wait(f"the {action} runbook ends", lambda s: s.run.status != "running",
                         otherwise=lambda s: f"run {s.run.id} still running at step "
                                             f"{s.steps[-1].kind if s.steps else '-'}")
        run = seen.run
        if run.status != "succeeded":
            failed = next((s for s in reversed(seen.steps) if s.outcome == "failed"), None)
            where = f"; step {failed.kind} failed: {failed.message}" if failed else ""
            raise DemoFailedError(f"the {action} runbook succeeds",
                                  f"run {run.id} {run.status}: {run.summary}{where}")
        self._wait_app("v1", max(1.0, self._left()), "v1 serves again")
        serving = self.follower.poll().serving if self.follower else None
        self.healthy_at = serving[1] if serving and serving[0] == "v1" else time.time()
        self.view.event(f"VisionForge v1 serves again at {self.app_url}", "ok")
        self.wait("the incident resolves", lambda s: s.resolved,
                  otherwise=lambda s: f"incident {s.incident} still open (last decision: "
                                      f"{s.decisions[-1]['kind'] if s.decisions else '-'})")
        self._more_traffic()

    def _follow_evaluate(self) -> None:
        try:
            seen = self.wait("a person is paged", lambda s: bool(s.pages), within=PAGE_TIMEOUT)
            self.checks.append(Check("a person paged", True,
                                     f"{len(seen.pages)} page(s) for incident {seen.incident}: "
                                     f"{seen.pages[0].summary}"))
        except DemoFailedError:
            # Not fatal: the person can still answer, which is the rest of the story.
            seen = self.follower.seen if self.follower else Seen()
            self.checks.append(Check("a person paged", False,
                                     f"no page journaled for incident {seen.incident} within "
                                     f"{PAGE_TIMEOUT:.0f}s of the decision"))
            self.view.event(f"no page journaled for incident {seen.incident}: answering it "
                            "anyway", "bad")
        incident = seen.incident
        self.view.event(f"answering as the person paged: rollbackd decide {incident} dismiss",
                        "head")
        result = self._rollbackd("decide", str(incident), "dismiss", "--reason",
                                 "demo: v2 is slower on purpose")
        if result.returncode != 0:
            raise DemoFailedError("the page answered", result.stderr.strip())
        self.view.event(f"rollbackd: {result.stdout.strip()}")
        self.wait("the incident resolves", lambda s: s.resolved,
                  otherwise=lambda s: f"incident {s.incident} still open")
        self._more_traffic()

    def _more_traffic(self) -> None:
        traffic = self.stack.traffic
        assert traffic is not None
        since = time.time()
        end = time.monotonic() + AFTER_RECOVERY
        while time.monotonic() < end or traffic.acknowledged_since(since) < 5:
            if time.monotonic() > end + 10:
                break
            time.sleep(0.2)
        traffic.stop()
        self.view.event(f"traffic stopped: {traffic.describe()}")

    # -- verifying the end state -------------------------------------------------------------

    def _rollbackd(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*ROLLBACKD, *args, "--config", str(self.config)],
                              capture_output=True, text=True, timeout=60, check=False)

    def _users(self, dbname: str) -> dict[str, int]:
        assert self.stack.cluster is not None and self.stack.traffic is not None
        with psycopg.connect(self.stack.cluster.dsn(dbname), autocommit=True,
                             connect_timeout=5) as conn:
            rows = conn.execute("SELECT email, id FROM users WHERE email LIKE %s",
                                (f"{self.stack.traffic.tag}-%",)).fetchall()
        return {str(email): int(row_id) for email, row_id in rows}

    def verify(self) -> None:
        assert self.follower is not None and self.stack.site is not None
        seen = self.follower.poll()
        site, checks = self.stack.site, self.checks
        opened = seen.decision("open") or {}
        resolved = seen.decision("resolve") or {}
        decided_in = float(opened.get("t", 0)) - (self.fault_at or self.deployed_at)
        checks.append(Check("rollbackd decided", True,
                            f"incident {seen.incident}: {opened.get('scenario')} -> "
                            f"{opened.get('action')} [auto], {decided_in:.1f}s after the fault"))
        want = "v1" if self.scenario.rolls_back else "v2"
        app = seen.app or {}
        checks.append(Check(f"{want} serving", app.get("version") == want
                            and app.get("status") == "ok",
                            f"{self.app_url}/health says {app or 'nothing'}"))
        if self.scenario.rolls_back:
            run = seen.run
            checks.append(Check("runbook", run is not None and run.status == "succeeded",
                                f"run {run.id} {run.runbook} {run.status} in "
                                f"{(run.ended_at or 0) - run.started_at:.1f}s, "
                                f"{len(seen.steps)} step(s)" if run else "no run"))
            restore = next((r for r in seen.restores if r.get("status") != "running"), None)
            checks.append(Check(
                "database restored", bool(restore and restore.get("ok")),
                f"restore {restore['id']} {restore['status']}: {restore['strategy']} of "
                f"{restore['source']}, the replaced database kept as {restore.get('kept')}"
                if restore else f"no restore journaled for incident {seen.incident}"))
            checks.append(Check("code rolled back", site.current_release() == "v1",
                                f"current -> releases/{site.current_release()}"))
            checks.append(Check("config rolled back", _sha(site.env_file) == self.v1_config_sha,
                                f"{site.env_file} is v1's" if _sha(site.env_file)
                                == self.v1_config_sha else f"{site.env_file} is NOT v1's"))
        checks.append(Check("incident resolved", bool(resolved),
                            f"incident {seen.incident}: {resolved.get('reason')}" if resolved
                            else f"incident {seen.incident} still open"))
        checks.extend(self._rows(seen).checks(restored=self.scenario.rolls_back))
        if self.scenario.name == "data-corruption":
            live = self._users_by_email(list(self.deleted))
            back = [e for e, i in self.deleted.items() if live.get(e) == i]
            checks.append(Check("deleted users restored", len(back) == len(self.deleted),
                                f"{len(back)} of {len(self.deleted)} back in the live database"))

    def _users_by_email(self, emails: Sequence[str]) -> dict[str, int]:
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
            rows = conn.execute("SELECT email, id FROM users WHERE email = ANY(%s)",
                                (list(emails),)).fetchall()
        return {str(email): int(row_id) for email, row_id in rows}

    def _rows(self, seen: Seen) -> RowReport:
        assert self.stack.traffic is not None
        restore = next((r for r in seen.restores if r.get("ok") or r.get("status") in
                        ("restored", "validation_failed")), None)
        kept_name = restore.get("kept") if restore else None
        kept: dict[str, int] | None = None
        if restore is not None and restore.get("kept_kind") == "database" and kept_name:
            kept = self._users(str(kept_name))
        elif restore is not None:
            self.checks.append(Check("replaced data kept in a database", False,
                                     f"restore {restore['id']} kept it as "
                                     f"{restore.get('kept_kind')} {kept_name}: the demo checks "
                                     "rows in a kept database only"))
        start = next((s for s in seen.steps if s.kind == "start_app"), None)
        recovered_at = (start.started_at if start is not None
                        else restore.get("finished_at") if restore is not None
                        else self.healthy_at or time.time())
        if not self.scenario.rolls_back:
            recovered_at = self.deployed_at  # nothing restored: every write stays live
        report = classify_rows(self.stack.traffic.writes, deployed_at=self.deployed_at,
                               recovered_at=float(recovered_at or time.time()),
                               live=self._users(DATABASE), kept=kept,
                               kept_name=str(kept_name) if kept_name else None)
        return report

    def report(self) -> None:
        seen = self.follower.seen if self.follower else Seen()
        if seen.incident is None:
            return
        number = str(seen.incident)
        result = self._rollbackd("incidents", "report", number)
        verb = "incidents report"
        if result.returncode == 2 and "No such command" in result.stderr:
            result = self._rollbackd("incidents", "show", number)
            verb = "incidents show"
        self.view.line("")
        self.view.line(f"--- rollbackd {verb} {number} " + "-" * 40)
        for line in (result.stdout or result.stderr).rstrip().splitlines():
            self.view.line(line)
        self.view.line("-" * 60)
        self.checks.append(Check("incident report", result.returncode == 0,
                                 f"rollbackd {verb} {number} printed above"
                                 if result.returncode == 0 else
                                 f"rollbackd {verb} {number} exited {result.returncode}: "
                                 f"{result.stderr.strip()[-300:]}"))

    # -- the end -----------------------------------------------------------------------------

    def _phases(self) -> list[Phase]:
        seen = self.follower.seen if self.follower else None
        if seen is None or seen.decision("open") is None:
            return []
        opened = seen.decision("open") or {}
        return recovery_phases(fault_at=self.fault_at, decided_at=float(opened["t"]),
                               steps=seen.steps, healthy_at=self.healthy_at)

    def _daemon_tail(self, lines: int = 6) -> None:
        """rollbackd's last log lines that are not the per-cycle status (shown above)."""
        daemon = self._daemon
        if daemon is None:
            return
        shown = []
        for raw in daemon.output().splitlines():
            try:
                entry = json.loads(raw)
            except ValueError:
                shown.append(raw)
                continue
            if not isinstance(entry, dict) or entry.get("event") == "cycle":
                continue
            rest = " ".join(f"{k}={v}" for k, v in entry.items()
                            if k not in ("timestamp", "app", "event", "level"))
            shown.append(f"{entry.get('level', '')} {entry.get('event', '')}: {rest}")
        for text in shown[-lines:]:
            self.view.line(f"  rollbackd log: {text[:240]}")

    def _save_recording(self) -> None:
        """Beside the recording: the decisions rollbackd journaled and its policy, once it has
        stopped (so that both end with its last cycle), before the journal is removed."""
        daemon, record = self._daemon, self.record
        if record is None or daemon is None:
            return
        daemon.close()
        from daemon.journal import Journal, JournalError

        try:
            journal = Journal.in_state_dir(self.stack.workdir / "state")
            try:
                lines = [json.dumps(d.as_json()) + "\n"
                         for summary in reversed(journal.incidents(limit=1_000_000))
                         for d in journal.decisions(limit=1_000_000, incident=summary.incident)]
            finally:
                journal.close()
            Path(f"{record}.decisions.jsonl").write_text("".join(lines), encoding="utf-8")
            shutil.copyfile(self.stack.workdir / "policy.toml", f"{record}.policy.toml")
        except (OSError, JournalError) as exc:
            self.view.line(f"demo: cannot save the decisions beside {record}: {exc}")
            return
        self.view.line(f"demo: recorded {record} (replay), {record}.decisions.jsonl "
                       f"({len(lines)} decisions), {record}.policy.toml")

    def _print_keep(self) -> None:
        stack = self.stack
        assert stack.cluster is not None
        daemon = self._daemon
        pids = [str(p) for p in (daemon.pid if daemon and daemon.running() else None,
                                 stack.app_pid()) if p]
        for line in (
            "demo: --keep: everything is still running",
            f"  app         {self.app_url}/health",
            f"  rollbackd   {self.api}/metrics; API token in "
            f"{stack.workdir / 'api.token'}",
            f"  status      {rollbackd_command()} --config {self.config} status",
            f"  database    psql '{stack.cluster.dsn(DATABASE)}'",
            f"  logs        {stack.workdir}/rollbackd.log, {stack.workdir}/deploy.log",
            f"  stop it     kill {' '.join(pids)}; "
            f"{' '.join(stack.cluster.prefix)} {stack.cluster.pg_ctl} -D {stack.cluster.data} "
            f"stop; rm -rf {stack.workdir} {stack.cluster.dir}",
        ):
            self.view.line(line)


def start_database(view: View, stack: Stack) -> str:
    """A throwaway PostgreSQL (``stack.cluster``) with VisionForge v1's schema and data; its
    DSN. CannotRunError without PostgreSQL's server binaries; DemoFailedError when v1 cannot
    be set up."""
    try:
        stack.cluster = PgCluster(prefix="rollbackd-demo-pg-")
    except PgUnavailableError as exc:
        raise CannotRunError(str(exc)) from None
    stack.cluster.start()
    version = stack.cluster.execute("SHOW server_version")[0][0]
    view.event(f"PostgreSQL {version}: a throwaway server on 127.0.0.1:"
               f"{stack.cluster.port} ({stack.cluster.dir})")
    dsn = stack.cluster.create_database(DATABASE)
    for step, result in (("migrate v1", migrate(dsn, V1_MIGRATIONS)),
                         ("seed", seed(dsn, 20, 60))):
        if result.returncode != 0:
            raise DemoFailedError(step, result.stderr.strip() or result.stdout.strip())
    view.event(f"database {DATABASE}: VisionForge v1's schema, 20 users, 60 images")
    return dsn


def write_token(path: Path) -> str:
    """A fresh API token written to ``path``, readable by its owner only."""
    token = secrets.token_hex(32)
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token


def tell(view: View, story: Callable[[], None], checks: Sequence[Check],
         tails: Callable[[], None]) -> tuple[int, str | None]:
    """Tell ``story`` to its end or to the step it did not get past: the exit status (its
    ``checks`` decide, once it ends) and the step not met (None when none is known);
    ``tails`` shows what the daemons said last when a step is not met."""
    try:
        story()
        return (EXIT_OK if all(c.ok for c in checks) else EXIT_UNMET), None
    except DemoFailedError as exc:
        view.event(f"NOT MET {exc.step}: {exc.detail}", "fail")
        tails()
        return EXIT_UNMET, exc.step
    except CannotRunError as exc:
        view.event(f"cannot run the demo here: {exc}", "fail")
        return EXIT_CANNOT_RUN, None
    except KeyboardInterrupt:
        view.event("interrupted: stopping everything the demo started", "fail")
        return EXIT_INTERRUPTED, None
    except Exception as exc:  # a fault of the demo itself: still clean up, and say what
        view.event(f"NOT MET the demo runs to its end: {type(exc).__name__}: {exc}", "fail")
        view.line("".join(traceback.format_exception(exc)).rstrip())
        return EXIT_UNMET, "the demo runs to its end"


def conclude(view: View, checks: Sequence[Check], code: int, unmet: str | None) -> str | None:
    """Print each check and the verdict; the step or check not met (None when all were)."""
    for check in checks:
        view.line(check.line())
    if code == EXIT_OK:
        view.line(f"demo: all {len(checks)} checks verified")
        return None
    if unmet is None and code == EXIT_UNMET:
        unmet = next((c.name for c in checks if not c.ok), "unknown")
    if unmet is not None:
        view.line(f"demo: NOT MET: {unmet}")
    return unmet


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Ctrl-C or SIGTERM during the clean-up would leave half of it undone: hold them until
    the end (the clean-up is bounded: every stop escalates to SIGKILL)."""
    received: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _sigterm_interrupts(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_demo(scenario: str = "bad-migration", *, keep: bool = False,
             timeout: float = DEFAULT_TIMEOUT, out: TextIO | None = None,
             live: bool | None = None, record: Path | None = None) -> int:
    """The demo, from a fresh machine to its checks; its exit status."""
    chosen = SCENARIOS.get(scenario)
    if chosen is None and scenario != FLEET_SCENARIO:
        print(f"demo: unknown scenario {scenario!r} (one of "
              f"{', '.join([*SCENARIOS, FLEET_SCENARIO])})", file=sys.stderr)
        return EXIT_CANNOT_RUN
    if chosen is None and record is not None:
        print(f"demo: --record records one rollbackd: not with --scenario {FLEET_SCENARIO}",
              file=sys.stderr)
        return EXIT_CANNOT_RUN
    previous = signal.signal(signal.SIGTERM, _sigterm_interrupts)
    try:
        if chosen is None:
            from examples.demofleet import FleetDemo

            return FleetDemo(keep=keep, timeout=timeout, out=out, live=live).run()
        return Demo(chosen, keep=keep, timeout=timeout, out=out, live=live,
                    record=record).run().code
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.demo",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--scenario", choices=[*SCENARIOS, FLEET_SCENARIO],
                        default="bad-migration")
    parser.add_argument("--keep", action="store_true",
                        help="leave everything running and print how to reach it")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="seconds rollbackd gets from the deploy to the resolved incident")
    parser.add_argument("--record", type=Path, help="record rollbackd's engine to this file")
    args = parser.parse_args(argv)
    return run_demo(args.scenario, keep=args.keep, timeout=args.timeout, record=args.record)


if __name__ == "__main__":
    sys.exit(main())
