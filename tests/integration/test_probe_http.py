"""The HTTP probe against a real HTTP server on 127.0.0.1 whose answers the test controls."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from policies.schema import convert
from policies.stats import quantile
from probes.http import HTTP_AGGREGATE_SIGNALS, HttpProbe, aggregate_http
from probes.runner import measure_one
from probes.settings import HttpProbeSettings
from tests.harness.http import serving
from tests.harness.servers import free_port


class ControlledServer(ThreadingHTTPServer):
    """Answers every request with ``status`` after ``delay`` seconds."""

    daemon_threads = True
    status = 200
    delay = 0.0
    hits = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/health"


class Handler(BaseHTTPRequestHandler):
    server: ControlledServer

    def do_GET(self) -> None:
        self.server.hits += 1
        if self.server.delay:
            time.sleep(self.server.delay)
        body = b"ok\n"
        # A client that gave up (the timeout test) has closed its end: nothing to report.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.send_response(self.server.status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ControlledServer]:
    with serving(ControlledServer(("127.0.0.1", 0), Handler)) as srv:
        yield srv


def settings(url: str, name: str = "api", **kw: object) -> HttpProbeSettings:
    return convert({"name": name, "url": url, "timeout": 1.0, **kw}, HttpProbeSettings)


@pytest.fixture
async def probes() -> AsyncIterator[list[HttpProbe]]:
    """Probes a test creates are closed afterwards, whatever happens."""
    made: list[HttpProbe] = []
    yield made
    for probe in made:
        await probe.aclose()


def make(probes: list[HttpProbe], url: str, name: str = "api", **kw: object) -> HttpProbe:
    probe = HttpProbe(settings(url, name, **kw))
    probes.append(probe)
    return probe


async def test_a_healthy_server_is_up_with_no_errors_and_known_latencies(
    server: ControlledServer, probes: list[HttpProbe]
) -> None:
    probe = make(probes, server.url, requests=3)
    reading = await probe.measure()
    assert set(reading) == set(probe.signals())
    assert reading["http.api.up"] == 1.0
    assert reading["http.api.error_ratio"] == 0.0
    p50, p95, p99 = (reading[f"http.api.latency_{q}"] for q in ("p50", "p95", "p99"))
    assert p50 is not None and p95 is not None and p99 is not None
    assert 0 < p50 <= p95 <= p99 < 1.0
    assert server.hits == 3


async def test_a_5xx_is_an_error_and_the_app_is_down(
    server: ControlledServer, probes: list[HttpProbe]
) -> None:
    probe = make(probes, server.url)
    server.status = 503
    reading = await probe.measure()
    assert reading["http.api.up"] == 0.0
    assert reading["http.api.error_ratio"] == 1.0
    # It answered, so its latency is a real measurement.
    assert reading["http.api.latency_p50"] is not None
    server.status = 200
    reading = await probe.measure()
    assert reading["http.api.up"] == 1.0
    assert reading["http.api.error_ratio"] == 0.5


async def test_a_4xx_is_the_app_answering_not_an_error(
    server: ControlledServer, probes: list[HttpProbe]
) -> None:
    server.status = 404
    reading = await make(probes, server.url).measure()
    assert reading["http.api.up"] == 1.0
    assert reading["http.api.error_ratio"] == 0.0


async def test_a_refused_connection_counts_as_an_error_not_as_unknown(
    probes: list[HttpProbe],
) -> None:
    probe = make(probes, f"http://127.0.0.1:{free_port()}/health")
    outcome = await measure_one(probe, bound=5.0)
    assert outcome.ok, outcome.error
    assert outcome.reading["http.api.up"] == 0.0
    assert outcome.reading["http.api.error_ratio"] == 1.0
    assert outcome.reading["http.api.latency_p95"] is None


async def test_a_server_slower_than_the_timeout_is_an_error_not_a_probe_failure(
    server: ControlledServer, probes: list[HttpProbe]
) -> None:
    server.delay = 1.5
    probe = make(probes, server.url, timeout=0.3)
    started = time.monotonic()
    outcome = await measure_one(probe, bound=5.0)
    assert time.monotonic() - started < 1.0
    assert outcome.ok, outcome.error
    assert outcome.reading["http.api.up"] == 0.0
    assert outcome.reading["http.api.error_ratio"] == 1.0


async def test_errors_leave_the_window_after_it_slides_past_them(
    server: ControlledServer, probes: list[HttpProbe]
) -> None:
    probe = make(probes, server.url, window=0.4)
    server.status = 500
    await probe.measure()
    assert (await probe.measure())["http.api.error_ratio"] == 1.0
    await asyncio.sleep(0.5)
    server.status = 200
    reading = await probe.measure()
    assert reading["http.api.error_ratio"] == 0.0
    assert len(probe.window()) == 1


async def test_the_aggregate_pools_requests_and_takes_the_worst_up(
    server: ControlledServer, probes: list[HttpProbe]
) -> None:
    good = make(probes, server.url, name="api", requests=3)
    dead = make(probes, f"http://127.0.0.1:{free_port()}/", name="admin")
    assert aggregate_http([good, dead]) == dict.fromkeys(HTTP_AGGREGATE_SIGNALS)

    await good.measure()
    assert aggregate_http([good, dead])["http.up"] == 1.0  # the other one does not know yet
    await dead.measure()
    total = aggregate_http([good, dead])
    assert set(total) == set(HTTP_AGGREGATE_SIGNALS)
    assert total["http.up"] == 0.0
    assert total["http.error_ratio"] == pytest.approx(1 / 4)
    # The dead probe got no response, so only the good one's latencies are in the quantiles.
    latencies = [r.latency for r in good.window() if r.latency is not None]
    assert total["http.latency_p50"] == quantile(latencies, 0.5)


async def test_proxy_variables_in_the_environment_do_not_reroute_the_probe(
    server: ControlledServer, probes: list[HttpProbe], monkeypatch: pytest.MonkeyPatch
) -> None:
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, dead_proxy)
    reading = await make(probes, server.url).measure()
    assert reading["http.api.up"] == 1.0


def test_quantiles_interpolate_linearly_between_ranks() -> None:
    assert quantile([], 0.5) is None
    assert quantile([7.0], 0.99) == 7.0
    assert quantile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.95) == pytest.approx(3.85)
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.0) == 1.0
    assert quantile([1.0, 2.0, 3.0, 4.0], 1.0) == 4.0
    with pytest.raises(ValueError):
        quantile([1.0], 1.5)


async def test_a_tick_cut_short_leaves_the_probe_unknown_in_the_aggregate(
    server: ControlledServer, probes: list[HttpProbe]
) -> None:
    healthy = make(probes, server.url, name="api", timeout="5s")
    await healthy.measure()
    assert aggregate_http([healthy])["http.up"] == 1.0
    # The runner cancels a probe that overruns the tick; last tick's "up" must not linger.
    server.delay = 2.0
    outcome = await measure_one(healthy, bound=0.3)
    assert not outcome.ok
    assert aggregate_http([healthy])["http.up"] is None


def test_every_https_client_shares_one_verifying_tls_context() -> None:
    import ssl

    from probes.base import tls_context

    first = HttpProbe(settings("https://127.0.0.1:1/", name="a"))
    second = HttpProbe(settings("https://127.0.0.1:1/", name="b"))
    redirected = HttpProbe(settings("http://127.0.0.1:1/", name="c", follow_redirects=True))
    context = tls_context()
    assert context is tls_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    for probe in (first, second, redirected):
        transport = probe._client._transport
        assert transport._pool._ssl_context is context  # type: ignore[attr-defined]


def test_a_plain_http_client_without_redirects_gets_a_context_that_trusts_no_ca() -> None:
    import ssl

    from probes.base import tls_context

    probe = HttpProbe(settings("http://127.0.0.1:1/", name="plain"))
    context = probe._client._transport._pool._ssl_context  # type: ignore[attr-defined]
    assert context is not tls_context()
    # Any TLS through it would still be verified, and fail: it fails closed, not open.
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.cert_store_stats()["x509_ca"] == 0
