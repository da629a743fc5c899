"""Where things are in the checkout, wherever a test module lives under tests/."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
APP_DIR = ROOT / "examples" / "visionforge"
SYSTEMD_DIR = ROOT / "systemd"
REPLAYS = ROOT / "tests" / "replays"
