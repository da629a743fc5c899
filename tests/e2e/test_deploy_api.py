"""`POST /api/v1/deploys`: a pipeline that cannot run the CLI on the host records its deploys
through the daemon, each protected by a verified restore point, as `rollbackd deploy` does."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from daemon.config import BackupSettings
from daemon.db.backups import BackupStore
from tests.harness.api import Rollbackd
from tests.harness.config import MIGRATION_FAILED_RULE
from tests.harness.data import scalar
from tests.harness.processes import migrate
from tests.harness.servers import wait_for

pytestmark = pytest.mark.e2e



@pytest.fixture
def daemon(pg_db: str, tmp_path: Path) -> Iterator[Rollbackd]:
    assert migrate(pg_db).returncode == 0
    started = Rollbackd(tmp_path, f"""\
[api]
token_files = ["{tmp_path / 'api.token'}"]

[database]
dsn = "{pg_db}"
connect_timeout = "2s"

[backups]
dir = "{tmp_path / 'backups'}"
min_free = 0
""", policy=MIGRATION_FAILED_RULE)
    yield started
    started.close()


def test_a_deploy_begun_through_the_api_has_a_verified_restore_point_and_ends_succeeded(
        daemon: Rollbackd, tmp_path: Path) -> None:
    begun = daemon.call("POST", "/api/v1/deploys", json={"phase": "begin", "version": "v2"})
    assert begun.status_code == 201, begun.text
    body = begun.json()
    assert (body["version"], body["verified"]) == ("v2", True)
    deploy = daemon.journal.deploy(body["deploy"])
    assert deploy is not None
    assert (deploy.version, deploy.status, deploy.restore_point, deploy.restore_point_verified
            ) == ("v2", "running", body["restore_point"], True)
    store = BackupStore(BackupSettings(dir=tmp_path / "backups"))
    [manifest] = [m for m in store.list() if m.complete]
    assert (manifest.id, manifest.kind, manifest.deploy) == (
        body["restore_point"], "restore_point", deploy.id)
    # The CLI sees the same deploy: one journal.
    assert daemon.cli("status", "--json").returncode == 0

    ended = daemon.call("POST", "/api/v1/deploys", json={"phase": "end", "status": "succeeded"})
    assert ended.status_code == 200, ended.text
    assert ended.json() == {"deploy": deploy.id, "version": "v2", "status": "succeeded",
                            "restore_point": body["restore_point"]}
    done = daemon.journal.deploy(deploy.id)
    assert done is not None and done.status == "succeeded"


@contextmanager
def begin_held_by_a_lock(daemon: Rollbackd, pg_db: str) -> Iterator[tuple[Future[Any], Any]]:
    """A deploy begin under way: its pg_dump waits on a table lock held here. Yields the
    request's future and the lock's connection (rolled back by the test to let it go)."""
    blocker = psycopg.connect(pg_db, autocommit=False)
    blocker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
    try:
        with ThreadPoolExecutor(1) as pool:
            begin = pool.submit(daemon.call, "POST", "/api/v1/deploys",
                                json={"phase": "begin", "version": "v2"})
            wait_for(lambda: scalar(pg_db, "SELECT count(*) FROM pg_stat_activity"
                                    " WHERE wait_event_type = 'Lock'") == 1,
                     20, what="the restore point waiting for the table lock")
            yield begin, blocker
    finally:
        blocker.rollback()
        blocker.close()


def test_a_second_begin_while_a_restore_point_is_being_taken_is_refused_and_the_first_ends(
        daemon: Rollbackd, pg_db: str) -> None:
    with begin_held_by_a_lock(daemon, pg_db) as (first, blocker):
        second = daemon.call("POST", "/api/v1/deploys", json={"phase": "begin", "version": "v3"})
        assert second.status_code == 409, second.text
        assert "being begun already" in second.json()["error"]
        blocker.rollback()
        assert first.result().status_code == 201, first.result().text
    [deploy] = daemon.journal.deploys("visionforge")
    assert deploy.version == "v2"


def test_sigterm_while_a_deploy_begin_waits_on_its_restore_point_stops_the_daemon_in_time(
        daemon: Rollbackd, pg_db: str) -> None:
    with begin_held_by_a_lock(daemon, pg_db) as (begin, _):
        started = time.monotonic()
        daemon.proc.signal(signal.SIGTERM)
        assert daemon.proc.popen.wait(15) == 0
        assert time.monotonic() - started < 10
        # Told, not left to guess: the pipeline must not go on as if protected.
        answer = begin.result()
        assert answer.status_code == 503, answer.text
        assert "no deploy was recorded" in answer.json()["error"]
    assert daemon.journal.latest_deploy() is None
    # pg_dump did not outlive the daemon to write a backup nobody waits for.
    wait_for(lambda: scalar(pg_db, "SELECT count(*) FROM pg_stat_activity"
                            " WHERE application_name = 'pg_dump'") == 0, 10,
             what="pg_dump gone")


def test_a_deploy_begun_with_a_clone_ends_the_daemons_own_probe_session_for_the_copy(
        daemon: Rollbackd) -> None:
    # The daemon probes the database over a kept session: the clone is taken all the same,
    # and the probe connects again.
    wait_for(lambda: daemon.metric("rollbackd_signal", signal="db.up") == 1, 20,
             what="the PostgreSQL probe's first look")
    begun = daemon.call("POST", "/api/v1/deploys",
                        json={"phase": "begin", "version": "v2", "clone": True})
    assert begun.status_code == 201, begun.text
    clone = begun.json()["clone"]
    deploy = daemon.journal.deploy(begun.json()["deploy"])
    assert deploy is not None and deploy.clone == clone and clone is not None
    status = daemon.cli("status", "--json")
    assert json.loads(status.stdout)["deploy"]["clone"] == clone
    assert f"clone {clone}" in daemon.cli("status").stdout
    wait_for(lambda: daemon.metric("rollbackd_signal", signal="db.up") == 1
             and daemon.metric("rollbackd_probe_up", probe="postgres") == 1, 20,
             what="the probe to look again")


def test_a_failed_migration_reported_through_the_api_is_journaled_as_the_cli_journals_it(
        daemon: Rollbackd) -> None:
    begun = daemon.call("POST", "/api/v1/deploys", json={"phase": "begin", "version": "v3"})
    assert begun.status_code == 201, begun.text
    ended = daemon.call("POST", "/api/v1/deploys",
                        json={"phase": "end", "status": "failed", "migration": True,
                              "deploy": begun.json()["deploy"]})
    assert ended.status_code == 200, ended.text
    migration = {"type": "migration", "status": "failed", "version": "v3",
                 "deploy": begun.json()["deploy"], "exit_code": None}
    assert [e.payload for e in daemon.journal.events_after(0)
            if e.payload["type"] == "migration"] == [migration]
    # Said again, the deploy has ended: refused, and no second migration event.
    again = daemon.call("POST", "/api/v1/deploys",
                        json={"phase": "end", "status": "failed", "migration": True,
                              "deploy": begun.json()["deploy"]})
    assert again.status_code == 409 and "already ended (failed)" in again.json()["error"]
    assert [e.payload for e in daemon.journal.events_after(0)
            if e.payload["type"] == "migration"] == [migration]
    # The engine reads it as `rollbackd deploy run` with a failing migration: a failed
    # migration after a deploy is an immediate rollback (decided: the daemon is in dry-run).
    wait_for(lambda: [(i["scenario"], i["action"]) for i in json.loads(
        daemon.cli("incidents", "--json").stdout)] == [("migration_failed", "immediate_rollback")],
        20, what="the failed migration's incident")


@pytest.mark.parametrize(("body", "status", "told"), [
    ({"phase": "begin"}, 400, "version: required key is missing"),
    ({"phase": "begin", "version": "v2\nX-Injected: 1"}, 400, "version: must be a single line"),
    ({"phase": "end"}, 400, "status: required key is missing"),
    ({"phase": "end", "status": "rolled_back"}, 400, "status: expected one of"),
    ({"phase": "begin", "version": "v2", "status": "succeeded"}, 400,
     "status: only a deploy's end has one"),
    ({"phase": "end", "status": "succeeded", "clone": True}, 400,
     "clone: only a deploy's begin has one"),
    ({"phase": "deploy", "version": "v2"}, 400, "phase: expected one of 'begin' or 'end'"),
    ({"phase": "end", "status": "succeeded"}, 409, "no running deploy of visionforge to end"),
    ({"phase": "end", "status": "succeeded", "deploy": 99}, 409, "no deploy 99"),
])
def test_a_deploy_request_that_cannot_be_carried_out_says_why_and_records_nothing(
        daemon: Rollbackd, body: dict[str, object], status: int, told: str) -> None:
    answer = daemon.call("POST", "/api/v1/deploys", json=body)
    assert answer.status_code == status, answer.text
    assert told in answer.json()["error"]
    assert daemon.journal.latest_deploy() is None


def test_a_deploy_cannot_be_begun_without_the_token(daemon: Rollbackd) -> None:
    answer = daemon.call("POST", "/api/v1/deploys", token=None,
                         json={"phase": "begin", "version": "v2"})
    assert answer.status_code == 401
    assert daemon.journal.latest_deploy() is None
