"""The contract every probe follows, and the strict settings base they share with the config."""

from __future__ import annotations

import errno
import functools
import os
import ssl
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Protocol, runtime_checkable

import httpx
import msgspec

from policies.samples import Reading
from policies.schema import Model, Positive, parser
from policies.units import Duration

Name = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]*$")]
"""A probe's or a check's name: lower case, digits and ``_``, beginning with a letter."""

Unit = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9@_.:\\-]+\.service$")]
"""A systemd service unit's name."""


class ProbeSettings(Model):
    """Settings every probe has: a name unique within its kind, and a timeout per measurement."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]*$", max_length=40)]
    timeout: Positive = Duration(3.0)


def http_url_problem(value: str) -> str | None:
    """Why ``value`` is not an http(s) URL with a host, in words that never repeat it."""
    scheme, sep, rest = value.partition("://")
    if not sep or scheme.lower() not in {"http", "https"}:
        return "is not an http(s) URL"
    host = rest.split("/", 1)[0].rpartition("@")[2]
    if not host or any(ch.isspace() for ch in value):
        return "is not an http(s) URL with a host"
    return None


class HttpUrl(str):
    """An http(s) URL with a host, as written."""

    __slots__ = ()

    @classmethod
    def parse(cls, value: Any) -> HttpUrl:
        if not isinstance(value, str):
            raise ValueError("expected a URL (a string)")
        if (problem := http_url_problem(value)) is not None:
            # A secret URL comes from a file, so this one may be quoted, but not its password.
            raise ValueError(f"{redact_url(value)!r} {problem}")
        return cls(value)


class BaseUrl(HttpUrl):
    """An http(s) URL that paths are appended to: without its trailing ``/``."""

    __slots__ = ()

    @classmethod
    def parse(cls, value: Any) -> BaseUrl:
        return cls(HttpUrl.parse(value).rstrip("/"))


parser(HttpUrl, HttpUrl.parse)
parser(BaseUrl, BaseUrl.parse)


@dataclass(frozen=True, slots=True)
class Notes:
    """What a probe has to say about its latest measurement besides the numbers.

    ``problems``: why a signal is unknown, or counted as failed, one line each, keyed by the
    signal (``db.missing_tables``), the configured check (``check.<name>``) or ``connection``;
    empty when nothing went wrong. Never holds secrets (header values, passwords).
    ``info``: values that are text, not numbers, keyed by the signal they go with (the
    migration tool's own version id under ``migration.version``).
    """

    problems: Mapping[str, str] = field(default_factory=dict)
    info: Mapping[str, str] = field(default_factory=dict)


NO_NOTES = Notes()


@runtime_checkable
class Probe(Protocol):
    """Something that measures a fixed set of signals.

    ``measure`` returns a value or ``None`` for each signal in ``signals``; raising means
    the probe itself failed (counted as such) and all its signals are unknown for that tick.
    ``notes`` explains the latest ``measure`` (including one that raised part way).
    """

    kind: ClassVar[str]
    name: str
    timeout: float

    def signals(self) -> list[str]: ...

    async def measure(self) -> Reading: ...

    def notes(self) -> Notes: ...

    async def aclose(self) -> None: ...


def read_secret_file(path: Path, limit: int, what: str) -> str:
    """The ASCII text of a small file that holds a secret (a token, a session cookie): a
    regular file (a pipe would block the load, a device may never end), at most ``limit``
    bytes. ``ValueError`` naming ``what`` and the path, never quoting the content."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise ValueError(f"{what} {path} is not a regular file")
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise ValueError(f"{what} {path} is larger than {limit // 1024} KiB")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path} is not ASCII") from None


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One verifying TLS context for every HTTP client of the daemon: each client building
    its own loads the CA bundle again (about 1.3 MB of memory per probe)."""
    return httpx.create_ssl_context(trust_env=False)


@functools.cache
def _no_ca_context() -> ssl.SSLContext:
    # Verifies certificates and host names like any client context, but trusts no CA: a TLS
    # connection through it fails closed instead of going unchecked.
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def tls_context_for(url: str, follow_redirects: bool) -> ssl.SSLContext:
    """The TLS context for a client of ``url``: the verifying one (``tls_context``), except
    for a client that can only ever speak plain HTTP (an http:// URL and no redirects), which
    gets one that trusts no CA, so a daemon probing plain HTTP never loads the CA bundle."""
    if url.lower().startswith("http://") and not follow_redirects:
        return _no_ca_context()
    return tls_context()


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced, for logs and terminals."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    return f"{scheme}{sep}{authority}{slash}{path}"


def one_line(exc: BaseException, *, with_type: bool = False) -> str:
    """An exception as one log- and terminal-friendly line (libpq's errors span several)."""
    text = " ".join(str(exc).split())
    if not text:
        return type(exc).__name__
    return f"{type(exc).__name__}: {text}" if with_type else text


STARVATION_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE})
"""The process (EMFILE) or the whole system (ENFILE) has no file descriptor left to give."""


class DescriptorStarvationError(RuntimeError):
    """rollbackd could not open a socket or a file for want of descriptors: it measured
    nothing, and nothing about the app or the database follows from it."""

    def __init__(self, cause: OSError) -> None:
        why = cause.strerror or str(cause)
        super().__init__(
            f"rollbackd is starved of file descriptors ({why}): it could not open a socket, "
            "so nothing was measured; raise its LimitNOFILE or look for a descriptor leak")


def starvation_in(exc: BaseException) -> OSError | None:
    """The EMFILE or ENFILE error among ``exc``, its causes and contexts, and the members of
    exception groups (anyio reports failed connection attempts as one), if there is one."""
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in STARVATION_ERRNOS:
            return current
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return None


def starvation_now() -> OSError | None:
    """The error opening a descriptor gives right now, if it is EMFILE or ENFILE.

    For failures that do not say why: libpq reports a socket it could not create as "no
    error details available", which would otherwise read as a database that is down.
    """
    try:
        fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        return exc if exc.errno in STARVATION_ERRNOS else None
    os.close(fd)
    return None


def starved_of_descriptors(failure: BaseException) -> DescriptorStarvationError | None:
    """:class:`DescriptorStarvationError` when ``failure`` (to connect, to open) came from
    rollbackd having no descriptor left, else ``None``: then it is a measurement."""
    cause = starvation_in(failure) or starvation_now()
    return None if cause is None else DescriptorStarvationError(cause)
