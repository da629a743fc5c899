"""The process probe against real child processes found by pidfile, command line or systemd."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from policies.schema import convert
from probes.process import ProcessProbe, ProcessQueryError, parse_systemctl_show
from probes.runner import measure_one
from probes.settings import ProcessProbeSettings
from tests.harness.servers import wait_for

SYSTEMD_RUNNING = Path("/run/systemd/system").is_dir()


class Children:
    """Child processes a test starts; each is ended by its own pid afterwards."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []
        # A unique marker keeps other tests' sleepers from matching the exact command line.
        self.argv = [sys.executable, "-c",
                     f"import time; print('ready', flush=True); time.sleep(60)  # {uuid.uuid4()}"]

    def start(self, argv: list[str] | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv or self.argv, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE if argv is None else None)
        self.started.append(proc)
        if argv is None:
            # Measured before its interpreter has loaded, a child has almost no memory yet.
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        return proc

    def end(self, proc: subprocess.Popen[bytes]) -> None:
        proc.kill()
        proc.wait(timeout=10)  # reaped, so it is gone rather than a zombie
        if proc.stdout is not None:
            proc.stdout.close()

    def end_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                self.end(proc)


@pytest.fixture
def children() -> Iterator[Children]:
    kids = Children()
    yield kids
    kids.end_all()


def probe_for(**finder: object) -> ProcessProbe:
    return ProcessProbe(convert(finder, ProcessProbeSettings))


def write_pidfile(path: Path, pid: int) -> None:
    path.write_text(f"{pid}\n")


async def test_a_process_found_by_pidfile_is_up_with_memory_and_no_restarts(
    children: Children, tmp_path: Path
) -> None:
    pidfile = tmp_path / "app.pid"
    write_pidfile(pidfile, children.start().pid)
    probe = probe_for(pidfile=pidfile)
    first = await probe.measure()
    assert set(first) == set(probe.signals())
    assert first["process.up"] == 1.0
    assert first["process.cpu_ratio"] is None  # needs two ticks
    rss = first["process.rss_bytes"]
    assert rss is not None and rss > 1_000_000
    assert first["process.restarts"] == 0.0
    second = await probe.measure()
    cpu = second["process.cpu_ratio"]
    assert cpu is not None and 0.0 <= cpu < 0.5  # it only sleeps


async def test_a_killed_process_is_down_and_its_replacement_counts_one_restart(
    children: Children, tmp_path: Path
) -> None:
    pidfile = tmp_path / "app.pid"
    first = children.start()
    write_pidfile(pidfile, first.pid)
    probe = probe_for(pidfile=pidfile)
    assert (await probe.measure())["process.up"] == 1.0

    children.end(first)
    gone = await probe.measure()
    assert gone == {"process.up": 0.0, "process.cpu_ratio": None, "process.rss_bytes": None,
                    "process.restarts": None}

    second = children.start()
    assert second.pid != first.pid
    write_pidfile(pidfile, second.pid)
    back = await probe.measure()
    assert back["process.up"] == 1.0
    assert back["process.restarts"] == 1.0
    assert back["process.cpu_ratio"] is None  # a new process has no previous tick


async def test_a_missing_pidfile_means_the_app_is_down(tmp_path: Path) -> None:
    reading = await probe_for(pidfile=tmp_path / "absent.pid").measure()
    assert reading["process.up"] == 0.0


async def test_a_pidfile_without_a_pid_is_a_probe_failure(tmp_path: Path) -> None:
    pidfile = tmp_path / "app.pid"
    pidfile.write_text("not-a-pid\n")
    with pytest.raises(ProcessQueryError, match="does not hold a pid"):
        await probe_for(pidfile=pidfile).measure()


async def test_a_stale_pidfile_naming_a_younger_process_is_not_the_app(
    children: Children, tmp_path: Path
) -> None:
    pidfile = tmp_path / "app.pid"
    proc = children.start()
    write_pidfile(pidfile, proc.pid)
    # The pidfile predates the process by far more than the slack: the pid was reused.
    os.utime(pidfile, (1_000_000_000, 1_000_000_000))
    assert (await probe_for(pidfile=pidfile).measure())["process.up"] == 0.0


async def test_a_process_found_by_its_exact_command_line_and_its_restart(
    children: Children,
) -> None:
    probe = probe_for(cmdline=children.argv)
    assert (await probe.measure())["process.up"] == 0.0

    first = children.start()
    wait_for(lambda: first.pid in _matching_pids(children.argv), 5,
             what="the child to show its command line")
    up = await probe.measure()
    assert up["process.up"] == 1.0
    assert up["process.restarts"] == 0.0

    children.end(first)
    assert (await probe.measure())["process.up"] == 0.0
    second = children.start()
    wait_for(lambda: second.pid in _matching_pids(children.argv), 5,
             what="the restarted child to show its command line")
    back = await probe.measure()
    assert back["process.up"] == 1.0
    assert back["process.restarts"] == 1.0


async def test_a_command_line_that_only_starts_the_same_does_not_match(
    children: Children,
) -> None:
    children.start()
    prefix = children.argv[:2]  # same interpreter and flag, without the program text
    assert (await probe_for(cmdline=prefix).measure())["process.up"] == 0.0


async def test_a_busy_process_uses_a_large_share_of_one_core(
    children: Children, tmp_path: Path
) -> None:
    pidfile = tmp_path / "busy.pid"
    write_pidfile(pidfile, children.start([sys.executable, "-c", "while True: pass"]).pid)
    probe = probe_for(pidfile=pidfile)
    await probe.measure()
    await asyncio.sleep(0.5)
    cpu = (await probe.measure())["process.cpu_ratio"]
    # On a loaded 2-core CI box the spinner may not get a whole core, but far more than idle.
    assert cpu is not None and 0.3 < cpu < 1.5


@pytest.mark.skipif(SYSTEMD_RUNNING, reason="systemd is running: the unit can be queried")
async def test_a_unit_that_systemd_cannot_be_asked_about_is_a_probe_failure() -> None:
    """Without a running systemd, systemctl cannot answer: the probe is blind, not "down".

    The probe raises, so the runner reports every process signal as unknown (never up=0).
    """
    probe = probe_for(unit="visionforge.service")
    with pytest.raises(ProcessQueryError, match="systemctl"):
        await probe.measure()
    outcome = await measure_one(probe, bound=5.0)
    assert not outcome.ok
    assert outcome.reading == dict.fromkeys(probe.signals())


@pytest.mark.skipif(not SYSTEMD_RUNNING, reason="no running systemd to query")
async def test_a_unit_that_does_not_run_is_down() -> None:
    reading = await probe_for(unit=f"rollbackd-absent-{uuid.uuid4().hex[:8]}.service").measure()
    assert reading["process.up"] == 0.0


def test_systemctl_show_is_read_by_key_whatever_the_order() -> None:
    assert parse_systemctl_show("NRestarts=3\nMainPID=4242\n") == (4242, 3)
    assert parse_systemctl_show("MainPID=0\nNRestarts=0\n") == (None, 0)
    assert parse_systemctl_show("MainPID=17\n") == (17, None)
    with pytest.raises(ProcessQueryError):
        parse_systemctl_show("")


def _matching_pids(argv: list[str]) -> set[int]:
    return {p.pid for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == argv}
