"""What every rollbackd command shares: --config, loading it, and one-line failures."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from daemon.config import Config, ConfigError, load_config, resolve_path

F = TypeVar("F", bound=Callable[..., Any])

EXIT_FAILED = 1
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(f"rollbackd: {message}", err=True)
    sys.exit(code)


def config_option(func: F) -> F:
    """``--config FILE``, accepted before the verb (on the group) and after it (on the command)."""
    return click.option(
        "--config", "-c", "config_file", type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Config file (default: $ROLLBACKD_CONFIG or /etc/rollbackd/rollbackd.toml).",
    )(func)


def load_or_fail(ctx: click.Context, given: Path | None) -> tuple[Path, Config]:
    path = resolve_path(given or ctx.obj.get("config_file"))
    try:
        return path, load_config(path)
    except ConfigError as exc:
        fail(str(exc))


@contextmanager
def working(message: str, enabled: bool = True) -> Iterator[None]:
    """A spinner with the elapsed time on stderr while a long step without measurable progress
    runs (a restore, a drill); nothing when stderr is not a terminal or for ``--json``."""
    from rich.console import Console

    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield
        return
    with console.status(message):
        yield


class Terminated(BaseException):
    """SIGTERM, raised where it arrives (a BaseException, like KeyboardInterrupt) so that
    cleanup runs: a scratch database dropped, a killed migration journaled."""


@contextmanager
def sigterm_raises() -> Iterator[None]:
    def _raise(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def when(t: float | None, missing: str = "never") -> str:
    """A moment as operators read it everywhere in rollbackd: UTC, to the second."""
    if t is None:
        return missing
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

