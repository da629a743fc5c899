"""The pager journals what the procedures say to tell whom, once: L1 at once, the chain while
nobody answers, status updates while a run goes, the completion notice, reminders until the
report is filled in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from daemon.config import PagingSettings
from daemon.journal import Journal
from daemon.paging.acks import record_ack
from daemon.paging.pager import Pager
from policies.engine import Decision
from policies.policy import Policy, parse_policy
from policies.schema import convert
from tests.harness.config import MIGRATION_FAILED_RULE

HOUR = 3600.0

POLICY = """
[[rule]]
scenario = "performance_degraded"
when = "http.latency_p95 > 2"
severity = "medium"
action = "evaluate"
timeline = "60m"

""" + MIGRATION_FAILED_RULE + """
[[rule]]
scenario = "slow_and_quiet"
when = "http.latency_p95 > 5"
severity = "low"
action = "evaluate"
timeline = "10m"
on_timeout = "dismiss"
"""


def decision(t: float, kind: str, scenario: str, reason: str, **overrides: Any) -> Decision:
    fields: dict[str, Any] = {
        "t": t, "kind": kind, "incident": 1, "scenario": scenario, "severity": "critical",
        "action": "immediate_rollback", "requested_action": "immediate_rollback",
        "timeline_s": 900, "mode": "auto", "reason": reason, **overrides}
    return Decision(**fields)


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "journal.db")


@pytest.fixture
def policy() -> Policy:
    return parse_policy(POLICY, "policy.toml")


def evaluate_incident(journal: Journal, t: float = 1000.0,
                      scenario: str = "performance_degraded", timeline: int = 3600) -> None:
    journal.add_decision(decision(t, "open", scenario, "p95 held for 5m", severity="medium",
                                  action="evaluate", requested_action="evaluate",
                                  timeline_s=timeline))


def levels(pages: list[object]) -> list[tuple[int, str]]:
    return [(p.level, p.template) for p in pages]  # type: ignore[attr-defined]


def test_an_evaluate_decision_asks_l1_for_a_decision_at_once(journal: Journal,
                                                            policy: Policy) -> None:
    pager = Pager(journal, "shop", PagingSettings())
    opened = decision(1000.0, "open", "performance_degraded", "p95 held", severity="medium",
                      action="evaluate", requested_action="evaluate", timeline_s=3600)
    journal.add_decision(opened)
    page = pager.page_decision(opened, policy, paused=False)
    assert page is not None
    assert (page.level, page.template, page.recipient) == (1, "decision", "L1 development lead")
    assert page.dedup_key == "shop/incident-1/L1/decision"
    pager.tick(policy, now=1001.0)
    assert [p.id for p in journal.pages(incident=1)] == [page.id]  # not a second one


def test_unanswered_the_chain_is_paged_l2_after_15_minutes_and_l3_after_30(
        journal: Journal, policy: Policy) -> None:
    evaluate_incident(journal)
    pager = Pager(journal, "shop", PagingSettings())
    assert levels(pager.tick(policy, now=1000.0)) == [(1, "decision")]
    assert levels(pager.tick(policy, now=1000.0 + 899)) == []
    assert (2, "decision") in levels(pager.tick(policy, now=1000.0 + 900))
    assert (3, "decision") in levels(pager.tick(policy, now=1000.0 + 1800))
    keys = [p.dedup_key for p in journal.pages(incident=1)]
    assert keys == ["shop/incident-1/L1/decision", "shop/incident-1/L2/decision",
                    "shop/incident-1/L3/decision"]


def holding() -> PagingSettings:
    """Settings with a channel that holds pages open (to acknowledge and resolve)."""
    return convert({"alertmanager": {"urls": ["http://127.0.0.1:9"]}}, PagingSettings)


def test_an_acknowledgement_stops_the_chain_and_tells_the_channels(journal: Journal,
                                                                   policy: Policy) -> None:
    evaluate_incident(journal)
    pager = Pager(journal, "shop", holding())
    pager.tick(policy, now=1000.0)
    record_ack(journal, 1, "alice", "cli", t=1100.0)
    pages = pager.tick(policy, now=1000.0 + 2 * HOUR)
    assert [(p.level, p.event) for p in pages] == [(1, "acknowledge")]
    assert not [p for p in journal.pages(incident=1) if p.level > 1]


def test_an_automatic_rollback_leaves_notices_to_its_runbook_and_does_not_escalate(
        journal: Journal, policy: Policy) -> None:
    opened = decision(1000.0, "open", "migration_failed", "migration.failed == 1")
    journal.add_decision(opened)
    pager = Pager(journal, "shop", PagingSettings())
    assert pager.page_decision(opened, policy, paused=False) is None
    assert pager.tick(policy, now=1000.0 + HOUR) == []


def test_a_paused_daemon_s_rollback_becomes_a_decision_request_that_says_so(
        journal: Journal, policy: Policy) -> None:
    opened = decision(1000.0, "open", "migration_failed", "migration.failed == 1")
    page = Pager(journal, "shop", PagingSettings()).page_decision(opened, policy, paused=True)
    assert page is not None and page.template == "decision" and "PAUSED" in page.summary


def test_a_failed_rollback_run_pages_the_next_level_at_once(journal: Journal,
                                                            policy: Policy) -> None:
    journal.add_decision(decision(1000.0, "open", "migration_failed", "migration.failed == 1"))
    pager = Pager(journal, "shop", PagingSettings())
    journal.add_page("shop", t=1000.0, incident=1, run=None, level=1, template="emergency",
                     summary="the runbook's page step", details={}, dedup_key="run-1/step-1")
    run = journal.begin_run("shop", incident=1, runbook="immediate_rollback",
                            action="immediate_rollback", scenario="migration_failed",
                            by="rollbackd", t=1001.0, deadline=1900.0, deploy=None,
                            restore_point=None, plan=["validate"])
    journal.finish_run(run.id, "failed", "validation failed", 1060.0)
    assert (2, "emergency") in levels(pager.tick(policy, now=1061.0))


def test_status_updates_go_out_every_15_minutes_while_a_run_goes(journal: Journal,
                                                                 policy: Policy) -> None:
    journal.add_decision(decision(1000.0, "open", "migration_failed", "m"))
    journal.begin_run("shop", incident=1, runbook="immediate_rollback",
                      action="immediate_rollback", scenario="migration_failed", by="rollbackd",
                      t=1000.0, deadline=1900.0, deploy=None, restore_point=None,
                      plan=["restore_database"])
    pager = Pager(journal, "shop", PagingSettings())
    assert pager.tick(policy, now=1000.0 + 899) == []
    first = pager.tick(policy, now=1000.0 + 900)
    assert levels(first) == [(1, "status")]
    assert pager.tick(policy, now=1000.0 + 1000) == []
    assert len([p for p in journal.pages(incident=1) if p.template == "status"]) == 1


def test_resolution_sends_the_completion_notice_and_resolves_what_was_paged(
        journal: Journal, policy: Policy) -> None:
    evaluate_incident(journal)
    pager = Pager(journal, "shop", holding())
    pager.tick(policy, now=1000.0 + 900)  # L1 and L2
    journal.add_decision(decision(2000.0, "resolve", "performance_degraded", "clear for 5m",
                                  severity="medium", action="evaluate",
                                  requested_action="evaluate"))
    pages = pager.tick(policy, now=2001.0)
    assert [(p.level, p.template, p.event) for p in pages] == [
        (1, "completion", "trigger"), (1, "completion", "resolve"), (2, "completion", "resolve")]
    assert pager.tick(policy, now=2002.0) == []
    assert len(journal.pages(incident=1)) == 5  # L1 and L2 decisions, and the three above


def test_without_a_channel_that_holds_pages_nothing_is_acknowledged_or_resolved(
        journal: Journal, policy: Policy) -> None:
    evaluate_incident(journal)
    pager = Pager(journal, "shop", PagingSettings())
    pager.tick(policy, now=1000.0)
    record_ack(journal, 1, "alice", "cli", t=1100.0)
    assert pager.tick(policy, now=1200.0) == []
    journal.add_decision(decision(2000.0, "resolve", "performance_degraded", "clear",
                                  severity="medium", action="evaluate",
                                  requested_action="evaluate"))
    assert levels(pager.tick(policy, now=2001.0)) == [(1, "completion")]


def test_a_runbook_s_own_completion_notice_is_not_sent_twice(journal: Journal,
                                                             policy: Policy) -> None:
    journal.add_decision(decision(1000.0, "open", "migration_failed", "m"))
    journal.add_page("shop", t=1500.0, incident=1, run=1, level=1, template="completion",
                     summary="the runbook's notify step", details={}, dedup_key="run-1/step-9")
    journal.add_decision(decision(2000.0, "resolve", "migration_failed", "clean watch"))
    assert Pager(journal, "shop", PagingSettings()).tick(policy, now=2001.0) == []


def test_reminders_follow_at_24_hours_and_a_week_until_the_report_is_annotated(
        journal: Journal, policy: Policy) -> None:
    evaluate_incident(journal)
    pager = Pager(journal, "shop", PagingSettings())
    pager.tick(policy, now=1000.0)
    journal.add_decision(decision(2000.0, "resolve", "performance_degraded", "clear",
                                  severity="medium", action="evaluate",
                                  requested_action="evaluate"))
    pager.tick(policy, now=2001.0)
    assert not [p for p in pager.tick(policy, now=2000.0 + 23 * HOUR)
                if p.template == "reminder"]
    day = [p for p in pager.tick(policy, now=2000.0 + 24 * HOUR) if p.template == "reminder"]
    assert [p.dedup_key for p in day] == ["shop/incident-1/L1/reminder-24h"]
    journal.add_event(2000.0 + 25 * HOUR, {
        "type": "annotate", "incident": 1, "by": "alice", "root_cause": "an index was missing",
        "prevention": "review query plans in CI"})
    week = [p for p in pager.tick(policy, now=2000.0 + 8 * 24 * HOUR)
            if p.template == "reminder"]
    assert week == []


def test_on_timeout_dismiss_closes_an_unanswered_incident_once(journal: Journal,
                                                               policy: Policy) -> None:
    evaluate_incident(journal, scenario="slow_and_quiet", timeline=600)
    pager = Pager(journal, "shop", PagingSettings())
    pager.tick(policy, now=1000.0)
    pager.tick(policy, now=1600.0)
    pager.tick(policy, now=1605.0)
    closes = journal.events_of_type("close")
    assert len(closes) == 1 and closes[0].payload["by"] == "rollbackd (on_timeout)"


def test_on_timeout_page_reaches_the_top_level_at_the_timeline_s_end(journal: Journal,
                                                                     policy: Policy) -> None:
    evaluate_incident(journal, timeline=600)
    pager = Pager(journal, "shop", PagingSettings())
    pager.tick(policy, now=1000.0)
    assert {lv for lv, _ in levels(pager.tick(policy, now=1600.0))} >= {2, 3}
    assert journal.events_of_type("close") == []


def test_an_acknowledgement_of_another_incident_does_not_stop_this_one_s_chain(
        journal: Journal, policy: Policy) -> None:
    evaluate_incident(journal)
    pager = Pager(journal, "shop", PagingSettings())
    pager.tick(policy, now=1000.0)
    record_ack(journal, 7, "alice", "cli", t=1100.0)
    journal.add_event(1100.0, {"type": "ack", "incident": "1", "by": "mallory", "via": "x"})
    assert (2, "decision") in levels(pager.tick(policy, now=1000.0 + 900))
