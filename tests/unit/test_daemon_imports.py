"""What `rollbackd run` imports: only what the daemon needs (bench/footprint.py holds it to
60 MB of memory), while `rollbackd --help` still lists every verb and each verb's help works.

Each check runs in a fresh interpreter: what this test process has imported says nothing
about the daemon's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.harness.cli import rollbackd
from tests.harness.config import config_file
from tests.harness.paths import ROOT

# What `rollbackd run` does before its loop starts: the group resolves the verb (which is when
# the daemon gives up rich, pygments and trio), run's module and the modules its callback
# imports, and one HTTP client made (httpcore imports its async backend then).
RUN_PATH = """
import json, sys
import click
import daemon.cli
ctx = click.Context(daemon.cli.cli, info_name="rollbackd")
daemon.cli.cli.resolve_command(ctx, ["run"])
import daemon.journal, daemon.service.loop
import httpx
httpx.AsyncClient()
print(json.dumps(sorted(name for name, module in sys.modules.items() if module is not None)))
"""

NOT_IN_THE_DAEMON = (
    # the other verbs' modules, and the demo's machinery
    "daemon.cli.backup", "daemon.cli.check", "daemon.cli.demo", "daemon.cli.deploy",
    "daemon.cli.drill", "daemon.cli.operator", "daemon.cli.page", "daemon.cli.runbook",
    "examples",
    # incident reports: imported on the first report request
    "daemon.ops.reports", "daemon.runbooks.reports",
    # psutil: at the first process probe or restart; smtplib: at the first e-mail page
    "psutil", "smtplib",
    # optional imports of structlog, httpx (its command line) and httpcore
    "rich", "pygments", "trio",
)

# The daemon `rollbackd run` builds (config, policy, journal, Daemon, its HTTP app) for a host
# with a database and no [fleet], [paging] channels or --record, then one cycle of the steady
# state: probing, deciding, the pager's tick, the outbox, the backups read for the metrics.
# Not the servers, nor the start-up recovery (its modules come with daemon.service.loop).
BUILT_AND_ONE_CYCLE = """
import asyncio, json, sys
from pathlib import Path
import click
import daemon.cli
ctx = click.Context(daemon.cli.cli, info_name="rollbackd")
daemon.cli.cli.resolve_command(ctx, ["run"])
from daemon.config import load_config, load_policy
from daemon.journal import Journal
from daemon.logs import configure_logging
from daemon.paging.templates import require_templates
from daemon.service.api import api_routes
from daemon.service.http import build_app
from daemon.service.live import live_routes
from daemon.service.loop import Daemon
from daemon.service.sd_notify import Notifier
path = Path(sys.argv[1])
config = load_config(path)
require_templates(config, path)
configure_logging(config.daemon.log_format, stream=sys.stderr)
host = Daemon(path, config, load_policy(config, path),
              Journal.in_state_dir(config.daemon.state_dir), notifier=Notifier(None))
build_app(host, host.metrics.registry, api_routes(host), live_routes(host))

async def one_cycle():
    await host.cycle()
    await asyncio.gather(*(asyncio.all_tasks() - {asyncio.current_task()}))
    await host.probes.aclose()

asyncio.run(one_cycle())
print(json.dumps(sorted(name for name, module in sys.modules.items() if module is not None)))
"""

UNTIL_NEEDED = (
    # a run: the step adapters, and through them the app's control and the journaled restore
    "daemon.runbooks.steps", "daemon.app", "daemon.db.restore.journaled",
    # the retries of a run's steps and of a page's delivery
    "tenacity",
    # the operator's verbs: a person's approval, the API's
    "daemon.ops.operator", "daemon.ops.paging",
    # fleet mode ([fleet]) and the recording (--record)
    "daemon.service.fleet", "daemon.db.fleet", "daemon.service.recorder",
)

VERBS = ("ack", "backup", "check", "decide", "demo", "deploy", "drill", "incidents", "page",
         "pause", "resume", "rollback", "run", "simulate", "status")
"""The verbs of DESIGN.md and the README: each is listed by ``rollbackd --help``."""

# Every listed verb's --help through click's runner, in one interpreter (fast, and apart from
# this test process: ``run`` makes its process give up rich).
EVERY_HELP = """
import json, sys
from click.testing import CliRunner
from daemon.cli import cli
runner = CliRunner()
results = {}
for verb in sys.argv[1:]:
    result = runner.invoke(cli, [verb, "--help"], prog_name="rollbackd")
    results[verb] = [result.exit_code, result.output]
print(json.dumps(results))
"""


def python(program: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", program, *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=dict(os.environ), check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def listed_verbs(help_text: str) -> list[str]:
    commands = help_text.split("Commands:", 1)[1]
    return [line.split()[0] for line in commands.splitlines() if line.startswith("  ")]


def test_rollbackd_run_imports_neither_the_other_verbs_nor_reports_nor_rich() -> None:
    modules = set(json.loads(python(RUN_PATH)))
    assert {"daemon.cli.run", "daemon.service.loop", "structlog", "httpcore"} <= modules
    heavy = sorted(name for name in modules
                   if any(name == gone or name.startswith(gone + ".")
                          for gone in NOT_IN_THE_DAEMON))
    assert heavy == [], f"rollbackd run imports {heavy}: import them where they are used"


def test_the_daemon_does_not_load_the_rollback_paging_fleet_and_recording_machinery_until_needed(
        tmp_path: Path) -> None:
    config = config_file(
        tmp_path, daemon={"interval": "1s", "listen": "127.0.0.1:9"},
        database={"dsn": "postgresql://rollbackd@127.0.0.1:9/app", "expected_tables": ["users"]},
        extra='[probes.postgres]\ntimeout = "200ms"\n\n[[probes.http]]\nname = "health"\n'
              'url = "http://127.0.0.1:9/health"\ntimeout = "200ms"\n')
    modules = set(json.loads(python(BUILT_AND_ONE_CYCLE, str(config))))
    assert {"daemon.service.loop", "daemon.runbooks.executor", "daemon.paging.outbox",
            "daemon.db.backups"} <= modules
    loaded = sorted(name for name in modules
                    if any(name == lazy or name.startswith(lazy + ".") for lazy in UNTIL_NEEDED))
    assert loaded == [], f"the daemon imports {loaded} before it needs them"


def test_rollbackd_help_lists_every_verb_with_its_short_help() -> None:
    result = rollbackd("--help")
    assert result.returncode == 0, result.stderr
    listed = listed_verbs(result.stdout)
    assert set(VERBS) <= set(listed), f"missing from rollbackd --help: {set(VERBS) - set(listed)}"
    commands = result.stdout.split("Commands:", 1)[1]
    assert "Run the daemon: probe, export metrics" in commands
    assert "Create, list, verify, prune and restore PostgreSQL backups." in commands


def test_each_verbs_help_works_and_shows_its_usage() -> None:
    listed = listed_verbs(rollbackd("--help").stdout)
    results = json.loads(python(EVERY_HELP, *listed))
    for verb in listed:
        code, output = results[verb]
        assert code == 0, f"rollbackd {verb} --help: exit {code}\n{output}"
        assert output.startswith(f"Usage: rollbackd {verb} "), output


def test_an_unknown_verb_is_a_usage_error_naming_it() -> None:
    result = rollbackd("frobnicate")
    assert result.returncode == 2
    assert "No such command 'frobnicate'" in result.stderr
