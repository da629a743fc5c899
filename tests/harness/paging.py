"""What paging tests send to: a scripted HTTP stand-in (PagerDuty, Slack, a webhook receiver,
an Alertmanager receiver target) that records what it gets, and a real SMTP server (aiosmtpd)
with optional STARTTLS and AUTH."""

from __future__ import annotations

import json
import subprocess
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from email import message_from_bytes
from email.message import Message as EmailMessage
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from daemon.journal import Page as PageRecord
from daemon.paging.message import Message
from daemon.paging.outbox import Sending
from tests.harness.http import serving
from tests.harness.servers import free_port


def page(**changes: Any) -> Message:
    """A page as the outbox would hand it to the channels (incident 7, L2, a decision)."""
    base = Message(
        dedup_key="visionforge/incident-7/L2/decision",
        alert_key="visionforge/incident-7/L2",
        app="visionforge", incident=7, level=2, recipient="L2 technical director",
        kind="decision", severity="high", title="visionforge: decide on incident 7",
        text="db.error_ratio 0.42 > 0.2 for 2m.\nAnswer: rollbackd decide 7 planned_rollback",
        labels={"scenario": "db_errors", "action": "evaluate"},
        sent_at=1_800_000_000.0,
    )
    return replace(base, **changes)


@dataclass
class FleetOf:
    """A fleet's say in an outbox's pages (the outbox's ``fleet``), without a fleet: pages of
    the local ``incidents`` (or of the local ``runs``) go out as the fleet incident mapped to
    them; this host sends every page."""

    name: str
    incidents: Mapping[int, int] = field(default_factory=dict)
    runs: Mapping[int, int] = field(default_factory=dict)
    host: str = "host0"

    def alias(self, page: PageRecord) -> tuple[str, int] | None:
        number = (self.incidents.get(page.incident) if page.incident is not None
                  else self.runs.get(page.run) if page.run is not None else None)
        return None if number is None else (self.name, number)

    def sending(self, page: PageRecord) -> Sending:
        return "send", ""


# -- the HTTP stand-in -------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One scripted reply; ``stall`` seconds of silence first (past the client's timeout)."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str = ""
    stall: float = 0.0


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: Mapping[str, str]
    """Lowercased names."""
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class StandIn(ThreadingHTTPServer):
    """Answers from a script (a queue of :class:`Answer`), then ``default``; records each
    request."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, default: Answer) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.default = default
        self.answers: deque[Answer] = deque()
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def script(self, *answers: Answer) -> None:
        with self.lock:
            self.answers.extend(answers)

    def next_answer(self, request: Received) -> Answer:
        with self.lock:
            self.received.append(request)
            return self.answers.popleft() if self.answers else self.default

    def bodies(self) -> list[Any]:
        with self.lock:
            return [r.json() for r in self.received if r.body]

    def shutdown(self) -> None:
        self.stopping.set()  # ends every stall at once
        super().shutdown()


class _Handler(BaseHTTPRequestHandler):
    server: StandIn

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        request = Received(self.command, self.path,
                           {k.lower(): v for k, v in self.headers.items()},
                           self.rfile.read(length))
        answer = self.server.next_answer(request)
        if answer.stall and self.server.stopping.wait(answer.stall):
            return
        body = answer.body.encode()
        try:
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout): that was the point of the stall

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def stand_in(default: Answer | None = None) -> Iterator[StandIn]:
    """A started :class:`StandIn` on loopback (answering 200 unless told), stopped on exit."""
    with serving(StandIn(default or Answer())) as server:
        yield server


# -- the SMTP server ---------------------------------------------------------------------


@dataclass(frozen=True)
class Mail:
    sender: str
    recipients: list[str]
    message: EmailMessage


class _Recorder:
    def __init__(self) -> None:
        self.mails: list[Mail] = []
        self.replies: deque[str] = deque()
        self.logins: list[str] = []

    async def handle_DATA(  # noqa: N802 (aiosmtpd's name)
            self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.replies:
            return self.replies.popleft()
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        self.mails.append(Mail(str(envelope.mail_from), list(envelope.rcpt_tos),
                               message_from_bytes(raw, policy=default_policy)))
        return "250 2.0.0 OK queued"


@dataclass
class SmtpServer:
    host: str
    port: int
    recorder: _Recorder
    ca_file: Path | None

    @property
    def mails(self) -> list[Mail]:
        return self.recorder.mails

    def script(self, *replies: str) -> None:
        """Answer the next DATA commands with these replies (``451 4.3.0 busy``)."""
        self.recorder.replies.extend(replies)

    @property
    def logins(self) -> list[str]:
        return self.recorder.logins


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with openssl (valid one day)."""
    cert, key = directory / "smtp.crt", directory / "smtp.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@contextmanager
def smtp_server(tls_dir: Path | None = None,
                login: tuple[str, str] | None = None) -> Iterator[SmtpServer]:
    """aiosmtpd on 127.0.0.1: STARTTLS offered when ``tls_dir`` is given (a self-signed
    certificate made there; ``ca_file`` is it), AUTH required when ``login`` is given."""
    import ssl

    recorder = _Recorder()
    kwargs: dict[str, Any] = {}
    ca_file = None
    if tls_dir is not None:
        ca_file, key = self_signed_cert(tls_dir)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(ca_file, key)
        kwargs.update(tls_context=context, require_starttls=True)
    if login is not None:
        def authenticate(server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                         data: Any) -> AuthResult:
            ok = (isinstance(data, LoginPassword)
                  and (data.login.decode(), data.password.decode()) == login)
            if ok:
                recorder.logins.append(data.login.decode())
            # handled=False: aiosmtpd then answers 535 itself
            return AuthResult(success=ok, handled=False)

        kwargs.update(authenticator=authenticate, auth_required=True,
                      auth_require_tls=tls_dir is not None)
    controller = Controller(recorder, hostname="127.0.0.1", port=free_port(), **kwargs)
    controller.start()
    try:
        yield SmtpServer("127.0.0.1", controller.port, recorder, ca_file)
    finally:
        controller.stop()


class RecordedSleeps(list[float]):
    """A ``sleep`` for :func:`daemon.paging.deliver.deliver` that records each wait instead
    of waiting, so retry tests take no time and show the waits chosen."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


def closed_port_url(path: str = "") -> str:
    """A loopback URL nothing listens on (connection refused)."""
    return f"http://127.0.0.1:{free_port()}{path}"
