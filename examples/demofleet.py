"""``rollbackd demo --scenario fleet``: three app hosts on one PostgreSQL, each with its own
rollbackd in one ``[fleet]``, and a bad release rolled back once for the database and on every
host.

It starts a throwaway PostgreSQL with VisionForge v1's schema and data, then three hosts on
this machine (``host0``..``host2``: each its own site of releases, its app on a port of its
own, its ``rollbackd run`` in ``auto`` mode). It ships v2 as a fleet ships it: hosts 1 and 2
switch code and config without migrating, then host0 runs v2's migrations, whose second one
fails after the first rewrote every user. It follows the fleet's shared state (the
``rollbackd`` schema in the maintenance database) while host0's rollbackd opens the fleet
incident, restores the database once under the fleet's lock, and every host rolls back its
own code and configuration and restarts its app. It ends by checking, from the outside, that
the database was restored once and holds v1's schema, that every host serves v1 with v1's
code and config, and that the fleet incident resolved with every host's part done.

Exit status as ``examples/demo.py``'s. Every process it started is stopped by its pid at the
end, unless ``--keep``.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import httpx
import psycopg

from daemon.db.fleet import FleetDb, FleetError, FleetIncident
from daemon.journal import Journal
from examples.apprun import Proc
from examples.demo import (
    EXIT_CANNOT_RUN,
    EXIT_INTERRUPTED,
    EXIT_UNMET,
    ROLLBACKD,
    DemoFailedError,
    Stack,
    _sha,
    _signals_deferred,
    conclude,
    rollbackd_command,
    start_database,
    tell,
    write_token,
)
from examples.demochecks import Check
from examples.demosite import (
    DATABASE,
    RELEASES,
    V1_MIGRATIONS,
    Site,
    build_site,
    demo_policy,
    rollbackd_config,
    toml_str,
)
from examples.demoview import View
from examples.pgcluster import free_port

HOSTS = 3
FLEET = "visionforge-demo"
HEARTBEAT = "1s"
POLL = 0.25
READY_TIMEOUT = 30.0
V2_MIGRATIONS = (RELEASES / "v2-partial",)
"""v2's first migration adds a display name to every user; its second fails."""


@dataclass
class DemoHost:
    """One app host of the demo's fleet: its site, its app and its rollbackd."""

    name: str
    root: Path
    site: Site
    app_url: str
    api: str
    config: Path
    v1_config_sha: str
    daemon: Proc
    stack: Stack

    def health(self) -> dict[str, object] | None:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            answer = httpx.get(f"{self.app_url}/health", timeout=1, trust_env=False)
            if answer.status_code == 200:
                body: dict[str, object] = answer.json()
                return body
        return None

    def version(self) -> object:
        health = self.health()
        return None if health is None else health.get("version")

    def serving_v1(self) -> bool:
        return self.version() == "v1" and self.ready()

    def log_tail(self) -> str:
        return _tail(self.root / "rollbackd.log")

    def ready(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.api}/readyz", timeout=1,
                             trust_env=False).status_code == 200
        return False


class FleetDemo:
    def __init__(self, *, keep: bool = False, timeout: float = 90.0,
                 out: TextIO | None = None, live: bool | None = None) -> None:
        self.keep = keep
        self.timeout = timeout
        self.view = View(out, live=live)
        self.workdir = Path(tempfile.mkdtemp(prefix="rollbackd-demo-"))
        self.base = Stack(self.workdir)
        """The cluster (stopped last)."""
        self.hosts: list[DemoHost] = []
        self.checks: list[Check] = []
        self.dsn = ""
        self.deadline = math.inf
        self._seen: tuple[object, ...] = ()

    # -- running it --------------------------------------------------------------------------

    def run(self) -> int:
        code = EXIT_UNMET
        try:
            with self.view:
                code, unmet = tell(self.view, self._story, self.checks, self._tails)
            conclude(self.view, self.checks, code, unmet)
        except KeyboardInterrupt:  # while concluding: stop everything all the same
            code = EXIT_INTERRUPTED
        finally:
            if self.keep and code not in (EXIT_INTERRUPTED, EXIT_CANNOT_RUN):
                self._print_keep()
            else:
                with _signals_deferred():
                    for host in reversed(self.hosts):
                        host.stack.stop_all(remove=False)
                    self.base.stop_all()
                self.view.line("demo: stopped everything it started")
        return code

    def _story(self) -> None:
        self.view.event(f"scenario fleet: {HOSTS} app hosts on one database; host0's v2 "
                        "migration fails: the database is restored once, every host rolls "
                        "back", "head")
        self.setup()
        self.ship()
        self.follow()
        self.verify()

    def _left(self) -> float:
        return self.deadline - time.monotonic()

    def wait(self, step: str, done: Callable[[], object], within: float,
             otherwise: Callable[[], str] | None = None) -> None:
        end = time.monotonic() + max(0.0, min(within, self._left()))
        while not done():
            for host in self.hosts:
                if not host.daemon.running():
                    raise DemoFailedError("every rollbackd keeps running",
                                          f"{host.name}'s exited with status "
                                          f"{host.daemon.popen.returncode}")
            if time.monotonic() >= end:
                raise DemoFailedError(step, otherwise() if otherwise else
                                      f"not seen within {within:.0f}s")
            time.sleep(POLL)

    # -- set-up ------------------------------------------------------------------------------

    def setup(self) -> None:
        view = self.view
        self.dsn = start_database(view, self.base)
        policy = self.workdir / "policy.toml"
        policy.write_text(demo_policy(watch_for="10s"))
        token_file = self.workdir / "api.token"
        write_token(token_file)
        self.deadline = time.monotonic() + READY_TIMEOUT * 2
        for i in range(HOSTS):
            root = self.workdir / f"host{i}"
            root.mkdir()
            port = free_port()
            site = build_site(root / "site", dsn=self.dsn, port=port,
                              releases={"v1": [V1_MIGRATIONS],
                                        "v2": [V1_MIGRATIONS, *V2_MIGRATIONS]})
            stack = Stack(root, site=site)
            stack.procs.append(Proc(site.app_argv(), log=site.app_log, new_session=True))
            listen = f"127.0.0.1:{free_port()}"
            config = root / "rollbackd.toml"
            config.write_text(rollbackd_config(
                root, site, dsn=self.dsn, app_url=f"http://127.0.0.1:{port}", listen=listen,
                token_file=token_file, policy=policy)
                + f"\n[fleet]\nname = {toml_str(FLEET)}\nid = \"host{i}\"\n"
                  f"heartbeat = \"{HEARTBEAT}\"\n")
            daemon = Proc([*ROLLBACKD, "run", "--config", str(config)],
                          log=root / "rollbackd.log", new_session=True)
            stack.procs.append(daemon)
            self.hosts.append(DemoHost(f"host{i}", root, site, f"http://127.0.0.1:{port}",
                                       f"http://{listen}", config, _sha(site.env_file),
                                       daemon, stack))
        for host in self.hosts:
            self.wait(f"{host.name}: v1 serving and rollbackd ready", host.serving_v1,
                      READY_TIMEOUT, host.log_tail)
            view.event(f"{host.name}: VisionForge v1 serving at {host.app_url}; rollbackd API "
                       f"at {host.api} (site {host.site.root})")
        self.wait("every host beats in the fleet", lambda: len(self._look()[1]) == HOSTS,
                  READY_TIMEOUT, lambda: f"hosts seen: {self._look()[1]}")
        view.event(f"fleet {FLEET}: {', '.join(h.name for h in self.hosts)} each look at the "
                   f"fleet every {HEARTBEAT} (the rollbackd schema of the maintenance "
                   "database)")

    # -- the deploy --------------------------------------------------------------------------

    def ship(self) -> None:
        view = self.view
        self.deadline = time.monotonic() + self.timeout
        for host in [*self.hosts[1:], self.hosts[0]]:
            migrates = host is self.hosts[0]
            argv = host.site.deploy_argv("v2", {"VF_FEATURE_FLAGS": "display-names"})
            if not migrates:
                argv.append("--no-migrate")
            view.event(f"{host.name}: rollbackd deploy run --version v2 -- deploy.py "
                       f"--release v2{'' if migrates else ' --no-migrate'}", "head")
            deploy = Proc([*ROLLBACKD, "deploy", "run", "--config", str(host.config),
                           "--version", "v2", "--", *argv], log=host.root / "deploy.log",
                          new_session=True)
            try:
                deploy.popen.wait(timeout=max(1.0, self._left()))
            finally:
                deploy.close()
            code = deploy.popen.returncode
            if migrates and code == 0:
                raise DemoFailedError("v2's migration fails", "rollbackd deploy run "
                                      "exited 0")
            if not migrates and code != 0:
                raise DemoFailedError(f"{host.name}: v2 deployed", f"exit {code}: "
                                      f"{_tail(host.root / 'deploy.log')}")
            view.event(f"{host.name}: " + ("v2's second migration failed after its first "
                                           "rewrote every user (migration.failed = 1)"
                                           if migrates else "v2 serving (restore point taken, "
                                           "code and config switched, no migration)"),
                       "bad" if migrates else "")

    # -- following the fleet -----------------------------------------------------------------

    def _fleet(self) -> FleetDb:
        return FleetDb(self.base.cluster.dsn("postgres") if self.base.cluster else "", FLEET,
                       "demo", connect_timeout=3.0, alive_within=5.0)

    def _look(self) -> tuple[FleetIncident | None, dict[str, str | None]]:
        """The fleet's newest incident and each alive host's part in it (empty when the
        fleet's tables cannot be read yet)."""
        try:
            db = self._fleet()
            view, latest = db.glance(), db.latest()
        except FleetError:
            return None, {}
        parts: dict[str, str | None] = {
            h.host: (h.part if latest is not None and h.following == latest.id else None)
            for h in view.hosts if h.host in view.alive}
        return latest, parts

    def follow(self) -> None:
        def over() -> bool:
            incident, parts = self._look()
            self._tell(incident, parts)
            return (incident is not None and not incident.open
                    and all(h.version() == "v1" for h in self.hosts))

        self.wait("the fleet rolled back and its incident resolved", over, self.timeout,
                  lambda: f"{self._look()}; versions "
                          f"{[h.version() for h in self.hosts]}")

    def _tell(self, incident: FleetIncident | None, parts: dict[str, str | None]) -> None:
        """Say what changed in the fleet since the last look."""
        if incident is None:
            return
        seen = (incident.id, incident.db_state, incident.db_host, incident.open,
                tuple(sorted(parts.items())))
        if seen == self._seen:
            return
        self._seen = seen
        kind = "bad" if incident.db_state == "failed" else (
            "ok" if incident.db_state == "restored" else "step")
        hosts = ", ".join(f"{h} {p or '-'}" for h, p in sorted(parts.items()))
        by = f" by {incident.db_host}" if incident.db_host else ""
        state = f"database {incident.db_state}{by}"
        self.view.event(f"fleet incident {incident.id} ({incident.scenario} -> "
                        f"{incident.action}, opened by {incident.opened_by}): "
                        f"{'resolved, ' if not incident.open else ''}{state}; parts: {hosts}",
                        kind)

    # -- the checks --------------------------------------------------------------------------

    def verify(self) -> None:
        incident, parts = self._look()
        restores, runs = [], {}
        for host in self.hosts:
            journal = Journal.in_state_dir(host.root / "state")
            try:
                restores += [(host.name, r.status) for r in journal.restores()]
                runs[host.name] = journal.runs()
            finally:
                journal.close()
        for name, ran in runs.items():
            for run in reversed(ran):
                took = "" if run.ended_at is None else f" in {run.ended_at - run.started_at:.1f}s"
                self.view.event(f"{name}: run {run.id} {run.runbook} {run.status}{took}: "
                                f"{', '.join(run.plan)}", "ok" if run.status == "succeeded"
                                else "bad")
        with psycopg.connect(self.dsn, connect_timeout=5) as conn:
            migrations = conn.execute("SELECT count(*) FROM knex_migrations").fetchone()
            display = conn.execute("SELECT count(*) FROM information_schema.columns WHERE "
                                   "table_name = 'users' AND column_name = 'display_name'"
                                   ).fetchone()
        v1_count = len(list(V1_MIGRATIONS.glob("*.sql")))
        self.checks += [
            Check("one fleet incident", incident is not None
                  and incident.scenario == "migration_failed" and not incident.open,
                  "none" if incident is None else incident.describe()),
            Check("database restored once", incident is not None
                  and incident.db_state == "restored" and [s for _, s in restores]
                  == ["restored"], f"restores journaled: {restores or 'none'}"),
            Check("v1's schema", migrations == (v1_count,) and display == (0,),
                  f"{migrations[0] if migrations else '?'} migrations applied (v1 has "
                  f"{v1_count}); users.display_name "
                  f"{'gone' if display == (0,) else 'still there'}"),
            Check("every host serves v1", all(h.version() == "v1" for h in self.hosts),
                  ", ".join(f"{h.name} {h.version()}" for h in self.hosts)),
            Check("every host's code rolled back",
                  all(h.site.current_release() == "v1" for h in self.hosts),
                  ", ".join(f"{h.name} current -> {h.site.current_release()}"
                            for h in self.hosts)),
            Check("every host's config rolled back",
                  all(_sha(h.site.env_file) == h.v1_config_sha for h in self.hosts),
                  ", ".join(f"{h.name} "
                            f"{'v1' if _sha(h.site.env_file) == h.v1_config_sha else 'v2'}"
                            for h in self.hosts)),
            Check("every host did its part, once", sorted(parts.items()) == [
                (h.name, "done") for h in self.hosts] and all(
                    [r.status for r in ran] == ["succeeded"] for ran in runs.values()),
                  "; ".join(f"{name}: part {parts.get(name)}, runs "
                            f"{[f'{r.runbook} {r.status}' for r in ran]}"
                            for name, ran in runs.items())),
        ]

    # -- what is left --------------------------------------------------------------------------

    def _tails(self) -> None:
        for host in self.hosts:
            self.view.line(f"--- {host.name}'s rollbackd (last lines):")
            self.view.line(host.log_tail())

    def _print_keep(self) -> None:
        cluster = self.base.cluster
        self.view.line("demo: --keep: everything is still running")
        pids = []
        for host in self.hosts:
            self.view.line(f"  {host.name}       {host.app_url}/health; "
                           f"{rollbackd_command()} --config {host.config} status")
            pids += [str(p) for p in (host.daemon.pid if host.daemon.running() else None,
                                      host.stack.app_pid()) if p]
        if cluster is not None:
            self.view.line(f"  database    psql '{cluster.dsn(DATABASE)}'")
            self.view.line(f"  stop it     kill {' '.join(pids)}; {' '.join(cluster.prefix)} "
                           f"{cluster.pg_ctl} -D {cluster.data} stop; "
                           f"rm -rf {self.workdir} {cluster.dir}")


def _tail(path: Path, lines: int = 12) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return f"({path} cannot be read)"
