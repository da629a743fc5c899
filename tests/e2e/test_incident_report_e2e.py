"""`rollbackd incidents report N` and `GET /api/v1/incidents/{id}/report` (real processes, real
PostgreSQL): the report of an incident journaled as the executor journals it, its data window
compared in the restored database and the copy the swap kept; one line and exit 1, or 404, for
an incident the journal does not have."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.journal import Journal
from tests.harness.api import Rollbackd
from tests.harness.cli import rollbackd
from tests.harness.config import config_file
from tests.harness.incidents import EXPECTED_WINDOW, journal_an_incident, live_and_kept
from tests.harness.servers import PgCluster, wait_for

pytestmark = pytest.mark.e2e


def window_of(report: dict[str, Any]) -> dict[str, tuple[Any, Any, Any]]:
    [window] = report["data_window"]
    return {t["table"]: (t["missing"], t["examples"], t["key"]) for t in window["tables"]}


def test_the_cli_prints_the_report_writing_it_first_and_refuses_an_unknown_incident(
        tmp_path: Path, pg_cluster: PgCluster) -> None:
    live, kept = live_and_kept(pg_cluster)
    config = config_file(tmp_path, app={"name": "visionforge"},
                         database={"dsn": pg_cluster.dsn(live)})
    journal = Journal.in_state_dir(tmp_path / "state")
    journal_an_incident(journal, live, kept)
    journal.close()
    directory = tmp_path / "state" / "incidents" / "1"

    printed = rollbackd("incidents", "report", "1", config=config)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == (directory / "report.md").read_text()
    assert "## Data window" in printed.stdout and f"database {kept}" in printed.stdout
    assert (directory / "execution.jsonl").read_text().count('"event": "step"') == 7

    as_json = rollbackd("incidents", "report", "1", "--format", "json", config=config)
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report == json.loads((directory / "report.json").read_text())
    assert window_of(report) == {k: tuple(v) for k, v in EXPECTED_WINDOW.items()}

    for number in ("7", "99999999999999999999"):
        unknown = rollbackd("incidents", "report", number, config=config)
        assert unknown.returncode == 1
        assert unknown.stdout == ""
        assert unknown.stderr == f"rollbackd: no incident {number} in the journal\n"


@pytest.fixture
def daemon(tmp_path: Path, pg_cluster: PgCluster) -> Iterator[tuple[Rollbackd, str]]:
    live, kept = live_and_kept(pg_cluster)
    api = (f'[api]\ntoken_files = ["{tmp_path / "api.token"}"]\n\n'
           f'[database]\ndsn = "{pg_cluster.dsn(live)}"\n')
    started = Rollbackd(tmp_path, api)
    try:
        journal_an_incident(started.journal, live, kept)
        # The running daemon tells people of the resolution it finds (a completion notice in
        # the journal: no channel is configured); the report compared below must come after.
        wait_for(lambda: any(p.template == "completion"
                             for p in started.journal.pages(incident=1)), 20,
                 what="the daemon's completion notice")
        yield started, kept
    finally:
        started.close()


def test_the_api_returns_the_report_with_a_token_and_404_for_an_unknown_incident(
        daemon: tuple[Rollbackd, str], tmp_path: Path) -> None:
    rollbackd_, kept = daemon
    directory = tmp_path / "state" / "incidents" / "1"

    answer = rollbackd_.call("GET", "/api/v1/incidents/1/report")
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert window_of(report) == {k: tuple(v) for k, v in EXPECTED_WINDOW.items()}
    assert report == json.loads((directory / "report.json").read_text())
    assert report["summary"]["scenario"] == "migration_failed"

    markdown = rollbackd_.call("GET", "/api/v1/incidents/1/report?format=md")
    assert markdown.status_code == 200
    assert markdown.headers["content-type"].startswith("text/markdown")
    assert markdown.text == (directory / "report.md").read_text()
    assert f"database {kept}" in markdown.text

    # The CLI prints the very report the daemon wrote (the journal has not changed since).
    cli = rollbackd_.cli("incidents", "report", "1", "--format", "json")
    assert cli.returncode == 0 and json.loads(cli.stdout) == report

    assert rollbackd_.call("GET", "/api/v1/incidents/1/report", token=None).status_code == 401
    assert rollbackd_.call("GET", "/api/v1/incidents/1/report?format=pdf").status_code == 400
    for number in ("9", "0", "9223372036854775808", "99999999999999999999"):
        missing = rollbackd_.call("GET", f"/api/v1/incidents/{number}/report")
        assert missing.status_code == 404, (number, missing.text)
    assert "no incident 9" in rollbackd_.call(
        "GET", "/api/v1/incidents/9/report").json()["error"]
