"""The system probe on this machine's real filesystems and memory."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from probes.settings import SystemProbeSettings
from probes.system import SystemProbe, disk_free_ratio


def probe_for(*paths: Path) -> SystemProbe:
    return SystemProbe(SystemProbeSettings(paths=list(paths)))


async def test_free_space_and_memory_are_ratios_of_this_host(tmp_path: Path) -> None:
    probe = probe_for(Path("/"), tmp_path)
    assert probe.name == "system" and probe.kind == "system"
    reading = await probe.measure()
    assert set(reading) == set(probe.signals())
    disk = reading["system.disk_free_ratio"]
    memory = reading["system.memory_available_ratio"]
    assert disk is not None and 0.0 <= disk <= 1.0
    assert memory is not None and 0.0 < memory <= 1.0
    vm = psutil.virtual_memory()
    assert memory == pytest.approx(vm.available / vm.total, abs=0.05)


def _existing_dirs(*names: str) -> list[Path]:
    return [Path(n) for n in names if Path(n).is_dir()]


async def test_the_tightest_filesystem_is_reported() -> None:
    candidates = _existing_dirs("/", "/tmp", "/dev/shm", "/run")
    ratios = [r for r in (disk_free_ratio(p) for p in candidates) if r is not None]
    reading = await probe_for(*candidates).measure()
    assert reading["system.disk_free_ratio"] == pytest.approx(min(ratios), abs=0.01)


def test_free_space_counts_only_what_an_unprivileged_writer_may_use() -> None:
    stats = os.statvfs("/")
    ratio = disk_free_ratio(Path("/"))
    assert ratio == pytest.approx(stats.f_bavail / stats.f_blocks, abs=0.01)
    assert ratio is not None and ratio <= stats.f_bfree / stats.f_blocks


async def test_a_missing_path_is_left_out_and_only_missing_paths_are_unknown(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    with_root = await probe_for(missing, Path("/")).measure()
    assert with_root["system.disk_free_ratio"] == pytest.approx(
        disk_free_ratio(Path("/")), abs=0.01)
    alone = await probe_for(missing).measure()
    assert alone["system.disk_free_ratio"] is None
    assert alone["system.memory_available_ratio"] is not None
