"""The HTTP API's request bodies: what each accepts, and the one line a 400 answers with."""

from __future__ import annotations

from typing import Any

import pytest

from daemon.service.api import (
    AckBody,
    AlertmanagerWebhook,
    DecisionBody,
    PauseBody,
    ResumeBody,
    describe_validation,
)
from policies.schema import Model, SchemaError, convert


def alert(**labels: str) -> dict[str, Any]:
    return {"status": "firing", "labels": {"alertname": "HighLatency", **labels}}


def webhook(*alerts: object, **extra: object) -> dict[str, Any]:
    return {"version": "4", "alerts": list(alerts), **extra}


def refusal(data: object, kind: type[Model]) -> str:
    with pytest.raises(SchemaError) as caught:
        convert(data, kind)
    return describe_validation(caught.value)


@pytest.mark.parametrize(("data", "kind", "message"), [
    (webhook({"status": "firing", "labels": {"severity": "warning"}}), AlertmanagerWebhook,
     "alerts[0].labels: alertname is missing"),
    ({"alerts": []}, AlertmanagerWebhook, "version: required key is missing"),
    ([alert()], AlertmanagerWebhook, "body: must be a JSON object"),
    (webhook("HighLatency"), AlertmanagerWebhook, "alerts[0]: must be a JSON object"),
    ({"reason": "a\nb"}, PauseBody, "reason: must be a single line"),
    ({"reason": "maintenance\n"}, PauseBody, "reason: must be a single line"),
    ({"by": "alice\r"}, ResumeBody, "by: must be a single line"),
    ({"reasn": "typo"}, PauseBody, "reasn: unknown key"),
    ({"decision": "dismiss"}, DecisionBody, "by: required key is missing"),
    ({"decision": "dismiss", "by": "alice", "reason": "one\ntwo"}, DecisionBody,
     "reason: must be a single line"),
    ({"decision": "dismiss", "by": "alice", "runbook": "Code_Only"}, DecisionBody,
     "runbook: must be a runbook name: a lowercase letter, then up to 59 lowercase letters, "
     "digits and _"),
    ({"by": "alice", "comment": "seen\n"}, AckBody, "comment: must be a single line"),
])
def test_a_refused_body_is_one_line_naming_the_field(data: object, kind: type[Model],
                                                    message: str) -> None:
    assert refusal(data, kind) == message


@pytest.mark.parametrize(("data", "kind", "field"), [
    ({**webhook(alert()), "version": "3"}, AlertmanagerWebhook, "version"),
    (webhook(alert(), alerts="HighLatency"), AlertmanagerWebhook, "alerts"),
    (webhook({**alert(), "labels": {"alertname": "A", "severity": 5}}), AlertmanagerWebhook,
     "alerts[0].labels.severity"),
    (webhook({**alert(), "status": "pending"}), AlertmanagerWebhook, "alerts[0].status"),
    ({"by": ""}, PauseBody, "by"),
    ({"decision": "restore", "by": "alice"}, DecisionBody, "decision"),
    ({"decision": "dismiss", "by": "alice", "tables": "users"}, DecisionBody, "tables"),
    ({"decision": "dismiss", "by": "alice", "tables": ["t"] * 101}, DecisionBody, "tables"),
    ({"decision": "dismiss", "by": "alice", "tables": ["t" * 201]}, DecisionBody, "tables[0]"),
])
def test_a_value_of_the_wrong_kind_or_size_is_named(data: object, kind: type[Model],
                                                    field: str) -> None:
    message = refusal(data, kind)
    assert message.startswith(f"{field}: ") and "\n" not in message, message


def test_a_json_object_where_a_string_goes_is_called_so() -> None:
    message = refusal({"by": "alice", "comment": {"text": "seen"}}, AckBody)
    assert message.startswith("comment: ") and message.endswith("not a JSON object"), message


def test_alertmanager_may_add_keys_that_are_ignored_and_its_names_are_read() -> None:
    sent = webhook({**alert(), "fingerprint": "f1", "startsAt": "2026-01-01T00:00:00Z",
                    "generatorURL": "http://prometheus"}, truncatedAlerts=2,
                   groupLabels={"alertname": "HighLatency"})

    hook = convert(sent, AlertmanagerWebhook)

    assert hook.truncated_alerts == 2
    assert hook.alerts[0].event() == {
        "type": "alert", "status": "firing", "labels": {"alertname": "HighLatency"},
        "fingerprint": "f1", "startsAt": "2026-01-01T00:00:00Z"}


def test_our_own_bodies_have_their_defaults() -> None:
    assert convert({}, PauseBody) == PauseBody(reason="", by="api")
    decided = convert({"decision": "selective_rollback", "by": "alice", "tables": ["users"],
                       "runbook": "restore_tables"}, DecisionBody)
    assert (decided.tables, decided.runbook, decided.reason) == (["users"], "restore_tables", "")
