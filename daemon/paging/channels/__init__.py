"""The channels a page goes out through, built from ``[paging]``: one module per channel."""

from __future__ import annotations

from collections.abc import Sequence

from daemon.config import PAGERDUTY_EVENTS_URL, ContactSettings, PagingSettings
from daemon.paging.channels.alertmanager import AlertmanagerChannel, Silence
from daemon.paging.channels.base import Channel, DeliveryError
from daemon.paging.channels.email import EmailChannel
from daemon.paging.channels.pagerduty import PagerDutyChannel
from daemon.paging.channels.slack import SlackChannel
from daemon.paging.channels.webhook import WebhookChannel

__all__ = ["AlertmanagerChannel", "Channel", "DeliveryError", "EmailChannel",
           "PagerDutyChannel", "Silence", "SlackChannel", "WebhookChannel", "build_channel",
           "build_channels", "build_contact"]


def build_channel(settings: PagingSettings, name: str) -> Channel:
    """The channel ``name`` as ``[paging.NAME]`` configures it; ValueError when it is not."""
    if name == "alertmanager" and settings.alertmanager is not None:
        am = settings.alertmanager
        return AlertmanagerChannel(am.urls, timeout=am.timeout, resend=am.resend)
    if name == "pagerduty" and settings.pagerduty is not None:
        pd = settings.pagerduty
        return PagerDutyChannel(pd.url, pd.routing_key, timeout=pd.timeout)
    if name == "slack" and settings.slack is not None:
        return SlackChannel(settings.slack.webhook_url, timeout=settings.slack.timeout)
    if name == "email" and settings.email is not None:
        mail = settings.email
        return EmailChannel(host=mail.host, port=mail.port, sender=mail.from_, to=mail.to,
                            timeout=mail.timeout, starttls=mail.starttls,
                            username=mail.username, password=mail.password,
                            ca_file=mail.ca_file)
    if name == "webhook" and settings.webhook is not None:
        hook = settings.webhook
        return WebhookChannel(hook.url, timeout=hook.timeout, token=hook.token)
    configured = ", ".join(settings.configured()) or "none"
    raise ValueError(f"paging channel {name} is not configured (configured: {configured})")


def build_channels(settings: PagingSettings, only: Sequence[str] | None = None) -> list[Channel]:
    """The configured channels in fallback order (``paging.order``); ``only`` keeps those
    named (``rollbackd page test --channel slack``), still in that order."""
    if only is not None:
        unknown = sorted(set(only) - set(settings.order))
        if unknown:
            raise ValueError(f"paging channel {unknown[0]} is not in paging.order "
                             f"({', '.join(settings.order) or 'no channel configured'})")
    return [build_channel(settings, name) for name in settings.order
            if only is None or name in only]


def build_contact(settings: PagingSettings, name: str) -> Channel:
    """The channel that reaches the named contact, as ``contact:NAME``."""
    contact = settings.contacts.get(name)
    if contact is None:
        known = ", ".join(sorted(settings.contacts)) or "none is configured"
        raise ValueError(f"no contact named {name!r} in paging.contacts (known: {known})")
    return _contact_channel(settings, f"contact:{name}", contact)


def _contact_channel(settings: PagingSettings, label: str, contact: ContactSettings) -> Channel:
    if contact.channel == "email":
        mail = settings.email
        # The settings refuse an e-mail contact without [paging.email].
        assert mail is not None and contact.to is not None
        return EmailChannel(host=mail.host, port=mail.port, sender=mail.from_, to=contact.to,
                            timeout=mail.timeout, starttls=mail.starttls,
                            username=mail.username, password=mail.password,
                            ca_file=mail.ca_file, name=label)
    if contact.channel == "pagerduty":
        pd = settings.pagerduty
        return PagerDutyChannel(pd.url if pd else PAGERDUTY_EVENTS_URL, contact.routing_key,
                                timeout=pd.timeout if pd else 10.0, name=label)
    if contact.channel == "slack":
        timeout = settings.slack.timeout if settings.slack else 10.0
        return SlackChannel(contact.webhook_url, timeout=timeout, name=label)
    assert contact.url is not None
    timeout = settings.webhook.timeout if settings.webhook else 10.0
    return WebhookChannel(contact.url, timeout=timeout, token=contact.token, name=label)
