"""Every duration and number in a policy or the config is finite and within its documented
range, refused at load with one line naming the file and the key (exit 2 from the CLI), never
accepted to fail later with a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.config import ConfigError, parse_config
from policies.policy import PolicyError, parse_policy
from policies.units import MAX_DURATION, MAX_SIZE, parse_duration, parse_size

ROOT = Path(__file__).resolve().parent.parent.parent
CONFIG = Path("/etc/rollbackd/rollbackd.toml")
POLICY = Path("/etc/rollbackd/policy.toml")
RULE = '''[[rule]]
scenario = "errors"
when = "http.error_ratio > 0.25"
severity = "high"
action = "planned_rollback"
timeline = "30m"
'''


def rollbackd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon", *args], capture_output=True, text=True,
                          timeout=30, env=dict(os.environ), cwd=ROOT, check=False)


def policy_error(text: str) -> str:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, str(POLICY))
    return str(caught.value)


def config_error(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, CONFIG)
    return str(caught.value)


@pytest.mark.parametrize("text", ["inf", "nan", "1e999", "-1s", "9" * 400 + "s", "-0.5"])
def test_parse_duration_refuses_what_is_not_a_finite_positive_duration(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["9" * 400 + "TB", "-1MB", "1e3"])
def test_parse_size_refuses_what_is_not_a_finite_positive_size(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_the_documented_upper_bounds() -> None:
    assert MAX_DURATION == 30 * 86400
    assert MAX_SIZE == 1024**6


@pytest.mark.parametrize(("line", "key"), [
    ('timeline = "inf"', "timeline"),
    ('timeline = "nan"', "timeline"),
    ('timeline = "1e999"', "timeline"),
    ('timeline = "31d"', "timeline"),
    ('for = "inf"', "for"),
    ("for = inf", "for"),
    ("for = nan", "for"),
    ("for = true", "for"),
    ("clear_for = -1", "clear_for"),
    ('clear_for = "31d"', "clear_for"),
    ("clear_for = 1e300", "clear_for"),
])
def test_a_rule_duration_out_of_range_names_the_file_the_rule_and_the_key(
        line: str, key: str) -> None:
    field = line.split(" = ")[0]
    text = RULE.replace('timeline = "30m"\n', "") if field == "timeline" else RULE
    message = policy_error(text + line + "\n")
    assert message.startswith(f"{POLICY}: rule 'errors': {key}: "), message
    assert "\n" not in message


@pytest.mark.parametrize(("section", "line", "key"), [
    ("baseline", 'window = "inf"', "baseline.window"),
    ("baseline", "gap = nan", "baseline.gap"),
    ("baseline", "min_points = true", "baseline.min_points"),
    ("guards", 'rollback_window = "31d"', "guards.rollback_window"),
    ("guards", "cooldown = true", "guards.cooldown"),
    ("guards", "max_auto_rollbacks = true", "guards.max_auto_rollbacks"),
    ("guards", 'blind_after = "1e999"', "guards.blind_after"),
])
def test_a_policy_setting_out_of_range_names_the_file_and_the_key(
        section: str, line: str, key: str) -> None:
    message = policy_error(f"[{section}]\n{line}\n\n" + RULE)
    assert message.startswith(f"{POLICY}: {key}: "), message


@pytest.mark.parametrize(("when", "column"), [
    ("avg(http.error_ratio, 366d) > 0.25", 23),
    ("age(http.up) > " + "9" * 400 + "s", 16),
])
def test_a_window_or_duration_in_a_condition_out_of_range_names_the_column(
        when: str, column: int) -> None:
    message = policy_error(RULE.replace('"http.error_ratio > 0.25"', f'"{when}"'))
    assert message.startswith(f"{POLICY}: rule 'errors' (when, column {column}): "), message


DSN = '[database]\ndsn = "dbname=app"\n'
HTTP = '[[probes.http]]\nname = "api"\nurl = "http://127.0.0.1:3000/"\n'


@pytest.mark.parametrize(("text", "key"), [
    ('[backups]\ntimeout = "inf"\n', "backups.timeout"),
    ('[backups]\nrestore_timeout = "nan"\n', "backups.restore_timeout"),
    (DSN + 'connect_timeout = "inf"\n', "database.connect_timeout"),
    ('[probes.postgres]\nstatement_timeout = "inf"\n', "probes.postgres.statement_timeout"),
    (HTTP + 'timeout = "inf"\n', "probes.http[0].timeout"),
    (HTTP + "window = inf\n", "probes.http[0].window"),
    ("[daemon]\ninterval = true\n", "daemon.interval"),
    ("[daemon]\ninterval = nan\n", "daemon.interval"),
    ('[app]\nname = "vf"\ncontrol = { adapter = "process", pidfile = "/run/vf.pid", '
     'start = ["vf"], stop_timeout = "1e999" }\n', "app.control.stop_timeout"),
    ("[backups]\nmin_free = true\n", "backups.min_free"),
    ("[backups]\nmin_free = -1\n", "backups.min_free"),
    ("[backups]\nmin_free = inf\n", "backups.min_free"),
    ('[backups]\nmin_free = "1048577TiB"\n', "backups.min_free"),
    ("[backups]\nmin_free = 1e300\n", "backups.min_free"),
    ("[backups]\njobs = true\n", "backups.jobs"),
    ("[backups]\nkeep = true\n", "backups.keep"),
    ("[api]\nmax_body = true\n", "api.max_body"),
])
def test_a_config_value_out_of_range_names_the_file_and_the_key(text: str, key: str) -> None:
    message = config_error(text)
    assert message.startswith(f"{CONFIG}: {key}: "), message
    assert "\n" not in message


@pytest.mark.parametrize("text", [
    '[backups]\ntimeout = "inf"\n',
    "[daemon]\ninterval = true\n",
    '[[probes.http]]\nname = "api"\nurl = "http://127.0.0.1:3000/"\ntimeout = "inf"\n',
])
def test_check_refuses_an_out_of_range_config_value_with_one_line_and_exit_2(
        tmp_path: Path, text: str) -> None:
    path = tmp_path / "rollbackd.toml"
    path.write_text(text, encoding="utf-8")
    result = rollbackd("check", "-c", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0]


@pytest.mark.parametrize(("line", "key"), [('timeline = "inf"', "timeline"),
                                           ('for = "nan"', "for")])
def test_check_refuses_an_out_of_range_policy_duration_with_one_line_and_exit_2(
        tmp_path: Path, line: str, key: str) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(RULE.replace('timeline = "30m"\n', "") + line + "\n", encoding="utf-8")
    config = tmp_path / "rollbackd.toml"
    config.write_text(f'[daemon]\npolicy = "{policy}"\n', encoding="utf-8")
    result = rollbackd("check", "-c", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{policy}: rule 'errors': {key}: " in lines[0]
