"""What every rollbackd command shares: --config, loading it, one-line failures, and one
renderer for every verb's result (human lines, or JSON with ``--json``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TypeVar

import click

# Only click at the top: the ``rollbackd`` group imports this module before it knows which verb
# runs, and ``rollbackd run`` must choose what the daemon process imports (daemon/cli/__init__).
if TYPE_CHECKING:
    from daemon.config import Config
    from daemon.db.backups import Progress as ProgressCallback
    from daemon.journal import Journal
    from policies.policy import Policy

F = TypeVar("F", bound=Callable[..., Any])

EXIT_FAILED = 1
EXIT_USAGE = 2


class Renderable(Protocol):
    """A verb's result: ``describe()`` for people, ``as_json()`` for scripts. A result whose
    class sets ``json_lines`` prints one JSON document per item."""

    def as_json(self) -> Any: ...

    def describe(self) -> list[str]: ...


def render(result: Renderable, as_json: bool) -> None:
    """Print ``result`` on stdout: its lines, or its JSON (sorted keys, one line)."""
    if not as_json:
        for line in result.describe():
            click.echo(line)
        return
    data = result.as_json()
    if getattr(result, "json_lines", False):
        for item in data:
            click.echo(json.dumps(item, sort_keys=True))
        return
    click.echo(json.dumps(data, sort_keys=True))


def render_outcome(operation: Callable[[], Renderable], as_json: bool) -> None:
    """Run one service operation and render its result; its refusal (``OpsError``) is the
    one line and exit 1 every verb gives."""
    from daemon.ops.common import OpsError

    try:
        result = operation()
    except OpsError as exc:
        fail(str(exc), EXIT_FAILED)
    render(result, as_json)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(f"rollbackd: {message}", err=True)
    sys.exit(code)


def warn(message: str) -> None:
    click.echo(f"rollbackd: warning: {message}", err=True)


def config_option(func: F) -> F:
    """``--config FILE``, accepted before the verb (on the group) and after it (on the command)."""
    return click.option(
        "--config", "-c", "config_file", type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Config file (default: $ROLLBACKD_CONFIG or /etc/rollbackd/rollbackd.toml).",
    )(func)


def json_option(help_text: str = "Print one JSON document.") -> Callable[[F], F]:
    return click.option("--json", "as_json", is_flag=True, help=help_text)


def load_or_fail(ctx: click.Context, given: Path | None) -> tuple[Path, Config]:
    from daemon.config import ConfigError, load_config, resolve_path

    path = resolve_path(given or ctx.obj.get("config_file"))
    try:
        return path, load_config(path)
    except ConfigError as exc:
        fail(str(exc))


def open_journal_or_fail(path: Path, config: Config) -> Journal:
    """The config's journal. A state_dir that cannot be a directory is a config error (exit
    2); a journal that cannot be opened (damaged, replaced, emptied, of a newer rollbackd) is
    a failed operation (exit 1), its path named."""
    from daemon.journal import Journal, JournalError, StateDirError

    try:
        return Journal.in_state_dir(config.daemon.state_dir)
    except StateDirError as exc:
        fail(f"{path}: daemon.state_dir: {exc}")
    except JournalError as exc:
        fail(str(exc), EXIT_FAILED)


def load_with_database(ctx: click.Context, given: Path | None) -> tuple[Path, Config]:
    """The config, which must have a ``[database]`` section (deploys, backups, drills)."""
    path, config = load_or_fail(ctx, given)
    if config.database is None:
        fail(f"{path}: database: required key is missing (deploys, backups and drills need it)")
    return path, config


def load_with_policy(ctx: click.Context, given: Path | None) -> tuple[Path, Config, Policy]:
    from daemon.config import ConfigError, load_policy
    from daemon.paging.templates import require_templates

    path, config = load_or_fail(ctx, given)
    try:
        require_templates(config, path)
        return path, config, load_policy(config, path)
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


@contextmanager
def progress_bars(enabled: bool) -> Iterator[ProgressCallback | None]:
    """A rich progress display on stderr when it is a terminal, else nothing."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield None
        return
    columns = (TextColumn("{task.description:<16}"), BarColumn(),
               TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def report(stage: str, done: float, total: float | None) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield report
