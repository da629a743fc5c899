"""A real browser for tests of the live page: Debian's headless Chromium driven by selenium
through Debian's chromedriver (no browser or driver is downloaded)."""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.servers import IN_CI, require_binary

WINDOW = (1280, 1600)


def _unavailable(message: str) -> None:
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@contextlib.contextmanager
def headless_chromium(profile: Path) -> Iterator[Any]:
    """A selenium WebDriver on headless Chromium with a fixed window size and its own
    profile directory; skips the test (fails it under CI=true) when Chromium, chromedriver
    or selenium is missing, saying what to install."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed (pip install -e '.[test]')")
    chromium = require_binary("chromium", "chromium")
    driver_path = require_binary("chromedriver", "chromium-driver")
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                f"--user-data-dir={profile}", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--hide-scrollbars"):
        options.add_argument(arg)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium refuses to run as root with it
    # The console, to see what the Content-Security-Policy refused.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    profile.mkdir(parents=True, exist_ok=True)
    service = Service(executable_path=driver_path,
                      log_output=str(profile.parent / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()


def png_size(path: Path) -> tuple[int, int]:
    """A PNG file's width and height, from its IHDR chunk; fails the test if it is no PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is no PNG"
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)
