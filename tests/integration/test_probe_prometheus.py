"""The Prometheus probe against a real Prometheus (Debian package) that scrapes itself."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from policies.schema import convert
from probes.prometheus import PrometheusProbe, PrometheusQueryError
from probes.runner import measure_one
from probes.settings import PrometheusProbeSettings
from tests.harness.prometheus_server import PrometheusServer, running_prometheus
from tests.harness.servers import free_port

TWO_SERIES = ('label_replace(vector(1), "a", "x", "", "") '
              'or label_replace(vector(2), "a", "y", "", "")')


@pytest.fixture(scope="module")
def prometheus() -> Iterator[PrometheusServer]:
    # Not waiting for the first scrape here (Prometheus applies new targets only every 5 s):
    # tests that need scraped data wait for it themselves, the others run meanwhile.
    with running_prometheus(scrape_interval="1s") as server:
        yield server


@pytest.fixture
async def made() -> AsyncIterator[list[PrometheusProbe]]:
    probes: list[PrometheusProbe] = []
    yield probes
    for probe in probes:
        await probe.aclose()


def probe_for(made: list[PrometheusProbe], url: str, query: str,
              signal: str = "fleet.up") -> PrometheusProbe:
    probe = PrometheusProbe(convert(
        {"name": "fleet", "url": url, "query": query, "signal": signal, "timeout": 2.0},
        PrometheusProbeSettings))
    made.append(probe)
    return probe


async def test_a_scalar_result_gives_its_value(
    prometheus: PrometheusServer, made: list[PrometheusProbe]
) -> None:
    assert await probe_for(made, prometheus.url + "/", "scalar(vector(0.25))").query() == 0.25


async def test_an_empty_result_is_no_data_not_a_failure(
    prometheus: PrometheusServer, made: list[PrometheusProbe]
) -> None:
    probe = probe_for(made, prometheus.url, 'up{job="no_such_job"}')
    outcome = await measure_one(probe, bound=5.0)
    assert outcome.ok, outcome.error
    assert outcome.reading == {"fleet.up": None}


async def test_nan_is_no_data(
    prometheus: PrometheusServer, made: list[PrometheusProbe]
) -> None:
    probe = probe_for(made, prometheus.url, 'scalar(up{job="no_such_job"})')
    assert await probe.query() is None


async def test_a_query_with_several_series_is_a_probe_failure(
    prometheus: PrometheusServer, made: list[PrometheusProbe]
) -> None:
    probe = probe_for(made, prometheus.url, TWO_SERIES)
    with pytest.raises(PrometheusQueryError, match="2 series; aggregate it to one"):
        await probe.query()
    outcome = await measure_one(probe, bound=5.0)
    assert not outcome.ok
    assert outcome.reading == {"fleet.up": None}


async def test_a_query_prometheus_rejects_is_a_failure_with_its_reason(
    prometheus: PrometheusServer, made: list[PrometheusProbe]
) -> None:
    with pytest.raises(PrometheusQueryError, match=r"bad_data.*parse error"):
        await probe_for(made, prometheus.url, "sum((up)").query()


async def test_a_server_that_is_not_prometheus_is_a_failure(
    prometheus: PrometheusServer, made: list[PrometheusProbe]
) -> None:
    with pytest.raises(PrometheusQueryError, match="without JSON"):
        await probe_for(made, prometheus.url + "/nothing-here", "max(up)").query()


async def test_an_unreachable_prometheus_is_a_probe_failure(
    made: list[PrometheusProbe],
) -> None:
    probe = probe_for(made, f"http://127.0.0.1:{free_port()}", "max(up)")
    outcome = await measure_one(probe, bound=5.0)
    assert not outcome.ok
    assert outcome.error is not None and "cannot query" in outcome.error
    assert outcome.reading == {"fleet.up": None}


async def test_a_query_aggregated_to_one_series_gives_its_value(
    prometheus: PrometheusServer, made: list[PrometheusProbe]
) -> None:
    prometheus.wait_for_series('up{job="prometheus"} == 1')
    probe = probe_for(made, prometheus.url, "max(up)")
    assert probe.signals() == ["fleet.up"]
    assert await probe.measure() == {"fleet.up": 1.0}


async def test_a_range_vector_is_a_probe_failure(
    prometheus: PrometheusServer, made: list[PrometheusProbe]
) -> None:
    prometheus.wait_for_series('up{job="prometheus"}')
    with pytest.raises(PrometheusQueryError, match="matrix"):
        await probe_for(made, prometheus.url, "up[1m]").query()
