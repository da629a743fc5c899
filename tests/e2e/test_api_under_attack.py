"""The HTTP API of a real `rollbackd run` under hostile input: whatever arrives, the answer is
a 4xx (or nothing, for a client that left), never a 5xx, and the daemon logs no traceback."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness.api import Rollbackd, alert, webhook

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rollbackd]:
    started = Rollbackd(tmp_path_factory.mktemp("api-attack"))
    yield started
    started.close()


def no_tracebacks(daemon: Rollbackd) -> None:
    output = daemon.proc.output()
    assert "Traceback" not in output, output[-3000:]
    assert '"level": "error"' not in output, output[-3000:]


def test_a_deeply_nested_array_in_an_ignored_field_is_a_400(daemon: Rollbackd) -> None:
    body = json.dumps(webhook(alert()))[:-1] + ', "extra": ' + "[" * 1500 + "]" * 1500 + "}"
    response = daemon.call("POST", "/api/v1/alertmanager", content=body,
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert "nested too deeply" in response.json()["error"]
    no_tracebacks(daemon)


@pytest.mark.parametrize("number", ["9223372036854775808", "99999999999999999999999", "0"])
def test_an_incident_number_beyond_any_journal_is_a_404(daemon: Rollbackd, number: str) -> None:
    for method, path in (("GET", f"/api/v1/incidents/{number}"),
                         ("POST", f"/api/v1/incidents/{number}/decision"),
                         ("POST", f"/api/v1/incidents/{number}/ack")):
        response = daemon.call(method, path, json={"decision": "dismiss", "by": "ops"})
        assert response.status_code == 404, (path, response.text)
    no_tracebacks(daemon)


def test_a_client_that_leaves_mid_body_costs_a_quiet_line_not_a_traceback(
        daemon: Rollbackd) -> None:
    where = urlsplit(daemon.url)
    with socket.create_connection((where.hostname, where.port), timeout=5) as sock:
        sock.sendall(b"POST /api/v1/alertmanager HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer " + daemon.token.encode() + b"\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
                     b'{"version": "4", "alerts": [')
        time.sleep(0.3)
    time.sleep(0.5)
    assert daemon.call("GET", "/api/v1/status").status_code == 200
    no_tracebacks(daemon)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4), max_leaves=20)
_paths = st.sampled_from([
    "/api/v1/alertmanager", "/api/v1/status", "/api/v1/incidents", "/api/v1/incidents/1",
    "/api/v1/incidents/1/decision", "/api/v1/pause", "/api/v1/resume", "/api/v1/nothing",
    "/metrics", "/healthz", "/readyz", "/", "/api/v1/incidents/-1",
    "/api/v1/incidents/18446744073709551616/decision", "/api/v1/incidents/1%00",
    "/api/v1/incidents/1/ack", "/api/v1/incidents/18446744073709551616/ack",
])
_text = st.text(max_size=12) | st.sampled_from(["", "users", "public.images", "a\nb", "x" * 300])
_answers = st.one_of(
    st.fixed_dictionaries({"decision": st.sampled_from(
        ["dismiss", "fix_forward", "rollback", "immediate_rollback", "planned_rollback",
         "selective_rollback", "evaluate", ""]), "by": _text},
        optional={"reason": _text, "runbook": _text | st.none(),
                  "tables": st.lists(_text, max_size=3) | _text}),
    st.fixed_dictionaries({"by": _text}, optional={"comment": _text | _json}),
).map(lambda v: json.dumps(v).encode())
_bodies = st.one_of(
    _json.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda alerts, extra: json.dumps(webhook(*alerts, **extra)).encode(),
              st.lists(st.fixed_dictionaries({"status": st.sampled_from(["firing", "resolved",
                                                                           "x"]),
                                               "labels": st.dictionaries(st.text(max_size=8),
                                                                         _json, max_size=3)}),
                       max_size=3),
              st.dictionaries(st.text(max_size=8), _json, max_size=2)),
    st.binary(max_size=300),
    _answers,
)


@settings(max_examples=250, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]), path=_paths, body=_bodies,
       with_token=st.booleans(), content_type=st.sampled_from(
           ["application/json", "text/plain", "application/json; charset=latin-1"]))
def test_no_request_makes_the_api_answer_5xx(daemon: Rollbackd, method: str, path: str,
                                            body: bytes, with_token: bool,
                                            content_type: str) -> None:
    response = daemon.call(method, path, token="" if with_token else None, content=body,
                           headers={"Content-Type": content_type})
    assert response.status_code < 500, (method, path, body[:200], response.text)


def test_after_the_fuzzing_the_daemon_logged_no_traceback_and_kept_its_interval(
        daemon: Rollbackd) -> None:
    no_tracebacks(daemon)
    last = daemon.metric("rollbackd_last_cycle_timestamp_seconds")
    assert last is not None and time.time() - last < 5, "the main loop stopped cycling"


