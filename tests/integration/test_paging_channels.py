"""The direct paging channels against receivers on loopback: stand-ins for PagerDuty, Slack
and a webhook receiver that check what they get and answer as scripted (429 with Retry-After,
500, a stall past the timeout, 400), and a real SMTP server (aiosmtpd). Waits between retries
are recorded, not slept."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.config import PagingSettings, parse_config
from daemon.paging.channels import (
    EmailChannel,
    PagerDutyChannel,
    SlackChannel,
    WebhookChannel,
    build_channels,
    build_contact,
)
from daemon.paging.channels.base import Channel
from daemon.paging.deliver import deliver, send_each
from tests.harness.paging import (
    Answer,
    RecordedSleeps,
    SmtpServer,
    StandIn,
    closed_port_url,
    page,
    smtp_server,
    stand_in,
)

ROUTING_KEY = "R0UT1NGKEYR0UT1NGKEYR0UT1NGKEY32"
SLACK_SECRET = "/services/T0SECRET/B0SECRET/xoxSECRETslackPATH"
PASSWORD = "correct horse battery staple"
TOKEN = "hook-token-0123456789abcdef"


@pytest.fixture
def pd() -> Iterator[StandIn]:
    with stand_in(Answer(202, body='{"status":"success"}')) as server:
        yield server


@pytest.fixture
def slack() -> Iterator[StandIn]:
    with stand_in(Answer(200, body="ok")) as server:
        yield server


@pytest.fixture
def hook() -> Iterator[StandIn]:
    with stand_in(Answer(204)) as server:
        yield server


def pagerduty_channel(pd: StandIn, timeout: float = 5.0) -> PagerDutyChannel:
    return PagerDutyChannel(f"{pd.url}/v2/enqueue", ROUTING_KEY, timeout=timeout)


def slack_channel(slack: StandIn, timeout: float = 5.0) -> SlackChannel:
    return SlackChannel(f"{slack.url}{SLACK_SECRET}", timeout=timeout)


def webhook_channel(hook: StandIn, timeout: float = 5.0) -> WebhookChannel:
    return WebhookChannel(f"{hook.url}/rollbackd", timeout=timeout, token=TOKEN)


def secret(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def paging_settings(tmp_path: Path, body: str) -> PagingSettings:
    return parse_config(body, tmp_path / "rollbackd.toml").paging


async def closing(channels: list[Channel]) -> None:
    for channel in channels:
        await channel.aclose()


# -- payloads ----------------------------------------------------------------------------


async def test_a_pagerduty_trigger_carries_the_alert_key_as_dedup_key_and_the_page_details(
        pd: StandIn) -> None:
    channel = pagerduty_channel(pd)
    receipt = await channel.send(page())
    await channel.aclose()

    assert receipt == "PagerDuty accepted the trigger"
    [request] = pd.received
    assert request.path == "/v2/enqueue"
    assert request.json() == {
        "routing_key": ROUTING_KEY, "event_action": "trigger",
        "dedup_key": "visionforge/incident-7/L2",
        "payload": {
            "summary": "visionforge: decide on incident 7", "source": "visionforge",
            "severity": "error", "timestamp": "2027-01-15T08:00:00.000000Z",
            "component": "visionforge", "group": "rollbackd", "class": "decision",
            "custom_details": {"text": page().text,
                               "dedup_key": "visionforge/incident-7/L2/decision",
                               "incident": 7, "level": "L2",
                               "recipient": "L2 technical director"}}}


@pytest.mark.parametrize(("ours", "theirs"), [("critical", "critical"), ("high", "error"),
                                              ("medium", "warning"), ("low", "info")])
async def test_pagerduty_is_told_each_severity_on_its_own_scale(
        pd: StandIn, ours: str, theirs: str) -> None:
    channel = pagerduty_channel(pd)
    await channel.send(page(severity=ours))
    await channel.aclose()
    assert pd.bodies()[0]["payload"]["severity"] == theirs


async def test_a_pagerduty_acknowledge_and_resolve_carry_only_the_key_and_the_action(
        pd: StandIn) -> None:
    channel = pagerduty_channel(pd)
    await channel.send(page(event="acknowledge", dedup_key="visionforge/incident-7/L2/ack"))
    await channel.send(page(event="resolve", dedup_key="visionforge/incident-7/L2/done"))
    await channel.aclose()
    assert pd.bodies() == [
        {"routing_key": ROUTING_KEY, "event_action": action,
         "dedup_key": "visionforge/incident-7/L2"} for action in ("acknowledge", "resolve")]


async def test_a_pagerduty_summary_is_cut_to_its_1024_characters(pd: StandIn) -> None:
    channel = pagerduty_channel(pd)
    await channel.send(page(title="x" * 2000))
    await channel.aclose()
    assert len(pd.bodies()[0]["payload"]["summary"]) == 1024


async def test_a_slack_page_is_the_bold_title_the_text_and_the_dedup_key_escaped(
        slack: StandIn) -> None:
    channel = slack_channel(slack)
    await channel.send(page(text="p95 > 2s & <rising>"))
    await channel.send(page(event="resolve"))
    await channel.aclose()
    assert [r.path for r in slack.received] == [SLACK_SECRET, SLACK_SECRET]
    assert slack.bodies() == [
        {"text": "*visionforge: decide on incident 7*\np95 &gt; 2s &amp; &lt;rising&gt;\n"
                 "_dedup key: visionforge/incident-7/L2/decision_"},
        {"text": "*resolved*: visionforge: decide on incident 7\n"
                 "_dedup key: visionforge/incident-7/L2/decision_"}]


async def test_a_webhook_page_carries_every_fact_and_the_bearer_token(hook: StandIn) -> None:
    channel = webhook_channel(hook)
    receipt = await channel.send(page())
    await channel.aclose()

    assert receipt == "127.0.0.1 accepted the page"
    [request] = hook.received
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {
        "version": "1", "dedup_key": "visionforge/incident-7/L2/decision",
        "alert_key": "visionforge/incident-7/L2", "event": "trigger", "app": "visionforge",
        "incident": 7, "level": 2, "recipient": "L2 technical director", "kind": "decision",
        "severity": "high", "title": "visionforge: decide on incident 7", "text": page().text,
        "labels": {"scenario": "db_errors", "action": "evaluate"},
        "sent_at": "2027-01-15T08:00:00.000000Z"}


# -- retries and fallback ----------------------------------------------------------------


async def test_a_page_the_slack_webhook_answers_429_to_is_retried_after_retry_after(
        slack: StandIn) -> None:
    slack.script(Answer(429, {"Retry-After": "2"}, "rate_limited"))
    waits = RecordedSleeps()
    channel = slack_channel(slack)
    [attempt] = await deliver(page(), [channel], attempts=3, max_wait=30, sleep=waits)
    await channel.aclose()

    assert attempt.ok and attempt.tries == 2 and attempt.error == ""
    assert waits == [2.0]
    assert len(slack.received) == 2


async def test_a_retry_after_longer_than_max_retry_wait_is_cut_to_it(slack: StandIn) -> None:
    slack.script(Answer(429, {"Retry-After": "3600"}), Answer(503, {"Retry-After": "120"}))
    waits = RecordedSleeps()
    channel = slack_channel(slack)
    [attempt] = await deliver(page(), [channel], attempts=3, max_wait=5, sleep=waits)
    await channel.aclose()
    assert attempt.ok and attempt.tries == 3
    assert waits == [5.0, 5.0]


async def test_pagerduty_answering_500_then_202_is_retried_with_backoff(pd: StandIn) -> None:
    pd.script(Answer(500), Answer(502))
    waits = RecordedSleeps()
    channel = pagerduty_channel(pd)
    [attempt] = await deliver(page(), [channel], attempts=3, max_wait=30, sleep=waits)
    await channel.aclose()

    assert attempt.ok and attempt.tries == 3
    assert len(pd.received) == 3
    # exponential from 0.5s, with up to 0.5s of jitter
    assert 0.5 <= waits[0] <= 1.0 and 1.0 <= waits[1] <= 1.5


async def test_a_webhook_that_stalls_past_its_timeout_is_retried_then_slack_takes_the_page(
        hook: StandIn, slack: StandIn) -> None:
    hook.script(Answer(stall=10), Answer(stall=10))
    waits = RecordedSleeps()
    channels: list[Channel] = [webhook_channel(hook, timeout=0.3), slack_channel(slack)]
    attempts = await deliver(page(), channels, attempts=2, max_wait=30, sleep=waits)
    await closing(channels)

    assert [(a.channel, a.ok, a.tries) for a in attempts] == [("webhook", False, 2),
                                                             ("slack", True, 1)]
    assert attempts[0].error == "webhook: 127.0.0.1 timed out after 0.3s"
    assert len(hook.received) == 2 and len(waits) == 1


async def test_a_pagerduty_400_is_not_retried_and_the_next_channel_is_tried(
        pd: StandIn, slack: StandIn) -> None:
    pd.script(Answer(400, body='{"status":"invalid event"}'))
    waits = RecordedSleeps()
    channels: list[Channel] = [pagerduty_channel(pd), slack_channel(slack)]
    attempts = await deliver(page(), channels, attempts=3, max_wait=30, sleep=waits)
    await closing(channels)

    assert [(a.channel, a.ok, a.tries) for a in attempts] == [("pagerduty", False, 1),
                                                             ("slack", True, 1)]
    assert attempts[0].error == "pagerduty: HTTP 400"
    assert waits == [] and len(pd.received) == 1


async def test_fallback_follows_the_configured_order_and_stops_at_the_first_delivery(
        tmp_path: Path, pd: StandIn, slack: StandIn, hook: StandIn) -> None:
    slack.script(Answer(404, body="no_service"))
    hook.script(Answer(410))
    settings = paging_settings(tmp_path, f"""
[paging]
order = ["slack", "webhook", "pagerduty"]
[paging.pagerduty]
routing_key_file = "{secret(tmp_path / 'pd.key', ROUTING_KEY)}"
url = "{pd.url}/v2/enqueue"
[paging.slack]
webhook_url_file = "{secret(tmp_path / 'slack.url', slack.url + SLACK_SECRET)}"
[paging.webhook]
url = "{hook.url}/rollbackd"
""")
    channels = build_channels(settings)
    attempts = await deliver(page(), channels, attempts=3, max_wait=30, sleep=RecordedSleeps())
    await closing(channels)

    assert [(a.channel, a.ok, a.tries, a.error) for a in attempts] == [
        ("slack", False, 1, "slack: HTTP 404: no_service"),
        ("webhook", False, 1, "webhook: HTTP 410"),
        ("pagerduty", True, 1, "")]
    assert attempts[2].receipt == "PagerDuty accepted the trigger"


async def test_a_delivered_page_goes_no_further_down_the_order(
        slack: StandIn, hook: StandIn) -> None:
    channels: list[Channel] = [slack_channel(slack), webhook_channel(hook)]
    attempts = await deliver(page(), channels, attempts=3, max_wait=30, sleep=RecordedSleeps())
    await closing(channels)
    assert [a.channel for a in attempts] == ["slack"]
    assert hook.received == []


async def test_send_each_reports_every_channel_even_after_one_delivered(
        pd: StandIn, slack: StandIn, hook: StandIn) -> None:
    slack.script(Answer(403, body="invalid_token"))
    channels: list[Channel] = [pagerduty_channel(pd), slack_channel(slack),
                               webhook_channel(hook)]
    attempts = await send_each(page(kind="test"), channels, attempts=2, max_wait=30,
                               sleep=RecordedSleeps())
    await closing(channels)

    assert [(a.channel, a.ok) for a in attempts] == [("pagerduty", True), ("slack", False),
                                                    ("webhook", True)]
    assert attempts[1].error == "slack: HTTP 403: invalid_token"
    assert len(pd.received) == len(hook.received) == 1


async def test_a_receiver_that_refuses_connections_is_retried_then_reported() -> None:
    waits = RecordedSleeps()
    channel = WebhookChannel(closed_port_url("/hook"), timeout=2.0)
    [attempt] = await deliver(page(), [channel], attempts=2, max_wait=30, sleep=waits)
    await channel.aclose()
    assert (attempt.ok, attempt.tries) == (False, 2)
    assert attempt.error == "webhook: cannot reach 127.0.0.1: Connection refused"


# -- e-mail ------------------------------------------------------------------------------


def email_channel(server: SmtpServer, **changes: object) -> EmailChannel:
    options: dict[str, object] = {"host": server.host, "port": server.port,
                                  "sender": "rollbackd@example.net",
                                  "to": ["oncall@example.net", "cto@example.net"],
                                  "timeout": 5.0, "starttls": False}
    options.update(changes)
    return EmailChannel(**options)  # type: ignore[arg-type]


def hashed_id(key: str) -> str:
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:32]}@rollbackd>"


async def test_an_email_page_has_the_title_as_subject_and_ids_from_its_keys() -> None:
    with smtp_server() as server:
        receipt = await email_channel(server).send(page())
    [mail] = server.mails
    assert receipt == f"127.0.0.1:{server.port} accepted it for 2 recipient(s)"
    assert mail.sender == "rollbackd@example.net"
    assert mail.recipients == ["oncall@example.net", "cto@example.net"]
    assert mail.message["Subject"] == "visionforge: decide on incident 7"
    assert mail.message["Message-ID"] == hashed_id("visionforge/incident-7/L2/decision")
    assert mail.message["In-Reply-To"] == hashed_id("visionforge/incident-7/L2")
    assert mail.message["References"] == hashed_id("visionforge/incident-7/L2")
    assert mail.message["X-Rollbackd-Dedup-Key"] == "visionforge/incident-7/L2/decision"
    assert mail.message.get_content().replace("\r\n", "\n").rstrip("\n") == page().text


async def test_an_email_page_goes_over_starttls_with_a_login(tmp_path: Path) -> None:
    with smtp_server(tls_dir=tmp_path, login=("rollbackd", PASSWORD)) as server:
        channel = email_channel(server, starttls=True, username="rollbackd", password=PASSWORD,
                                ca_file=server.ca_file)
        await channel.send(page())
    assert server.logins == ["rollbackd"]
    assert [m.message["Subject"] for m in server.mails] == ["visionforge: decide on incident 7"]


async def test_an_email_page_is_not_sent_in_plain_text_without_starttls_offered() -> None:
    with smtp_server() as server:
        channel = email_channel(server, starttls=True)
        [attempt] = await deliver(page(), [channel], attempts=3, max_wait=30,
                                  sleep=RecordedSleeps())
    assert (attempt.ok, attempt.tries) == (False, 1)
    assert attempt.error.startswith(f"email: 127.0.0.1:{server.port} does not offer STARTTLS")
    assert server.mails == []


async def test_an_smtp_server_whose_certificate_is_not_trusted_gets_no_page(
        tmp_path: Path) -> None:
    with smtp_server(tls_dir=tmp_path) as server:
        channel = email_channel(server, starttls=True)  # the system's CAs, not the test's
        [attempt] = await deliver(page(), [channel], attempts=3, max_wait=30,
                                  sleep=RecordedSleeps())
    assert (attempt.ok, attempt.tries) == (False, 1)
    assert "CERTIFICATE_VERIFY_FAILED" in attempt.error
    assert server.mails == []


async def test_an_smtp_4xx_is_retried_and_a_5xx_is_not() -> None:
    with smtp_server() as server:
        server.script("451 4.3.0 try again later")
        waits = RecordedSleeps()
        [retried] = await deliver(page(), [email_channel(server)], attempts=3, max_wait=30,
                                  sleep=waits)
        server.script("554 5.7.1 rejected by policy")
        [refused] = await deliver(page(), [email_channel(server)], attempts=3, max_wait=30,
                                  sleep=waits)
    assert (retried.ok, retried.tries) == (True, 2)
    assert (refused.ok, refused.tries) == (False, 1)
    assert refused.error == (f"email: 127.0.0.1:{server.port} answered 554 "
                             "5.7.1 rejected by policy")
    assert len(server.mails) == 1 and len(waits) == 1


# -- settings to channels ----------------------------------------------------------------


def full_settings(tmp_path: Path, pd_url: str, slack_url: str, hook_url: str,
                  smtp: SmtpServer | None = None) -> PagingSettings:
    smtp_host, smtp_port = (smtp.host, smtp.port) if smtp else ("127.0.0.1", 1)
    return paging_settings(tmp_path, f"""
[paging.pagerduty]
routing_key_file = "{secret(tmp_path / 'pd.key', ROUTING_KEY)}"
url = "{pd_url}"
timeout = "2s"
[paging.slack]
webhook_url_file = "{secret(tmp_path / 'slack.url', slack_url)}"
timeout = "2s"
[paging.email]
host = "{smtp_host}"
port = {smtp_port}
from = "rollbackd@example.net"
to = ["oncall@example.net"]
username = "rollbackd"
password_file = "{secret(tmp_path / 'smtp.password', PASSWORD)}"
starttls = false
timeout = "2s"
[paging.webhook]
url = "{hook_url}"
token_file = "{secret(tmp_path / 'hook.token', TOKEN)}"
timeout = "2s"
[paging.contacts.database_vendor]
channel = "email"
to = ["support@vendor.example"]
who = "database vendor support"
[paging.contacts.provider]
channel = "slack"
webhook_url_file = "{secret(tmp_path / 'provider.url', slack_url + '/provider')}"
who = "infrastructure provider"
""")


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_no_secret_appears_in_failing_sends_errors_or_in_the_settings(
        tmp_path: Path, pd: StandIn, slack: StandIn, hook: StandIn) -> None:
    for server in (pd, slack, hook):
        server.script(*[Answer(500)] * 2)
    with smtp_server(login=("rollbackd", "another password")) as smtp:
        settings = full_settings(tmp_path, f"{pd.url}/v2/enqueue", slack.url + SLACK_SECRET,
                                 f"{hook.url}/rollbackd", smtp)
        channels = build_channels(settings)
        failed = await send_each(page(), channels, attempts=2, max_wait=1,
                                 sleep=RecordedSleeps())
        await closing(channels)
    # unreachable too: connection errors must not quote the URL either
    unreachable = full_settings(tmp_path, closed_port_url("/v2/enqueue"),
                                closed_port_url(SLACK_SECRET), closed_port_url("/rollbackd"))
    channels = build_channels(unreachable)
    refused = await send_each(page(), channels, attempts=1, max_wait=1, sleep=RecordedSleeps())
    await closing(channels)

    assert [a.ok for a in failed + refused] == [False] * 8
    told = "\n".join([a.error for a in failed + refused]
                     + [repr(settings), str(settings), repr(channels)])
    for leaked in (ROUTING_KEY, SLACK_SECRET, "SECRET", PASSWORD, TOKEN):
        assert leaked not in told
    assert "email: 127.0.0.1:" in told and "refused the login of rollbackd (535)" in told


async def test_channels_come_in_the_default_order_and_only_picks_some(
        tmp_path: Path) -> None:
    settings = full_settings(tmp_path, "https://events.pagerduty.com/v2/enqueue",
                             "https://hooks.slack.com" + SLACK_SECRET, "https://h.example/x")
    assert settings.order == ["pagerduty", "slack", "email", "webhook"]
    every = build_channels(settings)
    some = build_channels(settings, only=["webhook", "slack"])
    assert [c.name for c in every] == ["pagerduty", "slack", "email", "webhook"]
    assert [c.name for c in some] == ["slack", "webhook"]
    with pytest.raises(ValueError, match=r"paging channel alertmanager is not in paging\.order"):
        build_channels(settings, only=["alertmanager"])
    await closing(every + some)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_a_named_contact_is_paged_through_its_channel_at_its_own_address(
        tmp_path: Path, slack: StandIn) -> None:
    with smtp_server(login=("rollbackd", PASSWORD)) as smtp:
        # login over plain text: aiosmtpd is told not to require TLS for AUTH
        settings = full_settings(tmp_path, "https://events.pagerduty.com/v2/enqueue",
                                 slack.url + SLACK_SECRET, "https://h.example/x", smtp)
        vendor = build_contact(settings, "database_vendor")
        provider = build_contact(settings, "provider")
        message = page(level=0, recipient="database vendor support", kind="contact")
        receipts = [await vendor.send(message), await provider.send(message)]
        await closing([vendor, provider])
    assert (vendor.name, provider.name) == ("contact:database_vendor", "contact:provider")
    assert receipts[1] == "Slack accepted the message"
    assert [m.recipients for m in smtp.mails] == [["support@vendor.example"]]
    assert [r.path for r in slack.received] == [SLACK_SECRET + "/provider"]
    with pytest.raises(ValueError, match=r"no contact named 'security' in paging.contacts "
                                         r"\(known: database_vendor, provider\)"):
        build_contact(settings, "security")
