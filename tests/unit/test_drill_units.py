"""The drill's systemd units: a bounded oneshot as the daemon's user, started monthly."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.harness.paths import SYSTEMD_DIR
from tests.harness.systemd import INSTALLED_EXEC, UNIT, assert_rates_ok
from tests.harness.systemd import installed_console_script as _installed_console_script
from tests.harness.systemd import verify_unit as _verify

SERVICE = SYSTEMD_DIR / "rollbackd-drill.service"
TIMER = SYSTEMD_DIR / "rollbackd-drill.timer"


def _assignments(path: Path) -> list[tuple[str, str]]:
    pairs = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            pairs.append((key.strip(), value.strip()))
    return pairs


def _values(path: Path, key: str) -> list[str]:
    return [value for k, value in _assignments(path) if k == key]


def test_the_drill_service_and_timer_verify_clean_with_execstart_at_the_installed_script(
        tmp_path: Path) -> None:
    text = SERVICE.read_text()
    assert f"ExecStart={INSTALLED_EXEC} drill\n" in text
    service = tmp_path / SERVICE.name
    service.write_text(text.replace(f"ExecStart={INSTALLED_EXEC} ",
                                    f"ExecStart={_installed_console_script()} "))
    timer = tmp_path / TIMER.name
    shutil.copy(TIMER, timer)

    for unit in (service, timer):
        clean, report = _verify(unit)
        assert clean, report


def test_the_drill_service_rates_ok_in_the_offline_security_analysis() -> None:
    assert_rates_ok(SERVICE)


def test_the_drill_service_is_a_bounded_oneshot_as_the_daemons_user_with_its_hardening(
        ) -> None:
    assert _values(SERVICE, "Type") == ["oneshot"]
    assert _values(SERVICE, "ExecStart") == [f"{INSTALLED_EXEC} drill"]
    assert _values(SERVICE, "TimeoutStartSec") == ["2h"]
    # Only the daemon's own lifecycle (and its HTTP server's descriptor limit) differs; every
    # other setting must match it.
    lifecycle = {"Description", "Type", "ExecStart", "ExecReload", "NotifyAccess", "WatchdogSec",
                 "Restart", "RestartSec", "RestartPreventExitStatus", "TimeoutStopSec",
                 "WantedBy", "LimitNOFILE"}
    daemon = sorted(p for p in _assignments(UNIT) if p[0] not in lifecycle)
    drill = sorted(p for p in _assignments(SERVICE) if p[0] not in lifecycle)
    assert [p for p in daemon if p not in drill] == []
    assert {k for k, _ in drill} - {k for k, _ in daemon} == {"TimeoutStartSec", "Nice"}


def test_the_timer_runs_the_drill_service_monthly_and_catches_up_after_downtime() -> None:
    assert _values(TIMER, "OnCalendar") == ["monthly"]
    assert _values(TIMER, "Persistent") == ["true"]
    assert _values(TIMER, "RandomizedDelaySec") == ["4h"]
    assert _values(TIMER, "WantedBy") == ["timers.target"]
    # No Unit=: a timer starts the service of its own name.
    assert _values(TIMER, "Unit") == []
    assert TIMER.with_suffix(".service") == SERVICE
