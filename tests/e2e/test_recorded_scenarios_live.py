"""A demo scenario run live with ``--record``: ``rollbackd simulate`` on the fresh recording
takes the decisions the daemon took (a daemon change the stored recordings under
tests/replays/recorded would not see shows here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.harness.cli import rollbackd
from tests.harness.recordings import decision_lines, differences

pytestmark = pytest.mark.e2e


def test_simulate_on_a_live_demo_recording_takes_the_daemons_decisions(tmp_path: Path) -> None:
    recording = tmp_path / "bad-migration.jsonl"
    demo = rollbackd("demo", "--scenario", "bad-migration", "--record", str(recording),
                     timeout=240)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert f"demo: recorded {recording} (replay)" in demo.stdout, demo.stdout

    simulate = rollbackd("simulate", "--policy", f"{recording}.policy.toml", "--replay",
                         str(recording), "--mode", "auto", timeout=60)

    assert simulate.returncode == 0, simulate.stderr
    taken = decision_lines(Path(f"{recording}.decisions.jsonl"))
    replayed = [json.loads(line) for line in simulate.stdout.splitlines()]
    assert [(d["kind"], d["scenario"]) for d in taken] == [
        ("open", "migration_failed"), ("resolve", "migration_failed")], taken
    assert differences(taken, replayed) == [], simulate.stdout
