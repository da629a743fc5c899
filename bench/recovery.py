"""Recovery time: where the time of each demo scenario's rollback goes.

Runs `rollbackd demo`'s scenarios one after the other (examples/demo.py, each on its own
throwaway PostgreSQL with its own rollbackd) and, from the journal of each (the incident's
decisions, its runbook run and every step of it: ``Journal.runs()``, ``Journal.steps()``),
prints per phase how long it took:

* fault -> decision: from the fault (the failed migration journaled; v2 serving its errors or
  its latency; the rows deleted) to rollbackd's decision;
* decision -> app stopped: until the stop_app step ended;
* restore: the restore_database step (and the safety backup of a planned rollback);
* code and config: rollback_code and rollback_config;
* validation: the validate (and assess) steps;
* app healthy: from start_app until the demo saw the app answer healthy;
* total: from the fault to the app healthy;

then each scenario's steps as journaled. A table, not a test: nothing here passes or fails but
the demo itself (its exit status is shown). Until the runbook executor lands, the runbook's
phases read "not reached".

    .venv/bin/python bench/recovery.py [--scenario NAME ...] [--timeout 90]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.demo import DEFAULT_TIMEOUT, SCENARIOS, Demo, Outcome
from examples.demochecks import PHASES, step_base


def seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.2f}s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--scenario", dest="scenarios", action="append",
                        choices=list(SCENARIOS), help="a scenario to run (repeatable; "
                                                      "default: all)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="seconds rollbackd gets per scenario, from the deploy on")
    args = parser.parse_args()
    console = Console()
    outcomes: dict[str, Outcome] = {}
    for name in args.scenarios or list(SCENARIOS):
        console.print(f"running the {name} scenario ...", style="dim")
        outcome = Demo(SCENARIOS[name], timeout=args.timeout, quiet=True).run()
        outcomes[name] = outcome
        if outcome.code == 130:
            console.print("interrupted")
            return 130

    table = Table(title="Where the time of a rollback goes (from the journal)")
    table.add_column("phase")
    for name in outcomes:
        table.add_column(name, justify="right")
    for phase in PHASES:
        cells = []
        for outcome in outcomes.values():
            found = next((p for p in outcome.phases if p.name == phase), None)
            cells.append(seconds(found.seconds) if found else "-")
        table.add_row(phase, *cells)
    table.add_row("demo", *("verified" if o.code == 0 else f"exit {o.code}: {o.unmet}"
                            for o in outcomes.values()))
    console.print(table)

    for name, outcome in outcomes.items():
        if not outcome.steps:
            continue
        steps = Table(title=f"{name}: the runbook's steps")
        for column in ("#", "step", "attempt", "outcome", "took"):
            steps.add_column(column, justify="right" if column in ("#", "took") else "left")
        base = step_base(outcome.plan, outcome.steps)
        for step in outcome.steps:
            took = None if step.ended_at is None else step.ended_at - step.started_at
            steps.add_row(str(step.idx + 1 - base), step.kind, str(step.attempt),
                          step.outcome or "interrupted", seconds(took))
        console.print(steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
