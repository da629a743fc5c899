"""How the demo follows rollbackd from the outside, as an operator would: its API's status
and incidents (with the token), ``/metrics``, the journal's runbook runs, steps and pages
(read-only), the status line of its log; and the app's ``/health``. Every new fact becomes one
line of the demo's story; the state now fills its live panel."""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from examples.demochecks import step_base
from examples.demoview import View


def parse_signals(exposition: str) -> dict[str, float | None]:
    """``rollbackd_signal{signal="..."}`` values from /metrics (NaN: unknown, as None)."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, float | None] = {}
    for family in text_string_to_metric_families(exposition):
        if family.name != "rollbackd_signal":
            continue
        for sample in family.samples:
            name = sample.labels.get("signal")
            if name:
                found[name] = None if math.isnan(sample.value) else sample.value
    return found


@dataclass
class Seen:
    """What the demo has seen of rollbackd so far (newest state)."""

    status: dict[str, Any] = field(default_factory=dict)
    signals: dict[str, float | None] = field(default_factory=dict)
    incident: int | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)
    restores: list[dict[str, Any]] = field(default_factory=list)
    run: Any = None
    """The incident's runbook run (daemon.journal.Run), once one began."""
    steps: list[Any] = field(default_factory=list)
    pages: list[Any] = field(default_factory=list)
    app: dict[str, Any] | None = None
    """The app's last /health answer."""
    serving: tuple[str, float] | None = None
    """The version the app has been serving healthy since when (first seen), or None."""
    status_line: str = ""

    def note_app(self, asked: float) -> None:
        app = self.app
        if app is None or app.get("status") != "ok":
            self.serving = None
        elif self.serving is None or self.serving[0] != app.get("version"):
            self.serving = (str(app.get("version")), asked)

    def decision(self, kind: str) -> dict[str, Any] | None:
        return next((d for d in self.decisions if d.get("kind") == kind), None)

    @property
    def resolved(self) -> bool:
        return self.decision("resolve") is not None


class Follower:
    """Reads rollbackd from the outside, as an operator would: ``GET /api/v1/status`` and
    ``/api/v1/incidents[/N]`` with the token, ``/metrics``, the journal's runs, steps and pages
    (read-only), the daemon's status line from its log; and the app's ``/health``. Every new
    fact becomes one line of the story."""

    def __init__(self, view: View, *, api: str, token: str, state_dir: Path, app_url: str,
                 daemon_log: Path, not_before: float = 0.0,
                 client: httpx.Client | None = None) -> None:
        """``client``: for rollbackd's API and the app (its transport can be a mock)."""
        self.view = view
        self.api = api
        self.app_url = app_url
        self.state_dir = state_dir
        self.daemon_log = daemon_log
        self.not_before = not_before
        self.client = client or httpx.Client(timeout=2.0, trust_env=False)
        self.auth = {"Authorization": f"Bearer {token}"}
        self.seen = Seen()
        self._shown: set[str] = set()
        self._journal: Any = None
        self._log_offset = 0

    def _api(self, path: str) -> httpx.Response:
        return self.client.get(f"{self.api}{path}", headers=self.auth)

    def close(self) -> None:
        self.client.close()
        if self._journal is not None:
            self._journal.close()

    def _once(self, key: str, text: str, kind: str = "") -> None:
        if key not in self._shown:
            self._shown.add(key)
            self.view.event(text, kind)

    def journal(self) -> Any:
        if self._journal is None:
            from daemon.journal import Journal

            self._journal = Journal.in_state_dir(self.state_dir)
        return self._journal

    def poll(self) -> Seen:
        seen = self.seen
        with contextlib.suppress(httpx.HTTPError, ValueError):
            seen.status = self._api("/api/v1/status").json()
        with contextlib.suppress(httpx.HTTPError, ValueError):
            seen.signals = parse_signals(self.client.get(f"{self.api}/metrics").text)
        asked = time.time()
        try:
            seen.app = self.client.get(f"{self.app_url}/health", timeout=1.0).json()
        except (httpx.HTTPError, ValueError):
            seen.app = None
        seen.note_app(asked)
        self._read_status_line()
        self._incident()
        if seen.incident is not None:
            self._runs(seen.incident)
        self.view.status(self.panel())
        return seen

    def _read_status_line(self) -> None:
        try:
            with self.daemon_log.open("rb") as log:
                log.seek(self._log_offset)
                chunk = log.read()
        except OSError:
            return
        cut = chunk.rfind(b"\n")
        if cut < 0:
            return
        self._log_offset += cut + 1
        for raw in chunk[:cut].splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(raw)
                if isinstance(entry, dict) and entry.get("event") == "cycle":
                    self.seen.status_line = str(entry.get("status", ""))

    def _incident(self) -> None:
        seen = self.seen
        if seen.incident is None:
            try:
                rows = self._api("/api/v1/incidents").json()
            except (httpx.HTTPError, ValueError):
                return
            fresh = [r for r in rows if isinstance(r, dict)
                     and float(r.get("opened_at", 0)) >= self.not_before]
            if not fresh:
                return
            seen.incident = int(min(fresh, key=lambda r: r["incident"])["incident"])
        try:
            body = self._api(f"/api/v1/incidents/{seen.incident}").json()
        except (httpx.HTTPError, ValueError):
            return
        seen.decisions = list(body.get("decisions", []))
        seen.restores = list(body.get("restores", []))
        for i, d in enumerate(seen.decisions):
            self._once(f"decision:{i}", f"rollbackd: incident {d['incident']} {d['kind']}: "
                       f"{d['scenario']} ({d['severity']}) -> {d['action']} [{d['mode']}]: "
                       f"{d['reason']}", "bad" if d["kind"] != "resolve" else "ok")
        for r in seen.restores:
            if r.get("status") != "running":
                kept = f"; the replaced database is kept as {r['kept']}" if r.get("kept") else ""
                self._once(f"restore:{r['id']}", f"rollbackd: restore {r['id']} {r['status']}: "
                           f"{r['strategy']} of {r['source']}{kept}",
                           "ok" if r.get("ok") else "bad")

    def _runs(self, incident: int) -> None:
        from daemon.journal import JournalError

        seen = self.seen
        try:
            journal = self.journal()
            runs = journal.runs(incident=incident)
            seen.pages = journal.pages(incident=incident)
            if runs:
                seen.run = runs[-1]  # newest first: the incident's first run
                seen.steps = journal.steps(seen.run.id)
        except JournalError:
            return
        for page in seen.pages:
            self._once(f"page:{page.id}", f"rollbackd: page L{page.level} ({page.template}): "
                       f"{page.summary}", "bad")
        run = seen.run
        if run is None:
            return
        self._once(f"run:{run.id}", f"rollbackd: runbook {run.runbook} started (run {run.id}): "
                   f"{' -> '.join(run.plan)}", "head")
        total, base = len(run.plan), step_base(run.plan, seen.steps)
        for step in seen.steps:
            where = f"step {step.idx + 1 - base}/{total} {step.kind}"
            if step.attempt > 1:
                where += f" (attempt {step.attempt})"
            if step.ended_at is None:
                self._once(f"step:{step.id}:begun", f"rollbackd: {where} ...", "step")
            else:
                took = step.ended_at - step.started_at
                self._once(f"step:{step.id}:ended", f"rollbackd: {where} {step.outcome} "
                           f"({took:.1f}s): {step.message}",
                           "step" if step.outcome != "failed" else "bad")
        if run.status != "running":
            self._once(f"run:{run.id}:end", f"rollbackd: runbook {run.runbook} {run.status}: "
                       f"{run.summary}", "ok" if run.status == "succeeded" else "bad")

    def panel(self) -> list[str]:
        seen = self.seen
        app = seen.app
        lines = [f"app        {app.get('version')} at {self.app_url} ({app.get('status')})"
                 if app else f"app        not answering at {self.app_url}"]
        signals = seen.signals

        def show(name: str, pattern: str = "{:g}") -> str:
            value = signals.get(name)
            return "?" if value is None else pattern.format(value)

        if signals:
            lines.append(f"signals    migration.failed={show('migration.failed')} "
                         f"http.up={show('http.up')} "
                         f"errors={show('http.error_ratio', '{:.0%}')} "
                         f"p95={show('http.latency_p95', '{:.3f}s')} db.up={show('db.up')} "
                         f"validation_failures={show('db.validation_failures')}")
        if seen.status_line:
            lines.append(f"rollbackd  {seen.status_line}")
        if seen.incident is not None and seen.decisions:
            last = seen.decisions[-1]
            lines.append(f"incident   {seen.incident} {last['kind']}: {last['scenario']} -> "
                         f"{last['action']} [{last['mode']}]")
        run = seen.run
        if run is not None:
            done = sum(1 for s in seen.steps if s.ended_at is not None)
            lines.append(f"runbook    {run.runbook} {run.status}: {done} step(s) done of "
                         f"{len(run.plan)}")
        return lines
