"""App control adapters against real processes, real scripts and a real (or stand-in) systemctl."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from daemon.app.control import AppController, ProcessController, SystemdController
from daemon.config import CommandControl, ProcessControl, SystemdControl
from probes.settings import ProcessProbeSettings
from tests.harness.servers import wait_for

UNIT = "rollbackd-test-app.service"

# An app that writes its pidfile once it can handle SIGTERM, and leaves a marker when it does.
GRACEFUL_APP = """
import os, signal, sys, time
pidfile, marker = sys.argv[1], sys.argv[2]
def bye(signum, frame):
    open(marker, "w").write("graceful")
    sys.exit(0)
signal.signal(signal.SIGTERM, bye)
tmp = pidfile + ".tmp"
open(tmp, "w").write(f"{os.getpid()}\\n")
os.replace(tmp, pidfile)
print("app listening", flush=True)
while True:
    time.sleep(0.05)
"""

STUBBORN_APP = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
pidfile = sys.argv[1]
tmp = pidfile + ".tmp"
open(tmp, "w").write(f"{os.getpid()}\\n")
os.replace(tmp, pidfile)
while True:
    time.sleep(0.05)
"""


def script(path: Path, body: str) -> Path:
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return path


class Apps:
    """App processes of one test; whatever is left is ended by its pid afterwards."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.pidfile = tmp_path / "app.pid"
        self.marker = tmp_path / "terminated"
        self.graceful = script(tmp_path / "graceful_app.py", GRACEFUL_APP)
        self.stubborn = script(tmp_path / "stubborn_app.py", STUBBORN_APP)
        self.popens: list[subprocess.Popen[bytes]] = []

    def graceful_argv(self) -> list[str]:
        return [sys.executable, str(self.graceful), str(self.pidfile), str(self.marker)]

    def spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        self.popens.append(proc)
        wait_for(lambda: self.pidfile.exists() and self.pidfile.read_text().strip()
                 == str(proc.pid), 5, what="the app's pidfile")
        return proc

    def controller(self, start: list[str] | None = None,
                   stop_timeout: float = 5.0) -> ProcessController:
        control = ProcessControl(pidfile=self.pidfile,
                                 start=start or self.graceful_argv(), stop_timeout=stop_timeout)
        built = AppController.build(control, state_dir=self.tmp / "state")
        assert isinstance(built, ProcessController)
        return built

    def end_all(self) -> None:
        for proc in self.popens:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        with contextlib.suppress(OSError, ValueError, psutil.Error):
            pid = int(self.pidfile.read_text().split()[0])
            proc_ = psutil.Process(pid)
            # Only an app of this test (its script lives in this test's tmp_path).
            if any(str(self.tmp) in part for part in proc_.cmdline()):
                proc_.kill()
                proc_.wait(10)


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[Apps]:
    made = Apps(tmp_path)
    yield made
    made.end_all()


# --- process adapter ---------------------------------------------------------------------


def test_a_graceful_stop_sends_sigterm_and_the_app_exits_cleanly(apps: Apps) -> None:
    proc = apps.spawn(apps.graceful_argv())
    controller = apps.controller()
    assert controller.is_running() is True

    result = controller.stop(force=False, timeout=10)

    assert result.ok, result.message
    assert "SIGTERM" in result.message and str(proc.pid) in result.message
    assert apps.marker.read_text() == "graceful"
    assert proc.wait(5) == 0
    assert controller.is_running() is False


def test_a_process_ignoring_sigterm_is_killed_after_stop_timeout(apps: Apps) -> None:
    proc = apps.spawn([sys.executable, str(apps.stubborn), str(apps.pidfile)])
    controller = apps.controller(stop_timeout=0.5)

    result = controller.stop(force=False, timeout=10)

    assert result.ok, result.message
    assert "SIGKILL" in result.message and "0.5s" in result.message
    assert 0.5 <= result.duration < 5
    assert proc.wait(5) == -signal.SIGKILL


def test_a_forced_stop_kills_at_once_without_a_grace_period(apps: Apps) -> None:
    proc = apps.spawn(apps.graceful_argv())
    controller = apps.controller(stop_timeout=30)

    result = controller.stop(force=True, timeout=10)

    assert result.ok, result.message
    assert "SIGKILL" in result.message
    assert result.duration < 5
    assert proc.wait(5) == -signal.SIGKILL
    assert not apps.marker.exists()  # no SIGTERM handler ran


def test_a_stale_pidfile_naming_a_reused_pid_is_not_signalled(apps: Apps) -> None:
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    apps.popens.append(stranger)
    wait_for(lambda: psutil.Process(stranger.pid).create_time() > 0, 5, what="the stranger")
    apps.pidfile.write_text(f"{stranger.pid}\n")
    hour_ago = time.time() - 3600  # written long before this process started: pid reused
    os.utime(apps.pidfile, (hour_ago, hour_ago))
    controller = apps.controller()

    result = controller.stop(force=True, timeout=5)

    assert result.ok, result.message
    assert "not running" in result.message
    assert controller.is_running() is False
    time.sleep(0.2)
    assert stranger.poll() is None, "a process the pidfile was not written for was signalled"


def test_stopping_an_app_that_is_not_running_succeeds(apps: Apps) -> None:
    result = apps.controller().stop(force=False, timeout=5)
    assert result.ok and "not running" in result.message


def test_start_spawns_the_app_detached_and_waits_for_its_pidfile(apps: Apps) -> None:
    controller = apps.controller()

    result = controller.start(timeout=10)

    assert result.ok, result.message
    pid = int(apps.pidfile.read_text())
    assert f"pid {pid}" in result.message and result.details["pid"] == pid
    assert os.getsid(pid) == pid  # a session of its own: our terminal's signals miss it
    assert "app listening" in (apps.tmp / "state" / "app-process.log").read_text()
    assert controller.is_running() is True

    again = controller.start(timeout=5)
    assert again.ok and "already running" in again.message
    assert int(apps.pidfile.read_text()) == pid

    stopped = controller.stop(force=False, timeout=10)
    assert stopped.ok, stopped.message
    assert apps.marker.read_text() == "graceful"
    assert controller.is_running() is False


def test_a_start_command_that_fails_is_reported_with_its_status_and_output(apps: Apps) -> None:
    failing = script(apps.tmp / "fail_start.py",
                     "import sys\nsys.stderr.write('port 3000 already in use\\n')\nsys.exit(3)\n")
    controller = apps.controller(start=[str(failing)])

    result = controller.start(timeout=10)

    assert not result.ok
    assert "exit status 3" in result.message
    assert "port 3000 already in use" in result.output
    assert result.duration < 5


def test_a_start_that_never_writes_its_pidfile_times_out_and_is_killed(apps: Apps) -> None:
    silent = script(apps.tmp / "silent.py", "import time\ntime.sleep(30)\n")
    controller = apps.controller(start=[str(silent)])

    result = controller.start(timeout=0.5)

    assert not result.ok
    assert str(apps.pidfile) in result.message and "killed the start command" in result.message
    assert controller.is_running() is False


# --- command adapter ---------------------------------------------------------------------


def command_controller(tmp_path: Path, stop: list[str],
                       finder: ProcessProbeSettings | None = None) -> AppController:
    workdir = tmp_path / "app"
    workdir.mkdir(exist_ok=True)
    control = CommandControl(start=[sys.executable, "-c", "pass"],
                             stop=stop, cwd=workdir)
    return AppController.build(control, state_dir=tmp_path / "state", finder=finder)


def test_the_stop_command_runs_in_the_configured_directory(tmp_path: Path) -> None:
    stop = script(tmp_path / "stop.py", "from pathlib import Path\n"
                  "Path('stopped.marker').write_text('yes')\nprint('app stopped')\n")
    controller = command_controller(tmp_path, [str(stop), "--now"])

    result = controller.stop(force=True, timeout=10)

    assert result.ok, result.message
    assert (tmp_path / "app" / "stopped.marker").read_text() == "yes"
    assert result.output == "app stopped"
    assert result.details["argv"] == [str(stop), "--now"]


def test_a_failing_command_reports_its_exit_status_and_output(tmp_path: Path) -> None:
    failing = script(tmp_path / "stop_fail.py", "import sys\nprint('stopping visionforge')\n"
                     "sys.stderr.write('cannot stop: database is locked\\n')\nsys.exit(3)\n")
    controller = command_controller(tmp_path, [str(failing)])

    result = controller.stop(force=False, timeout=10)

    assert not result.ok
    assert "exit status 3" in result.message
    assert "cannot stop: database is locked" in result.message
    assert result.output.splitlines() == ["stopping visionforge",
                                          "cannot stop: database is locked"]


def test_a_command_that_hangs_is_killed_at_the_timeout(tmp_path: Path) -> None:
    hanging = script(tmp_path / "hang.py", "import time\ntime.sleep(30)\n")
    controller = command_controller(tmp_path, [str(hanging)])

    result = controller.stop(force=False, timeout=0.5)

    assert not result.ok
    assert "hang.py did not finish within 0.5s and was killed" in result.message
    assert result.duration < 5


def test_a_missing_command_is_a_failure_not_an_exception(tmp_path: Path) -> None:
    controller = command_controller(tmp_path, [str(tmp_path / "no-such-npm"), "stop"])
    result = controller.stop(force=False, timeout=5)
    assert not result.ok and "cannot run" in result.message and "no such file" in result.message


def test_the_command_adapter_cannot_tell_whether_the_app_runs_without_a_finder(
        tmp_path: Path, apps: Apps) -> None:
    assert command_controller(tmp_path, ["true"]).is_running() is None
    finder = ProcessProbeSettings(pidfile=apps.pidfile)
    with_finder = command_controller(tmp_path, ["true"], finder=finder)
    assert with_finder.is_running() is False
    apps.spawn(apps.graceful_argv())
    assert with_finder.is_running() is True


# --- systemd adapter ---------------------------------------------------------------------


def systemd_controller() -> SystemdController:
    built = AppController.build(SystemdControl(unit=UNIT),
                                state_dir=Path("/nonexistent"))
    assert isinstance(built, SystemdController)
    return built


def test_systemctl_failing_is_reported_with_its_own_message() -> None:
    if not Path("/usr/bin/systemctl").exists() and not Path("/bin/systemctl").exists():
        pytest.skip("systemctl is not installed")
    # A unit that does not exist fails both with and without a running systemd.
    direct = subprocess.run(["systemctl", "--no-ask-password", "stop", UNIT],
                            capture_output=True, text=True, timeout=10, check=False)
    assert direct.returncode != 0
    expected = [line for line in direct.stderr.splitlines() if line.strip()][-1]
    controller = systemd_controller()

    stopped = controller.stop(force=False, timeout=10)
    started = controller.start(timeout=10)

    assert not stopped.ok and not started.ok
    assert f"stopping {UNIT}" in stopped.message and expected in stopped.message
    assert f"exit status {direct.returncode}" in stopped.message
    assert started.message.startswith(f"starting {UNIT}")
    if not Path("/run/systemd/system").is_dir():
        assert controller.is_running() is None  # no systemd to ask: unknown, not "stopped"


@pytest.fixture
def fake_systemctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``systemctl`` first on PATH that records its argv; ``$FAKE_SYSTEMCTL_DENY`` names a
    verb it refuses as polkit would."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "systemctl.jsonl"
    script(bindir / "systemctl", f"""
import json, os, sys
args = sys.argv[1:]
with open({str(log)!r}, "a") as f:
    f.write(json.dumps(args) + "\\n")
verb = [a for a in args if not a.startswith("-")][0]
if verb == os.environ.get("FAKE_SYSTEMCTL_DENY"):
    sys.stderr.write(f"Failed to {{verb}} unit {{args[-1]}}: Access denied\\n")
    sys.exit(1)
if verb == "show":
    print("ActiveState=" + os.environ.get("FAKE_SYSTEMCTL_STATE", "active"))
""")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return log


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_the_systemd_adapter_runs_exactly_these_systemctl_commands(fake_systemctl: Path) -> None:
    controller = systemd_controller()

    assert controller.stop(force=False, timeout=10).ok
    assert controller.start(timeout=10).ok
    forced = controller.stop(force=True, timeout=10)

    assert forced.ok and "SIGKILL" in forced.message
    assert calls(fake_systemctl) == [
        ["--no-ask-password", "stop", UNIT],
        ["--no-ask-password", "start", UNIT],
        ["--no-ask-password", "stop", "--no-block", UNIT],
        ["--no-ask-password", "kill", "--signal=SIGKILL", UNIT],
        ["--no-ask-password", "stop", UNIT],
    ]


def test_a_forced_stop_denied_kill_still_stops_the_unit_and_says_so(
        fake_systemctl: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_SYSTEMCTL_DENY", "kill")

    result = systemd_controller().stop(force=True, timeout=10)

    assert result.ok
    assert "without the immediate SIGKILL" in result.message and "Access denied" in result.message
    assert calls(fake_systemctl)[-1] == ["--no-ask-password", "stop", UNIT]


def test_a_denied_start_is_a_failure_naming_polkits_answer(
        fake_systemctl: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_SYSTEMCTL_DENY", "start")
    result = systemd_controller().start(timeout=10)
    assert not result.ok
    assert result.message == (f"starting {UNIT}: systemctl start failed with exit status 1: "
                              f"Failed to start unit {UNIT}: Access denied")


def test_is_running_follows_the_units_active_state(
        fake_systemctl: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    controller = systemd_controller()
    assert controller.is_running() is True
    monkeypatch.setenv("FAKE_SYSTEMCTL_STATE", "inactive")
    assert controller.is_running() is False
    assert calls(fake_systemctl)[0] == ["--no-ask-password", "show", "--property=ActiveState",
                                        UNIT]
