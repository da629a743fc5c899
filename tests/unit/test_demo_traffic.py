"""The demo's traffic recorder, against a mock transport: only what the app acknowledged counts."""

from __future__ import annotations

import json
import time

import httpx

from examples.traffic import Traffic


def app(answers: list[object]) -> httpx.Client:
    """A client whose requests get ``answers`` in turn: a status code (201 echoes the row with
    the next id), an exception to raise, or a (status, body) pair."""
    ids = iter(range(1, 10_000))

    def handle(request: httpx.Request) -> httpx.Response:
        answer = answers.pop(0) if answers else 201
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, tuple):
            return httpx.Response(answer[0], json=answer[1])
        body = json.loads(request.content)
        if answer == 201:
            return httpx.Response(201, json={"id": next(ids), "email": body["email"],
                                             "name": body["name"]})
        return httpx.Response(int(str(answer)), json={"error": "no"})

    return httpx.Client(transport=httpx.MockTransport(handle))


def test_acknowledged_writes_are_recorded_with_their_id_email_and_time() -> None:
    clock = iter([100.0, 101.0])
    traffic = Traffic("http://app", tag="t", client=app([201, 201]), clock=lambda: next(clock))

    first, second = traffic.write_one(), traffic.write_one()

    assert first is not None and second is not None
    assert (first.seq, first.id, first.email, first.at) == (1, 1, "t-1@traffic.example", 100.0)
    assert (second.id, second.email, second.at) == (2, "t-2@traffic.example", 101.0)
    assert traffic.writes == [first, second]
    assert traffic.acknowledged_since(101.0) == 1
    assert traffic.describe() == "2 writes acknowledged, 0 failed"


def test_refusals_errors_and_odd_answers_are_failures_not_writes() -> None:
    answers: list[object] = [httpx.ConnectError("refused"), 503, 500, 201,
                             (201, {"id": 9, "email": "someone-else@x"}), (201, {"nope": 1}),
                             httpx.ConnectError("refused")]
    traffic = Traffic("http://app", tag="t", client=app(answers))

    results = [traffic.write_one() for _ in range(7)]

    assert [r is not None for r in results] == [False, False, False, True, False, False, False]
    assert traffic.attempts == 7
    assert traffic.failures == {"ConnectError": 2, "HTTP 503": 1, "HTTP 500": 1,
                                "answer for another row": 1, "unreadable answer": 1}
    assert traffic.describe() == ("1 writes acknowledged, 6 failed (ConnectError 2, HTTP 503 1, "
                                  "HTTP 500 1, answer for another row 1, unreadable answer 1)")


def test_the_thread_keeps_writing_until_stopped() -> None:
    traffic = Traffic("http://app", tag="t", every=0.01, client=app([]))
    traffic.start()
    deadline = time.monotonic() + 5
    while len(traffic.writes) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    traffic.stop()
    count = len(traffic.writes)

    time.sleep(0.05)
    assert count >= 5
    assert len(traffic.writes) == count  # nothing after stop()
    assert [w.seq for w in traffic.writes] == list(range(1, count + 1))
