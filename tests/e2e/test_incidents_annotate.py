"""`rollbackd incidents annotate N --root-cause ... --prevention ...` as a person runs it: exit 0
and the report's Root cause and Prevention sections show the latest of each with who wrote it;
exit 2 for a usage error, exit 1 for an incident the journal does not have; the reminders stop
once both are written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.journal import Journal
from daemon.paging.facts import needs_annotation
from policies.engine import Decision
from tests.harness.cli import rollbackd
from tests.harness.config import config_file

pytestmark = pytest.mark.e2e

T0 = 1_800_000_000.0


def resolved_incident(tmp_path: Path) -> Path:
    config = config_file(tmp_path, app={"name": "visionforge"})
    journal = Journal.in_state_dir(tmp_path / "state")
    journal.add_decision(Decision(T0, "open", 1, "database_unreachable", "critical", "page",
                                  "page", 900, "auto", "db.up == 0 held for 1m"))
    journal.add_decision(Decision(T0 + 600, "resolve", 1, "database_unreachable", "critical",
                                  "page", "page", 900, "auto",
                                  "every rule of the incident has been clear for its clear_for"))
    journal.close()
    return config


def needs(tmp_path: Path) -> bool:
    journal = Journal.in_state_dir(tmp_path / "state")
    try:
        return needs_annotation(journal, 1)
    finally:
        journal.close()


def test_an_annotation_shows_in_the_report_and_stops_the_reminders(tmp_path: Path) -> None:
    config = resolved_incident(tmp_path)
    assert needs(tmp_path)
    before = rollbackd("incidents", "report", "1", config=config)
    assert before.returncode == 0, before.stderr
    assert "Not written yet (`rollbackd incidents annotate 1 --root-cause TEXT`)" in before.stdout

    first = rollbackd("incidents", "annotate", "1", "--root-cause", "disk full on db1",
                      "--by", "alice", config=config)
    assert first.returncode == 0, first.stderr
    assert first.stdout == ("incident 1: root cause recorded (`rollbackd incidents report 1` "
                            "shows it)\n")
    assert needs(tmp_path)  # the prevention is still missing

    second = rollbackd("incidents", "annotate", "1", "--root-cause",
                       "the WAL volume filled up\nwhile a backup ran", "--prevention",
                       "alert at 80 % disk", "--by", "bob", "--json", config=config)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout) == {
        "incident": 1, "by": "bob", "root_cause": "the WAL volume filled up\nwhile a backup ran",
        "prevention": "alert at 80 % disk"}
    assert not needs(tmp_path)

    report = rollbackd("incidents", "report", "1", config=config)
    assert report.returncode == 0, report.stderr
    root_cause = report.stdout.split("## Root cause\n")[1].split("## Impact")[0]
    assert root_cause.startswith(
        "\n> the WAL volume filled up\n> while a backup ran\n\n— written by bob at ")
    assert "disk full on db1" not in report.stdout  # the latest one only
    prevention = report.stdout.split("## Prevention\n")[1]
    assert prevention.startswith("\n> alert at 80 % disk\n\n— written by bob at ")
    assert "- [ ] " in prevention  # what rollbackd recommends stays
    as_json = json.loads(rollbackd("incidents", "report", "1", "--format", "json",
                                   config=config).stdout)
    assert as_json["annotations"]["prevention"]["text"] == "alert at 80 % disk"
    assert as_json["annotations"]["root_cause"]["by"] == "bob"


@pytest.mark.parametrize(("args", "code", "message"), [
    ([], 2, "rollbackd: give --root-cause, --prevention or both\n"),
    (["--root-cause", "  \n "], 2, "rollbackd: the root cause is empty\n"),
    (["--prevention", "x" * 4001], 2,
     "rollbackd: the prevention is 4001 characters long; at most 4000 (link to a longer "
     "document instead)\n"),
    (["--root-cause", "a\x1b[2Jb"], 2,
     "rollbackd: the root cause holds the control character '\\x1b'\n"),
])
def test_an_annotation_that_cannot_be_used_is_a_usage_error(
        tmp_path: Path, args: list[str], code: int, message: str) -> None:
    config = resolved_incident(tmp_path)
    result = rollbackd("incidents", "annotate", "1", *args, config=config)
    assert (result.returncode, result.stdout, result.stderr) == (code, "", message)
    assert needs(tmp_path)


def test_annotating_an_incident_the_journal_does_not_have_fails(tmp_path: Path) -> None:
    config = resolved_incident(tmp_path)
    for number in ("7", "99999999999999999999"):
        result = rollbackd("incidents", "annotate", number, "--root-cause", "x", config=config)
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == f"rollbackd: no incident {number} in the journal\n"
