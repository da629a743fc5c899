"""Every replay under tests/replays, run in-process through parse_replay and run (the library
path of `rollbackd simulate`, without the CLI): the decisions NAME.expected.jsonl lists."""

from __future__ import annotations

import json

import pytest

from policies.policy import parse_policy, resolve_ref
from policies.replay import parse_replay, run
from tests.harness.paths import REPLAYS
from tests.harness.replays import MODES, decisions, fixture_names, mismatches, policy_for


@pytest.mark.parametrize("name", fixture_names())
def test_the_replay_run_in_process_gives_the_expected_decisions(name: str) -> None:
    path = resolve_ref(policy_for(name))
    policy = parse_policy(path.read_text(encoding="utf-8"), str(path))
    with (REPLAYS / f"{name}.jsonl").open("rb") as handle:
        actual = [d.as_dict() for d in run(policy, parse_replay(handle), MODES.get(name, "auto"))]
    expected = decisions((REPLAYS / f"{name}.expected.jsonl").read_text(encoding="utf-8"))
    summary = "\n".join(json.dumps(d) for d in actual)
    assert len(actual) == len(expected), f"{len(actual)} decisions:\n{summary}"
    for number, (want, got) in enumerate(zip(expected, actual, strict=True), start=1):
        assert not mismatches(want, got), f"decision {number}: {mismatches(want, got)}\n{summary}"
