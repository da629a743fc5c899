"""End to end: a failed deploy opens an `evaluate` incident (rollbackd asks a person and runs
nothing); `rollbackd decide N planned_rollback` has the daemon run the planned runbook
through the executor, for that person, and the database ends equal to the restore point."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.config import load_config
from daemon.db.backups import BackupStore
from daemon.ops.operator import operator_name
from tests.harness.cli import rollbackd
from tests.harness.data import restore_into_fresh_database, run, scalar, table_checksums
from tests.harness.processes import Proc, start_daemon
from tests.harness.rollbacks import (
    Host,
    deploy_invalid_index,
    finished_run,
    rollback_host,
)
from tests.harness.servers import PgCluster, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def host(pg_db: str, tmp_path: Path) -> Iterator[Host]:
    found = rollback_host(pg_db, tmp_path, action="evaluate")
    yield found
    found.close()


def test_an_evaluate_incident_answered_planned_rollback_runs_the_runbook_end_to_end(
        host: Host, pg_cluster: PgCluster) -> None:
    daemon: Proc = start_daemon(host.config)
    try:
        deployed = deploy_invalid_index(host.config, host.dsn)
        assert deployed.returncode == 1, deployed.stderr
        run(host.dsn, "INSERT INTO users (email, name) VALUES ('late@example.com', 'Late')")
        wait_for(lambda: [p.template for p in host.journal.pages(incident=1)] == ["decision"],
                 20, what=f"the decision request ({daemon.output()[-2000:]})")
        assert host.journal.runs() == []  # evaluate runs nothing by itself

        decided = rollbackd("decide", "1", "planned_rollback", "--reason", "data is wrong",
                            config=host.config)
        assert decided.returncode == 0, decided.stderr
        assert "the daemon starts planned_rollback" in decided.stdout
        assert "restore point" in decided.stdout and "NOT verified" not in decided.stdout

        wait_for(lambda: finished_run(host.journal) is not None, 60,
                 what=f"the run to end ({daemon.output()[-2000:]})")
        done = finished_run(host.journal)
        assert done is not None and done.status == "succeeded", (done, daemon.output()[-3000:])
        assert (done.runbook, done.action, done.incident, done.requested_by) == (
            "planned_rollback", "planned_rollback", 1, operator_name())
        steps = host.journal.steps(done.id)
        assert [s.kind for s in steps] == list(done.plan)
        assert {s.kind: s.outcome for s in steps}["restore_database"] == "ok"

        # Every table equals the restore point; the late row is in the kept copy only.
        [restore] = host.journal.restores(incident=1)
        assert restore.status == "restored"
        store = BackupStore(load_config(host.config).backups)
        manifest = store.get(restore.source)
        reference = restore_into_fresh_database(pg_cluster, store, manifest, "rp_reference")
        assert table_checksums(host.dsn, manifest) == table_checksums(reference, manifest)
        assert scalar(host.dsn, "SELECT count(*) FROM pg_index WHERE NOT indisvalid") == 0
        assert scalar(host.dsn,
                      "SELECT count(*) FROM users WHERE email = 'late@example.com'") == 0
        wait_for(host.answers, 10, what="the app answering again")
    finally:
        daemon.close()
