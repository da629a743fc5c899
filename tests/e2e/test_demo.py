"""The README's first command: `rollbackd demo` ships a bad release of the example app and
rollbackd rolls it back, verified from the outside; everything it started is stopped."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

from tests.harness.cli import ROLLBACKD, rollbackd
from tests.harness.paths import ROOT
from tests.harness.recordings import decision_lines, differences

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


DEFAULT_SCENARIO = "bad-migration"
CTRL_C = "ctrl-c"
"""The default demo, interrupted with SIGINT once it prints that live traffic runs."""
FLEET = "fleet"
FLEET_CTRL_C = "fleet-ctrl-c"
"""The fleet demo, interrupted with SIGINT once its three hosts run."""
INTERRUPTED = {CTRL_C: (DEFAULT_SCENARIO, "live traffic:"),
               FLEET_CTRL_C: (FLEET, "each look at the fleet every")}
"""Each interrupted run: its scenario and the line of output it is interrupted at."""


class DemoRun:
    """``rollbackd demo`` started in the background; its stdout read as it comes. The default
    scenario is run as the README runs it, without ``--scenario``. ``interrupt_at``: send
    SIGINT (Ctrl-C) as soon as a line of stdout contains it (stderr then goes to stdout too,
    as on a terminal)."""

    def __init__(self, scenario: str, interrupt_at: str | None = None,
                 record: Path | None = None) -> None:
        args = [] if scenario == DEFAULT_SCENARIO else ["--scenario", scenario]
        if record is not None:
            args += ["--record", str(record)]
        self.record = record
        self.interrupt_at = interrupt_at
        self.err: IO[str] = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed by finish)
        self.process = subprocess.Popen(
            [*ROLLBACKD, "demo", *args], stdout=subprocess.PIPE, text=True, cwd=ROOT,
            stderr=subprocess.STDOUT if interrupt_at else self.err)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        interrupted = False
        for line in self.process.stdout:
            self.lines.append(line)
            if self.interrupt_at and not interrupted and self.interrupt_at in line:
                self.process.send_signal(signal.SIGINT)
                interrupted = True

    def result(self) -> tuple[int, str, str]:
        """Its exit status, stdout and stderr once it ends (240 s at most)."""
        returncode = self.process.wait(timeout=240)
        self.reader.join(timeout=10)
        self.err.seek(0)
        return returncode, "".join(self.lines), self.err.read()

    def finish(self) -> None:
        """Ctrl-C it (the demo then stops what it started) if it still runs; close its files."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.reader.join(timeout=10)
        self.err.close()


SCENARIO_OF = {
    "test_the_demo_rolls_back_a_bad_migration_and_verifies_every_row": "bad-migration",
    "test_sustained_errors_after_a_release_are_a_planned_rollback_end_to_end": "error-spike",
    "test_a_slower_release_is_evaluated_by_a_person_and_nothing_is_rolled_back": "slow-release",
    "test_ctrl_c_stops_everything_the_demo_started": CTRL_C,
    "test_simulate_on_a_live_demo_recording_takes_the_daemons_decisions": "error-spike",
    "test_the_fleet_demo_restores_the_database_once_and_rolls_back_every_host": FLEET,
    "test_ctrl_c_stops_everything_the_fleet_demo_started": FLEET_CTRL_C,
}
RECORDED = "error-spike"
"""The run made with ``--record`` (its checks are the same with it)."""
"""The demo run each test below checks."""


@pytest.fixture(scope="module")
def demos(request: pytest.FixtureRequest) -> Iterator[dict[str, DemoRun]]:
    """The demo runs of the tests selected in this module, all started at once at first use:
    each demo has its own PostgreSQL, app and rollbackd on ports of their own and spends most
    of its half-minute waiting on its timeline, so side by side they take about as long as
    the longest one alone."""
    wanted = sorted({SCENARIO_OF[item.originalname] for item in request.session.items
                     if isinstance(item, pytest.Function) and item.module is request.module
                     and item.originalname in SCENARIO_OF})
    started: dict[str, DemoRun] = {}
    recordings = tempfile.TemporaryDirectory(prefix="rollbackd-test-recording-")
    try:
        for scenario in wanted:
            if scenario in ALONE:
                continue
            record = Path(recordings.name) / f"{scenario}.jsonl" if scenario == RECORDED else None
            started[scenario] = demo_run(scenario, record)
        yield started
    finally:
        for run in started.values():
            run.finish()
        recordings.cleanup()


def demo_run(name: str, record: Path | None = None) -> DemoRun:
    if name in INTERRUPTED:
        scenario, at = INTERRUPTED[name]
        return DemoRun(scenario, interrupt_at=at)
    return DemoRun(name, record=record)


ALONE = {"slow-release", FLEET, FLEET_CTRL_C}
"""Run after the others have ended: slow-release's rule compares latency with the baseline
measured while it starts, which the others' start-up (three clusters, apps and daemons at
once) would inflate on a small machine until the slower release no longer looks slower; and
the fleet demo is three hosts on its own."""


def started(demos: dict[str, DemoRun], name: str) -> DemoRun:
    """The run ``name``: one of ALONE is started once every other run has ended."""
    if name not in demos:
        for other in demos.values():
            other.result()
        demos[name] = demo_run(name)
    return demos[name]


def run_demo(demos: dict[str, DemoRun], scenario: str) -> str:
    returncode, out, err = started(demos, scenario).result()
    assert returncode == 0, out + err
    assert "NOT MET" not in out
    assert out.rstrip().endswith("demo: stopped everything it started")
    assert_all_gone(out)
    return out


def test_the_demo_rolls_back_a_bad_migration_and_verifies_every_row(
        demos: dict[str, DemoRun]) -> None:
    out = run_demo(demos, "bad-migration")

    for check in CHECKS:
        assert f"demo: verified {check}: " in out, f"{check} not verified:\n{out}"
    assert "v2's migration failed: rollbackd deploy run exited 1" in out
    assert re.search(r"incident 1 open: migration_failed \(critical\) -> immediate_rollback "
                     r"\[auto\]", out)
    assert "kept as visionforge_rolledback_" in out
    assert re.search(r"demo: verified rows written after the deploy: \d+ acknowledged; the \d+ "
                     r"the restore undid are kept in visionforge_rolledback_", out), out
    assert f"demo: all {len(CHECKS)} checks verified" in out


def test_sustained_errors_after_a_release_are_a_planned_rollback_end_to_end(
        demos: dict[str, DemoRun]) -> None:
    out = run_demo(demos, "error-spike")
    assert re.search(r"incident 1: app_compromised -> planned_rollback \[auto\]", out), out
    assert re.search(r"demo: verified runbook: run 1 planned_rollback succeeded", out), out
    for check in ("v1 serving", "database restored", "incident resolved",
                  "rows written before the deploy"):
        assert f"demo: verified {check}: " in out, f"{check} not verified:\n{out}"


def test_a_slower_release_is_evaluated_by_a_person_and_nothing_is_rolled_back(
        demos: dict[str, DemoRun]) -> None:
    out = run_demo(demos, "slow-release")
    assert re.search(r"incident 1: performance_degraded -> evaluate \[auto\]", out), out
    assert "demo: verified a person paged: " in out, out
    assert "decide with: rollbackd decide 1" in out
    assert "demo: verified v2 serving: " in out, out
    assert "nothing was restored" in out
    assert "demo: verified runbook" not in out and "demo: verified database restored" not in out


def test_ctrl_c_stops_everything_the_demo_started(demos: dict[str, DemoRun]) -> None:
    returncode, out, _ = demos[CTRL_C].result()  # stderr is in out

    assert returncode == 130, out
    assert "live traffic:" in out  # interrupted there, not before
    assert "interrupted: stopping everything the demo started" in out
    assert out.rstrip().endswith("demo: stopped everything it started")
    assert_all_gone(out)


def test_simulate_on_a_live_demo_recording_takes_the_daemons_decisions(
        demos: dict[str, DemoRun]) -> None:
    """A demo run live with ``--record``: ``rollbackd simulate`` on the fresh recording takes
    the decisions the daemon took (a daemon change the stored recordings under
    tests/replays/recorded would not see shows here)."""
    out = run_demo(demos, RECORDED)
    recording = demos[RECORDED].record
    assert recording is not None
    assert f"demo: recorded {recording} (replay)" in out, out

    simulate = rollbackd("simulate", "--policy", f"{recording}.policy.toml", "--replay",
                         str(recording), "--mode", "auto", timeout=60)

    assert simulate.returncode == 0, simulate.stderr
    taken = decision_lines(Path(f"{recording}.decisions.jsonl"))
    replayed = [json.loads(line) for line in simulate.stdout.splitlines()]
    assert [d["kind"] for d in taken][:1] == ["open"], taken
    assert differences(taken, replayed) == [], simulate.stdout


def test_the_fleet_demo_restores_the_database_once_and_rolls_back_every_host(
        demos: dict[str, DemoRun]) -> None:
    out = run_demo(demos, FLEET)
    assert "host0: v2's second migration failed" in out, out
    assert re.search(r"fleet incident 1 \(migration_failed -> immediate_rollback, opened by "
                     r"host0\): resolved, database restored by host0; parts: host0 done, "
                     r"host1 done, host2 done", out), out
    for host in ("host1", "host2"):
        assert re.search(rf"{host}: run 1 immediate_rollback@fleet succeeded", out), out
    for check in ("one fleet incident", "database restored once", "v1's schema",
                  "every host serves v1", "every host's code rolled back",
                  "every host's config rolled back", "every host did its part, once"):
        assert f"demo: verified {check}: " in out, f"{check} not verified:\n{out}"
    assert "demo: all 7 checks verified" in out
    assert len(started_things(out)[1]) == 6, out  # three apps and three rollbackds, all gone


def test_ctrl_c_stops_everything_the_fleet_demo_started(demos: dict[str, DemoRun]) -> None:
    returncode, out, _ = started(demos, FLEET_CTRL_C).result()  # stderr is in out

    assert returncode == 130, out
    assert "each look at the fleet every" in out  # interrupted there, not before
    assert "interrupted: stopping everything the demo started" in out
    assert out.rstrip().endswith("demo: stopped everything it started")
    assert_all_gone(out)
    assert len(started_things(out)[1]) == 6, out
