"""Recordings of the daemon (``rollbackd run --record``) and how their replay is compared with
the decisions the daemon took."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from policies.policy import parse_policy, resolve_ref
from policies.replay import parse_replay, run
from tests.harness.paths import REPLAYS
from tests.harness.replays import FIELDS

RECORDED = REPLAYS / "recorded"
"""The demo scenarios' recordings: NAME.jsonl, NAME.jsonl.decisions.jsonl (what the daemon
decided), NAME.jsonl.policy.toml (the policy it ran under, in mode auto)."""


def recording_names() -> list[str]:
    return sorted(p.name.removesuffix(".jsonl.decisions.jsonl")
                  for p in RECORDED.glob("*.jsonl.decisions.jsonl"))


def replayed(recording: Path, policy: str | Path, mode: str = "auto") -> list[dict[str, Any]]:
    """What ``rollbackd simulate --policy POLICY --replay RECORDING --mode MODE`` prints, by the
    function behind it."""
    path = resolve_ref(str(policy))
    parsed = parse_policy(path.read_text(encoding="utf-8"), str(path))
    with recording.open("rb") as handle:
        return [d.as_json() for d in run(parsed, parse_replay(handle), mode)]


def decision_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def differences(taken: list[dict[str, Any]], replayed: list[dict[str, Any]]) -> list[str]:
    """Where the replay's decisions are not exactly the daemon's: every field, ``t`` too."""
    wrong = [f"{len(taken)} decisions taken, {len(replayed)} replayed"] \
        if len(taken) != len(replayed) else []
    for number, (want, got) in enumerate(zip(taken, replayed, strict=False), start=1):
        wrong += [f"decision {number} {key}: taken {want.get(key)!r}, replayed {got.get(key)!r}"
                  for key in FIELDS if want.get(key) != got.get(key)]
    return wrong
