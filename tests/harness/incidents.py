"""An incident as the executor journals it, over real databases: a restored database and the
copy a swap kept of the one it replaced (with rows only the kept copy has), and incident 1's
decisions, run, steps, page and restore in the journal."""

from __future__ import annotations

import itertools
from typing import Any

from daemon.journal import Journal, RestoreOutcome
from policies.engine import Decision
from tests.harness.data import run
from tests.harness.servers import PgCluster

T0 = 1_800_000_000.0
_names = itertools.count()

SCHEMA = [
    "CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL)",
    "CREATE TABLE memberships (user_id int, team text, PRIMARY KEY (user_id, team))",
    "CREATE TABLE events_log (msg text)",
    'CREATE SCHEMA app',
    'CREATE TABLE app."Order Items" (sku text PRIMARY KEY)',
]


def live_and_kept(cluster: PgCluster) -> tuple[str, str]:
    """A restored database and the copy a swap kept: the kept copy has users 21..25 (written
    after the restore point) and lacks user 3 (deleted after it), a membership, a sku with a
    pipe, two more log lines (no primary key) and a table the restored database lacks."""
    live = f"vf{next(_names)}"
    kept = f"{live}_rolledback_20270115080000"
    for name in (live, kept):
        cluster.create_database(name)
        run(cluster.dsn(name), *SCHEMA,
            "INSERT INTO users SELECT n, 'user ' || n FROM generate_series(1, 20) n",
            "INSERT INTO memberships VALUES (1, 'a'), (2, 'b')",
            "INSERT INTO events_log VALUES ('one'), ('two'), ('three')",
            "INSERT INTO app.\"Order Items\" VALUES ('a'), ('b')")
    run(cluster.dsn(kept),
        "INSERT INTO users SELECT n, 'late ' || n FROM generate_series(21, 25) n",
        "DELETE FROM users WHERE id = 3",
        "INSERT INTO memberships VALUES (7, 'ops')",
        "INSERT INTO events_log VALUES ('four'), ('five')",
        "INSERT INTO app.\"Order Items\" VALUES ('c|d')",
        "CREATE TABLE audit (id bigint PRIMARY KEY, what text)",
        "INSERT INTO audit VALUES (1, 'x'), (2, 'y')")
    return live, kept


EXPECTED_WINDOW = {
    # table: (rows of the kept copy the restored one lacks, example keys, key columns)
    "public.users": (5, ["21", "22", "23", "24", "25"], ["id"]),
    "public.memberships": (1, ["(7, ops)"], ["user_id", "team"]),
    "app.Order Items": (1, ["c|d"], ["sku"]),
    "public.audit": (2, [], ["id"]),
    "public.events_log": (None, [], []),
}


def decision(t: float, kind: str, scenario: str, reason: str, **overrides: Any) -> Decision:
    fields: dict[str, Any] = {
        "t": t, "kind": kind, "incident": 1, "scenario": scenario, "severity": "critical",
        "action": "immediate_rollback", "requested_action": "immediate_rollback",
        "timeline_s": 900, "mode": "auto", "reason": reason, **overrides}
    return Decision(**fields)


def journal_an_incident(journal: Journal, live: str, kept: str) -> None:
    """Incident 1: a failed migration of v42, the immediate rollback run (a stop that failed
    once, a restore by swap, validation), a page, the restore's record, and the resolution."""
    deploy = journal.begin_deploy("visionforge", "v42", T0 - 600, restore_point="rp-1",
                                  verified=True)
    journal.add_decision(decision(T0, "open", "migration_failed",
                                  "migration.failed == 1 held for 0s"))
    journal.add_decision(decision(
        T0 + 5, "attach", "app_compromised",
        "attached to incident 1 as evidence; it ranks below migration_failed "
        "(http.error_ratio=0.42)", severity="high", requested_action="planned_rollback",
        timeline_s=1800))
    plan = ["page", "stop_app", "restore_database", "validate", "rollback_code", "start_app"]
    r = journal.begin_run("visionforge", incident=1, runbook="immediate_rollback",
                          action="immediate_rollback", scenario="migration_failed",
                          by="rollbackd", t=T0 + 10, deadline=T0 + 910, deploy=deploy.id,
                          restore_point="rp-1", plan=plan)
    t = T0 + 10

    def step(idx: int, kind: str, outcome: str, message: str, output: str = "",
             details: dict[str, Any] | None = None, attempt: int = 1) -> None:
        nonlocal t
        sid = journal.begin_step(r.id, idx, kind, attempt, t)
        t += 3
        journal.end_step(sid, outcome, message, output, details or {}, t)  # type: ignore[arg-type]
        t += 1

    step(1, "page", "ok", "paged level 1 (emergency)")
    journal.add_page("visionforge", t=t, incident=1, run=r.id, level=1, template="emergency",
                     summary="migration_failed: immediate rollback started", details={},
                     dedup_key="visionforge:1:1:emergency")
    step(2, "stop_app", "failed", "visionforge.service did not stop within 30s",
         output="Job for visionforge.service timed out.")
    step(2, "stop_app", "ok", "stopped visionforge.service", attempt=2)
    restore = journal.begin_restore("visionforge", source="rp-1", strategy="swap",
                                    database=live, tables=[], by="rollbackd", t=t, incident=1)
    step(3, "restore_database", "ok", f"swap of rp-1; the data before it is kept in {kept}")
    journal.finish_restore(restore.id, RestoreOutcome(
        status="restored", finished_at=t, database=live, kept=kept, kept_kind="database",
        data_window_start=T0 - 600, data_window_end=t - 4), close_incident=False)
    step(4, "validate", "ok", "database: 3 checks passed",
         output="tables users, memberships present\nrow counts at least the restore point's",
         details={"checks": [{"name": "expected_tables", "ok": True}],
                  "signals": {"db.validation_failures": 0}})
    step(5, "rollback_code", "ok", "checked out v41 (abc123)", output="HEAD is now at abc123")
    step(6, "start_app", "ok", "started visionforge.service")
    journal.finish_run(r.id, "succeeded", "rolled back to v41 and the restore point rp-1", t)
    journal.add_decision(decision(T0 + 3600, "resolve", "migration_failed",
                                  "every rule of the incident has been clear for its clear_for"))
