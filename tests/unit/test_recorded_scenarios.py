"""The demo scenarios as rollbackd recorded them (``rollbackd demo --scenario S --record``,
under tests/replays/recorded): ``simulate`` on each recording, with the policy it ran under and
mode auto, takes exactly the decisions the daemon journaled, ``t`` and ``reason`` included."""

from __future__ import annotations

import json

import pytest

from tests.harness.recordings import (
    RECORDED,
    decision_lines,
    differences,
    recording_names,
    replayed,
)


def test_every_demo_scenario_has_a_recording() -> None:
    assert recording_names() == ["bad-migration", "data-corruption", "error-spike",
                                 "slow-release"]


@pytest.mark.parametrize("name", recording_names())
def test_simulate_on_the_recording_takes_the_decisions_the_daemon_took(name: str) -> None:
    recording = RECORDED / f"{name}.jsonl"
    taken = decision_lines(RECORDED / f"{name}.jsonl.decisions.jsonl")
    actual = replayed(recording, RECORDED / f"{name}.jsonl.policy.toml", "auto")

    assert taken, "the daemon took no decision: nothing was recorded worth replaying"
    assert differences(taken, actual) == [], "\n".join(json.dumps(d) for d in actual)
