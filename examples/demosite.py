"""What ``rollbackd demo`` sets up on disk: the app's site (releases, ``current``, its config
file), rollbackd's configuration and the demo's policy. Files only: nothing here starts a
process, so all of it can be checked without servers.

The site is the layout ``examples/visionforge/deploy.py`` deploys to (see its docstring): one
directory per release with ``app.py``, ``RELEASE`` and every migration up to it, ``current``
pointing at the running release (rollbackd's ``symlink`` code adapter), and
``shared/visionforge.env``, the app's config file that rollbackd snapshots at each deploy.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP_DIR = ROOT / "examples" / "visionforge"
V1_MIGRATIONS = APP_DIR / "migrations"
RELEASES = APP_DIR / "releases"
DATABASE = "visionforge"
EXPECTED_TABLES = ("users", "images", "audit_log")


@dataclass(frozen=True)
class Site:
    root: Path

    @property
    def releases(self) -> Path:
        return self.root / "releases"

    @property
    def current(self) -> Path:
        return self.root / "current"

    @property
    def env_file(self) -> Path:
        return self.root / "shared" / "visionforge.env"

    @property
    def pidfile(self) -> Path:
        return self.root / "run" / "visionforge.pid"

    @property
    def app_log(self) -> Path:
        return self.root / "shared" / "app.log"

    def current_release(self) -> str | None:
        """The release ``current`` points to, or None."""
        return self.current.resolve().name if self.current.is_symlink() else None

    def app_argv(self) -> list[str]:
        """How the app is started: the code ``current`` points to, with the config file."""
        return [sys.executable, str(self.current / "app.py"), "--env-file", str(self.env_file),
                "--no-access-log"]

    def deploy_argv(self, release: str, settings: Mapping[str, str]) -> list[str]:
        """``deploy.py`` for ``release``: config, code, restart, migrations."""
        argv = [sys.executable, str(APP_DIR / "deploy.py"), "--site", str(self.root),
                "--release", release]
        for key, value in settings.items():
            argv += ["--set", f"{key}={value}"]
        return argv


def build_site(root: Path, *, dsn: str, port: int,
               releases: Mapping[str, Sequence[Path]]) -> Site:
    """A site under ``root`` with ``releases`` (name -> migration directories, in order; the
    first release is the one ``current`` points to) and the app's config file."""
    site = Site(root)
    for directory in (site.releases, site.env_file.parent, site.pidfile.parent):
        directory.mkdir(parents=True, exist_ok=True)
    for name, dirs in releases.items():
        release = site.releases / name
        (release / "migrations").mkdir(parents=True)
        shutil.copy2(APP_DIR / "app.py", release / "app.py")
        (release / "RELEASE").write_text(f"{name}\n")
        for directory in dirs:
            for sql in sorted(directory.glob("*.sql")):
                shutil.copy2(sql, release / "migrations" / sql.name)
    first = next(iter(releases))
    site.current.symlink_to(Path("releases") / first)
    site.env_file.write_text(
        "# VisionForge's config file (read by app.py --env-file; kept by rollbackd at deploys)\n"
        f"VF_DSN={dsn}\nVF_HOST=127.0.0.1\nVF_PORT={port}\nVF_PIDFILE={site.pidfile}\n")
    site.env_file.chmod(0o640)
    return site


# -- rollbackd's configuration -----------------------------------------------------------------

PROBE_TIMEOUT = "700ms"
HTTP_TIMEOUT = "300ms"
"""Every probe must answer within 80 % of the 1 s interval; an HTTP probe's runner allows its
requests half a second more than their own timeout (a slow answer is then a measurement)."""

# The data check of the data-corruption scenario: the audit trail names users that are gone.
ORPHANED_AUDIT = ("SELECT a.id FROM audit_log a WHERE a.action = 'user.create'"
                  " AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = a.entity_id)")


def toml_str(value: str | Path) -> str:
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def toml_list(values: Sequence[str | Path]) -> str:
    return "[" + ", ".join(toml_str(v) for v in values) + "]"


def rollbackd_config(workdir: Path, site: Site, *, dsn: str, app_url: str, listen: str,
                     token_file: Path, policy: Path, mode: str = "auto") -> str:
    """rollbackd.toml for the demo: the app under the process adapter, its code under the
    symlink adapter, its config file kept at deploys, probes every second."""
    state = workdir / "state"
    return f"""\
# Written by `rollbackd demo`: the example app on a throwaway PostgreSQL.
[daemon]
state_dir = {toml_str(state)}
interval = "1s"
listen = {toml_str(listen)}
policy = {toml_str(policy)}
mode = {toml_str(mode)}
log_format = "json"

[app]
name = "visionforge"
control = {{ adapter = "process", pidfile = {toml_str(site.pidfile)}, \
start = {toml_list(site.app_argv())}, stop_timeout = "5s" }}
code = {{ adapter = "symlink", current = {toml_str(site.current)}, \
releases = {toml_str(site.releases)} }}
config_files = [{toml_str(site.env_file)}]

[database]
dsn = {toml_str(dsn)}
migrations = "knex"
expected_tables = {toml_list(EXPECTED_TABLES)}
key_tables = {toml_list(EXPECTED_TABLES)}

[[database.checks]]
name = "audit_names_existing_users"
sql = {toml_str(ORPHANED_AUDIT)}

[backups]
dir = {toml_str(state / "backups")}
min_free = "100MB"

[api]
token_files = [{toml_str(token_file)}]

[probes.postgres]
timeout = "{PROBE_TIMEOUT}"

[probes.migrations]
timeout = "{PROBE_TIMEOUT}"

[[probes.http]]
name = "health"
url = "{app_url}/health"
timeout = "{HTTP_TIMEOUT}"
window = "5s"

[[probes.http]]
name = "users"
url = "{app_url}/api/users?limit=5"
timeout = "{HTTP_TIMEOUT}"
window = "5s"

[probes.process]
name = "app"
pidfile = {toml_str(site.pidfile)}
timeout = "{PROBE_TIMEOUT}"
"""


def demo_policy(*, watch_for: str | None) -> str:
    """The bundled VisionForge matrix with the demo's timings: the rules that wait minutes in
    production wait seconds here, and a rule clears 5 s after its condition does.

    ``watch_for``: the guards' watch period after a rollback, when the installed rollbackd
    knows that key (None leaves it out: an unknown key would be refused)."""
    guards = "[guards]\nblind_after = \"30s\"\n"
    if watch_for is not None:
        guards += f"watch_for = \"{watch_for}\"\n"
    return f"""\
# Written by `rollbackd demo`: policies/visionforge.toml with seconds where it has minutes.
[baseline]
window = "20s"
gap = "2s"
min_points = 5

{guards}
[[rule]]
scenario = "migration_failed"
when = "migration.failed == 1"
for = "0s"
clear_for = "5s"
severity = "critical"
action = "immediate_rollback"
timeline = "15m"

[[rule]]
scenario = "data_validation_failed"
when = "db.validation_failures > 0"
for = "3s"
clear_for = "5s"
severity = "high"
action = "planned_rollback"
timeline = "30m"

[[rule]]
scenario = "app_compromised"
when = "http.up == 0 or http.error_ratio > 0.25"
for = "5s"
clear_for = "5s"
severity = "high"
action = "planned_rollback"
timeline = "30m"

[[rule]]
scenario = "performance_degraded"
when = "http.latency_p95 > 1.5 * baseline(http.latency_p95)"
for = "5s"
clear_for = "5s"
severity = "medium"
action = "evaluate"
timeline = "60m"

[[rule]]
scenario = "minor_issue"
when = "alert.severity_warning > 0"
for = "10m"
severity = "low"
action = "fix_forward"
timeline = "next release"

[[rule]]
scenario = "database_unreachable"
when = "db.up == 0"
for = "1m"
severity = "critical"
action = "page"
timeline = "15m"
"""
