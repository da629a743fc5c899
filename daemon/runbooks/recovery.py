"""Crash recovery: a run the journal still has as ``running`` when the daemon starts (and no
other process holds the run lock) was cut short by a crash, a kill or a power cut.

What the journal says decides what happens (:func:`assess`):

* no step was interrupted (the crash fell between two steps): the run continues with the next
  step;
* the interrupted step is idempotent: it is run again (its interrupted attempt is ended as
  failed, saying so), then the rest;
* the interrupted step is a restore: it is first observed through the journal's ``restores``
  row. None begun after the step began: the restore never started, the step runs again.
  Completed: the swap happened, the attempt is ended ``ok`` as observed, the run continues
  after it. Failed: nothing was restored, and a failed restore is never gone past: the run is
  abandoned with a page. Still ``running`` (the process died during it): when the start-up
  recovery of interrupted swaps (``swap``, run before the runs are recovered) completed or
  reverted the swap of that very database, the restore's record is ended as that says
  (``restored``, the replaced data kept aside; or ``failed``, nothing restored) and the run
  continues after it, or runs the step again. Otherwise (``interrupted``, or ``running`` with
  nothing that says what happened) the database's state is not known; the run is abandoned
  with a page naming the restore to look at;
* any other non-idempotent step (a down-migration, a command) interrupted, or a step that
  failed without the run being ended: abandoned with a page.

A run continues with its original deadline (a step past it fails the run, as always) and its
state left behind rebuilt from the steps that completed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from daemon.db.restore import SwapRecovery
from daemon.journal import Journal, JournalError, Restore, RestoreOutcome, Run, RunStep
from policies.runbooks import BUILTIN, Runbook

Verdict = Literal["continue", "abandon", "finish"]

_DONE_PHRASES = {
    ("stop_app", "ok"): ("app", "app stopped"),
    ("start_app", "ok"): ("app", "app running (started again)"),
    ("restore_database", "ok"): ("database", "database restored"),
    ("restore_database", "skipped"): ("database", "database unchanged (not restored)"),
    ("run_down_migration", "ok"): ("database", "schema migrated down to the restore point's"),
    ("rollback_code", "ok"): ("code", "code rolled back"),
    ("rollback_code", "skipped"): ("code", "code left as it is"),
    ("rollback_config", "ok"): ("config", "config rolled back"),
    ("rollback_config", "skipped"): ("config", "config left as it is"),
}


@dataclass(frozen=True, slots=True)
class Assessment:
    """What to do with an unfinished run, and why (the words go into the journal and the
    page)."""

    run: Run
    runbook: Runbook | None
    verdict: Verdict
    resume_at: int
    """The step (1-based) to carry on with; len(plan) + 1 when every step is done."""
    observed: str
    interrupted: RunStep | None = None
    """The attempt the crash cut short (it has no end in the journal)."""
    interrupted_outcome: Literal["ok", "failed"] = "failed"
    """How that attempt is ended in the journal: ``ok`` when its effect was observed."""
    restore: Restore | None = None
    done: list[RunStep] = field(default_factory=list)
    """The last attempt of each step that completed (ok or skipped), in order."""

    @property
    def next_attempt(self) -> int:
        return 1 if self.interrupted is None or self.interrupted_outcome == "ok" \
            else self.interrupted.attempt + 1


def last_attempts(steps: list[RunStep]) -> dict[int, RunStep]:
    latest: dict[int, RunStep] = {}
    for s in steps:
        if s.idx not in latest or s.attempt >= latest[s.idx].attempt:
            latest[s.idx] = s
    return latest


def assess(journal: Journal, run: Run,
           runbooks: Mapping[str, Runbook] = BUILTIN,
           swap: SwapRecovery | None = None) -> Assessment:
    """Read the journal's record of ``run`` (status ``running``) and say how to go on;
    ``runbooks``: the ones it may be continued with (by name); ``swap``: what the start-up
    recovery of an interrupted swap did (it ends a restore's record that a crash left
    ``running`` accordingly)."""
    runbook = runbooks.get(run.runbook)
    if runbook is not None and tuple(s.kind for s in runbook.steps) != run.plan:
        runbook = None  # the bundled runbook changed since: the plan run is not this one
    latest = last_attempts(journal.steps(run.id))
    done = [latest[i] for i in sorted(latest) if latest[i].outcome in ("ok", "skipped")]
    plan = run.plan
    if runbook is None:
        return Assessment(run, None, "abandon", 1, f"its runbook {run.runbook} (plan "
                          f"{', '.join(plan)}) is not known to this rollbackd", done=done)
    interrupted = next((s for s in latest.values() if s.ended_at is None), None)
    failed = next((s for s in latest.values() if s.outcome == "failed"), None)
    if failed is not None and interrupted is None:
        return Assessment(run, runbook, "abandon", failed.idx,
                          f"step {failed.idx} ({failed.kind}) had failed ({failed.message}) "
                          "and the run was not ended", done=done)
    if interrupted is None:
        next_idx = 1 + max((s.idx for s in done), default=0)
        if next_idx > len(plan):
            return Assessment(run, runbook, "finish", next_idx,
                              "every step was done; only the run's end was not journaled",
                              done=done)
        return Assessment(run, runbook, "continue", next_idx,
                          f"stopped between steps; carrying on with step {next_idx} "
                          f"({plan[next_idx - 1]})", done=done)
    step = runbook.steps[interrupted.idx - 1]
    where = f"step {interrupted.idx} ({interrupted.kind}, attempt {interrupted.attempt})"
    if interrupted.kind == "restore_database":
        return _observe_restore(journal, run, runbook, interrupted, where, done, swap)
    if step.idempotent:
        return Assessment(run, runbook, "continue", interrupted.idx,
                          f"{where} was interrupted; it is idempotent and runs again",
                          interrupted=interrupted, done=done)
    return Assessment(run, runbook, "abandon", interrupted.idx,
                      f"{where} was interrupted and is not idempotent: what it did is not "
                      "known", interrupted=interrupted, done=done)


def _observe_restore(journal: Journal, run: Run, runbook: Runbook, step: RunStep, where: str,
                     done: list[RunStep], swap: SwapRecovery | None = None) -> Assessment:
    restores = [r for r in journal.restores(app=run.app, limit=20)
                if r.started_at >= step.started_at
                and (run.incident is None or r.incident == run.incident)]
    if not restores:
        return Assessment(run, runbook, "continue", step.idx,
                          f"{where} was interrupted before its restore began (none is "
                          "journaled): it runs again", interrupted=step, done=done)
    restore = restores[-1]  # newest first: the first one the step began
    if restore.status == "running":
        restore = _settle(journal, restore, swap)
    seen = f"restore {restore.id} ({restore.describe()})"
    if restore.status == "failed" and restore.error == REVERTED:
        return Assessment(run, runbook, "continue", step.idx,
                          f"{where}: {seen}: {REVERTED}; the step runs again",
                          interrupted=step, restore=restore, done=done)
    if restore.completed:
        return Assessment(run, runbook, "continue", step.idx + 1,
                          f"{where} was interrupted after {seen} completed: the database "
                          "is restored; carrying on after it", interrupted=step,
                          interrupted_outcome="ok", restore=restore, done=done)
    if restore.status == "failed":
        return Assessment(run, runbook, "abandon", step.idx,
                          f"{where}: {seen} had failed ({restore.error}); nothing is "
                          "continued past a failed restore", interrupted=step,
                          restore=restore, done=done)
    return Assessment(run, runbook, "abandon", step.idx,
                      f"{where}: {seen} is {restore.status}: the database's state is not "
                      f"known; look at database {restore.database} (a swap's shadow or "
                      "renamed copy may be left: `rollbackd backup restore` repairs an "
                      "interrupted swap first)", interrupted=step, restore=restore, done=done)


REVERTED = ("interrupted by a crash during the swap, which the start-up recovery reverted: "
            "nothing was restored")


def _settle(journal: Journal, restore: Restore, swap: SwapRecovery | None) -> Restore:
    """End the record of a swap a crash cut short as the start-up recovery of that very
    swap found it (completed: restored, its replaced data kept aside; reverted: failed,
    nothing restored); unchanged when nothing says what happened."""
    if (swap is None or not swap.applied or restore.strategy not in ("swap", "clone")
            or swap.database != restore.database
            or swap.outcome not in ("completed", "reverted")):
        return restore
    now = time.time()
    if swap.outcome == "completed":
        outcome = RestoreOutcome(status="restored", finished_at=now, kept=swap.kept,
                                 kept_kind=None if swap.kept is None else "database",
                                 report={"recovered_at_start_up": swap.describe()})
    else:
        outcome = RestoreOutcome(status="failed", finished_at=now, error=REVERTED,
                                 report={"recovered_at_start_up": swap.describe()})
    try:
        return journal.finish_restore(restore.id, outcome, close_incident=False)
    except JournalError:
        return restore


def rebuilt_state(assessment: Assessment) -> list[tuple[str, str]]:
    """``(part, phrase)`` for each part the completed steps changed, in order."""
    found: list[tuple[str, str]] = []
    for s in assessment.done:
        phrase = _DONE_PHRASES.get((s.kind, s.outcome or ""))
        if phrase is not None:
            found.append(phrase)
    if assessment.interrupted_outcome == "ok" and assessment.restore is not None:
        r = assessment.restore
        found.append(("database", f"database restored (the data it replaced kept in "
                                  f"{r.kept_kind} {r.kept})"))
    return found


def restore_facts(restore: Restore | None) -> dict[str, Any] | None:
    if restore is None or not restore.completed:
        return None
    return {"restore": restore.id, "kept": restore.kept, "kept_kind": restore.kept_kind,
            "data_window_start": restore.data_window_start,
            "data_window_end": restore.data_window_end}
