"""The executor's own rules, with stand-in step adapters: every attempt journaled begun then
ended, retries with backoff for idempotent steps only, the budget, one run at a time, a
failed or interrupted run paging with the state left behind."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.config import Config
from daemon.journal import Journal
from daemon.locks import host_lock
from daemon.runbooks.context import RunContext, RunRequest, StepReport
from daemon.runbooks.executor import (
    RUN_LOCK_FILE,
    Executor,
    RunRefusedError,
)
from daemon.runbooks.steps import ADAPTERS, Adapter
from policies.runbooks import Runbook, Step, step
from policies.schema import convert


class Recorder:
    """A RunObserver counting what the metrics would."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, str]] = []
        self.pages: list[tuple[str, str]] = []
        self.runs: list[tuple[str, str]] = []

    def run_started(self, runbook: str) -> None:
        self.runs.append((runbook, "started"))

    def run_ended(self, runbook: str, status: str, duration: float) -> None:
        self.runs.append((runbook, status))

    def step_ended(self, kind: str, outcome: str) -> None:
        self.steps.append((kind, outcome))

    def page_recorded(self, channel: str, outcome: str) -> None:
        self.pages.append((channel, outcome))


def stand_in(*outcomes: str, sleep: float = 0.0, part: str | None = None,
             phrase: str = "") -> Adapter:
    """An adapter answering ``outcomes`` in turn (the last one repeated)."""
    answers = list(outcomes)

    async def adapter(ctx: RunContext, s: Step, index: int) -> StepReport:
        if sleep:
            await asyncio.sleep(sleep)
        outcome = answers.pop(0) if len(answers) > 1 else answers[0]
        if outcome == "ok" and part is not None:
            ctx.left.set(part, phrase)
        assert outcome in ("ok", "failed", "skipped")
        return StepReport(outcome, f"{s.kind} {outcome}", f"output of {s.kind}",  # type: ignore[arg-type]
                          {"index": index})

    return adapter


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal.in_state_dir(tmp_path / "state")
    yield j
    j.close()


def config(tmp_path: Path) -> Config:
    return convert({"daemon": {"state_dir": str(tmp_path / "state")},
                    "app": {"name": "visionforge"}}, Config)


def request(runbook: Runbook, timeline: float | None = 900.0) -> RunRequest:
    return RunRequest(runbook, incident=7, scenario="migration_failed",
                      action="immediate_rollback", reason="migration.failed == 1 held for 0s",
                      by="rollbackd", timeline_s=timeline)


def executor(tmp_path: Path, journal: Journal, recorder: Recorder,
             **adapters: Adapter) -> Executor:
    return Executor(config(tmp_path), journal, observer=recorder, backoff=0.01,
                    adapters={**ADAPTERS, **adapters})


RUNBOOK = Runbook("immediate_rollback", (
    step("page", template="emergency"),
    step("stop_app", force=True),
    step("restore_database"),
    step("start_app"),
    step("notify", template="completion"),
))


async def test_every_step_is_journaled_begun_then_ended_and_the_run_succeeds(
        tmp_path: Path, journal: Journal) -> None:
    recorder = Recorder()
    run = executor(tmp_path, journal, recorder,
                   stop_app=stand_in("ok", part="app", phrase="app stopped"),
                   restore_database=stand_in("ok", part="database",
                                             phrase="database restored"),
                   start_app=stand_in("ok", part="app", phrase="app running"))
    result = await run.run(request(RUNBOOK))

    assert result.ok and result.run.status == "succeeded"
    assert result.run.plan == ("page", "stop_app", "restore_database", "start_app", "notify")
    assert [(s.idx, s.kind, s.attempt, s.outcome) for s in result.steps] == [
        (1, "page", 1, "ok"), (2, "stop_app", 1, "ok"), (3, "restore_database", 1, "ok"),
        (4, "start_app", 1, "ok"), (5, "notify", 1, "ok")]
    assert all(s.ended_at is not None and s.ended_at >= s.started_at for s in result.steps)
    assert result.steps[1].output == "output of stop_app"
    assert "duration" in result.steps[1].details
    assert result.state == "app running, database restored"
    emergency, completion = journal.pages(incident=7)
    assert emergency.template == "emergency" and emergency.summary.startswith("EMERGENCY")
    assert completion.template == "completion" and "completed in" in completion.summary
    assert emergency.dedup_key == f"visionforge/incident-7/run-{result.run.id}/step-1"
    assert recorder.runs == [("immediate_rollback", "started"),
                             ("immediate_rollback", "succeeded")]
    assert recorder.pages == [("journal", "recorded")] * 2
    assert ("restore_database", "ok") in recorder.steps


async def test_an_idempotent_step_is_retried_with_backoff_and_a_restore_is_not(
        tmp_path: Path, journal: Journal) -> None:
    recorder = Recorder()
    runbook = Runbook("r", (step("start_app", retries=2), step("restore_database")))
    run = executor(tmp_path, journal, recorder,
                   start_app=stand_in("failed", "failed", "ok"),
                   restore_database=stand_in("failed", "ok"))
    result = await run.run(request(runbook))

    assert [(s.kind, s.attempt, s.outcome) for s in result.steps] == [
        ("start_app", 1, "failed"), ("start_app", 2, "failed"), ("start_app", 3, "ok"),
        ("restore_database", 1, "failed")]
    assert result.run.status == "failed" and result.failed_step == 2
    gaps = [b.started_at - a.ended_at for a, b in zip(result.steps, result.steps[1:3],
                                                      strict=False) if a.ended_at]
    assert all(gap >= 0.009 for gap in gaps)  # the backoff waited between the attempts


async def test_a_failed_step_stops_the_run_and_pages_naming_the_step_and_the_state(
        tmp_path: Path, journal: Journal) -> None:
    recorder = Recorder()
    run = executor(tmp_path, journal, recorder,
                   stop_app=stand_in("ok", part="app", phrase="app stopped"),
                   restore_database=stand_in("failed"),
                   start_app=stand_in("ok"))
    result = await run.run(request(RUNBOOK))

    assert result.run.status == "failed"
    assert [s.kind for s in result.steps] == ["page", "stop_app", "restore_database"]
    assert result.state == "app stopped, database not restored"
    page = result.page
    assert page is not None and page.template == "emergency"
    assert "FAILED at step 3 (restore_database)" in page.summary
    assert "state left behind: app stopped, database not restored" in page.summary
    assert "code not rolled back" not in page.summary  # this runbook touches no code
    assert page.details["output"] == "output of restore_database"
    assert page.details["kind"] == "restore_database" and page.details["step"] == 3
    assert result.run.summary is not None and "failed at step 3" in result.run.summary
    assert journal.pages(incident=7)[-1] == page


async def test_the_state_left_behind_names_every_part_the_runbook_touches(
        tmp_path: Path, journal: Journal) -> None:
    runbook = Runbook("r", (step("restore_database"), step("rollback_code"),
                            step("rollback_config")))
    run = executor(tmp_path, journal, Recorder(),
                   restore_database=stand_in("ok", part="database", phrase="database restored"),
                   rollback_code=stand_in("failed"))
    result = await run.run(request(runbook))
    assert result.state == "database restored, code not rolled back, config not rolled back"


async def test_a_step_that_would_start_past_the_budget_fails_the_run(
        tmp_path: Path, journal: Journal) -> None:
    runbook = Runbook("r", (step("exec", command=["true"]), step("start_app")))
    run = executor(tmp_path, journal, Recorder(), exec=stand_in("ok", sleep=0.3),
                   start_app=stand_in("ok"))
    result = await run.run(request(runbook, timeline=0.2))

    assert [(s.kind, s.outcome) for s in result.steps] == [("exec", "ok"),
                                                            ("start_app", "failed")]
    assert "budget" in (result.steps[1].message or "")
    assert result.run.status == "failed"


async def test_a_hanging_step_times_out(tmp_path: Path, journal: Journal,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("daemon.runbooks.executor.STEP_GRACE", 0.0)
    runbook = Runbook("r", (step("exec", command=["true"], timeout=0.2),))
    run = executor(tmp_path, journal, Recorder(), exec=stand_in("ok", sleep=30))
    started = time.monotonic()
    result = await run.run(request(runbook))
    assert time.monotonic() - started < 5
    assert result.run.status == "failed"
    assert "timed out" in (result.steps[0].message or "")


async def test_one_run_at_a_time_in_the_process_and_on_the_host(
        tmp_path: Path, journal: Journal) -> None:
    runbook = Runbook("r", (step("exec", command=["true"]),))
    run = executor(tmp_path, journal, Recorder(), exec=stand_in("ok", sleep=0.3))
    first = asyncio.create_task(run.run(request(runbook)))
    await asyncio.sleep(0.05)
    assert run.busy
    with pytest.raises(RunRefusedError, match="another runbook run"):
        await run.run(request(runbook))
    assert (await first).ok

    with host_lock(tmp_path / "state", "rollbackd rollback --yes", name=RUN_LOCK_FILE), \
            pytest.raises(RunRefusedError, match="another runbook run is running on this host"):
        await run.run(request(runbook))
    assert len(journal.runs()) == 1  # refused runs begin nothing


async def test_a_cancelled_run_is_journaled_as_interrupted_and_pages(
        tmp_path: Path, journal: Journal) -> None:
    runbook = Runbook("r", (step("stop_app", force=True), step("exec", command=["true"])))
    run = executor(tmp_path, journal, Recorder(),
                   stop_app=stand_in("ok", part="app", phrase="app stopped"),
                   exec=stand_in("ok", sleep=30))
    task = asyncio.create_task(run.run(request(runbook)))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [stored] = journal.runs()
    assert stored.status == "failed" and stored.summary is not None
    assert "interrupted" in stored.summary and "app stopped" in stored.summary
    last = journal.steps(stored.id)[-1]
    assert (last.kind, last.outcome) == ("exec", "failed")
    assert "interrupted" in (last.message or "")
    [page] = journal.pages(incident=7)
    assert "INTERRUPTED" in page.summary and "app stopped" in page.summary


async def test_a_failed_stop_asks_the_adapter_what_it_left(
        tmp_path: Path, journal: Journal) -> None:
    runbook = Runbook("r", (step("stop_app"),))
    result = await executor(tmp_path, journal, Recorder(),
                            stop_app=stand_in("failed")).run(request(runbook))
    # No [app].control in this config: the adapter cannot tell, and the page says so.
    assert result.page is not None and "app state unknown" in result.page.summary


async def test_a_run_that_ends_with_the_app_stopped_pages(
        tmp_path: Path, journal: Journal) -> None:
    runbook = Runbook("r", (step("stop_app"),))
    run = executor(tmp_path, journal, Recorder(),
                   stop_app=stand_in("ok", part="app", phrase="app stopped"))
    result = await run.run(request(runbook))
    assert result.ok
    assert result.page is not None and "ended with the app stopped" in result.page.summary


async def test_a_refusal_is_paged(tmp_path: Path, journal: Journal) -> None:
    recorder = Recorder()
    run = executor(tmp_path, journal, recorder)
    page = run.record_refusal(request(RUNBOOK), "another runbook run is going on")
    assert page is not None and "NOT started" in page.summary
    assert recorder.pages == [("journal", "recorded")]


@pytest.mark.parametrize("when", ["before", "after"])
async def test_a_test_hold_point_stops_a_step_between_its_journal_rows_and_its_effect(
        tmp_path: Path, journal: Journal, monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    release = tmp_path / "release"
    monkeypatch.setenv("ROLLBACKD_TEST_HOLD", f"runbook:3:restore_database:{when}")
    monkeypatch.setenv("ROLLBACKD_TEST_RELEASE", str(release))
    calls: list[int] = []
    restore = stand_in("ok")

    async def restore_database(ctx: RunContext, s: Step, index: int) -> StepReport:
        calls.append(index)
        return await restore(ctx, s, index)

    run = executor(tmp_path, journal, Recorder(), stop_app=stand_in("ok"),
                   restore_database=restore_database, start_app=stand_in("ok"))
    task = asyncio.create_task(run.run(request(RUNBOOK)))
    deadline = time.monotonic() + 10
    while not any(s.idx == 3 for r in journal.runs() for s in journal.steps(r.id)):
        assert time.monotonic() < deadline and not task.done()
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)  # the event loop goes on while the step holds

    [held] = [s for r in journal.runs() for s in journal.steps(r.id) if s.idx == 3]
    assert held.ended_at is None and not task.done()
    assert calls == ([] if when == "before" else [3])
    release.touch()
    result = await asyncio.wait_for(task, 10)
    assert result.ok and calls == [3]
