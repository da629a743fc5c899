"""Runbooks as data: the bundled plans follow the rollback procedures, and a policy's own
runbooks are checked step by step when the policy loads."""

from __future__ import annotations

import pytest

from policies.runbooks import (
    BUILTIN,
    CommandArgs,
    RunbookError,
    StopArgs,
    ValidateArgs,
    parse_runbooks,
    resolve,
)


def kinds(name: str) -> list[str]:
    return [s.kind for s in BUILTIN[name].steps]


def test_an_immediate_rollback_pages_stops_restores_rolls_back_restarts_and_validates() -> None:
    assert kinds("immediate_rollback") == [
        "page", "stop_app", "restore_database", "validate", "rollback_code",
        "rollback_config", "start_app", "validate", "notify"]
    stop = BUILTIN["immediate_rollback"].steps[1]
    assert isinstance(stop.args, StopArgs) and stop.args.force is True


def test_a_planned_rollback_assesses_and_keeps_a_safety_copy_before_restoring() -> None:
    steps = kinds("planned_rollback")
    assert steps[:5] == ["assess", "notify", "stop_app", "safety_backup", "restore_database"]
    stop = BUILTIN["planned_rollback"].steps[2].args
    assert isinstance(stop, StopArgs) and stop.force is False
    checklists = [s.args.checklist for s in BUILTIN["planned_rollback"].steps
                  if isinstance(s.args, ValidateArgs)]
    assert checklists == ["database", "application", "data"]


def test_a_restore_is_never_retried_and_never_counted_idempotent() -> None:
    for runbook in BUILTIN.values():
        for step in runbook.steps:
            if step.kind == "restore_database":
                assert not step.idempotent and step.retries == 0


def test_selective_code_and_config_runbooks_leave_the_database_alone() -> None:
    for name in ("selective_rollback", "code_only", "config_only"):
        assert not BUILTIN[name].restores_database


def test_each_rollback_action_has_its_bundled_runbook_and_a_rule_may_name_another() -> None:
    assert resolve("immediate_rollback", None, {}) is BUILTIN["immediate_rollback"]
    assert resolve("evaluate", None, {}) is None
    own = parse_runbooks([{"name": "tables_only", "steps": [
        {"step": "restore_database", "tables": ["users"]}]}], "p.toml")
    assert resolve("selective_rollback", "tables_only", own) is own["tables_only"]
    assert resolve("selective_rollback", "code_only", own) is BUILTIN["code_only"]


def test_a_policy_runbook_keeps_its_steps_arguments_timeouts_and_retries() -> None:
    [book] = parse_runbooks([{"name": "schema_down", "description": "down-migrate", "steps": [
        {"step": "stop_app", "force": True},
        {"step": "safety_backup"},
        {"step": "run_down_migration", "command": ["npm", "run", "migrate:down"],
         "timeout": "10m"},
        {"step": "start_app", "retries": 3},
    ]}], "p.toml").values()
    _, _, down, start = book.steps
    assert isinstance(down.args, CommandArgs)
    assert down.args.command == ("npm", "run", "migrate:down")
    assert down.timeout == 600 and not down.idempotent
    assert start.retries == 3
    assert book.describe()[2].startswith(" 3. run_down_migration (command=[npm run")


@pytest.mark.parametrize(("steps", "message"), [
    ([{"step": "reboot"}], "runbook mine: step 1 (reboot): unknown step 'reboot'"),
    ([{"step": "stop_app", "forse": True}], "runbook mine: step 1 (stop_app): forse: unknown"),
    ([{"step": "validate"}], "step 1 (validate): checklist: required argument is missing"),
    ([{"step": "validate", "checklist": "vibes"}], "step 1 (validate): checklist:"),
    ([{"step": "restore_database", "retries": 2}],
     "step 1 (restore_database): retries: restore_database is not idempotent"),
    ([{"step": "exec", "command": "rm -rf /"}], "step 1 (exec): command:"),
    ([{"step": "notify"}, {"step": "start_app", "timeout": "inf"}],
     "runbook mine: step 2 (start_app): timeout:"),
    ([{"force": True}], "step 1: step: required key is missing"),
    ([{"step": "stop_app", "force": "yes"}],
     "step 1 (stop_app): force: expected true or false, not a string"),
    ([{"step": "stop_app", "grace": "2h"}], "step 1 (stop_app): grace: must be at most 1h"),
    ([{"step": "start_app", "timeout": "25h"}], "step 1 (start_app): timeout: must be at most 1d"),
    # Every destructive database step is preceded by a kept copy: a restore keeps the data it
    # replaces itself, a down-migration (which may drop columns) cannot.
    ([{"step": "stop_app"}, {"step": "run_down_migration", "command": ["migrate", "down"]},
      {"step": "safety_backup"}],
     "step 2 (run_down_migration): a down-migration changes the live database and may drop "
     "data: put a safety_backup step before it"),
])
def test_a_bad_step_is_rejected_naming_file_runbook_and_step(
        steps: list[dict[str, object]], message: str) -> None:
    with pytest.raises(RunbookError) as caught:
        parse_runbooks([{"name": "mine", "steps": steps}], "/etc/rollbackd/policy.toml")
    assert str(caught.value).startswith("/etc/rollbackd/policy.toml: ")
    assert message in str(caught.value)


def test_a_stop_step_has_a_grace_only_when_the_runbook_gives_one() -> None:
    [book] = parse_runbooks([{"name": "stops", "steps": [
        {"step": "stop_app"}, {"step": "stop_app", "grace": "10s"}]}], "p.toml").values()
    default, given = book.steps
    assert isinstance(default.args, StopArgs) and default.args.grace is None
    assert isinstance(given.args, StopArgs) and given.args.grace == 10.0
    assert book.describe() == [" 1. stop_app (force=false) timeout 2m, 1 retries",
                               " 2. stop_app (force=false, grace=10s) timeout 2m, 1 retries"]


def test_a_runbook_may_not_take_a_bundled_name_or_be_defined_twice() -> None:
    with pytest.raises(RunbookError, match=r"already defined \(bundled\)"):
        parse_runbooks([{"name": "code_only", "steps": [{"step": "notify"}]}], "p.toml")
    twice = [{"name": "mine", "steps": [{"step": "notify"}]}] * 2
    with pytest.raises(RunbookError, match="runbook mine: name: a runbook mine is already"):
        parse_runbooks(twice, "p.toml")


def test_a_policys_rule_runs_its_named_runbook_or_its_actions_bundled_one() -> None:
    from policies.policy import parse_policy

    policy = parse_policy("""
[[rule]]
scenario = "a"
when = "http.up == 0"
severity = "high"
action = "planned_rollback"
timeline = "30m"

[[rule]]
scenario = "b"
when = "http.up == 0"
severity = "high"
action = "selective_rollback"
timeline = "30m"
runbook = "mine"

[[rule]]
scenario = "c"
when = "http.up == 0"
severity = "low"
action = "page"
timeline = "30m"

[[runbook]]
name = "mine"
steps = [{ step = "rollback_code" }]
""", "p.toml")
    a, b, c = policy.rules
    assert policy.runbook_for(a) is BUILTIN["planned_rollback"]
    assert policy.runbook_for(b) is policy.runbooks["mine"]
    assert policy.runbook_for(c) is None
    assert set(policy.all_runbooks()) == {*BUILTIN, "mine"}
