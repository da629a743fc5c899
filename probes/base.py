"""The contract every probe follows, and the strict settings base they share with the config."""

from __future__ import annotations

import functools
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

import httpx
from pydantic import BaseModel, ConfigDict, Field

from policies.samples import Reading
from policies.units import Duration


class StrictModel(BaseModel):
    """A settings model that rejects unknown keys, so a misspelt key is an error, not a default.

    Its validation errors quote no input: settings hold secrets (header values, passwords in
    a DSN), and an error is printed and logged.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class ProbeSettings(StrictModel):
    """Settings every probe has: a name unique within its kind, and a timeout per measurement."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=40)
    timeout: Duration = Field(default=3.0, gt=0)


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


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One verifying TLS context for every HTTP client of the daemon: each client building
    its own loads the CA bundle again (about 1.3 MB of memory per probe)."""
    return httpx.create_ssl_context(trust_env=False)


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
