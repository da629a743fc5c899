"""A policy's own runbooks: `rollbackd check` prints every runbook step by step and which
rules run it; a runbook that does not check, or a rule naming one that does not exist, is a
configuration error naming file, runbook or rule, and step."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.cli import rollbackd
from tests.harness.config import MIGRATION_FAILED_RULE, config_file

pytestmark = pytest.mark.e2e

POLICY = """\
[[rule]]
scenario = "orders_corrupted"
when = "db.validation_failures > 0"
severity = "high"
action = "selective_rollback"
timeline = "60m"
runbook = "orders_only"

""" + MIGRATION_FAILED_RULE + """
[[runbook]]
name = "orders_only"
description = "The orders table's rows from the restore point."
steps = [
    { step = "notify", template = "planned" },
    { step = "restore_database", tables = ["orders"], timeout = "10m" },
    { step = "validate", checklist = "data" },
]
"""


def check(tmp_path: Path, policy: str) -> tuple[int, str, str]:
    (tmp_path / "policy.toml").write_text(policy)
    config = config_file(tmp_path, daemon={"policy": tmp_path / "policy.toml"})
    done = rollbackd("check", config=config)
    return done.returncode, done.stdout, done.stderr


def test_check_prints_each_runbook_its_steps_and_the_rules_that_run_it(tmp_path: Path) -> None:
    code, out, err = check(tmp_path, POLICY)
    assert code == 0, err
    assert ("runbook   orders_only (policy; run by orders_corrupted): The orders table's rows "
            "from the restore point.") in out
    assert "   2. restore_database (strategy=auto, tables=[orders], skip_unchanged=true) " \
           "timeout 10m, not idempotent" in out
    assert "runbook   immediate_rollback (bundled; run by migration_failed)" in out
    assert "runbook   code_only (bundled; run by no rule)" in out


@pytest.mark.parametrize(("change", "complaint"), [
    (('runbook = "orders_only"', 'runbook = "orders_onyl"'),
     "policy.toml: rule 'orders_corrupted': runbook: no runbook named 'orders_onyl'"),
    (('{ step = "validate", checklist = "data" }', '{ step = "validate", checklist = "vibes" }'),
     "policy.toml: runbook orders_only: step 3 (validate): checklist:"),
    (('{ step = "notify", template = "planned" }', '{ step = "reboot" }'),
     "policy.toml: runbook orders_only: step 1 (reboot): unknown step 'reboot'"),
])
def test_a_broken_runbook_or_reference_is_a_one_line_config_error(
        tmp_path: Path, change: tuple[str, str], complaint: str) -> None:
    code, out, err = check(tmp_path, POLICY.replace(*change))
    assert code == 2, out
    [line] = err.strip().splitlines()
    assert complaint in line, line
