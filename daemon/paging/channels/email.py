"""E-mail over SMTP (smtplib in a thread): STARTTLS unless configured off, never a silent
fall back to plain text, a login when a username is configured."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

from daemon.paging.channels.base import DeliveryError, sent_at
from daemon.paging.message import Message
from probes.base import tls_context

MAX_REPLY = 120
"""How much of an SMTP server's reply an error quotes."""


def message_id(key: str) -> str:
    """A Message-ID derived from a key, so a re-sent page has the same one (mail clients and
    archives recognise it) and a level's pages thread under the same root."""
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:32]}@rollbackd>"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def build_email(message: Message, sender: str, to: Sequence[str], *, now: float) -> EmailMessage:
    mail = EmailMessage()
    mail["Subject"] = _one_line(message.title)
    mail["From"] = sender
    mail["To"] = ", ".join(to)
    mail["Date"] = format_datetime(datetime.fromtimestamp(sent_at(message, now), UTC))
    mail["Message-ID"] = message_id(message.dedup_key)
    thread = message_id(message.alert_key)
    mail["In-Reply-To"] = thread
    mail["References"] = thread
    mail["X-Rollbackd-Dedup-Key"] = _one_line(message.dedup_key)
    mail["X-Rollbackd-Event"] = message.event
    mail.set_content(message.text)
    return mail


class EmailChannel:
    def __init__(self, *, host: str, port: int, sender: str, to: Sequence[str],
                 timeout: float, starttls: bool = True, username: str | None = None,
                 password: str = "", ca_file: Path | None = None, name: str = "email",
                 clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.sender = sender
        self.to = list(to)
        self.timeout = timeout
        self.starttls = starttls
        self.username = username
        self._password = password
        self.ca_file = ca_file
        self._clock = clock

    def __repr__(self) -> str:
        return f"EmailChannel(name={self.name!r}, server={self.host}:{self.port})"

    async def send(self, message: Message) -> str:
        mail = build_email(message, self.sender, self.to, now=self._clock())
        return await asyncio.to_thread(self._send_blocking, mail)

    def _tls(self) -> ssl.SSLContext:
        if self.ca_file is None:
            return tls_context()
        return ssl.create_default_context(cafile=str(self.ca_file))

    def _send_blocking(self, mail: EmailMessage) -> str:
        import smtplib  # at the first e-mail page: a daemon that sends none never needs it

        server = f"{self.host}:{self.port}"
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                smtp.ehlo()
                if self.starttls:
                    if not smtp.has_extn("starttls"):
                        raise DeliveryError(
                            f"{self.name}: {server} does not offer STARTTLS (not sending in "
                            "plain text; set starttls = false only for a local relay)",
                            permanent=True)
                    smtp.starttls(context=self._tls())
                    smtp.ehlo()
                if self.username is not None:
                    smtp.login(self.username, self._password)
                refused = smtp.send_message(mail)
        except DeliveryError:
            raise
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            raise DeliveryError(f"{self.name}: {server} refused every recipient "
                                f"({', '.join(sorted(exc.recipients))}: "
                                f"{', '.join(str(c) for c in sorted(set(codes)))})",
                                permanent=all(c >= 500 for c in codes)) from None
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(f"{self.name}: {server} refused the login of {self.username} "
                                f"({exc.smtp_code})", permanent=exc.smtp_code >= 500) from None
        except smtplib.SMTPResponseException as exc:
            raise DeliveryError(f"{self.name}: {server} answered {exc.smtp_code} "
                                f"{self._reply(exc.smtp_error)}",
                                permanent=exc.smtp_code >= 500) from None
        except ssl.SSLError as exc:
            raise DeliveryError(f"{self.name}: STARTTLS with {server} failed: "
                                f"{exc.reason or type(exc).__name__}", permanent=True) from None
        except TimeoutError:
            raise DeliveryError(f"{self.name}: {server} timed out after "
                                f"{self.timeout:g}s") from None
        except OSError as exc:  # smtplib's own errors too: refused, reset, disconnected
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else \
                _one_line(str(exc)) or type(exc).__name__
            raise DeliveryError(f"{self.name}: cannot reach {server}: {reason}") from None
        if refused:
            return (f"{server} accepted it for {len(self.to) - len(refused)} of {len(self.to)} "
                    f"recipients (refused: {', '.join(sorted(refused))})")
        return f"{server} accepted it for {len(self.to)} recipient(s)"

    def _reply(self, raw: bytes | str) -> str:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        text = _one_line(text)
        if self._password:
            text = text.replace(self._password, "***")
        return text[:MAX_REPLY]

    async def aclose(self) -> None:
        return None

