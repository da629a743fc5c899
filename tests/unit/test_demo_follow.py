"""How the demo follows rollbackd, without servers: a mock of its API and of the app, a real
journal file, a daemon log; every new fact becomes one line of the story, once."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx

from daemon.journal import Journal
from examples.demochecks import step_base
from examples.demofollow import Follower
from examples.demoview import View

API, APP, TOKEN = "http://rollbackd", "http://app", "t" * 64

OPEN = {"t": 105.0, "kind": "open", "incident": 1, "scenario": "migration_failed",
        "severity": "critical", "action": "immediate_rollback", "mode": "auto",
        "reason": "migration.failed == 1 held for 0s"}
RESTORE = {"id": 1, "status": "restored", "ok": True, "strategy": "swap", "source": "rp-1",
           "kept": "visionforge_rolledback_1", "kept_kind": "database", "finished_at": 109.0}


class FakeRollbackd:
    """Answers as rollbackd's API and the app would; ``seen`` keeps what was asked, how."""

    def __init__(self) -> None:
        self.decisions: list[dict[str, Any]] = []
        self.restores: list[dict[str, Any]] = []
        self.version = "v2"
        self.unauthorized: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        if url.startswith(APP):
            assert "authorization" not in request.headers  # the token is rollbackd's only
            return httpx.Response(200, json={"status": "ok", "version": self.version})
        if url.endswith("/metrics"):
            return httpx.Response(200, text='rollbackd_signal{signal="migration.failed"} 1\n')
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            self.unauthorized.append(url)
            return httpx.Response(401)
        path = request.url.path
        if path == "/api/v1/status":
            return httpx.Response(200, json={"app": "visionforge"})
        if path == "/api/v1/incidents":
            rows = [{"incident": 1, "opened_at": 105.0}] if self.decisions else []
            return httpx.Response(200, json=rows)
        if path == "/api/v1/incidents/1":
            return httpx.Response(200, json={"decisions": self.decisions,
                                             "restores": self.restores})
        return httpx.Response(404)


def test_the_story_is_told_from_the_api_the_journal_and_the_log(tmp_path: Path) -> None:
    fake = FakeRollbackd()
    journal = Journal.in_state_dir(tmp_path / "state")
    log = tmp_path / "rollbackd.log"
    log.write_text(json.dumps({"event": "cycle", "status": "visionforge: app up"}) + "\n")
    out = io.StringIO()
    follower = Follower(View(out, live=False), api=API, token=TOKEN,
                        state_dir=tmp_path / "state", app_url=APP, daemon_log=log,
                        not_before=100.0, client=httpx.Client(transport=httpx.MockTransport(fake)))

    seen = follower.poll()
    assert seen.incident is None and seen.signals == {"migration.failed": 1.0}
    assert seen.status_line == "visionforge: app up"
    assert seen.serving is not None and seen.serving[0] == "v2"

    fake.decisions.append(OPEN)
    run = journal.begin_run("visionforge", incident=1, runbook="immediate_rollback",
                            action="immediate_rollback", scenario="migration_failed",
                            by="rollbackd", t=106.0, deadline=1000.0, deploy=1,
                            restore_point="rp-1", plan=["stop_app", "restore_database"])
    stop = journal.begin_step(run.id, 0, "stop_app", 1, 106.0)
    journal.end_step(stop, "ok", "killed pid 7", "", {}, 106.5)
    journal.begin_step(run.id, 1, "restore_database", 1, 106.5)
    seen = follower.poll()
    follower.poll()  # nothing new: nothing told twice

    assert seen.incident == 1 and seen.run is not None and seen.run.id == run.id
    fake.restores.append(RESTORE)
    fake.version = "v1"
    journal.end_step(2, "ok", "restored", "", {}, 109.0)
    journal.finish_run(run.id, "succeeded", "rolled back", 110.0)
    fake.decisions.append({**OPEN, "t": 120.0, "kind": "resolve", "reason": "watched"})
    seen = follower.poll()
    follower.close()

    assert seen.resolved and seen.run.status == "succeeded"
    assert seen.serving is not None and seen.serving[0] == "v1"
    assert fake.unauthorized == []
    story = [line.split("] ", 1)[1] for line in out.getvalue().splitlines()
             if "] " in line and "   |" not in line]
    assert story == [
        "rollbackd: incident 1 open: migration_failed (critical) -> immediate_rollback [auto]: "
        "migration.failed == 1 held for 0s",
        "rollbackd: runbook immediate_rollback started (run 1): stop_app -> restore_database",
        "rollbackd: step 1/2 stop_app ok (0.5s): killed pid 7",
        "rollbackd: step 2/2 restore_database ...",
        "rollbackd: incident 1 resolve: migration_failed (critical) -> immediate_rollback "
        "[auto]: watched",
        "rollbackd: restore 1 restored: swap of rp-1; the replaced database is kept as "
        "visionforge_rolledback_1",
        "rollbackd: step 2/2 restore_database ok (2.5s): restored",
        "rollbackd: runbook immediate_rollback succeeded: rolled back",
    ]


def test_incidents_from_before_the_deploy_are_not_followed(tmp_path: Path) -> None:
    fake = FakeRollbackd()
    fake.decisions.append(OPEN)
    Journal.in_state_dir(tmp_path / "state").close()
    follower = Follower(View(io.StringIO(), live=False), api=API, token=TOKEN,
                        state_dir=tmp_path / "state", app_url=APP,
                        daemon_log=tmp_path / "none.log", not_before=200.0,
                        client=httpx.Client(transport=httpx.MockTransport(fake)))

    assert follower.poll().incident is None
    follower.close()


class Step:
    def __init__(self, idx: int, kind: str) -> None:
        self.idx, self.kind = idx, kind


def test_step_numbers_count_from_the_runs_first_step_whatever_the_base() -> None:
    plan = ["assess", "validate", "validate"]

    assert step_base(plan, [Step(0, "assess"), Step(1, "validate")]) == 0  # type: ignore[arg-type]
    assert step_base(plan, [Step(1, "assess"), Step(2, "validate")]) == 1  # type: ignore[arg-type]
    assert step_base(plan, []) == 0
