"""``rollbackd rollback``: a rollback by hand, through the executor the daemon uses.

Without ``--yes`` it prints the plan (the steps, the restore point, the data window it would
undo, the downtime to expect from the last restore drill) and changes nothing. Exit codes: 0
planned or succeeded, 1 the run failed or could not begin, 2 usage or configuration error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from daemon.cli.common import EXIT_FAILED, config_option, fail, json_option, load_with_policy
from daemon.logs import configure_logging
from daemon.ops.common import OpsError
from daemon.ops.operator import operator_name


@click.command()
@config_option
@click.option("--runbook", default=None,
              help="The runbook to run (default: the incident's action's).")
@click.option("--incident", type=int, default=None,
              help="The incident it answers (default: the open one, if any).")
@click.option("--yes", is_flag=True, help="Execute it (without: only print the plan).")
@click.option("--without-fleet", is_flag=True,
              help="In fleet mode, run a runbook that changes the shared database on this "
                   "host alone (the other hosts do not follow it).")
@json_option("Print one JSON object: the plan, and the run with --yes.")
@click.pass_context
def rollback(ctx: click.Context, config_file: Path | None, runbook: str | None,
             incident: int | None, yes: bool, without_fleet: bool, as_json: bool) -> None:
    """Roll back by hand: print the plan, and with --yes run it, every step journaled as the
    daemon's runs are (one run at a time: a run of the daemon's refuses this one)."""
    from daemon.ops.rollbacks import execute_rollback, plan_rollback

    _, config, policy = load_with_policy(ctx, config_file)
    try:
        plan = plan_rollback(config, policy, runbook, incident, by=operator_name())
    except OpsError as exc:
        fail(str(exc), EXIT_FAILED)
    if not yes:
        if as_json:
            click.echo(json.dumps({"plan": plan.as_json(), "executed": False}, sort_keys=True))
        else:
            for line in plan.describe():
                click.echo(line)
            click.echo("rollbackd: not executed: run again with --yes to carry it out",
                       err=True)
        return
    if not as_json:
        for line in plan.describe():
            click.echo(line)
    # The executor's log lines (steps, pages) go to stderr: stdout is the result.
    configure_logging(config.daemon.log_format, stream=sys.stderr)
    try:
        result = execute_rollback(config, plan, without_fleet=without_fleet)
    except OpsError as exc:
        fail(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        fail("interrupted: the run is journaled as failed, with a page naming the state it "
             "left", EXIT_FAILED)
    if as_json:
        click.echo(json.dumps({"plan": plan.as_json(), "executed": True,
                               "run": result.as_json()}, sort_keys=True))
    else:
        for line in result.describe():
            click.echo(line)
    if not result.ok:
        fail(f"run {result.run.id} failed: {result.run.summary}", EXIT_FAILED)
