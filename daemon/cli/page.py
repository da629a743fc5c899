"""People and pages: ``ack N``, ``page test [--channel C]``, ``page --to NAME --incident N``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from daemon.cli.common import (
    EXIT_FAILED,
    config_option,
    fail,
    json_option,
    load_or_fail,
    open_journal_or_fail,
    render,
    render_outcome,
)
from daemon.ops.common import OpsError
from daemon.ops.operator import operator_name
from daemon.ops.paging import acknowledge, page_contact, send_test_page

CHANNELS = ("alertmanager", "pagerduty", "slack", "email", "webhook")


@click.command()
@config_option
@click.argument("incident", type=int)
@click.option("--by", default=None, help="Who acknowledges (default: the user running this).")
@click.option("--comment", default="", help="A note for the incident's record.")
@json_option()
@click.pass_context
def ack(ctx: click.Context, config_file: Path | None, incident: int, by: str | None,
        comment: str, as_json: bool) -> None:
    """Acknowledge incident N's pages: its escalation stops (the running daemon picks it up
    at its next cycle, and tells PagerDuty)."""
    journal = open_journal_or_fail(*load_or_fail(ctx, config_file))
    who = by or operator_name()
    render_outcome(lambda: acknowledge(journal, incident, who, "cli", comment), as_json)


@click.group(invoke_without_command=True)
@config_option
@click.option("--to", "contact", default=None, metavar="NAME",
              help="A named contact of [paging.contacts] to page.")
@click.option("--incident", type=int, default=None, help="The incident the page is about.")
@click.option("--message", default="", help="What to tell them, besides the incident.")
@json_option()
@click.pass_context
def page(ctx: click.Context, config_file: Path | None, contact: str | None,
         incident: int | None, message: str, as_json: bool) -> None:
    """Page a named external contact about an incident (``page --to NAME --incident N``),
    or send a test page through each channel (``page test``)."""
    if ctx.invoked_subcommand is not None:
        ctx.obj["page_config"] = config_file
        return
    if contact is None or incident is None:
        fail("page: give --to NAME and --incident N (or use: rollbackd page test)")
    path, config = load_or_fail(ctx, config_file)
    journal = open_journal_or_fail(path, config)
    render_outcome(lambda: asyncio.run(page_contact(
        config, journal, contact, incident, message, operator_name())), as_json)


@page.command("test")
@config_option
@click.option("--channel", type=click.Choice(CHANNELS), default=None,
              help="Only this channel (default: every configured one).")
@json_option()
@click.pass_context
def page_test(ctx: click.Context, config_file: Path | None, channel: str | None,
              as_json: bool) -> None:
    """Send a test page through each configured channel and report each one's answer; exit
    1 when any failed."""
    _, config = load_or_fail(ctx, config_file or ctx.obj.get("page_config"))
    try:
        report = asyncio.run(send_test_page(config, channel, operator_name()))
    except OpsError as exc:
        fail(str(exc), EXIT_FAILED)
    render(report, as_json)
    if not report.ok:
        raise SystemExit(EXIT_FAILED)
