"""The TOML configuration: loaded once, validated up front, every error naming file and key."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import msgspec
import psycopg
from psycopg.conninfo import conninfo_to_dict

from policies.policy import Policy, PolicyError, load_toml, parse_policy, resolve_ref
from policies.schema import Model, Positive, SchemaError, Within, convert, replace
from policies.units import Duration, Size
from probes.base import BaseUrl, Unit, http_url_problem, read_secret_file
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


Strings = Annotated[list[str], msgspec.Meta(min_length=1)]
"""An argv: at least the program."""

UpTo5m = Annotated[Duration, Within(gt=0, le=300)]


class DaemonSettings(Model):
    state_dir: Path = Path("/var/lib/rollbackd")
    interval: Annotated[Duration, Within(ge=0.2, le=3600)] = Duration(5.0)
    listen: str = "127.0.0.1:9797"
    policy: str = "builtin:visionforge"
    mode: Literal["auto", "approve", "dry-run"] = "auto"
    log_format: Literal["auto", "json", "console"] = "auto"

    def check(self) -> None:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"`listen`: expected HOST:PORT, got {self.listen!r}")

    @property
    def listen_host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def listen_port(self) -> int:
        return int(self.listen.rpartition(":")[2])


# The app's control and code adapters: tables told apart by their ``adapter`` key.
class SystemdControl(Model, tag_field="adapter", tag="systemd"):
    unit: Unit


class CommandControl(Model, tag_field="adapter", tag="command"):
    start: Strings
    stop: Strings
    cwd: Path | None = None


class ProcessControl(Model, tag_field="adapter", tag="process"):
    pidfile: Path
    start: Strings
    stop_timeout: Duration = Duration(30.0)


class GitCode(Model, tag_field="adapter", tag="git"):
    dir: Path
    install: list[str] | None = None


class SymlinkCode(Model, tag_field="adapter", tag="symlink"):
    current: Path
    releases: Path


Control = SystemdControl | CommandControl | ProcessControl
Code = GitCode | SymlinkCode


class AppSettings(Model):
    name: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_-]*$")]
    control: Control | None = None
    code: Code | None = None
    config_files: list[Path] = msgspec.field(default_factory=list)


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


class DatabaseSettings(Model):
    dsn: Annotated[str, msgspec.Meta(min_length=1)]
    maintenance_db: str = "postgres"
    migrations: MigrationPreset | CustomMigrations | None = None
    expected_tables: list[str] = msgspec.field(default_factory=list)
    checks: list[SqlCheck] = msgspec.field(default_factory=list)
    # Tables whose row counts must not fall below the restore point's.
    key_tables: list[str] = msgspec.field(default_factory=list)
    connect_timeout: Annotated[Duration, Within(ge=2.0)] = Duration(5.0)

    def check(self) -> None:
        try:
            conninfo_to_dict(self.dsn)
        except psycopg.Error as exc:
            raise ValueError(
                f"`dsn`: not a libpq connection string: {_dsn_fault(str(exc))}") from None


class BackupSettings(Model):
    dir: Path = Path("/var/backups/rollbackd")
    format: Literal["custom", "directory"] = "custom"
    jobs: Annotated[int, msgspec.Meta(ge=1, le=64)] = 2
    min_free: Size = Size(5 * 1000**3)
    keep: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 10
    timeout: Positive = Duration(3600.0)  # one backup or verify
    lock_wait_timeout: Positive = Duration(30.0)  # pg_dump --lock-wait-timeout
    restore_timeout: Positive = Duration(3600.0)  # one pg_restore (or psql) run of a restore
    terminate_timeout: Positive = Duration(15.0)  # ending the live database's sessions (swap)


class ProbesSettings(Model):
    http: list[HttpProbeSettings] = msgspec.field(default_factory=list)
    postgres: PostgresProbeSettings = msgspec.field(default_factory=PostgresProbeSettings)
    migrations: MigrationsProbeSettings = msgspec.field(default_factory=MigrationsProbeSettings)
    process: ProcessProbeSettings | None = None
    system: SystemProbeSettings | None = None
    prometheus: list[PrometheusProbeSettings] = msgspec.field(default_factory=list)

    def check(self) -> None:
        for kind, items in (("http", self.http), ("prometheus", self.prometheus)):
            names = [p.name for p in items]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"duplicate probes.{kind} name {dupes[0]!r}")
        signals = [p.signal for p in self.prometheus]
        dupes = sorted({s for s in signals if signals.count(s) > 1})
        if dupes:
            raise ValueError(f"two probes.prometheus entries feed the signal {dupes[0]!r}")


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


class ApiSettings(Model):
    # Files holding one bearer token each; none means the API is disabled.
    token_files: list[Path] = msgspec.field(default_factory=list)
    max_body: Annotated[Size, Within(ge=1024, le=64 * 1024**2)] = Size(1024**2)
    _tokens: ClassVar[tuple[str, ...]] = ()

    def check(self) -> None:
        # Read when the config is (re)loaded, so a rotation takes effect on SIGHUP and a
        # broken file is rejected with the rest of the config.
        tokens = []
        for index, path in enumerate(self.token_files):
            try:
                tokens.append(read_token(path))
            except ValueError as exc:
                raise ValueError(f"`token_files[{index}]`: {exc}") from None
        self.hold("_tokens", tuple(tokens))

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
    problem = http_url_problem(url)
    if problem:
        raise ValueError(f"webhook URL file {path}: its content {problem}")
    return url


def read_password(path: Path) -> str:
    """A password may hold spaces; only the line end is dropped."""
    text = read_secret_file(path, MAX_SECRET_FILE, "password file").rstrip("\r\n")
    if not text:
        raise ValueError(f"password file {path} is empty")
    return text


class AlertmanagerPaging(Model):
    urls: Annotated[list[BaseUrl], msgspec.Meta(min_length=1)]  # each member of an HA pair
    timeout: UpTo5m = Duration(5.0)
    # How often an open page is re-posted.
    resend: Annotated[Duration, Within(ge=1, le=86400)] = Duration(60.0)

    def check(self) -> None:
        dupes = sorted({u for u in self.urls if self.urls.count(u) > 1})
        if dupes:
            raise ValueError(f"`urls`: {dupes[0]!r} is listed twice")


class PagerDutyPaging(Model):
    routing_key_file: Path
    url: BaseUrl = BaseUrl(PAGERDUTY_EVENTS_URL)
    timeout: UpTo5m = Duration(10.0)
    _routing_key: ClassVar[str] = ""

    def check(self) -> None:
        # Read with the config, so a rotation takes effect on SIGHUP and a broken file is
        # rejected at load rather than at 3 a.m. when the page is due.
        self.hold("_routing_key", read_routing_key(self.routing_key_file))

    @property
    def routing_key(self) -> str:
        return self._routing_key


class SlackPaging(Model):
    webhook_url_file: Path
    timeout: UpTo5m = Duration(10.0)
    _webhook_url: ClassVar[str] = ""

    def check(self) -> None:
        self.hold("_webhook_url", read_webhook_url(self.webhook_url_file))

    @property
    def webhook_url(self) -> str:
        return self._webhook_url


EmailAddress = Annotated[str, msgspec.Meta(pattern=r"^[^@\s<>,;]+@[^@\s<>,;]+$")]
EmailAddresses = Annotated[list[EmailAddress], msgspec.Meta(min_length=1)]


class EmailPaging(Model, kw_only=True):
    host: Annotated[str, msgspec.Meta(min_length=1, pattern=r"^[^\s/]+$")]
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 587
    from_: EmailAddress = msgspec.field(name="from")
    to: EmailAddresses
    username: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    password_file: Path | None = None
    starttls: bool = True
    # A CA bundle to verify the server's certificate with, instead of the system's (a
    # private relay).
    ca_file: Path | None = None
    timeout: UpTo5m = Duration(10.0)
    _password: ClassVar[str] = ""

    def check(self) -> None:
        if self.username is not None and self.password_file is None:
            raise ValueError("username needs password_file")
        if self.password_file is not None and self.username is None:
            raise ValueError("password_file needs username")
        if self.password_file is not None:
            self.hold("_password", read_password(self.password_file))

    @property
    def password(self) -> str:
        return self._password


class WebhookPaging(Model):
    url: BaseUrl
    token_file: Path | None = None  # a bearer token
    timeout: UpTo5m = Duration(10.0)
    _token: ClassVar[str] = ""

    def check(self) -> None:
        if self.token_file is not None:
            self.hold("_token", _one_word_secret(self.token_file, "token file"))

    @property
    def token(self) -> str:
        return self._token


_CONTACT_NAME = re.compile(r"[a-z][a-z0-9_-]{0,39}")

# What a contact on each channel must give, and may give.
_CONTACT_NEEDS = {"email": "to", "pagerduty": "routing_key_file", "slack": "webhook_url_file",
                  "webhook": "url"}
_CONTACT_KEYS = {"email": {"to"}, "pagerduty": {"routing_key_file"},
                 "slack": {"webhook_url_file"}, "webhook": {"url", "token_file"}}


class ContactSettings(Model):
    """A named external contact (database vendor, hosting provider, security team) that a
    person pages with ``rollbackd page --to NAME``. Servers, URLs and timeouts not given here
    are those of the channel's own ``[paging.CHANNEL]`` section."""

    channel: Literal["email", "webhook", "pagerduty", "slack"]
    who: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]  # the recipient in words
    to: EmailAddresses | None = None
    routing_key_file: Path | None = None
    webhook_url_file: Path | None = None
    url: BaseUrl | None = None
    token_file: Path | None = None
    _secret: ClassVar[str] = ""
    _token: ClassVar[str] = ""

    def check(self) -> None:
        needed = _CONTACT_NEEDS[self.channel]
        if getattr(self, needed) is None:
            raise ValueError(f"a contact on channel {self.channel} needs {needed}")
        given = {key for key in ("to", "routing_key_file", "webhook_url_file", "url",
                                 "token_file") if getattr(self, key) is not None}
        stray = sorted(given - _CONTACT_KEYS[self.channel])
        if stray:
            raise ValueError(f"{stray[0]} does not apply to channel {self.channel}")
        if self.routing_key_file is not None:
            self.hold("_secret", read_routing_key(self.routing_key_file))
        if self.webhook_url_file is not None:
            self.hold("_secret", read_webhook_url(self.webhook_url_file))
        if self.token_file is not None:
            self.hold("_token", _one_word_secret(self.token_file, "token file"))

    @property
    def routing_key(self) -> str:
        return self._secret if self.channel == "pagerduty" else ""

    @property
    def webhook_url(self) -> str:
        return self._secret if self.channel == "slack" else ""

    @property
    def token(self) -> str:
        return self._token


class PagingSettings(Model):
    attempts: Annotated[int, msgspec.Meta(ge=1, le=10)] = 3
    # The cap on one wait, Retry-After included.
    max_retry_wait: Annotated[Duration, Within(gt=0, le=3600)] = Duration(30.0)
    templates_dir: Path | None = None
    status_every: Annotated[Duration, Within(ge=60, le=86400)] = Duration(900.0)
    alertmanager: AlertmanagerPaging | None = None
    pagerduty: PagerDutyPaging | None = None
    slack: SlackPaging | None = None
    email: EmailPaging | None = None
    webhook: WebhookPaging | None = None
    contacts: dict[str, ContactSettings] = msgspec.field(default_factory=dict)
    # The fallback order, as given (``order``, which see).
    given_order: list[PagingChannelName] | None = msgspec.field(default=None, name="order")

    def check(self) -> None:
        for name, contact in self.contacts.items():
            if not _CONTACT_NAME.fullmatch(name):
                raise ValueError(f"`contacts`: {name!r} is not a contact name (lowercase "
                                 "letters, digits, - and _, at most 40)")
            if contact.channel == "email" and self.email is None:
                raise ValueError(f"`contacts`: {name}: channel email needs [paging.email] "
                                 "(the SMTP server to send through)")
        order = self.given_order or []
        dupes = sorted({n for n in order if order.count(n) > 1})
        if dupes:
            raise ValueError(f"`order`: {dupes[0]} is listed twice")
        for name in order:
            if getattr(self, name) is None:
                raise ValueError(f"`order`: {name} is not configured (add [paging.{name}])")

    @property
    def order(self) -> list[str]:
        """The fallback order: as given, or every configured channel, Alertmanager first."""
        return list(self.given_order) if self.given_order is not None else self.configured()

    def configured(self) -> list[str]:
        """The channels that have a section, in the default order."""
        return [name for name in PAGING_CHANNELS if getattr(self, name) is not None]


def _hostname() -> str:
    import socket

    return socket.gethostname() or "host"


class FleetSettings(Model):
    """``[fleet]``: several app hosts on one database (DESIGN section 7). The hosts of one
    fleet share a small ``rollbackd`` schema in the maintenance database: the first to decide
    a rollback restores the database once, under the fleet's advisory lock; every host rolls
    back its own code and configuration."""

    # The fleet: letters, digits, _ . - (at most 63).
    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]
    # This host in the fleet (default: the hostname).
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=128,
                                    pattern=r"^[^\x00-\x1f]+$")] = msgspec.field(
        default_factory=_hostname)
    heartbeat: Annotated[Duration, Within(ge=0.2, le=300)] = Duration(5.0)


class Config(Model):
    daemon: DaemonSettings = msgspec.field(default_factory=DaemonSettings)
    app: AppSettings | None = None
    database: DatabaseSettings | None = None
    backups: BackupSettings = msgspec.field(default_factory=BackupSettings)
    probes: ProbesSettings = msgspec.field(default_factory=ProbesSettings)
    api: ApiSettings = msgspec.field(default_factory=ApiSettings)
    paging: PagingSettings = msgspec.field(default_factory=PagingSettings)
    fleet: FleetSettings | None = None

    def check(self) -> None:
        if self.fleet is not None and self.database is None:
            raise ValueError("[fleet] needs [database]: the fleet coordinates through it")

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


def parse_config(text: str, path: Path) -> Config:
    try:
        data = load_toml(text)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    try:
        return convert(data, Config)
    except SchemaError as exc:
        raise ConfigError(f"{path}: {exc}") from None


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
        changes["daemon"] = replace(daemon, **updates)
    if not config.backups.dir.is_absolute():
        changes["backups"] = replace(config.backups, dir=base / config.backups.dir)
    templates = config.paging.templates_dir
    if templates is not None and not templates.is_absolute():
        changes["paging"] = replace(config.paging, templates_dir=base / templates)
    return replace(config, **changes) if changes else config


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
