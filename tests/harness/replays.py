"""The replay fixtures under tests/replays and how their decisions are compared."""

from __future__ import annotations

import json
from typing import Any

from tests.harness.paths import REPLAYS

BUNDLED = "builtin:visionforge"
FIELDS = ("t", "kind", "incident", "scenario", "severity", "action", "requested_action",
          "timeline_s", "mode", "reason")

# Replays that simulate a daemon mode other than auto.
MODES = {"dry_run_mode": "dry-run"}


def fixture_names() -> list[str]:
    return sorted(p.name.removesuffix(".expected.jsonl")
                  for p in REPLAYS.glob("*.expected.jsonl"))


def policy_for(name: str) -> str:
    own = REPLAYS / f"{name}.policy.toml"
    return str(own) if own.exists() else BUNDLED


def decisions(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def mismatches(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    wrong = [f"{key}: expected {expected[key]!r}, got {actual.get(key)!r}"
             for key in FIELDS if key != "reason" and expected[key] != actual.get(key)]
    if expected["reason"] not in actual.get("reason", ""):
        wrong.append(f"reason: {actual.get('reason')!r} does not say {expected['reason']!r}")
    if set(actual) != set(FIELDS):
        wrong.append(f"keys: {sorted(actual)} are not the contract's {sorted(FIELDS)}")
    return wrong
