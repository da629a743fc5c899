"""``rollbackd drill``: restore a restore point into a scratch database, validate, time, drop.

Exit codes: 0 the drill passed, 1 it failed (the failing checks on stderr) or could not run,
2 a configuration error. ``--json`` prints the report as one JSON object on stdout, failed or
not. Run monthly by ``systemd/rollbackd-drill.timer``.
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
    render,
    working,
)
from daemon.proc import Terminated, sigterm_raises


@click.command()
@config_option
@click.option("--backup", "backup_id", default=None, metavar="ID",
              help="Drill this backup instead of the newest verified restore point.")
@json_option("Print the report as one JSON object.")
@click.pass_context
def drill(ctx: click.Context, config_file: Path | None, backup_id: str | None,
          as_json: bool) -> None:
    """Restore the newest verified restore point into a scratch database, validate it, report
    the recovery time, drop it, and journal the result (for the drill metrics)."""
    # Imported here: the restore machinery is not loaded for every other command.
    from daemon.db.drill import DrillConfigError, DrillError, run_drill

    path, config = load_with_database(ctx, config_file)
    # Without this, SIGTERM would end the process before the scratch database is dropped.
    try:
        with sigterm_raises(), working(
                "drill: restoring into a scratch database and validating it",
                enabled=not as_json):
            report = run_drill(config, backup_id)
    except DrillConfigError as exc:
        fail(f"{path}: {exc}")
    except DrillError as exc:
        fail(f"drill: {exc}", EXIT_FAILED)
    except (Terminated, KeyboardInterrupt):
        fail("drill interrupted: journaled as failed; its scratch database was dropped on the "
             "way out (or, if that was cut short too, is dropped by the next drill)", EXIT_FAILED)
    render(report, as_json)
    if not report.ok:
        fail(f"drill of {report.backup_id} FAILED: {report.reason}", EXIT_FAILED)
