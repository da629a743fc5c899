"""Alert signals (DESIGN section 3): `alert.<alertname>` and `alert.severity_<severity>` equal
the number of distinct firing alerts (by label set) with that name or severity. One
Alertmanager webhook can carry thousands of alerts, each recorded as its own event."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from policies.engine import Engine
from policies.policy import Policy, parse_policy, resolve_ref

POLICY: Policy = parse_policy(resolve_ref("builtin:visionforge").read_text(encoding="utf-8"),
                              "builtin:visionforge")
NAMES = [f"Alert{i}" for i in range(40)] + ["High-Latency", "5xxRate"]
SEVERITIES = ["warning", "critical", "Info"]


def alert(status: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"type": "alert", "status": status, "labels": labels}


def expected_counts(firing: dict[tuple[tuple[str, str], ...], dict[str, str]]) -> Counter[str]:
    """Counted from scratch, the way the contract states it."""
    counts: Counter[str] = Counter()
    for labels in firing.values():
        name = labels["alertname"].replace("-", "_")
        counts[f"alert._{name}" if name[0].isdigit() else f"alert.{name}"] += 1
        counts[f"alert.severity_{labels['severity'].lower()}"] += 1
    return counts


def test_twenty_thousand_alert_events_keep_every_count_equal_to_the_firing_alerts() -> None:
    rng = random.Random(7)
    engine = Engine(POLICY)
    firing: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
    signals = ({f"alert.{n.replace('-', '_')}" for n in NAMES if not n[0].isdigit()}
               | {"alert._5xxRate"} | {f"alert.severity_{s.lower()}" for s in SEVERITIES})
    for number in range(1, 20_001):
        labels = {"alertname": rng.choice(NAMES), "severity": rng.choice(SEVERITIES),
                  "instance": f"web-{rng.randrange(2_000)}"}
        # Firing twice, or resolving what never fired, changes nothing.
        status = "firing" if rng.random() < 0.6 else "resolved"
        engine.record(float(number), alert(status, labels))
        key = tuple(sorted(labels.items()))
        if status == "firing":
            firing[key] = labels
        else:
            firing.pop(key, None)
        if number % 1_000 == 0:
            want = expected_counts(firing)
            assert {s: engine.value(s) for s in signals} == {s: float(want[s]) for s in signals}
    assert len(firing) > 1_000  # the counts were checked with many alerts firing at once
    for labels in list(firing.values()):
        engine.record(20_001.0, alert("resolved", labels))
    assert {s: engine.value(s) for s in signals} == dict.fromkeys(signals, 0.0)


def test_a_signal_changes_age_only_when_its_count_changes() -> None:
    engine = Engine(POLICY)
    first = {"alertname": "HighLatency", "severity": "warning", "instance": "a"}
    second = {**first, "instance": "b"}
    engine.record(10.0, alert("firing", first))
    engine.record(20.0, alert("firing", first))  # the same alert again: no change
    engine.record(30.0, alert("resolved", second))  # never fired: no change
    engine.decide(40.0)
    assert engine.age("alert.HighLatency") == 30.0
    assert engine.age("alert.severity_warning") == 30.0
    engine.record(50.0, alert("firing", second))
    engine.decide(60.0)
    assert engine.value("alert.HighLatency") == 2.0
    assert engine.age("alert.HighLatency") == 10.0
