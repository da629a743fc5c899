"""The README's first command: `rollbackd demo` ships a bad release of the example app and
rollbackd rolls it back, verified from the outside; everything it started is stopped."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.harness.cli import ROLLBACKD
from tests.harness.paths import ROOT

pytestmark = pytest.mark.e2e

CHECKS = ("rollbackd decided", "v1 serving", "runbook", "database restored", "code rolled back",
          "config rolled back", "incident resolved", "rows written before the deploy",
          "rows written after the deploy", "rows written after the rollback", "incident report")


def started_things(out: str) -> tuple[list[Path], list[str]]:
    """The directories and URLs the demo said it made (to check they are gone)."""
    dirs = [Path(m) for m in re.findall(r"\((/tmp/rollbackd-demo-pg-[^)\s]+)\)", out)]
    dirs += [Path(m).parent for m in re.findall(r"site (/tmp/rollbackd-demo-[^:\s]+/site)", out)]
    urls = re.findall(r"serving at (http://127\.0\.0\.1:\d+)", out)
    urls += re.findall(r"API at (http://127\.0\.0\.1:\d+)", out)
    return dirs, urls


def assert_all_gone(out: str) -> None:
    dirs, urls = started_things(out)
    assert dirs and urls, out
    for directory in dirs:
        assert not directory.exists(), f"{directory} left behind"
    for url in urls:
        with pytest.raises(httpx.ConnectError):
            httpx.get(url, timeout=2)


def test_the_demo_rolls_back_a_bad_migration_and_verifies_every_row() -> None:
    result = subprocess.run([*ROLLBACKD, "demo"], capture_output=True, text=True, timeout=240,
                            cwd=ROOT, check=False)
    out = result.stdout

    assert result.returncode == 0, out + result.stderr
    for check in CHECKS:
        assert f"demo: verified {check}: " in out, f"{check} not verified:\n{out}"
    assert "NOT MET" not in out
    assert "v2's migration failed: rollbackd deploy run exited 1" in out
    assert re.search(r"incident 1 open: migration_failed \(critical\) -> immediate_rollback "
                     r"\[auto\]", out)
    assert "kept as visionforge_rolledback_" in out
    assert re.search(r"demo: verified rows written after the deploy: \d+ acknowledged; the \d+ "
                     r"the restore undid are kept in visionforge_rolledback_", out), out
    assert f"demo: all {len(CHECKS)} checks verified" in out
    assert out.rstrip().endswith("demo: stopped everything it started")
    assert_all_gone(out)


def run_demo(scenario: str) -> str:
    result = subprocess.run([*ROLLBACKD, "demo", "--scenario", scenario], capture_output=True,
                            text=True, timeout=240, cwd=ROOT, check=False)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "NOT MET" not in out
    assert out.rstrip().endswith("demo: stopped everything it started")
    assert_all_gone(out)
    return out


def test_sustained_errors_after_a_release_are_a_planned_rollback_end_to_end() -> None:
    out = run_demo("error-spike")
    assert re.search(r"incident 1: app_compromised -> planned_rollback \[auto\]", out), out
    assert re.search(r"demo: verified runbook: run 1 planned_rollback succeeded", out), out
    for check in ("v1 serving", "database restored", "incident resolved",
                  "rows written before the deploy"):
        assert f"demo: verified {check}: " in out, f"{check} not verified:\n{out}"


def test_a_slower_release_is_evaluated_by_a_person_and_nothing_is_rolled_back() -> None:
    out = run_demo("slow-release")
    assert re.search(r"incident 1: performance_degraded -> evaluate \[auto\]", out), out
    assert "demo: verified a person paged: " in out, out
    assert "decide with: rollbackd decide 1" in out
    assert "demo: verified v2 serving: " in out, out
    assert "nothing was restored" in out
    assert "demo: verified runbook" not in out and "demo: verified database restored" not in out


def test_ctrl_c_stops_everything_the_demo_started() -> None:
    demo = subprocess.Popen([*ROLLBACKD, "demo"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lines: list[str] = []
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            lines.append(line)
            if "live traffic:" in line:
                break
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    out = "".join(lines) + rest

    assert demo.returncode == 130, out
    assert "interrupted: stopping everything the demo started" in out
    assert out.rstrip().endswith("demo: stopped everything it started")
    assert_all_gone(out)
