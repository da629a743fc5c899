"""``rollbackd deploy begin|end|run``: deploys, each behind a verified restore point.

Human output goes to stdout (progress bars to stderr, on a terminal only); ``--json`` prints
one JSON document for scripts. Exit codes: 0 ok, 1 failed, 2 usage/config.
"""

from __future__ import annotations

from pathlib import Path

import click

from daemon.cli.common import (
    EXIT_FAILED,
    config_option,
    fail,
    json_option,
    load_with_database,
    progress_bars,
    render,
    render_outcome,
    warn,
)
from daemon.config import Config
from daemon.ops.common import OpsError
from daemon.ops.deploys import (
    DeployStart,
    end_deploy,
    run_migration,
    start_deploy,
)
from policies.units import parse_duration


@click.group()
def deploy() -> None:
    """Record deploys, each protected by a verified restore point taken before it."""


CLONE_HELP = ("Also clone the live database (the app must be stopped; rollbackd's own probe "
              "sessions are ended for it): the deploy's rollback swaps the clone in by "
              "renaming, in seconds, instead of restoring the restore point.")


def _begin(config: Config, version: str, show_progress: bool, clone: bool) -> DeployStart:
    try:
        with progress_bars(show_progress) as progress:
            started = start_deploy(config, version, clone=clone, progress=progress)
    except OpsError as exc:
        fail(str(exc), EXIT_FAILED)
    for warning in started.warnings:
        warn(warning)
    return started


@deploy.command("begin")
@config_option
@click.option("--version", "version", required=True, help="The version being deployed.")
@click.option("--clone", is_flag=True, help=CLONE_HELP)
@json_option()
@click.pass_context
def deploy_begin(ctx: click.Context, config_file: Path | None, version: str, clone: bool,
                 as_json: bool) -> None:
    """Take and verify a restore point, then record the deploy's start."""
    _, config = load_with_database(ctx, config_file)
    render(_begin(config, version, not as_json, clone), as_json)


@deploy.command("end")
@config_option
@click.option("--status", type=click.Choice(["succeeded", "failed"]), required=True)
@click.option("--deploy", "deploy_id", type=int, default=None,
              help="The deploy to end (default: the latest running one).")
@json_option()
@click.pass_context
def deploy_end(ctx: click.Context, config_file: Path | None, status: str,
               deploy_id: int | None, as_json: bool) -> None:
    """Record the end of a deploy."""
    _, config = load_with_database(ctx, config_file)
    render_outcome(lambda: end_deploy(config, status, deploy_id), as_json)


def duration_param(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if seconds <= 0:
        raise click.BadParameter("must be positive")
    return seconds


@deploy.command("run", context_settings={"ignore_unknown_options": True})
@config_option
@click.option("--version", "version", required=True, help="The version being deployed.")
@click.option("--timeout", default="1h", show_default=True, callback=duration_param,
              help="How long the command may run before it is killed.")
@click.option("--clone", is_flag=True, help=CLONE_HELP)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def deploy_run(ctx: click.Context, config_file: Path | None, version: str, timeout: float,
               clone: bool, command: tuple[str, ...]) -> None:
    """Begin a deploy, run a migration (``-- CMD ARGS...``), end the deploy with its status.

    The command's output passes straight through; rollbackd's own lines go to stderr. A
    failing command (or one killed at the timeout) is journaled as a failed migration.
    """
    _, config = load_with_database(ctx, config_file)
    started = _begin(config, version, show_progress=False, clone=clone)
    for line in started.describe():
        click.echo(f"rollbackd: {line}", err=True)
    exit_code, why = run_migration(list(command), timeout)
    status = "succeeded" if exit_code == 0 else "failed"
    try:
        end_deploy(config, status, started.deploy.id, migration=True, exit_code=exit_code)
    except OpsError as exc:
        fail(f"the migration {status} but could not be journaled: {exc}", EXIT_FAILED)
    d = started.deploy
    if status == "failed":
        fail(f"{why}: deploy {d.id} of {d.version} recorded as a failed migration "
             f"(restore point {started.restore_point.id})", EXIT_FAILED)
    click.echo(f"rollbackd: deploy {d.id} of {d.version} succeeded", err=True)
