"""Settings of each probe kind, as they appear under ``[probes]`` and ``[database]`` in the config.

They live beside the probes (not in ``daemon``) so that a probe can be built and tested from
its settings alone; ``daemon.config`` composes them into the whole file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import (
    Field,
    HttpUrl,
    PlainValidator,
    PrivateAttr,
    SecretStr,
    model_validator,
)

from policies.units import Duration
from probes.base import ProbeSettings, StrictModel, read_secret_file

MigrationPreset = Literal[
    "knex",
    "prisma",
    "golang-migrate",
    "flyway",
    "liquibase",
    "node-pg-migrate",
    "alembic",
    "django",
    "rails",
    "sequelize",
]

MIGRATION_PRESETS: tuple[str, ...] = get_args(MigrationPreset)


HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

MAX_HEADER_FILE_BYTES = 16 * 1024
"""A header file holds a token or a cookie; anything larger is the wrong file."""

HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
"""RFC 9110's ``token``: what a field name may be made of."""

# The client derives these from the body; a configured one would contradict it.
COMPUTED_HEADERS = frozenset({"content-length", "transfer-encoding"})


@dataclass(frozen=True, slots=True)
class StatusRange:
    """HTTP status codes from ``low`` to ``high``, both included (``2xx`` is 200 to 299)."""

    low: int
    high: int

    def __contains__(self, status: object) -> bool:
        return isinstance(status, int) and self.low <= status <= self.high


STATUS_CLASS = re.compile(r"([1-5])xx")
STATUS_RANGE = re.compile(r"([1-5][0-9][0-9])-([1-5][0-9][0-9])")
STATUS_CODE = re.compile(r"[1-5][0-9][0-9]")


def parse_status(value: object) -> StatusRange:
    """``200``, ``"200"``, ``"2xx"`` or ``"200-299"`` as the range of codes it stands for."""
    if isinstance(value, StatusRange):
        return value
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if isinstance(text, str):
        text = text.strip().lower()
        if STATUS_CODE.fullmatch(text):
            return StatusRange(int(text), int(text))
        if match := STATUS_CLASS.fullmatch(text):
            return StatusRange(int(match[1]) * 100, int(match[1]) * 100 + 99)
        if (match := STATUS_RANGE.fullmatch(text)) and int(match[1]) <= int(match[2]):
            return StatusRange(int(match[1]), int(match[2]))
    raise ValueError(f"{value!r} is not an HTTP status code (100 to 599), class such as "
                     "\"2xx\" or range such as \"200-204\"")


def compile_regex(value: object) -> re.Pattern[str]:
    """``value`` compiled as a Python regular expression, or a ValueError saying why not."""
    if isinstance(value, re.Pattern):
        return value
    if not isinstance(value, str):
        raise ValueError("a regular expression is a string")
    try:
        return re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None


ExpectedStatus = Annotated[StatusRange, PlainValidator(parse_status)]
BodyRegex = Annotated[re.Pattern[str], PlainValidator(compile_regex)]


class HeaderFile(StrictModel):
    """A header value kept in a file (a bearer token, a session cookie): ``prefix`` and the
    file's content, without its final line break. Read when the configuration is loaded, so
    a rotated file takes effect on reload (SIGHUP), and a missing one is a config error."""

    file: Path = Field(description="absolute path; at most 16 KiB, one line")
    prefix: str = Field(default="", description='put before the content, e.g. "Bearer "')


def read_header_file(path: Path) -> str:
    """The file's one line, without its line break; never the content in an error."""
    if not path.is_absolute():
        raise ValueError(f"{path}: a header file must be given by an absolute path")
    text = read_secret_file(path, MAX_HEADER_FILE_BYTES, "header file")
    return text.removesuffix("\n").removesuffix("\r")


def header_value_problem(value: str) -> str | None:
    """Why ``value`` cannot be sent as a header value (never quoting it), or ``None``."""
    if not value:
        return "the value is empty"
    if any(ord(ch) > 126 for ch in value):
        return "the value is not ASCII"
    if any((ord(ch) < 32 and ch != "\t") or ord(ch) == 127 for ch in value):
        return "the value holds a control character (a second line?)"
    if value != value.strip(" \t"):
        return "the value begins or ends with whitespace"
    return None


def header_name_problem(name: str) -> str | None:
    if not HEADER_NAME.fullmatch(name):
        return "not a valid header name"
    if name.lower() in COMPUTED_HEADERS:
        return "computed from the body; it cannot be set"
    return None


class HttpProbeSettings(ProbeSettings):
    """``[[probes.http]]``: requests to one URL, each checked against what the app should answer.

    A request is an error when it fails (refused, reset, timed out), or its status is not an
    expected one, or its body fails a ``fail_if_body_*`` check. ``http.up`` keeps its meaning:
    did the app answer at all (below 500).
    """

    url: HttpUrl
    method: HttpMethod = "GET"
    timeout: Duration = Field(default=2.0, gt=0)
    window: Duration = Field(default=60.0, gt=0, description="sliding window of ratios, quantiles")
    requests: int = Field(default=1, ge=1, le=20, strict=True,
                          description="requests per tick; 1 to 20")
    headers: dict[str, SecretStr | HeaderFile] = Field(
        default_factory=dict,
        description="request headers: a value, or { file = PATH, prefix = TEXT } to read it "
                    "from a file; values never appear in logs or errors")
    body: str | None = Field(default=None, description="request body, sent as given")
    follow_redirects: bool = Field(
        default=False,
        description="off by default: a 3xx answer is then judged itself, and is an error "
                    "unless expect_status lists it (a redirect to a login page is not the app "
                    "answering); on: the page the redirects (at most 3) land on is judged")
    expect_status: list[ExpectedStatus] | None = Field(
        default=None,
        description='codes, classes or ranges ("200", "2xx", "200-204"); any other status is '
                    "an error. Unset: any status below 500 but a 3xx (a 4xx is the app "
                    "answering)")
    fail_if_body_matches: list[BodyRegex] = Field(
        default_factory=list,
        description="regular expressions (Python); the request is an error if one matches "
                    "the body (its first MiB)")
    fail_if_body_not_matches: list[BodyRegex] = Field(
        default_factory=list,
        description="regular expressions (Python); the request is an error unless every one "
                    "matches the body (its first MiB)")
    _header_values: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _head_has_no_body(self) -> HttpProbeSettings:
        if self.method == "HEAD" and (self.body is not None or self.fail_if_body_matches
                                      or self.fail_if_body_not_matches):
            raise ValueError("a HEAD request has no body: drop body and fail_if_body_* or "
                             "use GET")
        return self

    @model_validator(mode="after")
    def _load_headers(self) -> HttpProbeSettings:
        seen: dict[str, str] = {}
        values: dict[str, str] = {}
        for name, given in self.headers.items():
            if (earlier := seen.get(name.lower())) is not None:
                raise ValueError(f"headers: {earlier} and {name} are the same header, given "
                                 "twice")
            seen[name.lower()] = name
            values[name] = _header_value(name, given)
        self._header_values = values
        return self

    def header_values(self) -> dict[str, str]:
        """The headers to send, file contents included: secrets, never to be logged."""
        return dict(self._header_values)

    def status_expected(self, status: int) -> bool:
        """Whether an answer with ``status`` is the app answering as it should."""
        if self.expect_status is None:
            return status < 300 or 400 <= status < 500
        return any(status in expected for expected in self.expect_status)


def _header_value(name: str, given: SecretStr | HeaderFile) -> str:
    """The value to send for header ``name``; a ValueError naming the header (not quoting the
    value) when it cannot be sent."""
    where = f"headers.{name}"
    if (problem := header_name_problem(name)) is not None:
        raise ValueError(f"{where}: {problem}")
    if isinstance(given, SecretStr):
        value = given.get_secret_value()
    else:
        try:
            value = given.prefix + read_header_file(given.file)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    if (problem := header_value_problem(value)) is not None:
        raise ValueError(f"{where}: {problem}")
    return value


class SqlCheck(StrictModel):
    """A data validation: the query returns the offending rows; any row means the check fails.

    So does a query that no longer fits the schema (SQLSTATE class 42, e.g. a column a deploy
    renamed), except permission denied; a timeout or a lost connection leaves it unknown.
    """

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    sql: str = Field(min_length=1)


class CustomMigrations(StrictModel):
    """Queries for a migration tool without a preset; each returns one number (or no row = 0)."""

    failed: str | None = None
    in_progress: str | None = None
    version: str | None = None

    @model_validator(mode="after")
    def _one_query(self) -> CustomMigrations:
        if not (self.failed or self.in_progress or self.version):
            raise ValueError("give at least one of failed, in_progress, version")
        return self


class PostgresProbeSettings(StrictModel):
    """``[probes.postgres]``: health and validators of ``[database]``; on when a database is set."""

    enabled: bool = True
    timeout: Duration = Field(default=3.0, gt=0)
    statement_timeout: Duration = Field(default=2.0, gt=0)
    lock_timeout: Duration = Field(default=1.0, gt=0)
    blocked_after: Duration = Field(default=30.0, gt=0, description="lock waits longer are blocked")


class MigrationsProbeSettings(StrictModel):
    """``[probes.migrations]``: the migration tool's state; on when a tool is configured."""

    enabled: bool = True
    timeout: Duration = Field(default=3.0, gt=0)


class ProcessProbeSettings(StrictModel):
    """``[probes.process]``: the app's main process, found by exactly one of the three ways."""

    name: str = Field(default="app", pattern=r"^[a-z][a-z0-9_]*$")
    timeout: Duration = Field(default=2.0, gt=0)
    unit: str | None = Field(default=None, pattern=r"^[A-Za-z0-9@_.:\\-]+\.service$")
    pidfile: Path | None = None
    cmdline: list[str] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one_finder(self) -> ProcessProbeSettings:
        given = [k for k in ("unit", "pidfile", "cmdline") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of unit, pidfile, cmdline")
        return self


class SystemProbeSettings(StrictModel):
    """``[probes.system]``: free space of the given paths and available memory."""

    paths: list[Path] = Field(default_factory=lambda: [Path("/")])
    timeout: Duration = Field(default=2.0, gt=0)


class PrometheusProbeSettings(ProbeSettings):
    """``[[probes.prometheus]]``: an instant PromQL query mapped to one named signal."""

    url: HttpUrl
    query: str = Field(min_length=1)
    signal: str = Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
    timeout: Duration = Field(default=3.0, gt=0)
