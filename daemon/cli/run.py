"""``rollbackd run``: the daemon (the systemd service's ExecStart)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from daemon.cli.common import (
    config_option,
    fail,
    load_with_policy,
    open_journal_or_fail,
)
from daemon.logs import configure_logging


@click.command()
@config_option
@click.option("--record", "record", type=click.Path(dir_okay=False, path_type=Path),
              help="Append what the decision engine is fed to FILE, as a replay that "
                   "`rollbackd simulate` steps to the daemon's own decisions.")
@click.pass_context
def run(ctx: click.Context, config_file: Path | None, record: Path | None) -> None:
    """Run the daemon: probe, export metrics, notify systemd (the systemd service's ExecStart)."""
    from daemon.service.loop import Daemon, ListenError, bind_listener

    path, config, policy = load_with_policy(ctx, config_file)
    configure_logging(config.daemon.log_format)
    journal = open_journal_or_fail(path, config)
    recorder = None
    if record is not None:
        from daemon.service.recorder import Recorder, RecordError

        try:
            recorder = Recorder.open(record, policy)
        except RecordError as exc:
            fail(f"--record: {exc}")
    try:
        listener = bind_listener(config.daemon.listen_host, config.daemon.listen_port)
    except ListenError as exc:
        fail(f"{path}: daemon.listen: {exc}")
    daemon = Daemon(path, config, policy, journal, recorder=recorder)
    sys.exit(asyncio.run(daemon.run(listener)))


