"""The ``rollbackd`` command line. Exit codes: 0 ok, 1 failed operation, 2 usage or config error.

Each verb's module is imported when that verb runs (or its help is shown), never all of them:
``rollbackd run`` is a long-lived process held to 60 MB of memory (bench/footprint.py), and
the other verbs' modules (backups, restores, deploys, drills, reports, the demo, rich's
tables) would otherwise stay in it for its whole life.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from daemon import __version__
from daemon.cli.common import EXIT_FAILED, config_option, fail

VERBS: Mapping[str, str] = {
    "ack": "page", "backup": "backup", "check": "check", "decide": "operator", "demo": "demo",
    "deploy": "deploy", "drill": "drill", "incidents": "operator", "page": "page",
    "pause": "operator", "resume": "operator", "rollback": "runbook", "run": "run",
    "simulate": "check", "status": "operator",
}
"""Each verb and the module of ``daemon.cli`` that defines it (a click command of its name)."""

DAEMON_DOES_WITHOUT = ("rich", "pygments", "trio")
"""Optional imports the daemon process refuses, about 7 MB of its memory: structlog.dev and
httpx (its command-line client) import rich and pygments whenever they are installed, and
httpcore imports trio (installed here only for the browser tests' selenium) when its first
client is made. The daemon logs JSON or plain console lines, draws no tables and runs on
asyncio, so it needs none of them: in ``sys.modules``, None makes ``import rich`` raise
ImportError, which each of those libraries handles by going without (structlog's console
renderer then prints plain tracebacks)."""


def do_without(modules: tuple[str, ...]) -> None:
    """Make ``import NAME`` fail from now on in this process, unless NAME is imported already."""
    for name in modules:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


class LazyGroup(click.Group):
    """A click group whose verbs (``VERBS``) are imported on demand: ``rollbackd --help`` imports
    them all to list each one's short help; ``rollbackd VERB`` imports only VERB's module."""

    def __init__(self, *args: Any, verbs: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.verbs = verbs

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.verbs})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.verbs:
            module = importlib.import_module(f"{__name__}.{self.verbs[cmd_name]}")
            command = getattr(module, cmd_name)
            if not isinstance(command, click.Command):
                raise TypeError(f"{module.__name__}.{cmd_name} is not a click command")
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def resolve_command(self, ctx: click.Context,
                        args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        # Before the verb's module is imported: what the daemon refuses must not be in yet.
        if args and args[0] == "run":
            do_without(DAEMON_DOES_WITHOUT)
        return super().resolve_command(ctx, args)


@click.group(cls=LazyGroup, verbs=VERBS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rollbackd")
@config_option
@click.pass_context
def cli(ctx: click.Context, config_file: Path | None) -> None:
    """Monitoring-driven auto-rollback for a web application and its PostgreSQL database."""
    ctx.ensure_object(dict)
    ctx.obj["config_file"] = config_file


def main() -> None:
    from daemon.journal import JournalError

    try:
        cli(prog_name="rollbackd")
    except JournalError as exc:  # any command reading the journal: one line, not a traceback
        fail(str(exc), EXIT_FAILED)
