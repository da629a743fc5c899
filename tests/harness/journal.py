"""A journal exactly as the previous release wrote it, for the upgrade tests."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

# The schema of the previous release, copied from `git show f13d8d4:daemon/journal.py`
# (deliberately not imported: the test must not follow later edits).
PREVIOUS_RELEASE_SCHEMA = """
CREATE TABLE IF NOT EXISTS deploys (
    id INTEGER PRIMARY KEY,
    app TEXT NOT NULL,
    version TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    status TEXT NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'succeeded', 'failed')),
    code_version TEXT,
    restore_point TEXT,
    restore_point_verified INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    t REAL NOT NULL,
    type TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY,
    t REAL NOT NULL,
    incident INTEGER NOT NULL,
    kind TEXT NOT NULL,
    scenario TEXT NOT NULL,
    action TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS drills (
    id INTEGER PRIMARY KEY,
    t REAL NOT NULL,
    backup TEXT NOT NULL,
    ok INTEGER NOT NULL,
    duration REAL NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_t ON events (t);
"""


def _decision(t: float, kind: str, incident: int, scenario: str, severity: str, action: str,
              reason: str) -> dict[str, object]:
    return {"t": t, "kind": kind, "incident": incident, "scenario": scenario,
            "severity": severity, "action": action, "requested_action": action,
            "timeline_s": 900, "mode": "auto", "reason": reason}


DECISIONS = [
    _decision(1000.0, "open", 1, "migration_failed", "critical", "immediate_rollback",
              "migration.failed == 1 held for 0s"),
    _decision(1010.0, "attach", 1, "app_compromised", "critical", "immediate_rollback",
              "attached to incident 1 as evidence; it ranks below migration_failed"),
    _decision(1200.0, "resolve", 1, "migration_failed", "critical", "immediate_rollback",
              "alice decided: dismiss"),
    _decision(2000.0, "open", 2, "performance_degraded", "medium", "evaluate",
              "http.latency_p95 > 1.5 * baseline(http.latency_p95) held for 5m"),
]
EVENTS: list[tuple[float, dict[str, Any]]] = [
    (900.0, {"type": "deploy", "phase": "begin", "version": "v1", "deploy": 1,
             "verified": True}),
    (950.0, {"type": "deploy", "phase": "end", "status": "succeeded", "version": "v1",
             "deploy": 1}),
    (990.0, {"type": "migration", "status": "failed", "version": "v2"}),
    (1100.0, {"type": "close", "incident": 1, "by": "alice", "decision": "dismiss"}),
    (1500.0, {"type": "pause", "by": "bob", "reason": "maintenance"}),
]


def previous_release_journal(path: Path) -> None:
    """A journal exactly as the previous release wrote it: its schema, its rows, its JSON."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(PREVIOUS_RELEASE_SCHEMA)
    db.execute("BEGIN")
    db.execute("INSERT INTO deploys (app, version, started_at, ended_at, status, code_version,"
               " restore_point, restore_point_verified)"
               " VALUES ('visionforge', 'v1', 900, 950, 'succeeded', 'abc123', 'rp-1', 1)")
    db.execute("INSERT INTO deploys (app, version, started_at, code_version, restore_point,"
               " restore_point_verified) VALUES ('visionforge', 'v2', 980, 'def456', 'rp-2', 1)")
    for t, payload in EVENTS:
        db.execute("INSERT INTO events (t, type, payload) VALUES (?, ?, ?)",
                   (t, payload["type"], json.dumps(payload, sort_keys=True)))
    for d in DECISIONS:
        db.execute("INSERT INTO decisions (t, incident, kind, scenario, action, payload)"
                   " VALUES (?, ?, ?, ?, ?, ?)", (d["t"], d["incident"], d["kind"],
                                                  d["scenario"], d["action"],
                                                  json.dumps(d, sort_keys=True)))
    db.execute("INSERT INTO drills (t, backup, ok, duration, payload) VALUES"
               " (1300, 'rp-1', 1, 12.5, ?)", (json.dumps({"checks": []}),))
    db.execute("INSERT INTO drills (t, backup, ok, duration, payload) VALUES"
               " (1400, 'rp-2', 0, 3.0, ?)", (json.dumps({"checks": ["restore failed"]}),))
    db.execute("COMMIT")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    db.close()


def user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
