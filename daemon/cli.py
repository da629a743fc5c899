"""The ``rollbackd`` command line. Exit codes: 0 ok, 1 failed operation, 2 usage or config error."""

from __future__ import annotations

import asyncio
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from daemon import __version__
from daemon.config import Config, ConfigError, load_config, resolve_path
from daemon.logs import configure_logging
from policies.units import format_duration

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


def _load(ctx: click.Context, given: Path | None) -> tuple[Path, Config]:
    path = resolve_path(given or ctx.obj.get("config_file"))
    try:
        return path, load_config(path)
    except ConfigError as exc:
        fail(str(exc))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rollbackd")
@config_option
@click.pass_context
def cli(ctx: click.Context, config_file: Path | None) -> None:
    """Monitoring-driven auto-rollback for a web application and its PostgreSQL database."""
    ctx.ensure_object(dict)
    ctx.obj["config_file"] = config_file


@cli.command()
@config_option
@click.pass_context
def run(ctx: click.Context, config_file: Path | None) -> None:
    """Run the daemon: probe, export metrics, notify systemd (the systemd service's ExecStart)."""
    from daemon.loop import Daemon, ListenError, bind_listener

    path, config = _load(ctx, config_file)
    configure_logging(config.daemon.log_format)
    try:
        listener = bind_listener(config.daemon.listen_host, config.daemon.listen_port)
    except ListenError as exc:
        fail(f"{path}: daemon.listen: {exc}")
    daemon = Daemon(path, config)
    sys.exit(asyncio.run(daemon.run(listener)))


def _redacted_dsn(dsn: str) -> str:
    try:
        params = conninfo_to_dict(dsn)
    except Exception:  # an unparsable DSN is reported by the probe at run time
        return "(unparsable DSN)"
    if "password" in params:
        params["password"] = "***"  # noqa: S105 - a mask, not a secret
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})


def _probe_rows(config: Config) -> list[tuple[str, str]]:
    probes = config.probes
    rows = [(f"http.{p.name}", f"{p.method} {p.url}, timeout {format_duration(p.timeout)}")
            for p in probes.http]
    db = config.database
    if db is not None and probes.postgres.enabled:
        rows.append(("postgres", _redacted_dsn(db.dsn)))
    if db is not None and db.migrations is not None and probes.migrations.enabled:
        tool = db.migrations if isinstance(db.migrations, str) else "custom queries"
        rows.append(("migrations", tool))
    if probes.process is not None:
        proc = probes.process
        how = (f"unit {proc.unit}" if proc.unit else f"pidfile {proc.pidfile}" if proc.pidfile
               else f"command line {' '.join(proc.cmdline or [])}")
        rows.append((f"process.{proc.name}", how))
    if probes.system is not None:
        rows.append(("system", "free space of " + ", ".join(map(str, probes.system.paths))))
    rows += [(f"prometheus.{p.name}", f"{p.signal} = {p.query} at {p.url}")
             for p in probes.prometheus]
    return rows


def _policy_rules(config: Config, path: Path) -> list[dict[str, Any]]:
    policy = config.policy_path()
    try:
        data = tomllib.loads(policy.read_text(encoding="utf-8"))
    except OSError as exc:
        fail(f"{path}: daemon.policy: cannot read {policy}: {exc.strerror or exc}")
    except tomllib.TOMLDecodeError as exc:
        fail(f"{policy}: not valid TOML: {exc}")
    rules = data.get("rule", [])
    if not isinstance(rules, list) or not rules:
        fail(f"{policy}: no [[rule]] tables")
    return rules


@cli.command()
@config_option
@click.pass_context
def check(ctx: click.Context, config_file: Path | None) -> None:
    """Validate the config and the policy, and print what would run."""
    path, config = _load(ctx, config_file)
    rules = _policy_rules(config, path)
    d = config.daemon
    click.echo(f"config    {path}: valid")
    click.echo(f"app       {config.app_name}")
    click.echo(f"daemon    listen {d.listen}, every {format_duration(d.interval)}, mode {d.mode}, "
               f"state in {d.state_dir}")
    click.echo(f"policy    {config.policy_path()} ({d.policy}): {len(rules)} rules")
    rows = _probe_rows(config)
    click.echo(f"probes    {len(rows)}")
    width = max((len(name) for name, _ in rows), default=0)
    for name, target in rows:
        click.echo(f"  {name.ljust(width)}  {target}")
    if not rows:
        click.echo("  (none configured: rollbackd would see nothing)")


def main() -> None:
    cli(prog_name="rollbackd")
