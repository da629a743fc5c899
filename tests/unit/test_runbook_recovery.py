"""A run cut short by a crash, found at start-up: an idempotent step runs again, a restore is
first observed through the journal's restores row, anything else is abandoned with a page."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.config import Config
from daemon.db.restore import SwapRecovery
from daemon.journal import Journal, RestoreOutcome, Run
from daemon.locks import host_lock
from daemon.runbooks.context import RunContext, StepReport
from daemon.runbooks.executor import RUN_LOCK_FILE, Executor
from daemon.runbooks.recovery import REVERTED
from daemon.runbooks.steps import ADAPTERS, Adapter
from policies.runbooks import BUILTIN, Step
from policies.schema import convert


def stand_in(outcome: str = "ok", part: str | None = None, phrase: str = "",
             calls: list[str] | None = None) -> Adapter:
    async def adapter(ctx: RunContext, s: Step, index: int) -> StepReport:
        if calls is not None:
            calls.append(s.kind)
        if part is not None:
            ctx.left.set(part, phrase)
        return StepReport(outcome, f"{s.kind} {outcome}")  # type: ignore[arg-type]

    return adapter


def never(ctx: RunContext, s: Step, index: int) -> StepReport:
    raise AssertionError(f"{s.kind} must not run again")


async def not_again(ctx: RunContext, s: Step, index: int) -> StepReport:
    return never(ctx, s, index)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal.in_state_dir(tmp_path / "state")
    yield j
    j.close()


def executor(tmp_path: Path, journal: Journal, **adapters: Adapter) -> Executor:
    config = convert({"daemon": {"state_dir": str(tmp_path / "state")},
                      "app": {"name": "visionforge"}}, Config)
    return Executor(config, journal, backoff=0.01, adapters={**ADAPTERS, **adapters})


def crashed_run(journal: Journal, runbook: str, done: int, interrupted: bool = True) -> Run:
    """A run whose first ``done`` steps ended ok and whose next one was begun (or not)."""
    now = time.time()
    kinds = [s.kind for s in BUILTIN[runbook].steps]
    run = journal.begin_run("visionforge", incident=7, runbook=runbook, action=runbook,
                            scenario="migration_failed", by="rollbackd", t=now - 60,
                            deadline=now + 900, deploy=None, restore_point=None, plan=kinds)
    for idx in range(1, done + 1):
        step_id = journal.begin_step(run.id, idx, kinds[idx - 1], 1, now - 50 + idx)
        journal.end_step(step_id, "ok", "done", "", {}, now - 50 + idx)
    if interrupted:
        journal.begin_step(run.id, done + 1, kinds[done], 1, now - 30)
    return run


async def test_an_interrupted_idempotent_step_runs_again_and_the_run_carries_on(
        tmp_path: Path, journal: Journal) -> None:
    run = crashed_run(journal, "code_only", done=1)  # stopped, then died in rollback_code
    calls: list[str] = []
    ex = executor(tmp_path, journal, stop_app=not_again,
                  rollback_code=stand_in(calls=calls, part="code", phrase="code rolled back"),
                  start_app=stand_in(calls=calls, part="app", phrase="app running"),
                  validate=stand_in(calls=calls))
    [result] = await ex.recover()

    assert result.run.id == run.id and result.run.status == "succeeded", result.describe()
    assert calls == ["rollback_code", "start_app", "validate"]
    steps = [(s.idx, s.kind, s.attempt, s.outcome) for s in result.steps]
    assert steps == [(1, "stop_app", 1, "ok"), (2, "rollback_code", 1, "failed"),
                     (2, "rollback_code", 2, "ok"), (3, "start_app", 1, "ok"),
                     (4, "validate", 1, "ok"), (5, "notify", 1, "ok")]
    assert "interrupted at start-up after a crash" in (result.steps[1].message or "")
    assert result.state == "app running, code rolled back"


async def test_a_restore_that_completed_before_the_crash_is_observed_not_repeated(
        tmp_path: Path, journal: Journal) -> None:
    crashed_run(journal, "immediate_rollback", done=2)  # page, stop_app; then the restore
    restore = journal.begin_restore("visionforge", source="rp", strategy="swap",
                                    database="vf", tables=[], by="rollbackd", t=time.time(),
                                    incident=7)
    journal.finish_restore(restore.id, RestoreOutcome(
        status="restored", finished_at=time.time(), kept="vf_rolledback_1",
        kept_kind="database", data_window_start=time.time() - 100,
        data_window_end=time.time()), close_incident=False)
    ok = stand_in()
    ex = executor(tmp_path, journal, restore_database=not_again, validate=ok,
                  rollback_code=ok, rollback_config=ok, start_app=ok)
    [result] = await ex.recover()

    assert result.run.status == "succeeded", result.describe()
    restored = [s for s in result.steps if s.kind == "restore_database"]
    assert [(s.attempt, s.outcome) for s in restored] == [(1, "ok")]
    assert "observed at start-up" in (restored[0].message or "")
    assert restored[0].details["restore"] == restore.id
    assert "kept in database vf_rolledback_1" in journal.pages(incident=7)[-1].summary


async def test_a_restore_still_running_at_the_crash_is_abandoned_with_a_page(
        tmp_path: Path, journal: Journal) -> None:
    crashed_run(journal, "immediate_rollback", done=2)
    restore = journal.begin_restore("visionforge", source="rp", strategy="swap",
                                    database="vf", tables=[], by="rollbackd", t=time.time(),
                                    incident=7)
    ex = executor(tmp_path, journal, restore_database=not_again, start_app=not_again)
    [result] = await ex.recover()

    assert result.run.status == "abandoned"
    page = result.page
    assert page is not None and "NOT continued" in page.summary
    assert f"restore {restore.id}" in page.summary and "is running" in page.summary
    assert "state left behind: app stopped, database not restored" in page.summary
    assert result.steps[-1].outcome == "failed"


def swap_found(outcome: str, database: str = "vf") -> SwapRecovery:
    """What the start-up recovery of an interrupted swap did."""
    return SwapRecovery(database, "between_renames" if outcome == "completed" else "shadow_left",
                        outcome, "found", live_holds="restored" if outcome == "completed"
                        else "previous", kept="vf_rolledback_1" if outcome == "completed"
                        else None, applied=True)  # type: ignore[arg-type]


async def test_a_swap_completed_at_start_up_ends_its_restore_and_the_run_carries_on(
        tmp_path: Path, journal: Journal) -> None:
    crashed_run(journal, "immediate_rollback", done=2)
    restore = journal.begin_restore("visionforge", source="rp", strategy="swap",
                                    database="vf", tables=[], by="rollbackd", t=time.time(),
                                    incident=7)
    ok = stand_in()
    ex = executor(tmp_path, journal, restore_database=not_again, validate=ok,
                  rollback_code=ok, rollback_config=ok, start_app=ok)
    [result] = await ex.recover(swap_found("completed"))

    assert result.run.status == "succeeded", result.describe()
    [record] = journal.restores(incident=7)
    assert (record.id, record.status, record.kept) == (restore.id, "restored",
                                                       "vf_rolledback_1")
    restored = [s for s in result.steps if s.kind == "restore_database"]
    assert [(s.attempt, s.outcome) for s in restored] == [(1, "ok")]


async def test_a_swap_reverted_at_start_up_fails_its_restore_and_the_step_runs_again(
        tmp_path: Path, journal: Journal) -> None:
    crashed_run(journal, "immediate_rollback", done=2)
    restore = journal.begin_restore("visionforge", source="rp", strategy="swap",
                                    database="vf", tables=[], by="rollbackd", t=time.time(),
                                    incident=7)
    calls: list[str] = []
    ok = stand_in()
    ex = executor(tmp_path, journal, restore_database=stand_in(calls=calls), validate=ok,
                  rollback_code=ok, rollback_config=ok, start_app=ok)
    [result] = await ex.recover(swap_found("reverted"))

    assert result.run.status == "succeeded", result.describe()
    assert calls == ["restore_database"]
    [record] = journal.restores(incident=7)
    assert (record.id, record.status, record.error) == (restore.id, "failed", REVERTED)


async def test_a_swap_of_another_database_says_nothing_of_the_restore(
        tmp_path: Path, journal: Journal) -> None:
    crashed_run(journal, "immediate_rollback", done=2)
    journal.begin_restore("visionforge", source="rp", strategy="swap", database="vf",
                          tables=[], by="rollbackd", t=time.time(), incident=7)
    ex = executor(tmp_path, journal, restore_database=not_again, start_app=not_again)
    [result] = await ex.recover(swap_found("completed", database="other"))

    assert result.run.status == "abandoned"
    assert [r.status for r in journal.restores(incident=7)] == ["running"]


async def test_a_restore_that_never_began_runs_again(tmp_path: Path,
                                                     journal: Journal) -> None:
    crashed_run(journal, "immediate_rollback", done=2)
    calls: list[str] = []
    ok = stand_in()
    ex = executor(tmp_path, journal, restore_database=stand_in(calls=calls), validate=ok,
                  rollback_code=ok, rollback_config=ok, start_app=ok)
    [result] = await ex.recover()
    assert result.run.status == "succeeded"
    assert calls == ["restore_database"]
    assert [s.attempt for s in result.steps if s.kind == "restore_database"] == [1, 2]


async def test_an_interrupted_command_is_abandoned(tmp_path: Path, journal: Journal) -> None:
    run = journal.begin_run("visionforge", incident=7, runbook="custom", action="a",
                            scenario="s", by="alice", t=time.time(), deadline=time.time() + 60,
                            deploy=None, restore_point=None, plan=["exec"])
    journal.begin_step(run.id, 1, "exec", 1, time.time())
    [result] = await executor(tmp_path, journal).recover()
    assert result.run.status == "abandoned"
    assert result.page is not None and "not known to this rollbackd" in result.page.summary


async def test_a_run_another_process_holds_is_left_alone(tmp_path: Path,
                                                         journal: Journal) -> None:
    run = crashed_run(journal, "code_only", done=1)
    with host_lock(tmp_path / "state", "rollbackd rollback --yes", name=RUN_LOCK_FILE):
        assert await executor(tmp_path, journal).recover() == []
    stored = journal.run(run.id)
    assert stored is not None and stored.status == "running"


async def test_a_crash_between_steps_carries_on_with_the_next(tmp_path: Path,
                                                              journal: Journal) -> None:
    crashed_run(journal, "config_only", done=2, interrupted=False)  # stop_app, rollback_config
    calls: list[str] = []
    ex = executor(tmp_path, journal, stop_app=not_again, rollback_config=not_again,
                  start_app=stand_in(calls=calls), validate=stand_in(calls=calls))
    [result] = await ex.recover()
    assert result.run.status == "succeeded" and calls == ["start_app", "validate"]
