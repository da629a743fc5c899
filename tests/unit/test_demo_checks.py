"""The demo's verdicts, without servers: where each acknowledged write must be, and where the
time of a rollback went (examples/demochecks.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from examples.demochecks import classify_rows, recovery_phases
from examples.traffic import Write

DEPLOYED, RECOVERED = 100.0, 200.0


def write(seq: int, at: float, row_id: int | None = None) -> Write:
    return Write(seq, row_id if row_id is not None else seq, f"t-{seq}@x", at)


def rows(*writes: Write) -> dict[str, int]:
    return {w.email: w.id for w in writes}


def test_every_write_where_it_belongs_is_verified_and_the_data_window_is_reported() -> None:
    before = [write(1, 10.0), write(2, 99.9)]
    in_snapshot = write(3, 100.5)  # acknowledged after the deploy began, before its dump
    window = [write(4, 150.0), write(5, 160.0)]
    after = [write(6, 200.0, row_id=4), write(7, 210.0, row_id=5)]  # ids handed out again

    report = classify_rows([*before, in_snapshot, *window, *after], deployed_at=DEPLOYED,
                           recovered_at=RECOVERED, live=rows(*before, in_snapshot, *after),
                           kept=rows(*before, in_snapshot, *window), kept_name="vf_rolledback_1")

    assert report.lost == []
    assert [c.ok for c in report.checks()] == [True, True, True]
    assert report.window_in_live == [in_snapshot]
    assert report.window_kept_only == window
    assert report.reused_ids == [4, 5]
    lines = [c.line() for c in report.checks()]
    assert lines[0] == "demo: verified rows written before the deploy: all 2 present in the " \
                       "live database"
    assert "the 2 the restore undid are kept in vf_rolledback_1 (ids 4, 5)" in lines[1]
    assert "1 also in the live database (written before the restore point" in lines[1]
    assert "2 of their ids were given to new rows since" in lines[1]
    assert lines[2].endswith("all 2 present in the live database")


def test_a_row_with_the_same_id_but_another_email_is_not_the_write() -> None:
    mine = write(1, 10.0, row_id=7)
    report = classify_rows([mine], deployed_at=DEPLOYED, recovered_at=RECOVERED,
                           live={"someone-else@x": 7}, kept=None, kept_name=None)

    assert report.before_missing == [mine]
    assert not report.checks()[0].ok
    assert "1 of 1 MISSING from the live database (ids 7)" in report.checks()[0].detail


def test_a_write_in_neither_database_is_lost_and_named() -> None:
    kept_one, lost_one = write(1, 150.0), write(2, 151.0)
    report = classify_rows([kept_one, lost_one], deployed_at=DEPLOYED, recovered_at=RECOVERED,
                           live={}, kept=rows(kept_one), kept_name="vf_rolledback_1")

    assert report.lost == [lost_one]
    check = report.checks()[1]
    assert not check.ok
    assert check.line().startswith("demo: NOT MET  rows written after the deploy: 1 of 2")
    assert "vf_rolledback_1 (ids 2)" in check.detail


def test_without_a_kept_copy_the_writes_after_the_deploy_must_be_live() -> None:
    # A restore skipped (the database was unchanged), or nothing rolled back at all.
    live_one, gone = write(1, 150.0), write(2, 151.0)
    report = classify_rows([live_one, gone], deployed_at=DEPLOYED, recovered_at=RECOVERED,
                           live=rows(live_one), kept=None, kept_name=None)

    assert report.window_lost == [gone]
    assert "neither the live database nor a kept copy" in report.checks()[1].detail


def test_many_missing_ids_are_shortened() -> None:
    writes = [write(i, 10.0) for i in range(1, 21)]
    report = classify_rows(writes, deployed_at=DEPLOYED, recovered_at=RECOVERED, live={},
                           kept=None, kept_name=None)

    assert "(ids 1, 2, 3, 4, 5, 6, 7, 8 and 12 more)" in report.checks()[0].detail


@dataclass(frozen=True)
class Step:
    kind: str
    started_at: float
    ended_at: float | None
    outcome: str | None = "ok"
    details: Mapping[str, Any] = field(default_factory=dict)


def test_recovery_phases_say_where_the_time_of_a_rollback_went() -> None:
    steps = [Step("page", 11.0, 11.1), Step("stop_app", 11.1, 11.5),
             Step("restore_database", 11.5, 14.5), Step("validate", 14.5, 15.0),
             Step("rollback_code", 15.0, 15.2), Step("rollback_config", 15.2, 15.3),
             Step("start_app", 15.3, 16.0), Step("validate", 16.0, 16.5),
             Step("notify", 16.5, 16.6)]

    phases = {p.name: p for p in recovery_phases(fault_at=10.0, decided_at=11.0, steps=steps,
                                                 healthy_at=16.3)}

    def took(name: str) -> float | None:
        seconds = phases[name].seconds
        return None if seconds is None else round(seconds, 3)

    assert took("fault -> decision") == 1.0
    assert took("decision -> app stopped") == 0.5
    assert took("restore") == 3.0
    assert took("code and config") == 0.3
    assert took("validation") == 1.0
    assert took("app healthy") == 1.0
    assert took("total") == 6.3


def test_phases_that_did_not_happen_are_unknown_not_zero() -> None:
    steps = [Step("stop_app", 11.1, 11.5), Step("restore_database", 11.5, 11.6, "skipped"),
             Step("rollback_code", 11.6, None, None)]  # interrupted: never ended

    phases = {p.name: p for p in recovery_phases(fault_at=None, decided_at=11.0, steps=steps,
                                                 healthy_at=None)}

    assert phases["fault -> decision"].seconds is None
    assert phases["restore"].note == "skipped: the database was unchanged"
    assert phases["code and config"].seconds is None
    assert phases["app healthy"].seconds is None
    assert phases["total"].seconds is None


def test_when_nothing_was_restored_every_write_since_the_deploy_must_be_live() -> None:
    before, since = write(1, 10.0), [write(2, 150.0), write(3, 250.0)]
    report = classify_rows([before, *since], deployed_at=DEPLOYED, recovered_at=DEPLOYED,
                           live=rows(before, since[0]), kept=None, kept_name=None)

    checks = report.checks(restored=False)

    assert [(c.name, c.ok) for c in checks] == [("rows written before the deploy", True),
                                                ("rows written after the deploy", False)]
    assert checks[1].detail == "1 of 2 MISSING from the live database (ids 3)"
