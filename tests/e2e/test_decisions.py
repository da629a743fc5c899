"""The decision matrix end to end: every replay under tests/replays through `rollbackd simulate`.

Each fixture NAME.jsonl is a short scenario; NAME.expected.jsonl holds the decisions DESIGN.md
section 3 requires, one object per line. Every field must match exactly except ``reason``,
where the expected text must appear in the actual one. A NAME.policy.toml beside a replay
replaces the bundled policy for it.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from policies.units import format_duration
from tests.harness.cli import rollbackd
from tests.harness.paths import REPLAYS, ROOT
from tests.harness.replays import (
    BUNDLED,
    MODES,
    decisions,
    fixture_names,
    mismatches,
    policy_for,
    rollbackd_many,
)

pytestmark = pytest.mark.e2e


# What each replay shows, read as the procedure it checks; every fixture must have one.
SCENARIOS: dict[str, str] = {
    "short_error_burst": "a one-minute error burst after a deploy does not trigger a rollback",
    "sustained_errors_after_deploy":
        "errors above 25 % for 2 minutes after a deploy open a planned rollback",
    "flapping_errors": "an error ratio flapping across 25 % every 30 s never fires",
    "latency_rise_70_percent":
        "latency 70 % over the pre-deploy baseline for 5 minutes opens evaluate",
    "latency_rise_30_percent": "latency 30 % over the pre-deploy baseline decides nothing",
    "latency_rise_without_baseline":
        "a latency rise with fewer than 10 points before the deploy decides nothing",
    "unknown_holds_timer":
        "unknown values hold the for timer, which fires at exactly 2 minutes of true time",
    "blind_http_probe": "a blind HTTP probe pages monitoring_blind and never rolls back",
    "rollback_without_deploy": "a rollback with no deploy recorded becomes a page",
    "rollback_deploy_7h_ago": "a rollback 7 hours after the last deploy becomes a page",
    "rate_limit":
        "a second automatic rollback within the hour becomes a page, after the cooldown one runs",
    "escalation_evaluate_to_migration_failed":
        "a failed migration escalates an evaluate incident to an immediate rollback",
    "database_outage_outranks_errors":
        "a database outage opens a page and the errors it causes only attach to it",
    "same_step_precedence": "rules that fire in the same step open by rank, not by file order",
    "resolve_after_clear_for":
        "an incident resolves once its rule is clear for clear_for, a relapse restarts the wait",
    "migration_failed_after_deploy":
        "a failed migration after a deploy opens an immediate rollback at once",
    "unverified_restore_point":
        "a deploy without a verified restore point turns the rollback into a page",
    "paused": "a paused daemon pages in dry-run instead of rolling back, and acts after resume",
    "warning_alert_fix_forward":
        "a warning alert firing for 10 minutes opens fix_forward, resolved it clears",
    "dry_run_mode": "in dry-run mode rollbacks are journaled only and use up no rate limit",
    "approve_mode_from_policy":
        "a policy's approve mode for planned rollbacks is stricter than the daemon's auto",
    "data_validation_failed_after_deploy":
        "data validation failures for a minute after a deploy open a planned rollback",
    "rollback_refused_while_database_down":
        "a rollback that restores the database is never started while it is down: it pages",
    "code_only_rollback_goes_ahead_while_database_down":
        "a rollback of code alone needs no database: it goes ahead while the database is down",
    "closed_by_a_person":
        "a person closes an incident while its rule still fires; nothing reopens it",
    "dismissed_then_a_failed_migration_same_step":
        "a migration failing in the step a person dismisses an incident opens a new one",
    "age_is_unknown_while_blind":
        "age() of a signal that cannot be measured is unknown, so blindness never rolls back",
    "dismissed_then_the_next_release_fails_its_migration":
        "a person dismisses a failed migration; the next release's failed migration opens anew",
    "migration_event_supersedes_a_signals_line":
        "a migration event after a signals line setting migration.failed wins, and vice versa",
    "signals_line_supersedes_a_failed_migration_event":
        "a signals line of 0 after a failed migration event wins: the incident resolves",
    "watch_period_clean_resolves":
        "a clean watch period after the rollback resolves the incident, clear_for alone does not",
    "watch_period_rule_fires_again_pages":
        "a rule firing again inside the watch period pages and never rolls back twice",
    "runbook_failed_leaves_the_incident_open":
        "a failed runbook leaves the incident open, a later failure pages, a person closes it",
    "restored_database_clears_the_migration_failure":
        "a restored database clears the failed migration; its deploy is not rolled back again",
    "second_automatic_rollback_in_one_incident_pages":
        "an incident outlasting the cooldown never has a second automatic rollback, it pages",
}


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str


def simulate(policy: str, replay: Path, fmt: str = "jsonl", mode: str = "auto") -> Run:
    """The real CLI in a child process, as a user runs it."""
    done = rollbackd("simulate", "--policy", policy, "--replay", str(replay), "--format", fmt,
                     "--mode", mode, timeout=60)
    return Run(done.returncode, done.stdout, done.stderr)


def simulate_args(name: str, fmt: str) -> list[str]:
    return ["simulate", "--policy", policy_for(name), "--replay", str(REPLAYS / f"{name}.jsonl"),
            "--format", fmt, "--mode", MODES.get(name, "auto")]


def simulate_alone(name: str) -> Run:
    """A fixture's jsonl run in a child process of its own."""
    return simulate(policy_for(name), REPLAYS / f"{name}.jsonl", "jsonl", MODES.get(name, "auto"))


DETERMINISM = ["rate_limit", "database_outage_outranks_errors", "unknown_holds_timer", "paused"]


@pytest.fixture(scope="module")
def runs() -> dict[tuple[str, str], Run]:
    """Every fixture through the CLI once per format, and a few a second time ("again").

    The jsonl and table runs go through the console script's entry point one after another
    in one child process (the interpreter's start-up is most of a short simulate's time);
    each "again" run is a process of its own, so that the determinism check compares two
    processes (two hash seeds) and would also see one run leaking state into the next."""
    jobs = [(name, fmt) for name in fixture_names() for fmt in ("jsonl", "table")]
    batch = rollbackd_many([simulate_args(name, fmt) for name, fmt in jobs])
    found = {job: Run(*result) for job, result in zip(jobs, batch, strict=True)}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        again = list(pool.map(simulate_alone, DETERMINISM))
    found.update({(name, "again"): run for name, run in zip(DETERMINISM, again, strict=True)})
    return found


def procedures() -> list[Any]:
    return [pytest.param(name, id=SCENARIOS.get(name, name)) for name in fixture_names()]


def test_every_replay_fixture_has_expected_decisions_and_a_description() -> None:
    replays = {p.name.removesuffix(".jsonl") for p in REPLAYS.glob("*.jsonl")
               if not p.name.endswith(".expected.jsonl")}
    assert replays == set(fixture_names())
    assert set(SCENARIOS) == replays
    assert set(MODES) <= replays
    for policy in REPLAYS.glob("*.policy.toml"):
        assert policy.name.removesuffix(".policy.toml") in replays


@pytest.mark.parametrize("name", procedures())
def test_the_replay_gives_exactly_the_expected_decisions(
        name: str, runs: dict[tuple[str, str], Run]) -> None:
    run = runs[(name, "jsonl")]
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    actual = decisions(run.stdout)
    expected = decisions((REPLAYS / f"{name}.expected.jsonl").read_text(encoding="utf-8"))
    summary = "\n".join(json.dumps(d) for d in actual)
    assert len(actual) == len(expected), f"{len(actual)} decisions:\n{summary}"
    for number, (want, got) in enumerate(zip(expected, actual, strict=True), start=1):
        assert not mismatches(want, got), f"decision {number}: {mismatches(want, got)}\n{summary}"


def table_rows(text: str) -> list[list[str]]:
    """The decisions of a table: one list of cells per row whose ``t`` cell is filled in (a
    long reason wraps onto continuation rows with empty cells)."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("│"):
            continue
        cells = [cell.strip() for cell in line.strip("│").split("│")]
        if cells[0]:
            rows.append(cells)
    return rows


@pytest.mark.parametrize("name", procedures())
def test_the_table_format_prints_the_same_decisions_as_jsonl(
        name: str, runs: dict[tuple[str, str], Run]) -> None:
    table, jsonl = runs[(name, "table")], runs[(name, "jsonl")]
    assert table.returncode == 0, table.stderr
    wanted = decisions(jsonl.stdout)
    assert re.search(rf"^{len(wanted)} decisions$", table.stdout, re.MULTILINE), table.stdout
    shown = [(row[0], row[1], row[2], row[3], row[5], row[6], row[8])
             for row in table_rows(table.stdout)]
    assert shown == [
        (format_duration(d["t"]) if d["t"] else "0s", d["kind"], str(d["incident"]),
         d["scenario"], d["action"], d["requested_action"], d["mode"])
        for d in wanted
    ]


@pytest.mark.parametrize("name", DETERMINISM)
def test_two_runs_on_the_same_replay_give_byte_identical_output(
        name: str, runs: dict[tuple[str, str], Run]) -> None:
    again = runs[(name, "again")]
    assert again.returncode == 0
    assert again.stdout == runs[(name, "jsonl")].stdout
    assert again.stdout  # a run that decides nothing would prove nothing


# -- what simulate refuses -----------------------------------------------------------------------

GOOD_REPLAY = REPLAYS / "sustained_errors_after_deploy.jsonl"


@pytest.mark.parametrize(("bad_line", "complaint"), [
    pytest.param('{"t": 700, "signals": {"http.up": 1}', "not JSON",
                 id="a line that is not JSON"),
    pytest.param('{"t": 10, "signals": {"http.up": 1}}', "earlier",
                 id="a t going backwards"),
    pytest.param('{"t": 700, "event": {"type": "reboot"}}', "reboot",
                 id="an unknown event type"),
    pytest.param('{"t": 700, "signals": {"http.error_ratio": "0.5"}}', "expected a number",
                 id="a signal value that is a string"),
])
def test_a_malformed_replay_line_exits_2_naming_the_line_and_prints_no_decisions(
        tmp_path: Path, bad_line: str, complaint: str) -> None:
    # The good lines before it would decide a rollback: nothing of that may come out.
    good = GOOD_REPLAY.read_text(encoding="utf-8")
    replay = tmp_path / "broken.jsonl"
    replay.write_text(good + bad_line + "\n", encoding="utf-8")
    number = len(good.splitlines()) + 1
    run = simulate(BUNDLED, replay)
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stdout == ""
    assert f"line {number}:" in run.stderr
    assert "broken.jsonl" in run.stderr
    assert complaint in run.stderr


BUNDLED_TEXT = (ROOT / "policies" / "visionforge.toml").read_text(encoding="utf-8")


@pytest.mark.parametrize(("rule", "condition", "broken", "fault", "complaint"), [
    pytest.param("app_compromised", "http.up == 0 or http.error_ratio > 0.25",
                 "http.up == 0 or http.eror_ratio > 0.25", "http.eror_ratio",
                 "unknown signal", id="a misspelt signal"),
    pytest.param("performance_degraded", "http.latency_p95 > 1.5 * baseline(http.latency_p95)",
                 "http.latency_p95 > 1.5 * median(http.latency_p95)", "median",
                 "unknown function", id="an unknown function"),
    pytest.param("migration_failed", "migration.failed == 1", "migration.failed = 1", "=",
                 "not an operator", id="a syntax error"),
])
def test_a_broken_policy_is_rejected_with_exit_2_naming_file_rule_and_column(
        tmp_path: Path, rule: str, condition: str, broken: str, fault: str,
        complaint: str) -> None:
    assert f'when = "{condition}"' in BUNDLED_TEXT
    policy = tmp_path / "broken.toml"
    policy.write_text(BUNDLED_TEXT.replace(f'when = "{condition}"', f'when = "{broken}"'),
                      encoding="utf-8")
    run = simulate(str(policy), GOOD_REPLAY)
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stdout == ""
    column = broken.index(fault) + 1
    assert str(policy) in run.stderr
    assert f"'{rule}'" in run.stderr
    assert f"column {column}" in run.stderr
    assert complaint in run.stderr
