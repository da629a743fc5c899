"""What the daemon does with a probe outcome's problems and info: the status line shows them,
the log says each once (not every tick), and /metrics carries the version text as a label."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from daemon.service.loop import PROBLEM_LOG_EVERY, ProblemLog
from daemon.service.metrics import Metrics
from daemon.service.status_line import describe
from policies.samples import Reading
from probes.base import Notes
from probes.runner import ProbeOutcome


class Named:
    """Only what an outcome needs of its probe: a kind and a name."""

    kind: ClassVar[str] = "postgres"
    name = "postgres"
    timeout = 1.0

    def signals(self) -> list[str]:
        return []

    async def measure(self) -> Reading:
        return {}

    def notes(self) -> Notes:
        return Notes()

    async def aclose(self) -> None:
        return None


def outcome(problems: Mapping[str, str] | None = None,
            info: Mapping[str, str] | None = None) -> ProbeOutcome:
    return ProbeOutcome(probe=Named(), reading={}, duration=0.01, error=None,
                        problems=dict(problems or {}), info=dict(info or {}))


def test_the_status_line_shows_the_version_text_and_the_problems() -> None:
    line = describe("app", [outcome({"check.emails": "SQLSTATE 42703 ..."},
                                    {"migration.version": "a1b2c3d4e5f6"})],
                    {"migration.failed": 0.0, "migration.version": 191735000000.0})
    assert "migrations clean at version a1b2c3d4e5f6" in line
    assert "postgres check.emails: SQLSTATE 42703 ..." in line


def test_a_problem_is_logged_when_it_appears_changes_after_a_while_and_clears() -> None:
    log = ProblemLog()
    assert log.changes([outcome({"check.a": "x"})], 0.0) == [("postgres", "check.a", "x")]
    assert log.changes([outcome({"check.a": "x"})], 5.0) == []
    assert log.changes([outcome({"check.a": "y"})], 10.0) == []
    assert log.changes([outcome({"check.a": "y"})], PROBLEM_LOG_EVERY) == [
        ("postgres", "check.a", "y")]
    assert log.changes([outcome()], PROBLEM_LOG_EVERY + 5) == [("postgres", "check.a", None)]


def test_the_version_text_is_one_info_series_replaced_when_it_changes() -> None:
    metrics = Metrics()
    metrics.record_tick([outcome(info={"migration.version": "a1"})], {}, 0.1, 0.0)
    metrics.record_tick([outcome(info={"migration.version": "b2"})], {}, 0.1, 0.0)
    samples = [(s.labels, s.value) for m in metrics.signal_info.collect() for s in m.samples]
    assert samples == [({"signal": "migration.version", "text": "b2"}, 1.0)]
