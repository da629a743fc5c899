"""What an operator does by hand: ``pause``, ``resume``, ``status``, ``incidents [show N |
report N]``, ``decide N dismiss|fix_forward``. They work the same whether the daemon runs or
not."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from daemon.cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    config_option,
    fail,
    json_option,
    load_or_fail,
    open_journal_or_fail,
    render,
    warn,
)
from daemon.config import Config, ConfigError, load_policy
from daemon.journal import Journal, JournalError
from daemon.ops import operator as operator_ops
from daemon.ops.operator import (
    CLOSING_CHOICES,
    DECISIONS,
    DecisionError,
    IncidentList,
    Notice,
    gather_status,
    incident_decisions,
    operator_name,
    record_decision,
    record_pause,
    record_resume,
)
from daemon.ops.reports import incident_report
from policies.policy import Policy


def _policy(path: Path, config: Config) -> Policy:
    """The policy a rollback decision is checked against (its runbooks and rules)."""
    try:
        return load_policy(config, path)
    except ConfigError as exc:
        fail(str(exc))


def _journal(ctx: click.Context, config_file: Path | None) -> tuple[Config, Journal]:
    """The config and its journal. A state_dir that cannot be a directory is a config error
    (exit 2); a journal that cannot be opened (damaged, replaced, emptied, of a newer
    rollbackd) is a failed operation (exit 1), its path named."""
    path, config = load_or_fail(ctx, config_file)
    return config, open_journal_or_fail(path, config)


def _record_then_render(ctx: click.Context, config_file: Path | None,
                        record: Callable[[Journal], None], notice: Notice,
                        as_json: bool) -> None:
    _, journal = _journal(ctx, config_file)
    try:
        record(journal)
    except JournalError as exc:
        fail(str(exc), EXIT_FAILED)
    render(notice, as_json)


@click.command()
@config_option
@click.option("--reason", default="", help="Why (shown in every page while paused).")
@json_option()
@click.pass_context
def pause(ctx: click.Context, config_file: Path | None, reason: str, as_json: bool) -> None:
    """Pause automatic action: rollbackd keeps watching and deciding, executes nothing, and
    says it is paused in every page (for maintenance)."""
    by = operator_name()
    _record_then_render(ctx, config_file, lambda journal: record_pause(journal, by, reason),
                        Notice("paused: rollbackd decides and pages but executes nothing "
                               "until `rollbackd resume`",
                               {"paused": True, "by": by, "reason": reason}), as_json)


@click.command()
@config_option
@json_option()
@click.pass_context
def resume(ctx: click.Context, config_file: Path | None, as_json: bool) -> None:
    """End a pause."""
    by = operator_name()
    _record_then_render(ctx, config_file, lambda journal: record_resume(journal, by),
                        Notice("resumed", {"paused": False, "by": by}), as_json)


@click.command()
@config_option
@json_option()
@click.pass_context
def status(ctx: click.Context, config_file: Path | None, as_json: bool) -> None:
    """The latest deploy, the open incident, pause, and the last drill, from the journal."""
    config, journal = _journal(ctx, config_file)
    render(gather_status(config, journal, inspect=True), as_json)


@click.group(invoke_without_command=True)
@config_option
@json_option("A JSON array.")
@click.pass_context
def incidents(ctx: click.Context, config_file: Path | None, as_json: bool) -> None:
    """List incidents, newest first (``incidents show N`` for one, ``incidents report N`` for
    its report)."""
    if ctx.invoked_subcommand is not None:
        ctx.obj["incidents_config"] = config_file
        ctx.obj["incidents_json"] = as_json
        return
    _list_incidents(ctx, config_file, as_json)


@incidents.command("list")
@config_option
@json_option("A JSON array.")
@click.pass_context
def list_incidents(ctx: click.Context, config_file: Path | None, as_json: bool) -> None:
    """List incidents, newest first (the same as ``incidents`` alone)."""
    _list_incidents(ctx, config_file or ctx.obj.get("incidents_config"),
                    as_json or ctx.obj.get("incidents_json", False))


def _list_incidents(ctx: click.Context, config_file: Path | None, as_json: bool) -> None:
    _, journal = _journal(ctx, config_file)
    render(IncidentList(journal.incidents()), as_json)


@incidents.command("show")
@config_option
@click.argument("incident", type=int)
@json_option("JSON Lines, the replay output format.")
@click.pass_context
def show(ctx: click.Context, config_file: Path | None, incident: int, as_json: bool) -> None:
    """Every decision of one incident, in order, with its reason."""
    _, journal = _journal(ctx, config_file or ctx.obj.get("incidents_config"))
    try:
        render(incident_decisions(journal, incident), as_json)
    except DecisionError as exc:
        fail(str(exc), EXIT_FAILED)


@incidents.command("report")
@config_option
@click.argument("incident", type=int)
@click.option("--format", "fmt", type=click.Choice(["md", "json"]), default="md",
              show_default=True, help="Markdown, or the report as one JSON object.")
@click.pass_context
def report(ctx: click.Context, config_file: Path | None, incident: int, fmt: str) -> None:
    """One incident's report: summary, impact, timeline, root cause, resolution, prevention
    and the data window (the kept rows the restored database lacks). Printed from
    state_dir/incidents/N/, which is written first when missing or older than the journal."""
    config, journal = _journal(ctx, config_file or ctx.obj.get("incidents_config"))
    try:
        view = incident_report(config, journal, incident)
    except DecisionError as exc:
        fail(str(exc), EXIT_FAILED)
    if view.current.write_error is not None:
        warn(f"{view.current.write_error} (printed, not saved)")
    render(view, fmt == "json")


@click.command()
@config_option
@click.argument("incident", type=int)
@click.argument("choice", type=click.Choice(DECISIONS))
@click.option("--reason", default="", help="Why, for the incident's record.")
@click.option("--runbook", default=None,
              help="With a rollback: the runbook to run (default: the action's).")
@click.option("--tables", "tables", multiple=True, metavar="T1,T2",
              help="With selective_rollback: the tables whose data is restored (repeatable).")
@json_option()
@click.pass_context
def decide(ctx: click.Context, config_file: Path | None, incident: int, choice: str,
           reason: str, runbook: str | None, tables: tuple[str, ...], as_json: bool) -> None:
    """Answer an incident: dismiss it (a false alarm) or fix_forward (no rollback), either
    closing it; or choose a rollback (immediate_rollback, planned_rollback,
    selective_rollback --tables T; rollback: the incident's own action), which the daemon
    starts at its next cycle through the executor, whose checks still apply. What the journal
    tells now of those checks (a pause, a run going on, the restore point) is printed as
    warnings; the decision is recorded all the same (exit 0)."""
    path, config = load_or_fail(ctx, config_file)
    _, journal = _journal(ctx, config_file)
    policy = None if choice in CLOSING_CHOICES else _policy(path, config)
    try:
        recorded = record_decision(journal, incident, choice, reason, operator_name(),
                                   runbook, tables=tables, policy=policy, app=config.app_name)
    except DecisionError as exc:
        fail(str(exc), EXIT_USAGE if exc.usage else EXIT_FAILED)
    except JournalError as exc:
        fail(str(exc), EXIT_FAILED)
    for warning in recorded.warnings():
        warn(warning)
    render(recorded, as_json)


@incidents.command("annotate")
@config_option
@click.argument("incident", type=int)
@click.option("--root-cause", default=None, metavar="TEXT",
              help="What caused the incident, for the report's Root cause.")
@click.option("--prevention", default=None, metavar="TEXT",
              help="What will keep it from happening again, for the report's Prevention.")
@click.option("--by", default=None, help="Who writes it (default: who runs the command).")
@json_option()
@click.pass_context
def annotate(ctx: click.Context, config_file: Path | None, incident: int,
             root_cause: str | None, prevention: str | None, by: str | None,
             as_json: bool) -> None:
    """Write an incident's root cause and/or prevention into its report (each replaces the
    one written before). The reminders after an incident stop once both are written."""
    _, journal = _journal(ctx, config_file or ctx.obj.get("incidents_config"))
    try:
        event = operator_ops.record_annotation(journal, incident, root_cause, prevention,
                                               by or operator_name())
    except operator_ops.AnnotationError as exc:
        fail(str(exc), EXIT_FAILED if exc.missing else EXIT_USAGE)
    except JournalError as exc:
        fail(str(exc), EXIT_FAILED)
    written = " and ".join(k.replace("_", " ") for k in ("root_cause", "prevention")
                           if k in event)
    data = {k: v for k, v in event.items() if k != "type"}
    render(Notice(f"incident {incident}: {written} recorded (`rollbackd incidents report "
                  f"{incident}` shows it)", data), as_json)
