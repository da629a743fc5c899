"""The TOML configuration: loaded once, validated up front, every error naming file and key."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from policies.policy import Policy, PolicyError, load_toml, parse_policy, resolve_ref
from policies.units import Duration, Size
from probes.base import StrictModel, read_secret_file, redact_url
from probes.settings import (
    CustomMigrations,
    HttpProbeSettings,
    MigrationPreset,
    MigrationsProbeSettings,
    PostgresProbeSettings,
    ProcessProbeSettings,
    PrometheusProbeSettings,
    SqlCheck,
    SystemProbeSettings,
)

DEFAULT_PATH = Path("/etc/rollbackd/rollbackd.toml")
ENV_VAR = "ROLLBACKD_CONFIG"


class ConfigError(Exception):
    """A configuration that cannot be used; ``str()`` is the one line an operator reads."""


class DaemonSettings(StrictModel):
    state_dir: Path = Path("/var/lib/rollbackd")
    interval: Duration = Field(default=5.0, ge=0.2, le=3600, description="0.2s to 1h")
    listen: str = "127.0.0.1:9797"
    policy: str = "builtin:visionforge"
    mode: Literal["auto", "approve", "dry-run"] = "auto"
    log_format: Literal["auto", "json", "console"] = "auto"

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected HOST:PORT, got {value!r}")
        return value

    @property
    def listen_host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def listen_port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class SystemdControl(StrictModel):
    adapter: Literal["systemd"]
    unit: str = Field(pattern=r"^[A-Za-z0-9@_.:\\-]+\.service$")


class CommandControl(StrictModel):
    adapter: Literal["command"]
    start: list[str] = Field(min_length=1)
    stop: list[str] = Field(min_length=1)
    cwd: Path | None = None


class ProcessControl(StrictModel):
    adapter: Literal["process"]
    pidfile: Path
    start: list[str] = Field(min_length=1)
    stop_timeout: Duration = Field(default=30.0, description="0 to 30d")


class GitCode(StrictModel):
    adapter: Literal["git"]
    dir: Path
    install: list[str] | None = None


class SymlinkCode(StrictModel):
    adapter: Literal["symlink"]
    current: Path
    releases: Path


Control = Annotated[
    SystemdControl | CommandControl | ProcessControl, Field(discriminator="adapter")
]
Code = Annotated[GitCode | SymlinkCode, Field(discriminator="adapter")]


class AppSettings(StrictModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    control: Control | None = None
    code: Code | None = None
    config_files: list[Path] = Field(default_factory=list)


# libpq's messages quote the text at the fault, which may be the password: each is told in
# words of our own instead, by a phrase that identifies it.
_DSN_FAULTS = (
    ('missing "=" after', 'a term without "=" (write key=value, quote values with spaces)'),
    ("unterminated quoted string", "a quoted value without its closing quote"),
    ("invalid connection option", "an unknown connection option"),
    ("percent-encoded", "a malformed %-escape in the URI"),
    ("URI query parameter", "a malformed parameter after ? in the URI"),
    ("IPv6", "an unclosed [ in the URI"),
)


def _dsn_fault(libpq_message: str) -> str:
    """What is wrong with a DSN, never repeating any of it."""
    for phrase, fault in _DSN_FAULTS:
        if phrase in libpq_message:
            return fault
    return "libpq cannot parse it (the text is not repeated: it may hold a password)"


class DatabaseSettings(StrictModel):
    dsn: str = Field(min_length=1)

    @field_validator("dsn")
    @classmethod
    def _libpq_conninfo(cls, value: str) -> str:
        try:
            conninfo_to_dict(value)
        except psycopg.Error as exc:
            raise ValueError(f"not a libpq connection string: {_dsn_fault(str(exc))}") from None
        return value
    maintenance_db: str = "postgres"
    migrations: MigrationPreset | CustomMigrations | None = None
    expected_tables: list[str] = Field(default_factory=list)
    checks: list[SqlCheck] = Field(default_factory=list)
    key_tables: list[str] = Field(
        default_factory=list,
        description="tables whose row counts must not fall below the restore point's")
    connect_timeout: Duration = Field(default=5.0, ge=2.0, description="2s to 30d")


class BackupSettings(StrictModel):
    dir: Path = Path("/var/backups/rollbackd")
    format: Literal["custom", "directory"] = "custom"
    jobs: int = Field(default=2, ge=1, le=64, strict=True, description="1 to 64")
    min_free: Size = Field(default=5 * 1000**3, description="0 to 1EiB")
    keep: int = Field(default=10, ge=1, le=10_000, strict=True, description="1 to 10,000")
    timeout: Duration = Field(default=3600.0, gt=0,
                              description="bound on one backup or verify; up to 30d")
    lock_wait_timeout: Duration = Field(
        default=30.0, gt=0,
        description="pg_dump --lock-wait-timeout: waits for table locks; up to 30d")
    restore_timeout: Duration = Field(
        default=3600.0, gt=0,
        description="bound on one pg_restore (or psql) run of a restore; up to 30d")
    terminate_timeout: Duration = Field(
        default=15.0, gt=0,
        description="bound on terminating the live database's sessions before a swap; up to 30d")


class ProbesSettings(StrictModel):
    http: list[HttpProbeSettings] = Field(default_factory=list)
    postgres: PostgresProbeSettings = PostgresProbeSettings()
    migrations: MigrationsProbeSettings = MigrationsProbeSettings()
    process: ProcessProbeSettings | None = None
    system: SystemProbeSettings | None = None
    prometheus: list[PrometheusProbeSettings] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> ProbesSettings:
        for kind, items in (("http", self.http), ("prometheus", self.prometheus)):
            names = [p.name for p in items]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"duplicate probes.{kind} name {dupes[0]!r}")
        signals = [p.signal for p in self.prometheus]
        dupes = sorted({s for s in signals if signals.count(s) > 1})
        if dupes:
            raise ValueError(f"two probes.prometheus entries feed the signal {dupes[0]!r}")
        return self


MIN_TOKEN_LENGTH = 16
"""Shorter bearer tokens can be guessed; ``openssl rand -hex 32`` gives 64 characters."""


MAX_TOKEN_FILE = 4096
"""A token file holds one token; a bigger one is not a token file (``/dev/zero`` would be read
until memory runs out)."""


def read_token(path: Path) -> str:
    """The one bearer token a token file holds (surrounding whitespace and newline dropped)."""
    token = read_secret_file(path, MAX_TOKEN_FILE, "token file").strip()
    if not token:
        raise ValueError(f"token file {path} is empty")
    # One token per file; whitespace inside means a second word, a comment or a pasted header.
    if any(not ch.isprintable() or ch.isspace() for ch in token):
        raise ValueError(f"token file {path} must hold a single token without spaces")
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"token in {path} is shorter than {MIN_TOKEN_LENGTH} characters")
    return token


def _readable_token_file(path: Path) -> Path:
    read_token(path)
    return path


class ApiSettings(StrictModel):
    token_files: list[Annotated[Path, AfterValidator(_readable_token_file)]] = Field(
        default_factory=list,
        description="files holding one bearer token each; none means the API is disabled")
    max_body: Size = Field(default=1024**2, ge=1024, le=64 * 1024**2, description="1KiB to 64MiB")
    _tokens: tuple[str, ...] = PrivateAttr(default=())

    @model_validator(mode="after")
    def _load_tokens(self) -> ApiSettings:
        # Read when the config is (re)loaded, so a rotation takes effect on SIGHUP and a
        # broken file is rejected with the rest of the config.
        self._tokens = tuple(read_token(path) for path in self.token_files)
        return self

    @property
    def tokens(self) -> tuple[str, ...]:
        return self._tokens


PAGING_CHANNELS = ("alertmanager", "pagerduty", "slack", "email", "webhook")
"""Every direct channel, in the default fallback order: Alertmanager first (it routes with
the site's own grouping, silences and HA), the others for when the monitoring stack is down."""

PagingChannelName = Literal["alertmanager", "pagerduty", "slack", "email", "webhook"]

MAX_SECRET_FILE = 4096
"""A routing key, a webhook URL, a password: a bigger file is not one of them."""

PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"


def _http_url_problem(value: str) -> str | None:
    """Why ``value`` is not an http(s) URL with a host, in words that never repeat it."""
    scheme, sep, rest = value.partition("://")
    if not sep or scheme.lower() not in {"http", "https"}:
        return "is not an http(s) URL"
    host = rest.split("/", 1)[0].rpartition("@")[2]
    if not host or any(ch.isspace() for ch in value):
        return "is not an http(s) URL with a host"
    return None


def _http_url(value: str) -> str:
    problem = _http_url_problem(value)
    if problem:
        # A secret URL comes from a file, so this one may be quoted, but not its password.
        raise ValueError(f"{redact_url(value)!r} {problem}")
    return value.rstrip("/")


HttpUrl = Annotated[str, AfterValidator(_http_url)]


def _one_word_secret(path: Path, what: str) -> str:
    """The single token a secret file holds (newline dropped): a key, a token, a URL."""
    text = read_secret_file(path, MAX_SECRET_FILE, what).strip()
    if not text:
        raise ValueError(f"{what} {path} is empty")
    if any(not ch.isprintable() or ch.isspace() for ch in text):
        raise ValueError(f"{what} {path} must hold one value without spaces")
    return text


def read_routing_key(path: Path) -> str:
    return _one_word_secret(path, "routing key file")


def read_webhook_url(path: Path) -> str:
    """A Slack incoming-webhook URL: the URL is the credential, so no error repeats it."""
    url = _one_word_secret(path, "webhook URL file")
    problem = _http_url_problem(url)
    if problem:
        raise ValueError(f"webhook URL file {path}: its content {problem}")
    return url


def read_password(path: Path) -> str:
    """A password may hold spaces; only the line end is dropped."""
    text = read_secret_file(path, MAX_SECRET_FILE, "password file").rstrip("\r\n")
    if not text:
        raise ValueError(f"password file {path} is empty")
    return text


class AlertmanagerPaging(StrictModel):
    urls: list[HttpUrl] = Field(min_length=1, description="each member of an HA pair")
    timeout: Duration = Field(default=5.0, gt=0, le=300, description="up to 5m")
    resend: Duration = Field(default=60.0, ge=1, le=86400,
                             description="how often an open page is re-posted; 1s to 1d")

    @field_validator("urls")
    @classmethod
    def _unique(cls, urls: list[str]) -> list[str]:
        dupes = sorted({u for u in urls if urls.count(u) > 1})
        if dupes:
            raise ValueError(f"{dupes[0]!r} is listed twice")
        return urls


class PagerDutyPaging(StrictModel):
    routing_key_file: Path
    url: HttpUrl = PAGERDUTY_EVENTS_URL
    timeout: Duration = Field(default=10.0, gt=0, le=300, description="up to 5m")
    _routing_key: str = PrivateAttr(default="")

    @model_validator(mode="after")
    def _load_key(self) -> PagerDutyPaging:
        # Read with the config, so a rotation takes effect on SIGHUP and a broken file is
        # rejected at load rather than at 3 a.m. when the page is due.
        self._routing_key = read_routing_key(self.routing_key_file)
        return self

    @property
    def routing_key(self) -> str:
        return self._routing_key


class SlackPaging(StrictModel):
    webhook_url_file: Path
    timeout: Duration = Field(default=10.0, gt=0, le=300, description="up to 5m")
    _webhook_url: str = PrivateAttr(default="")

    @model_validator(mode="after")
    def _load_url(self) -> SlackPaging:
        self._webhook_url = read_webhook_url(self.webhook_url_file)
        return self

    @property
    def webhook_url(self) -> str:
        return self._webhook_url


EmailAddress = Annotated[str, Field(pattern=r"^[^@\s<>,;]+@[^@\s<>,;]+$")]


class EmailPaging(StrictModel):
    model_config = ConfigDict(populate_by_name=True)

    host: str = Field(min_length=1, pattern=r"^[^\s/]+$")
    port: int = Field(default=587, ge=1, le=65535, strict=True, description="1 to 65535")
    from_: EmailAddress = Field(alias="from")
    to: list[EmailAddress] = Field(min_length=1)
    username: str | None = Field(default=None, min_length=1)
    password_file: Path | None = None
    starttls: bool = True
    ca_file: Path | None = Field(
        default=None, description="CA bundle to verify the server's certificate with, "
                                  "instead of the system's (a private relay)")
    timeout: Duration = Field(default=10.0, gt=0, le=300, description="up to 5m")
    _password: str = PrivateAttr(default="")

    @model_validator(mode="after")
    def _load_password(self) -> EmailPaging:
        if self.username is not None and self.password_file is None:
            raise ValueError("username needs password_file")
        if self.password_file is not None and self.username is None:
            raise ValueError("password_file needs username")
        if self.password_file is not None:
            self._password = read_password(self.password_file)
        return self

    @property
    def password(self) -> str:
        return self._password


class WebhookPaging(StrictModel):
    url: HttpUrl
    token_file: Path | None = Field(default=None, description="a bearer token")
    timeout: Duration = Field(default=10.0, gt=0, le=300, description="up to 5m")
    _token: str = PrivateAttr(default="")

    @model_validator(mode="after")
    def _load_token(self) -> WebhookPaging:
        if self.token_file is not None:
            self._token = _one_word_secret(self.token_file, "token file")
        return self

    @property
    def token(self) -> str:
        return self._token


_CONTACT_NAME = re.compile(r"[a-z][a-z0-9_-]{0,39}")

# What a contact on each channel must give, and may give.
_CONTACT_NEEDS = {"email": "to", "pagerduty": "routing_key_file", "slack": "webhook_url_file",
                  "webhook": "url"}
_CONTACT_KEYS = {"email": {"to"}, "pagerduty": {"routing_key_file"},
                 "slack": {"webhook_url_file"}, "webhook": {"url", "token_file"}}


class ContactSettings(StrictModel):
    """A named external contact (database vendor, hosting provider, security team) that a
    person pages with ``rollbackd page --to NAME``. Servers, URLs and timeouts not given here
    are those of the channel's own ``[paging.CHANNEL]`` section."""

    channel: Literal["email", "webhook", "pagerduty", "slack"]
    who: str = Field(min_length=1, max_length=200, description="the recipient in words")
    to: list[EmailAddress] | None = Field(default=None, min_length=1)
    routing_key_file: Path | None = None
    webhook_url_file: Path | None = None
    url: HttpUrl | None = None
    token_file: Path | None = None
    _secret: str = PrivateAttr(default="")
    _token: str = PrivateAttr(default="")

    @model_validator(mode="after")
    def _fits_channel(self) -> ContactSettings:
        needed = _CONTACT_NEEDS[self.channel]
        if getattr(self, needed) is None:
            raise ValueError(f"a contact on channel {self.channel} needs {needed}")
        given = {key for key in ("to", "routing_key_file", "webhook_url_file", "url",
                                 "token_file") if getattr(self, key) is not None}
        stray = sorted(given - _CONTACT_KEYS[self.channel])
        if stray:
            raise ValueError(f"{stray[0]} does not apply to channel {self.channel}")
        if self.routing_key_file is not None:
            self._secret = read_routing_key(self.routing_key_file)
        if self.webhook_url_file is not None:
            self._secret = read_webhook_url(self.webhook_url_file)
        if self.token_file is not None:
            self._token = _one_word_secret(self.token_file, "token file")
        return self

    @property
    def routing_key(self) -> str:
        return self._secret if self.channel == "pagerduty" else ""

    @property
    def webhook_url(self) -> str:
        return self._secret if self.channel == "slack" else ""

    @property
    def token(self) -> str:
        return self._token


class PagingSettings(StrictModel):
    attempts: int = Field(default=3, ge=1, le=10, strict=True, description="1 to 10")
    max_retry_wait: Duration = Field(default=30.0, gt=0, le=3600,
                                     description="cap on one wait, Retry-After included; up to 1h")
    templates_dir: Path | None = None
    status_every: Duration = Field(default=900.0, ge=60, le=86400, description="1m to 1d")
    alertmanager: AlertmanagerPaging | None = None
    pagerduty: PagerDutyPaging | None = None
    slack: SlackPaging | None = None
    email: EmailPaging | None = None
    webhook: WebhookPaging | None = None
    contacts: dict[str, ContactSettings] = Field(default_factory=dict)
    # Last, so that its check sees the channels validated before it.
    order: list[PagingChannelName] = Field(
        default_factory=list,
        description="fallback order; by default every configured channel, Alertmanager first")

    @model_validator(mode="before")
    @classmethod
    def _default_order(cls, data: object) -> object:
        if isinstance(data, dict) and "order" not in data:
            return {**data, "order": [name for name in PAGING_CHANNELS
                                      if data.get(name) is not None]}
        return data

    @field_validator("contacts")
    @classmethod
    def _contact_servers(cls, contacts: dict[str, ContactSettings],
                         info: ValidationInfo) -> dict[str, ContactSettings]:
        for name, contact in contacts.items():
            if not _CONTACT_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a contact name (lowercase letters, digits, "
                                 "- and _, at most 40)")
            if contact.channel == "email" and info.data.get("email") is None:
                raise ValueError(f"{name}: channel email needs [paging.email] "
                                 "(the SMTP server to send through)")
        return contacts

    @field_validator("order")
    @classmethod
    def _order_is_configured(cls, order: list[str], info: ValidationInfo) -> list[str]:
        dupes = sorted({n for n in order if order.count(n) > 1})
        if dupes:
            raise ValueError(f"{dupes[0]} is listed twice")
        for name in order:
            if info.data.get(name) is None:
                raise ValueError(f"{name} is not configured (add [paging.{name}])")
        return order

    def configured(self) -> list[str]:
        """The channels that have a section, in the default order."""
        return [name for name in PAGING_CHANNELS if getattr(self, name) is not None]


def _hostname() -> str:
    import socket

    return socket.gethostname() or "host"


class FleetSettings(StrictModel):
    """``[fleet]``: several app hosts on one database (DESIGN section 7). The hosts of one
    fleet share a small ``rollbackd`` schema in the maintenance database: the first to decide
    a rollback restores the database once, under the fleet's advisory lock; every host rolls
    back its own code and configuration."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
                      description="the fleet: letters, digits, _ . - (at most 63)")
    id: str = Field(default_factory=_hostname, min_length=1, max_length=128,
                    pattern=r"^[^\x00-\x1f]+$",
                    description="this host in the fleet (default: the hostname)")
    heartbeat: Duration = Field(default=5.0, ge=0.2, le=300, description="0.2s to 5m")


class Config(StrictModel):
    daemon: DaemonSettings = DaemonSettings()
    app: AppSettings | None = None
    database: DatabaseSettings | None = None
    backups: BackupSettings = BackupSettings()
    probes: ProbesSettings = ProbesSettings()
    api: ApiSettings = ApiSettings()
    paging: PagingSettings = PagingSettings()
    fleet: FleetSettings | None = None

    @model_validator(mode="after")
    def _fleet_needs_database(self) -> Config:
        if self.fleet is not None and self.database is None:
            raise ValueError("[fleet] needs [database]: the fleet coordinates through it")
        return self

    @property
    def app_name(self) -> str:
        return self.app.name if self.app else "app"

    def policy_path(self) -> Path:
        """The policy file in force: ``builtin:NAME`` is bundled, anything else is a path."""
        return resolve_ref(self.daemon.policy)

    def declared_signals(self) -> list[str]:
        """Signals the configuration names itself, which rules may use: Prometheus queries."""
        return [p.signal for p in self.probes.prometheus]


def resolve_path(given: str | Path | None) -> Path:
    """``--config`` wins, then ``$ROLLBACKD_CONFIG``, then the default path."""
    if given:
        return Path(given)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEFAULT_PATH


_UNION_TAGS = {"systemd", "command", "process", "git", "symlink"}


def _real_keys(loc: tuple[int | str, ...]) -> list[int | str]:
    """Drop what pydantic adds to a location for unions (member names, discriminator tags)."""
    keys: list[int | str] = []
    for part in loc:
        if isinstance(part, str) and ("[" in part or part[:1].isupper()):
            continue
        if part in _UNION_TAGS and keys and keys[-1] in {"control", "code"}:
            continue
        keys.append(part)
    return keys


def _key_path(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in _real_keys(loc):
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    return text or "(top level)"


def _describe(path: Path, error: ValidationError) -> str:
    errors = error.errors()
    # With unions, the deepest location is the member the user meant to write.
    first = max(errors, key=lambda e: len(_real_keys(tuple(e["loc"]))))
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif first["type"] == "missing":
        message = "required key is missing"
    return f"{path}: {_key_path(tuple(first['loc']))}: {message}"


def parse_config(text: str, path: Path) -> Config:
    try:
        data = load_toml(text)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(path, exc)) from None


def _anchored(config: Config, path: Path) -> Config:
    """Relative paths in the config are relative to the config file, not to the working
    directory (which is / under systemd)."""
    base = path.parent.resolve()
    daemon = config.daemon
    updates: dict[str, object] = {}
    if not daemon.state_dir.is_absolute():
        updates["state_dir"] = base / daemon.state_dir
    if not daemon.policy.startswith("builtin:") and not Path(daemon.policy).is_absolute():
        updates["policy"] = str(base / daemon.policy)
    changes: dict[str, object] = {}
    if updates:
        changes["daemon"] = daemon.model_copy(update=updates)
    if not config.backups.dir.is_absolute():
        changes["backups"] = config.backups.model_copy(update={"dir": base / config.backups.dir})
    templates = config.paging.templates_dir
    if templates is not None and not templates.is_absolute():
        changes["paging"] = config.paging.model_copy(update={"templates_dir": base / templates})
    return config.model_copy(update=changes) if changes else config


def load_config(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: config is not UTF-8: {exc.reason}") from None
    return _anchored(parse_config(text, path), path)


def load_policy(config: Config, config_path: Path) -> Policy:
    """The policy the config names, parsed and checked; errors are :class:`ConfigError`."""
    path = config.policy_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"{config_path}: daemon.policy: cannot read {path}: {exc.strerror or exc}"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: policy is not UTF-8: {exc.reason}") from None
    try:
        return parse_policy(text, str(path), config.declared_signals())
    except PolicyError as exc:
        raise ConfigError(str(exc)) from None
