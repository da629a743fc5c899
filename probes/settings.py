"""Settings of each probe kind, as they appear under ``[probes]`` and ``[database]`` in the config.

They live beside the probes (not in ``daemon``) so that a probe can be built and tested from
its settings alone; ``daemon.config`` composes them into the whole file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, ClassVar, Literal, get_args

import msgspec

from policies.schema import Model, Positive, parser
from policies.units import Duration
from probes.base import HttpUrl, Name, ProbeSettings, Unit, read_secret_file

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


class StatusRange:
    """HTTP status codes from ``low`` to ``high``, both included (``2xx`` is 200 to 299).

    A plain class, not a dataclass: msgspec would read a dataclass from a table, and a
    status range is written as a string."""

    __slots__ = ("high", "low")

    def __init__(self, low: int, high: int) -> None:
        self.low = low
        self.high = high

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, StatusRange)
                and (self.low, self.high) == (other.low, other.high))

    def __hash__(self) -> int:
        return hash((self.low, self.high))

    def __repr__(self) -> str:
        return f"StatusRange(low={self.low}, high={self.high})"

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


parser(StatusRange, parse_status)
parser(re.Pattern, compile_regex)


class HeaderFile(Model):
    """A header value kept in a file (a bearer token, a session cookie): ``prefix`` and the
    file's content, without its final line break. Read when the configuration is loaded, so
    a rotated file takes effect on reload (SIGHUP), and a missing one is a config error."""

    file: Path  # absolute; at most 16 KiB, one line
    prefix: str = ""  # put before the content, e.g. "Bearer "


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


class HttpProbeSettings(ProbeSettings, kw_only=True):
    """``[[probes.http]]``: requests to one URL, each checked against what the app should answer.

    A request is an error when it fails (refused, reset, timed out), or its status is not an
    expected one, or its body fails a ``fail_if_body_*`` check. ``http.up`` keeps its meaning:
    did the app answer at all (below 500).
    """

    url: HttpUrl
    method: HttpMethod = "GET"
    timeout: Positive = Duration(2.0)
    window: Positive = Duration(60.0)  # the sliding window of ratios and quantiles
    requests: Annotated[int, msgspec.Meta(ge=1, le=20)] = 1  # per tick
    # A value, or { file = PATH, prefix = TEXT } to read it from a file; values never appear
    # in logs or errors (see __repr__).
    headers: dict[str, str | HeaderFile] = msgspec.field(default_factory=dict)
    body: str | None = None  # sent as given
    # Off: a 3xx answer is judged itself, and is an error unless expect_status lists it (a
    # redirect to a login page is not the app answering); on: the page the redirects (at
    # most 3) land on is judged.
    follow_redirects: bool = False
    # Codes, classes or ranges ("200", "2xx", "200-204"); any other status is an error.
    # Unset: any status below 500 but a 3xx (a 4xx is the app answering).
    expect_status: list[StatusRange] | None = None
    # Python regular expressions, matched against the body's first MiB: the request is an
    # error if one matches, or unless every one matches.
    fail_if_body_matches: list[re.Pattern[str]] = msgspec.field(default_factory=list)
    fail_if_body_not_matches: list[re.Pattern[str]] = msgspec.field(default_factory=list)
    _header_values: ClassVar[dict[str, str]] = {}

    def __repr__(self) -> str:
        # Header values are secrets (tokens, cookies); the names are not.
        return f"HttpProbeSettings(name={self.name!r}, url={self.url!r}, " \
               f"headers={sorted(self.headers)!r})"

    def check(self) -> None:
        if self.method == "HEAD" and (self.body is not None or self.fail_if_body_matches
                                      or self.fail_if_body_not_matches):
            raise ValueError("a HEAD request has no body: drop body and fail_if_body_* or "
                             "use GET")
        seen: dict[str, str] = {}
        values: dict[str, str] = {}
        for name, given in self.headers.items():
            if (earlier := seen.get(name.lower())) is not None:
                raise ValueError(f"headers: {earlier} and {name} are the same header, given "
                                 "twice")
            seen[name.lower()] = name
            values[name] = _header_value(name, given)
        self.hold("_header_values", values)

    def header_values(self) -> dict[str, str]:
        """The headers to send, file contents included: secrets, never to be logged."""
        return dict(self._header_values)

    def status_expected(self, status: int) -> bool:
        """Whether an answer with ``status`` is the app answering as it should."""
        if self.expect_status is None:
            return status < 300 or 400 <= status < 500
        return any(status in expected for expected in self.expect_status)


def _header_value(name: str, given: str | HeaderFile) -> str:
    """The value to send for header ``name``; a ValueError naming the header (not quoting the
    value) when it cannot be sent."""
    where = f"headers.{name}"
    if (problem := header_name_problem(name)) is not None:
        raise ValueError(f"{where}: {problem}")
    if isinstance(given, str):
        value = given
    else:
        try:
            value = given.prefix + read_header_file(given.file)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    if (problem := header_value_problem(value)) is not None:
        raise ValueError(f"{where}: {problem}")
    return value


class SqlCheck(Model):
    """A data validation: the query returns the offending rows; any row means the check fails.

    So does a query that no longer fits the schema (SQLSTATE class 42, e.g. a column a deploy
    renamed), except permission denied; a timeout or a lost connection leaves it unknown.
    """

    name: Name
    sql: Annotated[str, msgspec.Meta(min_length=1)]


class CustomMigrations(Model):
    """Queries for a migration tool without a preset; each returns one number (or no row = 0)."""

    failed: str | None = None
    in_progress: str | None = None
    version: str | None = None

    def check(self) -> None:
        if not (self.failed or self.in_progress or self.version):
            raise ValueError("give at least one of failed, in_progress, version")


class PostgresProbeSettings(Model):
    """``[probes.postgres]``: health and validators of ``[database]``; on when a database is set."""

    enabled: bool = True
    timeout: Positive = Duration(3.0)
    statement_timeout: Positive = Duration(2.0)
    lock_timeout: Positive = Duration(1.0)
    blocked_after: Positive = Duration(30.0)  # lock waits longer are blocked


class MigrationsProbeSettings(Model):
    """``[probes.migrations]``: the migration tool's state; on when a tool is configured."""

    enabled: bool = True
    timeout: Positive = Duration(3.0)


class ProcessProbeSettings(Model):
    """``[probes.process]``: the app's main process, found by exactly one of the three ways."""

    name: Name = "app"
    timeout: Positive = Duration(2.0)
    unit: Unit | None = None
    pidfile: Path | None = None
    cmdline: Annotated[list[str], msgspec.Meta(min_length=1)] | None = None

    def check(self) -> None:
        given = [k for k in ("unit", "pidfile", "cmdline") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of unit, pidfile, cmdline")


class SystemProbeSettings(Model):
    """``[probes.system]``: free space of the given paths and available memory."""

    paths: list[Path] = msgspec.field(default_factory=lambda: [Path("/")])
    timeout: Positive = Duration(2.0)


class PrometheusProbeSettings(ProbeSettings, kw_only=True):
    """``[[probes.prometheus]]``: an instant PromQL query mapped to one named signal."""

    url: HttpUrl
    query: Annotated[str, msgspec.Meta(min_length=1)]
    signal: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")]
    timeout: Positive = Duration(3.0)
