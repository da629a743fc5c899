"""Ingestion time of Alertmanager alerts by the decision engine.

One webhook can carry thousands of alerts; the daemon records each as an event before the
next engine step, inside its event loop. Records N distinct firing alerts into a fresh engine,
takes one step, then resolves them all, for N = 1k, 3k, 10k, 30k. The time per alert should
not grow with N.

    .venv/bin/python bench/alerts.py [--sizes 1000,3000,10000,30000]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from policies.engine import Engine
from policies.policy import Policy, parse_policy, resolve_ref

POLICY_REF = "builtin:visionforge"


def alerts(count: int, status: str) -> list[dict[str, Any]]:
    return [{"type": "alert", "status": status,
             "labels": {"alertname": f"Alert{i % 50}", "severity": ("warning", "critical")[i % 2],
                        "instance": f"web-{i}"}}
            for i in range(count)]


def ingest(engine: Engine, t: float, events: list[dict[str, Any]]) -> float:
    start = time.perf_counter()
    for event in events:
        engine.record(t, event)
    engine.decide(t)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,3000,10000,30000")
    args = parser.parse_args()
    path = resolve_ref(POLICY_REF)
    policy: Policy = parse_policy(path.read_text(encoding="utf-8"), str(path))
    print(f"{'alerts':>8}  {'firing':>10}  {'per alert':>10}  {'resolving':>10}  {'per alert':>10}")
    for size in (int(s) for s in args.sizes.split(",")):
        engine = Engine(policy)
        firing = ingest(engine, 1.0, alerts(size, "firing"))
        assert engine.value("alert.severity_warning") == size // 2 + size % 2
        resolving = ingest(engine, 2.0, alerts(size, "resolved"))
        assert engine.value("alert.severity_warning") == 0
        print(f"{size:>8,}  {firing * 1000:>8.1f}ms  {firing / size * 1e6:>8.1f}us"
              f"  {resolving * 1000:>8.1f}ms  {resolving / size * 1e6:>8.1f}us")


if __name__ == "__main__":
    main()
