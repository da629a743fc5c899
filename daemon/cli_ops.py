"""What an operator does by hand: pause and resume, see the state, list incidents, decide.

These commands write to and read the journal; the running daemon picks their events up at
its next cycle, so they work the same whether the daemon runs or not.
"""

from __future__ import annotations

import getpass
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from daemon.cli_common import EXIT_FAILED, config_option, fail, load_or_fail, when
from daemon.config import Config
from daemon.journal import Journal, JournalError


def _journal(ctx: click.Context, config_file: Path | None) -> tuple[Config, Journal]:
    path, config = load_or_fail(ctx, config_file)
    try:
        return config, Journal.in_state_dir(config.daemon.state_dir)
    except JournalError as exc:
        fail(f"{path}: daemon.state_dir: {exc}")


def _operator() -> str:
    """Who runs the command, as the journal and the pages will name them."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


def _record(journal: Journal, payload: dict[str, Any]) -> None:
    journal.add_event(time.time(), payload)


# -- what the CLI and the HTTP API share: the same journal events, the same state -----------


class DecisionError(Exception):
    """An incident that cannot be decided; ``str()`` says why, ``missing`` tells which case."""

    def __init__(self, message: str, *, missing: bool) -> None:
        super().__init__(message)
        self.missing = missing


def record_pause(journal: Journal, by: str, reason: str) -> None:
    """Journal a pause; the daemon applies it at its next cycle. Raises JournalError."""
    _record(journal, {"type": "pause", "by": by, "reason": reason})


def record_resume(journal: Journal, by: str) -> None:
    _record(journal, {"type": "resume", "by": by})


def record_decision(journal: Journal, incident: int, choice: str, reason: str, by: str) -> None:
    """Journal a human decision that closes an open incident. Raises DecisionError or
    JournalError."""
    summary = next((i for i in journal.incidents(limit=1000) if i["incident"] == incident), None)
    if summary is None:
        raise DecisionError(f"no incident {incident} in the journal", missing=True)
    if summary["state"] != "open":
        raise DecisionError(f"incident {incident} is already resolved", missing=False)
    decision = choice if not reason else f"{choice} ({reason})"
    _record(journal, {"type": "close", "incident": incident, "by": by, "decision": decision})


def gather_status(config: Config, journal: Journal) -> dict[str, Any]:
    """The latest deploy, the open incident, pause and the last drill (``status --json``)."""
    deploy = journal.latest_deploy(config.app_name)
    incidents = journal.incidents(limit=1)
    open_incident = incidents[0] if incidents and incidents[0]["state"] == "open" else None
    pause_event = journal.latest_event(("pause", "resume"))
    paused = pause_event is not None and pause_event.payload["type"] == "pause"
    drill = journal.latest_drill()
    return {
        "app": config.app_name,
        "paused": paused,
        "deploy": None if deploy is None else {
            "id": deploy.id, "version": deploy.version, "started_at": deploy.started_at,
            "status": deploy.status, "restore_point": deploy.restore_point,
            "restore_point_verified": deploy.restore_point_verified},
        "incident": open_incident,
        "drill": None if drill is None else {
            "t": drill.t, "backup": drill.backup, "ok": drill.ok, "duration": drill.duration},
    }


def _or_fail(action: Callable[[], None]) -> None:
    try:
        action()
    except (JournalError, DecisionError) as exc:
        fail(str(exc), EXIT_FAILED)


@click.command()
@config_option
@click.option("--reason", default="", help="Why (shown in every page while paused).")
@click.pass_context
def pause(ctx: click.Context, config_file: Path | None, reason: str) -> None:
    """Pause automatic action: rollbackd keeps watching and deciding, executes nothing, and
    says it is paused in every page (for maintenance)."""
    _, journal = _journal(ctx, config_file)
    _or_fail(lambda: record_pause(journal, _operator(), reason))
    click.echo("paused: rollbackd decides and pages but executes nothing until "
               "`rollbackd resume`")


@click.command()
@config_option
@click.pass_context
def resume(ctx: click.Context, config_file: Path | None) -> None:
    """End a pause."""
    _, journal = _journal(ctx, config_file)
    _or_fail(lambda: record_resume(journal, _operator()))
    click.echo("resumed")


@click.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.pass_context
def status(ctx: click.Context, config_file: Path | None, as_json: bool) -> None:
    """The latest deploy, the open incident, pause, and the last drill, from the journal."""
    config, journal = _journal(ctx, config_file)
    state = gather_status(config, journal)
    if as_json:
        click.echo(json.dumps(state))
        return
    deploy, open_incident, drill = state["deploy"], state["incident"], state["drill"]
    click.echo(f"app        {config.app_name}" + ("  [PAUSED]" if state["paused"] else ""))
    if deploy is None:
        click.echo("deploy     none recorded")
    else:
        verified = "verified" if deploy["restore_point_verified"] else "NOT verified"
        click.echo(f"deploy     {deploy['version']} ({deploy['status']}) at "
                   f"{when(deploy['started_at'])}, restore point "
                   f"{deploy['restore_point'] or 'none'} ({verified})")
    if open_incident is None:
        click.echo("incident   none open")
    else:
        click.echo(f"incident   {open_incident['incident']} open: {open_incident['scenario']} "
                   f"({open_incident['severity']}) -> {open_incident['action']} "
                   f"[{open_incident['mode']}] since {when(open_incident['opened_at'])}")
    if drill is None:
        click.echo("drill      never run")
    else:
        click.echo(f"drill      {'passed' if drill['ok'] else 'FAILED'} at {when(drill['t'])} "
                   f"({drill['duration']:.1f}s)")


@click.group(invoke_without_command=True)
@config_option
@click.option("--json", "as_json", is_flag=True, help="A JSON array.")
@click.pass_context
def incidents(ctx: click.Context, config_file: Path | None, as_json: bool) -> None:
    """List incidents, newest first (``incidents show N`` for one)."""
    if ctx.invoked_subcommand is not None:
        ctx.obj["incidents_config"] = config_file
        return
    _, journal = _journal(ctx, config_file)
    rows = journal.incidents()
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("no incidents")
    for row in rows:
        click.echo(f"{row['incident']:>5}  {row['state']:<8}  {when(row['opened_at'])}  "
                   f"{row['scenario']} ({row['severity']}) -> {row['action']} [{row['mode']}]")


@incidents.command("show")
@config_option
@click.argument("incident", type=int)
@click.option("--json", "as_json", is_flag=True, help="JSON Lines, the replay output format.")
@click.pass_context
def show(ctx: click.Context, config_file: Path | None, incident: int, as_json: bool) -> None:
    """Every decision of one incident, in order, with its reason."""
    _, journal = _journal(ctx, config_file or ctx.obj.get("incidents_config"))
    lines = journal.decisions(limit=1000, incident=incident)
    if not lines:
        fail(f"no incident {incident} in the journal", EXIT_FAILED)
    for line in lines:
        if as_json:
            click.echo(json.dumps(line))
        else:
            click.echo(f"{when(line['t'])}  {line['kind']:<8}  {line['scenario']} "
                       f"({line['severity']}) -> {line['action']} [{line['mode']}]: "
                       f"{line['reason']}")


@click.command()
@config_option
@click.argument("incident", type=int)
@click.argument("choice", type=click.Choice(["dismiss", "fix_forward"]))
@click.option("--reason", default="", help="Why, for the incident's record.")
@click.pass_context
def decide(ctx: click.Context, config_file: Path | None, incident: int, choice: str,
           reason: str) -> None:
    """Answer an incident: dismiss it (a false alarm) or fix forward (no rollback). Either
    closes it; the daemon journals the resolution at its next cycle."""
    _, journal = _journal(ctx, config_file)
    _or_fail(lambda: record_decision(journal, incident, choice, reason, _operator()))
    click.echo(f"incident {incident}: {choice} recorded")
