"""Throughput of `rollbackd simulate` and the latency of one decision-engine step.

Generates a 7-day replay at 10 s resolution (60,480 sample lines of six signals, a deploy a
day, an incident of a different kind on most days), writes it to a temporary file, and runs it
through the bundled policy three ways:

* in-process, parse_replay + run (the code path of the CLI, without interpreter start-up);
* through the CLI, ``python -m daemon simulate --format jsonl``, as a user runs it;
* step by step with Engine.step, timing each step.

Targets: simulate >= 20,000 lines/s on one core; p99 of one engine step <= 1 ms.

    .venv/bin/python bench/simulate.py [--days 7] [--resolution 10] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from policies.engine import Engine
from policies.policy import Policy, parse_policy, resolve_ref
from policies.replay import ReplayLine, parse_replay, run

ROOT = Path(__file__).resolve().parent.parent
POLICY_REF = "builtin:visionforge"
LINES_TARGET = 20_000.0
STEP_P99_TARGET_MS = 1.0
DAY = 86_400
DEPLOY_AT = 10 * 3600  # 10:00 every day
WARNING = {"alertname": "HighLatency", "severity": "warning", "instance": "web-1"}


def incident(day: int, t: int) -> dict[str, float | None]:
    """How the day's incident changes the healthy readings at ``t`` (seconds into the day)."""
    after = t - DEPLOY_AT
    if day == 1 and 120 <= after < 900:  # errors after the deploy: planned rollback
        return {"http.error_ratio": 0.45}
    if day == 2 and 60 <= after < 3600:  # latency +70 % after the deploy: evaluate
        return {"http.latency_p95": 0.34}
    if day == 4 and 14 * 3600 <= t < 14 * 3600 + 600:  # database outage: page
        return {"db.up": 0.0, "db.validation_failures": None, "http.error_ratio": 0.8}
    if day == 5 and 16 * 3600 <= t < 16 * 3600 + 300:  # HTTP probe blind: page, no rollback
        return {"http.up": None, "http.error_ratio": None, "http.latency_p95": None}
    if day == 6 and 12 * 3600 <= t < 13 * 3600 and (t // 30) % 2 == 0:  # flapping: nothing
        return {"http.error_ratio": 0.4}
    return {}


def events(day: int, t: int) -> list[dict[str, Any]]:
    version = f"v{100 + day}"
    found: list[dict[str, Any]] = []
    if t == DEPLOY_AT:
        found.append({"type": "deploy", "phase": "begin", "version": version})
    if t == DEPLOY_AT + 60:
        found.append({"type": "deploy", "phase": "end", "status": "succeeded",
                      "version": version})
    if day == 3 and t == DEPLOY_AT + 30:  # a failed migration: immediate rollback
        found.append({"type": "migration", "status": "failed", "version": version})
    if day == 6 and t == 18 * 3600:  # a warning alert for 20 minutes: fix forward
        found.append({"type": "alert", "status": "firing", "labels": WARNING})
    if day == 6 and t == 18 * 3600 + 1200:
        found.append({"type": "alert", "status": "resolved", "labels": WARNING})
    return found


def replay(days: int, resolution: int, seed: int = 42) -> Iterator[str]:
    rng = random.Random(seed)
    for day in range(days):
        for t in range(0, DAY, resolution):
            now = day * DAY + t
            for event in events(day, t):
                yield json.dumps({"t": now, "event": event})
            signals: dict[str, float | None] = {
                "http.up": 1.0,
                "http.error_ratio": round(rng.uniform(0.0, 0.02), 4),
                "http.latency_p95": round(rng.gauss(0.2, 0.01), 4),
                "db.up": 1.0,
                "db.validation_failures": 0.0,
                "migration.failed": 0.0,
            }
            signals.update(incident(day, t))
            yield json.dumps({"t": now, "signals": signals})


def load_policy() -> Policy:
    path = resolve_ref(POLICY_REF)
    return parse_policy(path.read_text(encoding="utf-8"), str(path))


def in_process(path: Path, policy: Policy) -> tuple[float, int]:
    start = time.perf_counter()
    with path.open(encoding="utf-8") as handle:
        decisions = list(run(policy, parse_replay(handle)))
    return time.perf_counter() - start, len(decisions)


def through_cli(path: Path) -> tuple[float, int]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "daemon", "simulate", "--policy", POLICY_REF, "--replay",
         str(path), "--format", "jsonl"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=True,
    )
    return time.perf_counter() - start, len(done.stdout.splitlines())


def steps(lines: list[ReplayLine]) -> list[tuple[float, dict[str, float | None],
                                                  list[dict[str, Any]]]]:
    """The replay as the daemon would feed it: per distinct t, its samples and its events."""
    grouped: list[tuple[float, dict[str, float | None], list[dict[str, Any]]]] = []
    for line in lines:
        if not grouped or grouped[-1][0] != line.t:
            grouped.append((line.t, {}, []))
        if line.signals is not None:
            grouped[-1][1].update(line.signals)
        if line.event is not None:
            grouped[-1][2].append(dict(line.event))
    return grouped


def step_times_ms(path: Path, policy: Policy) -> list[float]:
    with path.open(encoding="utf-8") as handle:
        grouped = steps(parse_replay(handle))
    engine = Engine(policy)
    clock = time.perf_counter_ns
    times: list[float] = []
    for t, samples, happened in grouped:
        start = clock()
        engine.step(t, samples, happened)
        times.append((clock() - start) / 1e6)
    return times


def profile(path: Path, policy: Policy) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    in_process(path, policy)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
    return out.getvalue()


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--resolution", type=int, default=10, help="seconds between samples")
    parser.add_argument("--profile", action="store_true", help="cProfile the in-process run")
    args = parser.parse_args()
    policy = load_policy()
    with tempfile.TemporaryDirectory(prefix="rollbackd-bench-") as tmp:
        path = Path(tmp) / "replay.jsonl"
        with path.open("w", encoding="utf-8") as out:
            for line in replay(args.days, args.resolution):
                out.write(line + "\n")
        with path.open(encoding="utf-8") as handle:
            total = sum(1 for _ in handle)
        samples = args.days * DAY // args.resolution
        inproc_s, inproc_n = in_process(path, policy)
        cli_s, cli_n = through_cli(path)
        times = step_times_ms(path, policy)
        p50 = statistics.median(times)
        p99 = statistics.quantiles(times, n=100)[98]
        rate_in, rate_cli = total / inproc_s, total / cli_s
        rows = [
            ("replay", f"{args.days} days at {args.resolution} s: {samples:,} sample lines, "
                       f"{total - samples} event lines", ""),
            ("simulate in-process", f"{rate_in:,.0f} lines/s ({inproc_s:.2f} s)",
             f">= {LINES_TARGET:,.0f}: {verdict(rate_in >= LINES_TARGET)}"),
            ("simulate CLI", f"{rate_cli:,.0f} lines/s ({cli_s:.2f} s, with start-up)",
             f">= {LINES_TARGET:,.0f}: {verdict(rate_cli >= LINES_TARGET)}"),
            ("engine step p50", f"{p50 * 1000:.1f} us ({len(times):,} steps)", ""),
            ("engine step p99", f"{p99 * 1000:.1f} us",
             f"<= {STEP_P99_TARGET_MS:g} ms: {verdict(p99 <= STEP_P99_TARGET_MS)}"),
            ("engine step max", f"{max(times) * 1000:.1f} us", ""),
            ("decisions", f"{inproc_n} in-process, {cli_n} via CLI", ""),
        ]
        width = max(len(r[0]) for r in rows)
        value_width = max(len(r[1]) for r in rows)
        for name, value, target in rows:
            print(f"{name:<{width}}  {value:<{value_width}}  {target}".rstrip())
        if inproc_n != cli_n:
            print("the CLI and the in-process run disagree on the number of decisions")
            sys.exit(1)
        if args.profile:
            print(profile(path, policy))


if __name__ == "__main__":
    main()
