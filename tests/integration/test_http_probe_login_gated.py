"""The HTTP probe against a real login-gated app on 127.0.0.1.

The incident: users got 257 HTTP 500s while rollbackd reported "errors 0.0 %", because the
probe had no session, was redirected to the login page, followed the redirect silently and
counted the login page's 200 as a healthy app. The app below behaves like that one: without
the session cookie every page redirects to /login; with it, pages answer 500 (the broken
deploy) until the test mends them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from policies.schema import SchemaError, convert
from probes.http import HttpProbe
from probes.runner import ProbeOutcome, measure_one
from probes.settings import HttpProbeSettings
from tests.harness.http import serving

SESSION = "c2Vzc2lvbi1mb3ItdGhlLXByb2Jl"
LOGIN_PAGE = b"<html><body><form>Please log in</form></body></html>"


@dataclass
class Seen:
    """What the app received: the path, method, body and session of each request."""

    paths: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    cookies: list[str | None] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)


class App(ThreadingHTTPServer):
    daemon_threads = True
    broken = True
    seen: Seen

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class Handler(BaseHTTPRequestHandler):
    server: App

    def do_GET(self) -> None:
        self._record(b"")
        if self.path.partition("?")[0] == "/login":
            # Every visitor gets a session cookie on the login page, as login pages do.
            self._answer(200, LOGIN_PAGE, ("Set-Cookie", "anonymous=1; Path=/"))
        elif self.headers.get("Cookie") != f"session={SESSION}":
            self._answer(302, b"", ("Location", "/login?next=/dashboard"))
        elif self.server.broken:
            self._answer(500, b"Internal Server Error")
        else:
            self._answer(200, b'{"status": "ok"}')

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._record(self.rfile.read(length))
        self._answer(200, json.dumps({"received": len(self.server.seen.bodies)}).encode())

    def _record(self, body: bytes) -> None:
        seen = self.server.seen
        seen.paths.append(self.path)
        seen.methods.append(self.command)
        seen.bodies.append(body)
        seen.cookies.append(self.headers.get("Cookie"))
        seen.authorizations.append(self.headers.get("Authorization"))

    def _answer(self, status: int, body: bytes, *headers: tuple[str, str]) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def app() -> Iterator[App]:
    server = App(("127.0.0.1", 0), Handler)
    server.seen = Seen()
    with serving(server):
        yield server


@pytest.fixture
def session_file(tmp_path: Path) -> Path:
    """The session cookie as an operator saves it: one line, newline at the end."""
    path = tmp_path / "session"
    path.write_text(SESSION + "\n")
    return path


@pytest.fixture
async def probes() -> AsyncIterator[list[HttpProbe]]:
    made: list[HttpProbe] = []
    yield made
    for probe in made:
        await probe.aclose()


def make(probes: list[HttpProbe], url: str, **given: object) -> HttpProbe:
    probe = HttpProbe(convert(
        {"name": "app", "url": url, "timeout": 2.0, **given}, HttpProbeSettings))
    probes.append(probe)
    return probe


async def tick(probe: HttpProbe) -> ProbeOutcome:
    outcome = await measure_one(probe, bound=5.0)
    assert outcome.ok, outcome.error
    return outcome


def with_session(session_file: Path) -> dict[str, object]:
    return {"Cookie": {"file": str(session_file), "prefix": "session="}}


async def test_without_a_session_the_redirect_to_the_login_page_is_an_error(
    app: App, probes: list[HttpProbe]
) -> None:
    outcome = await tick(make(probes, app.url("/dashboard")))

    assert outcome.reading["http.app.error_ratio"] == 1.0
    why = outcome.problems["http.app.error_ratio"]
    assert "HTTP 302 to /login" in why and "not an expected status" in why
    # The redirect was not followed: the login page's 200 cannot pass for the app.
    assert app.seen.paths == ["/dashboard"]


async def test_with_the_session_cookie_from_a_file_the_probe_sees_the_500s(
    app: App, probes: list[HttpProbe], session_file: Path
) -> None:
    probe = make(probes, app.url("/dashboard"), headers=with_session(session_file))

    broken = await tick(probe)
    assert app.seen.cookies == [f"session={SESSION}"]
    assert broken.reading["http.app.up"] == 0.0
    assert broken.reading["http.app.error_ratio"] == 1.0
    assert broken.problems["http.app.error_ratio"] == "1 of 1 requests failed: HTTP 500"

    app.broken = False
    mended = await tick(probe)
    assert mended.reading["http.app.up"] == 1.0
    assert mended.reading["http.app.error_ratio"] == 0.5
    assert mended.problems == {}


async def test_a_bearer_token_from_a_file_is_sent_with_its_prefix(
    app: App, probes: list[HttpProbe], tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("t0k3n\r\n")
    headers = {"Authorization": {"file": str(token), "prefix": "Bearer "}}
    await tick(make(probes, app.url("/login"), headers=headers))
    assert app.seen.authorizations == ["Bearer t0k3n"]


async def test_a_followed_redirect_is_judged_by_the_page_it_lands_on(
    app: App, probes: list[HttpProbe]
) -> None:
    follows = make(probes, app.url("/dashboard"), follow_redirects=True)
    landed = await tick(follows)
    # Following is the operator's choice; the login page is then what is judged.
    assert app.seen.paths == ["/dashboard", "/login?next=/dashboard"]
    assert landed.reading["http.app.error_ratio"] == 0.0

    guarded = make(probes, app.url("/dashboard"), name="guarded", follow_redirects=True,
                   fail_if_body_matches=["(?i)please log in"])
    outcome = await tick(guarded)
    assert outcome.reading["http.guarded.error_ratio"] == 1.0
    assert "fail_if_body_matches[0]" in outcome.problems["http.guarded.error_ratio"]


async def test_a_redirect_listed_in_expect_status_is_the_app_answering(
    app: App, probes: list[HttpProbe]
) -> None:
    outcome = await tick(make(probes, app.url("/dashboard"), expect_status=["302"]))
    assert outcome.reading["http.app.error_ratio"] == 0.0
    assert outcome.reading["http.app.up"] == 1.0


async def test_a_body_without_the_expected_text_is_an_error(
    app: App, probes: list[HttpProbe], session_file: Path
) -> None:
    app.broken = False
    healthy = make(probes, app.url("/dashboard"), headers=with_session(session_file),
                   fail_if_body_not_matches=['"status":\\s*"ok"'])
    assert (await tick(healthy)).reading["http.app.error_ratio"] == 0.0

    login = make(probes, app.url("/login"), name="login",
                 fail_if_body_not_matches=['"status":\\s*"ok"'])
    outcome = await tick(login)
    assert outcome.reading["http.login.error_ratio"] == 1.0
    assert "fail_if_body_not_matches[0]" in outcome.problems["http.login.error_ratio"]


async def test_method_body_and_headers_are_sent_as_configured(
    app: App, probes: list[HttpProbe]
) -> None:
    probe = make(probes, app.url("/api/search"), method="POST", body='{"q": "health"}',
                 headers={"Content-Type": "application/json"})
    outcome = await tick(probe)
    assert outcome.reading["http.app.error_ratio"] == 0.0
    assert app.seen.methods == ["POST"]
    assert app.seen.bodies == [b'{"q": "health"}']


async def test_cookies_the_app_sets_are_not_sent_back_on_later_ticks(
    app: App, probes: list[HttpProbe]
) -> None:
    # Each tick presents exactly what the config says, whatever an earlier answer set.
    probe = make(probes, app.url("/login"))
    await tick(probe)
    await tick(probe)
    assert app.seen.cookies == [None, None]


async def test_header_values_from_files_appear_in_no_repr_or_problem(
    app: App, probes: list[HttpProbe], session_file: Path
) -> None:
    probe = make(probes, app.url("/dashboard"), headers=with_session(session_file))
    outcome = await tick(probe)
    assert SESSION not in repr(probe.settings)
    assert SESSION not in repr(outcome.problems)


def test_a_header_file_is_read_when_the_config_loads_and_its_problems_name_the_header(
    tmp_path: Path,
) -> None:
    def load(headers: dict[str, object]) -> HttpProbeSettings:
        return convert(
            {"name": "app", "url": "http://127.0.0.1:1/", "headers": headers}, HttpProbeSettings)

    missing = tmp_path / "missing"
    with pytest.raises(SchemaError, match=r"headers\.Cookie: cannot read .*missing"):
        load({"Cookie": {"file": str(missing)}})

    huge = tmp_path / "huge"
    huge.write_text("x" * 20_000)
    with pytest.raises(SchemaError, match=r"headers\.Cookie: .* larger than 16 KiB"):
        load({"Cookie": {"file": str(huge)}})

    two_lines = tmp_path / "two-lines"
    two_lines.write_text("first\nsecond\n")
    with pytest.raises(SchemaError, match=r"headers\.Cookie: .*control character"):
        load({"Cookie": {"file": str(two_lines)}})

    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(SchemaError, match=r"headers\.Cookie: .*empty"):
        load({"Cookie": {"file": str(empty)}})
