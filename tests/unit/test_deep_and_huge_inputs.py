"""Hostile shapes of input: a TOML file nested 10,000 deep, numbers of thousands of digits.
Each is one line naming the file (and the replay line), exit 2 from the CLI; never a
RecursionError or a traceback thousands of lines long."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.config import ConfigError, parse_config
from policies.policy import PolicyError, parse_policy
from policies.replay import ReplayError, parse_replay, run

ROOT = Path(__file__).resolve().parent.parent.parent
DEPTH = 10_000
RULE = '''[[rule]]
scenario = "errors"
when = "http.error_ratio > 0.25"
severity = "high"
action = "planned_rollback"
timeline = "30m"
'''
NESTINGS = {
    "arrays": "x = " + "[" * DEPTH + "]" * DEPTH + "\n",
    "inline tables": "x = " + "{a = " * DEPTH + "1" + "}" * DEPTH + "\n",
}
HUGE = "9" * 5_000
HEALTHY = json.dumps({"t": 0, "signals": {"http.up": 1, "http.error_ratio": 0.01}})


def rollbackd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon", *args], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ), cwd=ROOT, check=False)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"{len(lines)} lines:\n" + "\n".join(lines[-20:])
    return lines[0]


@pytest.mark.parametrize("nesting", NESTINGS.values(), ids=NESTINGS.keys())
def test_a_policy_nested_10000_deep_is_one_line_naming_the_file(nesting: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(RULE + nesting, "/etc/rollbackd/deep.toml")
    assert str(caught.value) == "/etc/rollbackd/deep.toml: not valid TOML: nested too deeply"


@pytest.mark.parametrize("nesting", NESTINGS.values(), ids=NESTINGS.keys())
def test_a_config_nested_10000_deep_is_one_line_naming_the_file(nesting: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(nesting, Path("/etc/rollbackd/rollbackd.toml"))
    assert str(caught.value) == "/etc/rollbackd/rollbackd.toml: not valid TOML: nested too deeply"


def test_a_toml_integer_of_5000_digits_is_one_line_naming_the_file() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"[backups]\nkeep = {HUGE}\n", Path("/etc/rollbackd/rollbackd.toml"))
    assert str(caught.value).startswith("/etc/rollbackd/rollbackd.toml: not valid TOML: ")
    with pytest.raises(PolicyError) as caught_policy:
        parse_policy(f"[guards]\nmax_auto_rollbacks = {HUGE}\n" + RULE, "/p.toml")
    assert str(caught_policy.value).startswith("/p.toml: not valid TOML: ")


def test_check_on_a_deeply_nested_config_exits_2_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "rollbackd.toml"
    config.write_text(NESTINGS["arrays"], encoding="utf-8")
    assert one_line(rollbackd("check", "-c", str(config))) == (
        f"rollbackd: {config}: not valid TOML: nested too deeply")


def test_check_on_a_deeply_nested_policy_exits_2_with_one_line(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(RULE + NESTINGS["inline tables"], encoding="utf-8")
    config = tmp_path / "rollbackd.toml"
    config.write_text(f'[daemon]\npolicy = "{policy}"\n', encoding="utf-8")
    assert one_line(rollbackd("check", "-c", str(config))) == (
        f"rollbackd: {policy}: not valid TOML: nested too deeply")


def test_simulate_with_a_deeply_nested_policy_exits_2_with_one_line(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(RULE + NESTINGS["arrays"], encoding="utf-8")
    replay = tmp_path / "replay.jsonl"
    replay.write_text(HEALTHY + "\n", encoding="utf-8")
    assert one_line(rollbackd("simulate", "--policy", str(policy), "--replay", str(replay))) == (
        f"rollbackd: {policy}: not valid TOML: nested too deeply")


POLICY = parse_policy(RULE, "policy.toml")


@pytest.mark.parametrize("line", [
    '{"t": ' + HUGE + ', "signals": {"http.up": 1}}',
    '{"t": ' + HUGE[:4_000] + ', "signals": {"http.up": 1}}',
    '{"t": 1' + "0" * 400 + '.0, "signals": {"http.up": 1}}',
    '{"t": 5, "signals": {"http.up": ' + HUGE[:4_000] + '}}',
    '{"t": 5, "event": {"type": "baseline", "values": {"http.latency_p95": ' + HUGE[:4_000]
    + '}}}',
], ids=["t of 5000 digits", "t too large for a float", "t of 1e400", "a signal too large",
        "a baseline too large"])
def test_a_replay_number_out_of_range_is_an_error_naming_the_line(line: str) -> None:
    with pytest.raises(ReplayError) as caught:
        list(run(POLICY, parse_replay([HEALTHY, HEALTHY, line])))
    assert str(caught.value).startswith("line 3: ")
    assert len(str(caught.value)) < 200


def test_simulate_on_a_line_whose_t_has_5000_digits_exits_2_naming_the_line(
        tmp_path: Path) -> None:
    replay = tmp_path / "replay.jsonl"
    replay.write_text(f'{HEALTHY}\n{{"t": {HUGE}, "signals": {{"http.up": 1}}}}\n',
                      encoding="utf-8")
    policy = tmp_path / "policy.toml"
    policy.write_text(RULE, encoding="utf-8")
    line = one_line(rollbackd("simulate", "--policy", str(policy), "--replay", str(replay)))
    assert line.startswith(f"rollbackd: {replay}: line 2: ")
