"""The ``rollbackd`` command line. Exit codes: 0 ok, 1 failed operation, 2 usage or config error."""

from __future__ import annotations

from pathlib import Path

import click

from daemon import __version__
from daemon.cli.backup import backup
from daemon.cli.check import check, simulate
from daemon.cli.common import EXIT_FAILED, config_option, fail
from daemon.cli.demo import demo
from daemon.cli.deploy import deploy
from daemon.cli.drill import drill
from daemon.cli.operator import decide, incidents, pause, resume, status
from daemon.cli.page import ack, page
from daemon.cli.run import run
from daemon.cli.runbook import rollback


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rollbackd")
@config_option
@click.pass_context
def cli(ctx: click.Context, config_file: Path | None) -> None:
    """Monitoring-driven auto-rollback for a web application and its PostgreSQL database."""
    ctx.ensure_object(dict)
    ctx.obj["config_file"] = config_file


for command in (run, check, simulate, deploy, backup, drill, pause, resume, status,
                incidents, ack, decide, page, rollback, demo):
    cli.add_command(command)


def main() -> None:
    from daemon.journal import JournalError

    try:
        cli(prog_name="rollbackd")
    except JournalError as exc:  # any command reading the journal: one line, not a traceback
        fail(str(exc), EXIT_FAILED)
