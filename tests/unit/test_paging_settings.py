"""`[paging]`: the channels, their order and the named contacts. Every mistake is one line
naming the config file and the key; secrets are read from their files at load and never
appear in an error, a repr or str()."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import ConfigError, PagingSettings, parse_config

CONFIG = Path("/etc/rollbackd/rollbackd.toml")
ROUTING_KEY = "R0UT1NGKEYR0UT1NGKEYR0UT1NGKEY32"
SLACK_URL = "https://hooks.slack.com/services/T0SECRET/B0SECRET/xoxSECRET"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    made = {"pd": ROUTING_KEY, "slack": SLACK_URL, "password": PASSWORD,
            "token": "hook-token-0123456789abcdef", "not_url": "T0SECRET-not-a-url",
            "empty": "", "spaced": "two words"}
    paths = {}
    for name, text in made.items():
        paths[name] = tmp_path / name
        paths[name].write_text(text + "\n" if text else "")
    return paths


def paging(text: str) -> PagingSettings:
    return parse_config(text, CONFIG).paging


def refused(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, CONFIG)
    return str(caught.value)


def every_channel(files: dict[str, Path]) -> str:
    return f"""
[paging.alertmanager]
urls = ["http://127.0.0.1:9093", "http://127.0.0.2:9093/"]
[paging.pagerduty]
routing_key_file = "{files['pd']}"
[paging.slack]
webhook_url_file = "{files['slack']}"
[paging.email]
host = "smtp.example.net"
from = "rollbackd@example.net"
to = ["oncall@example.net"]
username = "rollbackd"
password_file = "{files['password']}"
[paging.webhook]
url = "https://hooks.example.net/rollbackd"
token_file = "{files['token']}"
"""


def test_no_paging_section_means_no_channel_and_the_defaults() -> None:
    settings = paging("")
    assert settings.order == [] and settings.contacts == {}
    assert (settings.attempts, settings.max_retry_wait, settings.status_every) == (3, 30.0, 900.0)


def test_the_default_order_is_every_configured_channel_alertmanager_first(
        files: dict[str, Path]) -> None:
    settings = paging(every_channel(files))
    assert settings.order == ["alertmanager", "pagerduty", "slack", "email", "webhook"]
    assert settings.alertmanager is not None and settings.email is not None
    assert settings.alertmanager.urls == ["http://127.0.0.1:9093", "http://127.0.0.2:9093"]
    assert (settings.alertmanager.timeout, settings.alertmanager.resend) == (5.0, 60.0)
    assert settings.email.port == 587 and settings.email.starttls is True


def test_the_secrets_are_read_at_load(files: dict[str, Path]) -> None:
    settings = paging(every_channel(files))
    assert settings.pagerduty is not None and settings.pagerduty.routing_key == ROUTING_KEY
    assert settings.pagerduty.url == "https://events.pagerduty.com/v2/enqueue"
    assert settings.slack is not None and settings.slack.webhook_url == SLACK_URL
    assert settings.email is not None and settings.email.password == PASSWORD
    assert settings.webhook is not None and settings.webhook.token == "hook-token-0123456789abcdef"


def test_no_secret_is_in_the_settings_repr_or_str(files: dict[str, Path]) -> None:
    config = parse_config(every_channel(files) + f"""
[paging.contacts.provider]
channel = "pagerduty"
routing_key_file = "{files['pd']}"
who = "infrastructure provider"
""", CONFIG)
    shown = repr(config) + str(config) + repr(config.paging) + str(config.paging.contacts)
    for secret in (ROUTING_KEY, SLACK_URL, "SECRET", PASSWORD, "hook-token"):
        assert secret not in shown


def test_an_explicit_order_is_kept_and_may_leave_channels_out(files: dict[str, Path]) -> None:
    settings = paging('[paging]\norder = ["slack", "alertmanager"]\n' + every_channel(files))
    assert settings.order == ["slack", "alertmanager"]


@pytest.mark.parametrize(("text", "error"), [
    ('[paging]\norder = ["slack"]\n',
     "paging.order: slack is not configured (add [paging.slack])"),
    ('[paging]\norder = ["alertmanager", "alertmanager"]\n'
     '[paging.alertmanager]\nurls = ["http://am:9093"]\n',
     "paging.order: alertmanager is listed twice"),
    ('[paging]\norder = ["sms"]\n', "paging.order[0]: expected one of 'alertmanager', "
     "'pagerduty', 'slack', 'email' or 'webhook'"),
    ("[paging]\nattempts = 11\n", "paging.attempts: must be at most 10"),
    ('[paging]\nmax_retry_wait = "0s"\n', "paging.max_retry_wait: must be more than 0s"),
    ("[paging]\nretries = 3\n", "paging.retries: unknown key"),
    ("[paging.alertmanager]\nurls = []\n",
     "paging.alertmanager.urls: must have at least 1 item"),
    ('[paging.alertmanager]\nurls = ["am:9093"]\n',
     "paging.alertmanager.urls[0]: 'am:9093' is not an http(s) URL"),
    ('[paging.alertmanager]\nurls = ["http://am:9093", "http://am:9093"]\n',
     "paging.alertmanager.urls: 'http://am:9093' is listed twice"),
    ('[paging.webhook]\nurl = "ftp://hooks.example.net/x"\n',
     "paging.webhook.url: 'ftp://hooks.example.net/x' is not an http(s) URL"),
    ('[paging.email]\nhost = "smtp"\nfrom = "a@example.net"\nto = ["b@example.net"]\n'
     'username = "rollbackd"\n', "paging.email: username needs password_file"),
    ('[paging.email]\nhost = "smtp"\nfrom = "a@example.net"\nto = ["oncall"]\n',
     "paging.email.to[0]: must match the pattern ^[^@\\s<>,;]+@[^@\\s<>,;]+$"),
    ('[paging.email]\nhost = "smtp"\nto = ["b@example.net"]\n',
     "paging.email.from: required key is missing"),
    ('[paging.contacts.vendor]\nchannel = "email"\nto = ["s@vendor.example"]\nwho = "vendor"\n',
     "paging.contacts: vendor: channel email needs [paging.email] (the SMTP server to send "
     "through)"),
    ('[paging.contacts.vendor]\nchannel = "slack"\nwho = "vendor"\n',
     "paging.contacts.vendor: a contact on channel slack needs webhook_url_file"),
    ('[paging.contacts.vendor]\nchannel = "webhook"\nurl = "https://v.example"\n'
     'to = ["s@vendor.example"]\nwho = "vendor"\n',
     "paging.contacts.vendor: to does not apply to channel webhook"),
    ('[paging.contacts.vendor]\nchannel = "sms"\nwho = "vendor"\n',
     "paging.contacts.vendor.channel: expected one of 'email', 'webhook', 'pagerduty' "
     "or 'slack'"),
    ('[paging.contacts."Vendor X"]\nchannel = "webhook"\nurl = "https://v.example"\n'
     'who = "vendor"\n', "paging.contacts: 'Vendor X' is not a contact name (lowercase "
     "letters, digits, - and _, at most 40)"),
])
def test_a_paging_mistake_is_one_line_naming_the_key(text: str, error: str) -> None:
    assert refused(text) == f"{CONFIG}: {error}"


def test_secret_files_that_cannot_be_used_are_named_never_quoted(
        files: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    cases = [
        (f'[paging.slack]\nwebhook_url_file = "{files["not_url"]}"\n',
         f"paging.slack: webhook URL file {files['not_url']}: its content is not an http(s) "
         "URL"),
        (f'[paging.pagerduty]\nrouting_key_file = "{missing}"\n',
         f"paging.pagerduty: cannot read routing key file {missing}: No such file or "
         "directory"),
        (f'[paging.pagerduty]\nrouting_key_file = "{files["spaced"]}"\n',
         f"paging.pagerduty: routing key file {files['spaced']} must hold one value without "
         "spaces"),
        (f'[paging.webhook]\nurl = "https://h.example"\ntoken_file = "{files["empty"]}"\n',
         f"paging.webhook: token file {files['empty']} is empty"),
        ('[paging.pagerduty]\nrouting_key_file = "/dev/zero"\n',
         "paging.pagerduty: routing key file /dev/zero is not a regular file"),
        ('[paging.email]\nhost = "smtp"\nfrom = "a@example.net"\nto = ["b@example.net"]\n'
         f'username = "u"\npassword_file = "{files["empty"]}"\n',
         f"paging.email: password file {files['empty']} is empty"),
    ]
    for text, error in cases:
        message = refused(text)
        assert message == f"{CONFIG}: {error}"
        assert "SECRET" not in message and "two words" not in message


def test_a_contact_is_read_with_its_own_secret(files: dict[str, Path]) -> None:
    settings = paging(every_channel(files) + f"""
[paging.contacts.database_vendor]
channel = "email"
to = ["support@vendor.example"]
who = "database vendor support"
[paging.contacts.security]
channel = "slack"
webhook_url_file = "{files['slack']}"
who = "security team"
""")
    vendor, security = settings.contacts["database_vendor"], settings.contacts["security"]
    assert (vendor.channel, vendor.to, vendor.who) == (
        "email", ["support@vendor.example"], "database vendor support")
    assert security.webhook_url == SLACK_URL and security.routing_key == ""
