"""The shipped systemd units as `systemd-analyze` sees them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.paths import SYSTEMD_DIR
from tests.harness.servers import IN_CI, require_binary

UNIT = SYSTEMD_DIR / "rollbackd.service"
INSTALLED_EXEC = "/usr/local/bin/rollbackd"


def installed_console_script() -> str:
    """The `rollbackd` script pip installed: the venv running the tests first, then PATH."""
    beside_python = Path(sys.executable).parent / "rollbackd"
    found = str(beside_python) if beside_python.is_file() else shutil.which("rollbackd")
    if found is None:
        message = "the rollbackd console script is not installed (pip install -e .)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


def verify_unit(unit: Path) -> tuple[bool, str]:
    """Run `systemd-analyze verify`; clean means exit 0 and no complaint about this unit.

    verify exits 0 on an unknown directive or an unparsable value (it only warns and ignores
    the line), so its messages about the unit count as failures too.
    """
    analyze = require_binary("systemd-analyze", "systemd")
    result = subprocess.run(
        [analyze, "verify", "--recursive-errors=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=unit.parent,
    )
    output = (result.stdout + result.stderr).strip()
    complaints = [line for line in output.splitlines() if unit.name in line]
    clean = result.returncode == 0 and not complaints
    return clean, f"exit {result.returncode}\n{output}"


def analyze_security(unit: Path) -> subprocess.CompletedProcess[str]:
    analyze = require_binary("systemd-analyze", "systemd")
    return subprocess.run(
        [analyze, "security", "--offline=yes", "--threshold=20", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_rates_ok(unit: Path) -> None:
    """``systemd-analyze security --offline`` passes its threshold and rates ``unit`` <= 2.0."""
    result = analyze_security(unit)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    match = re.search(rf"Overall exposure level for {re.escape(unit.name)}: (\d+\.\d+)", output)
    assert match, output
    assert float(match.group(1)) <= 2.0, output
