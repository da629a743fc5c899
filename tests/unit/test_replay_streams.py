"""`rollbackd simulate` streams its replay: lines are read and checked one at a time as the
engine consumes them, so memory is bounded by the policy's windows, not by the file (a 100 MB
replay once took 656 MB). A bad line raises ReplayError naming it when the iteration reaches
it."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator

import pytest

from policies.policy import Policy, parse_policy, resolve_ref
from policies.replay import ReplayError, parse_replay, run

POLICY: Policy = parse_policy(resolve_ref("builtin:visionforge").read_text(encoding="utf-8"),
                              "builtin:visionforge")
BOUND = 4 * 1024**2  # bytes; 200,000 parsed lines held in a list took 77 MiB, so
# the 100,000 below would take about 38


def replay(count: int) -> Iterator[str]:
    """``count`` lines, a second's readings spread over four of them as probes report: a deploy
    and a failed migration now and then (incidents open and resolve), latency that rises
    after some deploys (baselines)."""
    for number in range(count):
        t, part = divmod(number, 4)
        if part == 0:
            yield event_or_http(t)
        elif part == 1:
            yield json.dumps({"t": t, "signals": {"db.up": 1, "db.validation_failures": 0}})
        elif part == 2 and t % 10_000 == 1_100:
            yield json.dumps({"t": t, "event": {"type": "migration", "status": "failed"}})
        elif part == 2:
            yield json.dumps({"t": t, "signals": {"migration.failed": 0}})
        else:
            slow = t % 5_000 > 1_000 and t % 10_000 < 5_000
            yield json.dumps({"t": t, "signals": {
                "http.latency_p95": (0.4 if slow else 0.2) + (t % 13) / 1000}})


def event_or_http(t: int) -> str:
    if t % 5_000 == 1_000:
        return json.dumps({"t": t, "event": {"type": "deploy", "phase": "begin",
                                             "version": f"v{t}"}})
    return json.dumps({"t": t, "signals": {"http.up": 1, "http.error_ratio": (t % 7) / 100}})


def peak_bytes(count: int) -> tuple[int, int]:
    """The peak of memory allocated while simulating ``count`` lines, and the decisions taken."""
    tracemalloc.start()
    try:
        decisions = sum(1 for _ in run(POLICY, parse_replay(replay(count))))
        return tracemalloc.get_traced_memory()[1], decisions
    finally:
        tracemalloc.stop()


def test_parse_replay_reads_a_line_only_when_the_engine_asks_for_it() -> None:
    pulled = 0

    def source() -> Iterator[str]:
        nonlocal pulled
        for line in replay(100):
            pulled += 1
            yield line

    lines = iter(parse_replay(source()))
    assert pulled == 0
    next(lines)
    assert pulled == 1


def test_simulating_100000_lines_stays_within_a_bound_a_list_of_them_would_exceed() -> None:
    small, small_decisions = peak_bytes(10_000)
    large, large_decisions = peak_bytes(100_000)
    assert large_decisions > small_decisions > 0  # the engine had work to do
    assert large < BOUND, f"peak {large / 1024**2:.1f} MiB"
    # Ten times the lines: the same windows, so about the same memory.
    assert large < 1.5 * small, f"{small / 1024**2:.1f} MiB -> {large / 1024**2:.1f} MiB"


def test_a_bad_line_raises_when_the_iteration_reaches_it_naming_the_line() -> None:
    lines = [*replay(8), '{"t": 0, "signals": {"http.up": 1}}', *replay(4)]
    decisions = run(POLICY, parse_replay(lines), "auto")
    with pytest.raises(ReplayError, match=r"^line 9: t=0 is earlier than the line before$"):
        list(decisions)
