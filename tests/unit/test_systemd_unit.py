"""The shipped systemd files: the unit verifies and is hardened, the user and polkit rule fit it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from daemon.config import DEFAULT_PATH, ENV_VAR, BackupSettings, DaemonSettings
from tests.harness.paths import SYSTEMD_DIR
from tests.harness.servers import require_binary
from tests.harness.systemd import INSTALLED_EXEC, UNIT, assert_rates_ok
from tests.harness.systemd import analyze_security as _security
from tests.harness.systemd import installed_console_script as _installed_console_script
from tests.harness.systemd import verify_unit as _verify

POLKIT_TEMPLATE = SYSTEMD_DIR / "rollbackd.polkit.rules.in"
SYSUSERS = SYSTEMD_DIR / "rollbackd.sysusers.conf"


def _unit_lines() -> list[tuple[str, str]]:
    """(key, value) of every assignment, in order; systemd allows a key more than once."""
    pairs = []
    for line in UNIT.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            pairs.append((key.strip(), value.strip()))
    return pairs


def _values(key: str) -> list[str]:
    return [value for k, value in _unit_lines() if k == key]


def _copy_with_exec(tmp_path: Path, exec_path: str, text: str | None = None) -> Path:
    """A copy of the unit (same file name, so messages name it) whose ExecStart exists here."""
    source = UNIT.read_text() if text is None else text
    assert f"ExecStart={INSTALLED_EXEC} run" in source
    copy = tmp_path / UNIT.name
    copy.write_text(source.replace(f"ExecStart={INSTALLED_EXEC} ", f"ExecStart={exec_path} "))
    return copy


def test_the_unit_verifies_clean_with_execstart_at_the_installed_console_script(
    tmp_path: Path,
) -> None:
    copy = _copy_with_exec(tmp_path, _installed_console_script())
    clean, report = _verify(copy)
    assert clean, report


@pytest.mark.parametrize(
    ("broken", "by"),
    [
        ("RestartSec=5s", "RestrtSec=5s"),
        ("Type=notify", "Type=notifyy"),
        ("SystemCallFilter=@system-service", "SystemCallFilter=@system-servce"),
    ],
    ids=["misspelt-directive", "bad-value", "unknown-syscall-group"],
)
def test_verify_as_the_test_runs_it_rejects_a_broken_unit(
    tmp_path: Path, broken: str, by: str
) -> None:
    text, count = re.subn(rf"^{re.escape(broken)}$", by, UNIT.read_text(), flags=re.MULTILINE)
    assert count == 1, f"no line {broken!r} in the unit"
    copy = _copy_with_exec(tmp_path, _installed_console_script(), text)
    clean, report = _verify(copy)
    assert not clean, f"verify did not notice {by!r}:\n{report}"


def test_verify_rejects_an_execstart_that_does_not_exist(tmp_path: Path) -> None:
    copy = _copy_with_exec(tmp_path, str(tmp_path / "missing" / "rollbackd"))
    clean, report = _verify(copy)
    assert not clean, report
    assert "not executable" in report


def test_the_unit_rates_ok_in_the_offline_security_analysis() -> None:
    assert_rates_ok(UNIT)


def test_the_security_gate_fails_a_unit_without_the_hardening(tmp_path: Path) -> None:
    bare = tmp_path / UNIT.name
    bare.write_text(
        "[Service]\nType=notify\nExecStart=/usr/local/bin/rollbackd run\nUser=rollbackd\n"
    )
    result = _security(bare)
    assert result.returncode != 0, result.stdout + result.stderr


def test_the_unit_speaks_notify_reloads_by_sighup_and_is_watched() -> None:
    assert _values("Type") == ["notify"]
    assert _values("ExecStart") == [f"{INSTALLED_EXEC} run"]
    assert _values("ExecReload") == ["/bin/kill -HUP $MAINPID"]
    # Children (pg_dump, install commands) inherit NOTIFY_SOCKET and must not speak for us.
    assert _values("NotifyAccess") == ["main"]
    assert _values("WatchdogSec") == ["30s"]
    # A watchdog abort is a failure; without this restart it would stay down.
    assert _values("Restart") == ["on-failure"]
    assert _values("TimeoutStopSec") == ["15s"]


def test_the_unit_raises_the_descriptor_limit_above_what_the_http_server_may_take() -> None:
    from daemon.service.http import FD_SHARE, MAX_CONNECTIONS

    [limit] = _values("LimitNOFILE")
    assert int(limit) >= FD_SHARE * MAX_CONNECTIONS


def test_the_unit_paths_match_the_config_defaults() -> None:
    assert _values("Environment") == [f"{ENV_VAR}={DEFAULT_PATH}"]
    assert _values("ConfigurationDirectory") == [DEFAULT_PATH.parent.name]
    state_dir = DaemonSettings().state_dir
    assert state_dir.parent == Path("/var/lib")
    assert _values("StateDirectory") == [state_dir.name]
    assert str(BackupSettings().dir) in " ".join(_values("ReadWritePaths"))
    assert _values("User") == ["rollbackd"]
    assert _values("Group") == ["rollbackd"]


def test_the_unit_keeps_the_socket_families_rollbackd_needs() -> None:
    families = " ".join(_values("RestrictAddressFamilies")).split()
    # Unix: PostgreSQL's socket, D-Bus to systemd (polkit), sd_notify. IP: all the rest.
    assert sorted(families) == ["AF_INET", "AF_INET6", "AF_UNIX"]


def test_the_sysusers_file_creates_the_user_and_group_the_unit_runs_as(tmp_path: Path) -> None:
    sysusers = require_binary("systemd-sysusers", "systemd")
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        [sysusers, f"--root={tmp_path}", str(SYSUSERS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text().splitlines()
    group = (tmp_path / "etc" / "group").read_text().splitlines()
    users = {line.split(":")[0]: line.split(":") for line in passwd}
    assert set(users) == {_values("User")[0]}
    entry = users["rollbackd"]
    assert entry[5] == str(DaemonSettings().state_dir)
    assert entry[6] == "/usr/sbin/nologin"
    assert [line.split(":")[0] for line in group] == [_values("Group")[0]]


# --- polkit rule -------------------------------------------------------------------------


def _render_polkit(unit: str = "visionforge.service", user: str = "rollbackd") -> str:
    return POLKIT_TEMPLATE.read_text().replace("@APP_UNIT@", unit).replace(
        "@ROLLBACKD_USER@", user
    )


def _code(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))


def test_the_rendered_polkit_rule_names_exactly_the_unit_user_and_four_verbs() -> None:
    code = _code(_render_polkit())
    assert "@" not in code, "a placeholder was left unrendered"
    assert re.findall(r'action\.id !== "([^"]+)"', code) == [
        "org.freedesktop.systemd1.manage-units"
    ]
    assert re.findall(r'action\.lookup\("unit"\) !== "([^"]+)"', code) == [
        "visionforge.service"
    ]
    assert re.findall(r'subject\.user !== "([^"]+)"', code) == ["rollbackd"]
    assert sorted(re.findall(r'verb === "([^"]+)"', code)) == ["kill", "restart", "start", "stop"]
    assert code.count("polkit.Result.YES") == 1


def test_the_polkit_template_has_exactly_the_two_placeholders() -> None:
    code = _code(POLKIT_TEMPLATE.read_text())
    assert sorted(set(re.findall(r"@[A-Z_]+@", code))) == ["@APP_UNIT@", "@ROLLBACKD_USER@"]


_POLKIT_HARNESS = """
const fs = require("fs");
const rules = [];
globalThis.polkit = {
  Result: { YES: "yes", NO: "no", NOT_HANDLED: "not_handled" },
  addRule(fn) { rules.push(fn); },
};
eval(fs.readFileSync(process.argv[2], "utf8"));
const cases = JSON.parse(process.argv[3]);
const answers = cases.map(([id, unit, verb, user]) => {
  const action = { id, lookup: (key) => ({ unit, verb })[key] };
  const subject = { user };
  return rules.map((rule) => rule(action, subject))[0];
});
console.log(JSON.stringify(answers));
"""


def test_the_polkit_rule_allows_only_that_user_that_unit_and_those_verbs(
    tmp_path: Path,
) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not found: the rule's logic is only checked textually")
    rule = tmp_path / "50-rollbackd.rules.js"
    rule.write_text(_render_polkit())
    check = subprocess.run(
        [node, "--check", str(rule)], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stderr

    manage = "org.freedesktop.systemd1.manage-units"
    cases = {
        (manage, "visionforge.service", "start", "rollbackd"): "yes",
        (manage, "visionforge.service", "stop", "rollbackd"): "yes",
        (manage, "visionforge.service", "restart", "rollbackd"): "yes",
        (manage, "visionforge.service", "kill", "rollbackd"): "yes",
        (manage, "visionforge.service", "reload", "rollbackd"): "not_handled",
        (manage, "postgresql.service", "stop", "rollbackd"): "not_handled",
        (manage, "visionforge", "stop", "rollbackd"): "not_handled",
        (manage, "visionforge.service", "stop", "www-data"): "not_handled",
        ("org.freedesktop.systemd1.manage-unit-files", "visionforge.service", "start",
         "rollbackd"): "not_handled",
    }
    harness = tmp_path / "harness.js"
    harness.write_text(textwrap.dedent(_POLKIT_HARNESS))
    result = subprocess.run(
        [node, str(harness), str(rule), json.dumps(list(cases))],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    answers = dict(zip(cases, json.loads(result.stdout), strict=True))
    assert answers == cases
