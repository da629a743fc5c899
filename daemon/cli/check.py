"""``rollbackd check`` (validate the config and the policy, print what would run) and
``rollbackd simulate`` (replay recorded signals through the decision engine)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from daemon.cli.common import config_option, fail, load_with_policy
from daemon.config import Config
from policies.catalogue import is_event_fed
from policies.engine import Decision
from policies.policy import Policy, PolicyError, blind_rule, parse_policy, resolve_ref
from policies.units import format_duration
from probes.base import redact_url


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
    rows = [(f"http.{p.name}",
             f"{p.method} {redact_url(str(p.url))}, timeout {format_duration(p.timeout)}")
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
    rows += [(f"prometheus.{p.name}", f"{p.signal} = {p.query} at {redact_url(str(p.url))}")
             for p in probes.prometheus]
    return rows


@click.command()
@config_option
@click.pass_context
def check(ctx: click.Context, config_file: Path | None) -> None:
    """Validate the config and the policy, and print what would run."""
    path, config, policy = load_with_policy(ctx, config_file)
    d = config.daemon
    click.echo(f"config    {path}: valid")
    click.echo(f"app       {config.app_name}")
    click.echo(f"daemon    listen {d.listen}, every {format_duration(d.interval)}, mode {d.mode}, "
               f"state in {d.state_dir}")
    click.echo(f"policy    {config.policy_path()} ({d.policy}): {len(policy.rules)} rules")
    if config.fleet is not None and config.database is not None:
        f = config.fleet
        click.echo(f"fleet     {f.name} as host {f.id}, a look every "
                   f"{format_duration(f.heartbeat)}, in database "
                   f"{config.database.maintenance_db}: the database part of a rollback runs "
                   "once, from one host; every host rolls back its own code and config")
    rows = _probe_rows(config)
    click.echo(f"probes    {len(rows)}")
    width = max((len(name) for name, _ in rows), default=0)
    for name, target in rows:
        click.echo(f"  {name.ljust(width)}  {target}")
    if not rows:
        click.echo("  (none configured: rollbackd would see nothing)")
    click.echo("")
    print_matrix(policy, d.mode)
    print_runbooks(policy)
    print_paging(config, policy)
    fed = asyncio.run(_fed_signals(config))
    for rule in policy.rules:
        missing = sorted(s for s in rule.signals if s not in fed and not is_event_fed(s))
        if missing:
            click.echo(f"warning   rule {rule.scenario} cannot fire: nothing configured feeds "
                       + ", ".join(missing))
        alerts = sorted(s for s in rule.signals if s.startswith("alert."))
        if alerts and not config.api.tokens:
            click.echo(f"warning   rule {rule.scenario} reads {', '.join(alerts)}, but the API is "
                       "disabled (no api.token_files): Alertmanager cannot deliver alerts")


async def _fed_signals(config: Config) -> set[str]:
    from daemon.service.probeset import build_probes

    probes = build_probes(config)
    try:
        return set(probes.signals())
    finally:
        await probes.aclose()


def print_runbooks(policy: Policy) -> None:
    """Every runbook a rule may run, bundled or the policy's own, step by step."""
    used = {rule.scenario: book.name for rule in policy.rules
            if (book := policy.runbook_for(rule)) is not None}
    for name, book in policy.all_runbooks().items():
        users = sorted(scenario for scenario, chosen in used.items() if chosen == name)
        origin = "policy" if name in policy.runbooks else "bundled"
        click.echo("")
        click.echo(f"runbook   {name} ({origin}; run by "
                   f"{', '.join(users) if users else 'no rule'}): {book.description}".rstrip())
        for line in book.describe():
            click.echo(f"  {line}")


def print_paging(config: Config, policy: Policy) -> None:
    """Who is paged, when, and through what (channel names only: never a URL or a key)."""
    click.echo("")
    order = config.paging.order
    through = " -> ".join(order) if order else "no channel configured: pages are only journaled"
    click.echo(f"paging    {through}")
    for level in policy.escalation:
        through = ", ".join(level.channels) if level.channels else "the order above"
        click.echo(f"  {level.name} {level.who}: after {format_duration(level.after)} "
                   f"unanswered, again every {format_duration(level.repeat)} until "
                   f"acknowledged; through {through}")
    for name, contact in sorted(config.paging.contacts.items()):
        click.echo(f"  contact {name}: {contact.who} ({contact.channel})")
    if config.paging.templates_dir is not None:  # checked by load_with_policy
        click.echo(f"  templates {config.paging.templates_dir} (the bundled ones for the rest)")


def print_matrix(policy: Policy, mode: str) -> None:
    """The effective decision matrix, as the procedures' table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="decision matrix", title_justify="left")
    for column in ("scenario", "condition", "for", "severity", "action", "timeline", "mode"):
        table.add_column(column)
    for rule in policy.rules:
        timeline = "next release" if rule.timeline is None else format_duration(rule.timeline)
        table.add_row(rule.scenario, rule.when, format_duration(rule.for_), rule.severity,
                      rule.action, timeline, policy.mode_for(rule.action, mode))
    blind = blind_rule(policy.guards)
    table.add_row(blind.scenario, blind.when, "0s", blind.severity, blind.action, "-",
                  policy.mode_for(blind.action, mode))
    Console(width=160, highlight=False, soft_wrap=True).print(table)


@click.command()
@click.option("--policy", "policy_ref", required=True,
              help="Policy file, or builtin:NAME for a bundled one.")
@click.option("--replay", "replay_file", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="JSON Lines replay.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "table"]), default="jsonl",
              show_default=True)
@click.option("--mode", type=click.Choice(["auto", "approve", "dry-run"]), default="auto",
              show_default=True, help="The daemon mode to simulate.")
def simulate(policy_ref: str, replay_file: Path, fmt: str, mode: str) -> None:
    """Replay recorded signals and events through the decision engine; print its decisions."""
    from policies.replay import ReplayError, parse_replay, run, to_jsonl

    path = resolve_ref(policy_ref)
    try:
        policy = parse_policy(path.read_text(encoding="utf-8"), str(path))
    except OSError as exc:
        fail(f"{path}: cannot read policy: {exc.strerror or exc}")
    except PolicyError as exc:
        fail(str(exc))
    # The replay streams through the engine (memory bounded by the policy's windows, not the
    # file); its decisions are kept and printed only once every line has checked, so that a
    # bad line late in the file prints no decisions, only its error.
    try:
        with replay_file.open("rb") as handle:
            decisions = list(run(policy, parse_replay(handle), mode))
    except OSError as exc:
        fail(f"{replay_file}: cannot read replay: {exc.strerror or exc}")
    except ReplayError as exc:
        fail(f"{replay_file}: {exc}")
    if fmt == "jsonl":
        out = sys.stdout
        for decision in decisions:
            out.write(to_jsonl(decision) + "\n")
        return
    _print_decisions(decisions)


def _print_decisions(decisions: list[Decision]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for column in ("t", "kind", "incident", "scenario", "severity", "action", "requested",
                   "timeline", "mode", "reason"):
        table.add_column(column)
    for d in decisions:
        timeline = "next release" if d.timeline_s is None else format_duration(d.timeline_s)
        table.add_row(format_duration(d.t) if d.t else "0s", d.kind, str(d.incident), d.scenario,
                      d.severity, d.action, d.requested_action, timeline, d.mode, d.reason)
    Console(width=200, highlight=False, soft_wrap=True).print(table)
    click.echo(f"{len(decisions)} decisions")


