"""The README's first command: the demo runs the example app on a throwaway PostgreSQL, watched."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.harness.paths import ROOT
from tests.harness.servers import free_port

pytestmark = pytest.mark.e2e


def test_the_demo_watches_the_example_app_in_dry_run_and_cleans_up() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "examples.demo", "--duration", "5", "--port", str(free_port())],
        capture_output=True, text=True, timeout=90, cwd=ROOT, check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert '"mode": "dry-run"' in out
    assert "app up" in out and "database up" in out and "migrations clean at version 3" in out
    assert "6/6 probes ok" in out
    assert "probe timeout exceeds" not in out  # the demo's timeouts fit its interval
    assert out.rstrip().endswith("demo: stopped everything it started")
