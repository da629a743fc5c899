"""Incident reports for the CLI and the HTTP API: one incident's journal rows, then its report
as written under ``state_dir/incidents/<id>/`` (made again first when missing or stale)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from daemon.config import Config
from daemon.journal import Journal
from daemon.ops.operator import DecisionError
from daemon.runbooks.reports import CurrentReport, IncidentFacts, current_report, gather_facts

MAX_INCIDENT = 2**63 - 1
"""SQLite integers are 64-bit: a bigger number names no incident."""


def report_facts(journal: Journal, incident: int) -> IncidentFacts:
    """The incident's journal rows (reads only: call it where the journal is used). Raises
    DecisionError (missing) when the journal has no such incident."""
    facts = gather_facts(journal, incident) if 0 < incident <= MAX_INCIDENT else None
    if facts is None:
        raise DecisionError(f"no incident {incident} in the journal", missing=True)
    return facts


@dataclass(frozen=True, slots=True)
class IncidentReportView:
    """``incidents report N``: the Markdown for people, the report's object for ``json``."""

    current: CurrentReport

    def as_json(self) -> dict[str, Any]:
        return self.current.report.data

    def describe(self) -> list[str]:
        return self.current.report.markdown().splitlines()


def incident_report(config: Config, journal: Journal, incident: int) -> IncidentReportView:
    """The incident's report, written first when missing or stale (blocking: a data window
    not yet computed is compared in the databases). Raises DecisionError (missing)."""
    return IncidentReportView(current_report(config, report_facts(journal, incident)))
