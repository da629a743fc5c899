"""The live page in a real browser (headless Chromium): it renders the state from a running
daemon, shows an incident once Alertmanager's webhook opens one without being reloaded, and
its screenshot is left in the test's output directory."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.db.fleet import FleetDb
from tests.harness.api import Rollbackd, alert, webhook
from tests.harness.browser import headless_chromium, png_size
from tests.harness.fleet import maintenance_dsn
from tests.harness.servers import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Rollbackd]:
    started = Rollbackd(tmp_path)
    yield started
    started.close()


def text_of(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, element_id).text)


def test_the_live_page_renders_then_shows_an_opened_incident_and_is_screenshot(
        daemon: Rollbackd, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    daemon.journal.begin_deploy("visionforge", "v2", time.time() - 120, restore_point="rp-1",
                                verified=True)
    with headless_chromium(tmp_path / "chromium") as driver:
        driver.get(daemon.url + "/")
        wait_for(lambda: text_of(driver, "headline") == "All clear: no incident", 20,
                 what="the page's script to draw the state")
        assert "visionforge:" in text_of(driver, "status-line")
        assert text_of(driver, "incident-title") == "No incident so far"

        posted = daemon.call("POST", "/api/v1/alertmanager", json=webhook(alert()))
        assert posted.status_code == 200, posted.text
        # No reload: the page polls /live.json and redraws itself.
        wait_for(lambda: "Incident 1 open" in text_of(driver, "headline"), 20,
                 what="the page to show incident 1")
        wait_for(lambda: "page L1 decision" in text_of(driver, "timeline"), 20,
                 what="the incident's page in the timeline")

        headline = text_of(driver, "headline")
        assert headline.startswith("Incident 1 open: high_latency (medium), evaluate"), headline
        assert "incident" in (driver.find_element(By.ID, "state").get_attribute("class") or "")
        assert "decision: open" in text_of(driver, "timeline")
        charts = driver.find_elements(By.CSS_SELECTOR, "#charts .chart svg")
        assert [c.get_attribute("aria-label") for c in charts] == [
            "alert.HighLatency over the last hour"]
        marks = text_of(driver, "charts")
        assert "deploy v2" in marks and "high_latency: alert.HighLatency > 0" in marks
        # The strict Content-Security-Policy let the page's own script and style through.
        refused = [e["message"] for e in driver.get_log("browser")
                   if "Content Security Policy" in e["message"]]
        assert refused == []

        screenshot = tmp_path / "live-page.png"
        assert driver.save_screenshot(str(screenshot))
    print(f"live page screenshot: {screenshot}")
    width, height = png_size(screenshot)
    assert (width, height) >= (800, 600) and screenshot.stat().st_size > 10_000


def test_in_a_fleet_the_live_page_shows_the_fleet_incident_and_each_hosts_part(
        pg_db: str, tmp_path: Path) -> None:
    fleet = f"vf-{secrets.token_hex(4)}"
    daemon = Rollbackd(tmp_path, api=f'[database]\ndsn = "{pg_db}"\n'
                                     f'[fleet]\nname = "{fleet}"\nid = "h1"\nheartbeat = "500ms"\n')
    try:
        h0 = FleetDb(maintenance_dsn(pg_db), fleet, "h0")
        h0.ensure_schema()
        h0.look()
        incident, _ = h0.open_or_join("migration_failed", "immediate_rollback",
                                      "immediate_rollback", None)
        with headless_chromium(tmp_path / "chromium") as driver:
            driver.get(daemon.url + "/")
            wait_for(lambda: text_of(driver, "fleet-summary").startswith(
                f"Fleet incident {incident.id}: migration_failed → immediate_rollback, opened "
                "by h0; database pending"), 20, what="the page to show the fleet incident")
            assert text_of(driver, "fleet-title") == f"Fleet {fleet} (this host: h1)"
            assert text_of(driver, "headline") == (
                f"Fleet incident {incident.id} open: migration_failed, immediate_rollback "
                "(database pending)")
            wait_for(lambda: "h1 part pending" in text_of(driver, "fleet-hosts"), 20,
                     what="this host to follow the fleet incident")
            assert "h0 part pending" in text_of(driver, "fleet-hosts")
            # The status line is the cycle's: it says what the look before the cycle saw.
            wait_for(lambda: f"fleet incident {incident.id} (immediate_rollback): database "
                     "pending" in text_of(driver, "status-line"), 20,
                     what="the status line to name the fleet incident")
            driver.save_screenshot(str(tmp_path / "live-page-fleet.png"))
    finally:
        daemon.close()
