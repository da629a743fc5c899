"""Page templates: each of the procedures' notices says what the procedures require, a user's
directory replaces the templates it holds and keeps the bundled others, check_templates names
the file, line and placeholder that is wrong, a send never fails for a missing fact, and text
from outside (an alert's label, a person's reason) cannot forge a line of a page."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from daemon.journal import Journal
from daemon.paging.facts import (
    GENERAL_FACTS,
    INCIDENT_FACTS,
    general_facts,
    incident_facts,
    plain,
    quote,
)
from daemon.paging.templates import (
    KINDS,
    TITLE_CHARS,
    UNKNOWN,
    TemplateError,
    check_templates,
    render,
)
from policies.engine import Decision

T0 = 1_800_000_000.0
FORGED = "x\nEMERGENCY: all clear"

# Every fact spelled as its own name in angle brackets, so a test sees which one went where.
FACTS = {name: f"<{name}>" for name in GENERAL_FACTS + INCIDENT_FACTS}

# What each notice must say, from the procedures (title first, then phrases of the body).
REQUIRED: dict[str, tuple[str, list[str]]] = {
    "emergency": ("EMERGENCY ROLLBACK IN PROGRESS — <app>", [
        "What fired: <what_fired>", "Severity: <severity>", "Action: <action>",
        "Started: <opened_at>", "Expected resolution: by <deadline>",
        "What users see: <user_impact>", "Next update in 15 minutes (<next_update>)"]),
    "planned": ("PLANNED ROLLBACK — <app>", [
        "scheduled", "Reason: <what_fired>", "Expected downtime: <expected_downtime>",
        "Impact: <user_impact>"]),
    "decision": ("DECISION NEEDED — <app>", [
        "What fired: <what_fired>", "<evidence>", "<options>", "<api_decision>",
        "Decide by: <deadline>"]),
    "status": ("STATUS UPDATE — <app>", [
        "runbook <runbook>", "Step <step_index> of <step_count>: <step_kind>",
        "Elapsed: <run_elapsed>", "<steps_done>", "Next update in 15 minutes"]),
    "completion": ("RESOLVED — <app>", [
        "Resolution time: <resolution_time>", "Services affected: <services_affected>",
        "Data loss:\n<data_loss>"]),
    "reminder": ("REMINDER — <app>", [
        "Short-term actions (within 24 hours, by <short_term_due>)", "Root cause",
        "review the execution log", "Long-term actions (within a week, by <long_term_due>)",
        "Prevention", "rollbackd drill", "<annotate_command>"]),
    "test": ("TEST PAGE — rollbackd for <app>", ["test of <channel>", "<recipient>"]),
    "contact": ("<app>: incident <incident>", [
        "<recipient>: <sender> asks for your help", "Incident: <summary>",
        "What fired: <what_fired>", "Reply to <sender>"]),
}


@pytest.mark.parametrize("kind", KINDS)
def test_each_bundled_notice_says_what_the_procedures_require(kind: str) -> None:
    title, phrases = REQUIRED[kind]
    page = render(kind, FACTS)
    assert page.title.startswith(title)
    assert "\n" not in page.title and len(page.title) <= TITLE_CHARS
    missing = [p for p in phrases if p not in page.text]
    assert missing == []
    assert UNKNOWN not in page.title + page.text


def test_the_bundled_templates_pass_their_own_check() -> None:
    with resources.as_file(resources.files("daemon.paging") / "templates") as bundled:
        assert sorted(p.name for p in bundled.iterdir()) == sorted(f"{k}.txt" for k in KINDS)
        assert check_templates(bundled) == []


def test_a_users_directory_replaces_one_kind_and_keeps_the_bundled_others(
        tmp_path: Path) -> None:
    (tmp_path / "emergency.txt").write_text(
        "ROLLBACK NOW on $app (#$incident)\n\nCall ${recipient}: it costs $$100 a minute.\n")
    assert check_templates(tmp_path) == []
    page = render("emergency", FACTS, tmp_path)
    assert page.title == "ROLLBACK NOW on <app> (#<incident>)"
    assert page.text == "Call <recipient>: it costs $100 a minute."
    assert render("completion", FACTS, tmp_path) == render("completion", FACTS)


def test_check_templates_names_the_file_line_and_placeholder_that_is_wrong(
        tmp_path: Path) -> None:
    (tmp_path / "status.txt").write_text("Status of $app\n\nstep $step_index\nby $oncall_phone\n")
    (tmp_path / "planned.txt").write_text("Planned\n\ncosts $5\n")
    (tmp_path / "test.txt").write_text("Test\n\nabout $scenario\n")
    (tmp_path / "decision.txt").write_text("Decide\nnow, with no blank line\n")
    (tmp_path / "completion.txt").mkdir()
    (tmp_path / "escalation.txt").write_text("Hello\n\nthere\n")
    (tmp_path / ".status.txt.swp").write_text("an editor's")
    problems = check_templates(tmp_path)
    assert len(problems) == 6, problems
    by_file = {p.split(":")[0]: p for p in problems}
    assert by_file[str(tmp_path / "status.txt")].startswith(
        f"{tmp_path / 'status.txt'}:4: $oncall_phone is not a fact a page knows (facts: ")
    assert by_file[str(tmp_path / "planned.txt")].startswith(
        f"{tmp_path / 'planned.txt'}:3: '$5' is not a placeholder")
    assert by_file[str(tmp_path / "test.txt")].startswith(
        f"{tmp_path / 'test.txt'}:3: $scenario: a test page is about no incident")
    assert by_file[str(tmp_path / "decision.txt")] == (
        f"{tmp_path / 'decision.txt'}:2: a blank line must follow the title")
    assert by_file[str(tmp_path / "completion.txt")].startswith(
        f"{tmp_path / 'completion.txt'}: cannot read: ")
    assert by_file[str(tmp_path / "escalation.txt")].startswith(
        f"{tmp_path / 'escalation.txt'}: not a page template (the templates are emergency.txt")
    assert all("\n" not in p for p in problems)
    assert check_templates(tmp_path / "absent") == [
        f"{tmp_path / 'absent'}: cannot list the page templates: No such file or directory"]


def test_a_page_goes_out_whatever_its_facts_or_its_users_file_lack(tmp_path: Path) -> None:
    (tmp_path / "status.txt").write_text("Status of $app\n\nby $oncall_phone, costs $5\n")
    (tmp_path / "completion.txt").write_bytes(b"\xff\xfe not text")
    page = render("status", {"app": "visionforge"}, tmp_path)
    assert page.title == "Status of visionforge"
    assert page.text == f"by {UNKNOWN}, costs $5"
    assert render("completion", FACTS, tmp_path) == render("completion", FACTS)
    assert f"incident {UNKNOWN}" in render("emergency", {}).title
    with pytest.raises(TemplateError, match="no page template 'sms'"):
        render("sms", FACTS)


def test_a_title_stays_one_bounded_line_whatever_its_facts_hold(tmp_path: Path) -> None:
    (tmp_path / "decision.txt").write_text("Decide: $evidence $reason\n\n$evidence\n")
    facts = {**FACTS, "evidence": "- one\n- two\n" + "x" * 500, "reason": "a\u2028b\x1b[31m"}
    page = render("decision", facts, tmp_path)
    assert page.title.startswith("Decide: - one - two xxx")
    assert page.title.endswith("…") and len(page.title) == TITLE_CHARS
    assert page.text.startswith("- one\n- two\n")


def test_a_quoted_value_is_one_escaped_bounded_line() -> None:
    assert quote(FORGED) == "'x\\nEMERGENCY: all clear'"
    assert quote("\x1b[2J\u202egnp.exe") == "'\\x1b[2J\\u202egnp.exe'"
    assert quote("y" * 500) == repr("y" * 199 + "…")
    assert plain("vf\n_rolledback\t1") == "vf _rolledback 1"


def lines_forged(page_text: str) -> list[str]:
    return [line for line in page_text.splitlines()
            if line.lstrip("- ").startswith("EMERGENCY: all clear")]


def test_a_label_value_cannot_forge_a_line_of_a_page(tmp_path: Path) -> None:
    journal = Journal.in_state_dir(tmp_path / "state")
    journal.add_decision(Decision(T0, "open", 1, "performance_degraded", "medium", "evaluate",
                                  "evaluate", 900, "auto", "alert.HighLatency > 0 held for 0s"))
    journal.add_decision(Decision(
        T0 + 5, "attach", 1, "warning_alert", "low", "evaluate", "fix_forward", 600, "auto",
        f"attached to incident 1 as evidence: alert severity={FORGED}"))
    run = journal.begin_run("visionforge", incident=1, runbook="planned_rollback",
                            action="planned_rollback", scenario="performance_degraded",
                            by="alice", t=T0 + 10, deadline=T0 + 910, deploy=None,
                            restore_point=None, plan=["page"])
    journal.finish_run(run.id, "failed", f"step page failed: {FORGED}", T0 + 20)
    journal.add_decision(Decision(T0 + 30, "resolve", 1, "performance_degraded", "medium",
                                  "evaluate", "evaluate", 900, "auto",
                                  f"alice decided: dismiss ({FORGED})"))
    journal.add_event(T0 + 40, {"type": "annotate", "incident": 1, "by": FORGED,
                                "root_cause": f"a label\n{FORGED}"})
    facts = incident_facts(journal, "visionforge", 1, now=T0 + 60)
    for kind in KINDS:
        page = render(kind, facts)
        assert lines_forged(page.title) == [] and lines_forged(page.text) == [], kind
    decision = render("decision", facts).text
    assert "alert severity=x\\nEMERGENCY: all clear'" in decision
    assert "'alice decided: dismiss (x\\nEMERGENCY: all clear)'" in render("completion",
                                                                          facts).text
    assert "'a label\\nx\\nEMERGENCY: all clear'" in render("reminder", facts).text


def test_the_facts_are_the_names_templates_may_use(tmp_path: Path) -> None:
    journal = Journal.in_state_dir(tmp_path / "state")
    journal.add_decision(Decision(T0, "open", 1, "database_unreachable", "critical", "page",
                                  "page", None, "auto", "db.up == 0 held for 1m"))
    facts = incident_facts(journal, "visionforge", 1, now=T0 + 60, level=2,
                           recipient="L2 technical director")
    assert sorted(facts) == sorted(GENERAL_FACTS + INCIDENT_FACTS)
    assert all(isinstance(v, str) and v for v in facts.values())
    assert facts["level"] == "L2" and facts["recipient"] == "L2 technical director"
    assert facts["deadline"] == "none (the rule has no timeline)"
    assert facts["data_loss"] == "no data lost: the database was not restored"
    assert sorted(general_facts("visionforge", now=T0)) == sorted(GENERAL_FACTS)
    unknown = incident_facts(journal, "visionforge", 9, now=T0)
    assert unknown["summary"] == "incident 9 is not in the journal"
    assert f"incident 9, {UNKNOWN}" in render("emergency", unknown).title
