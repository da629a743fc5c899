"""Footprint of `rollbackd run`: RSS, CPU share of one core, probe tick p50/p99.

Runs the daemon at a 1 s interval with three HTTP probes and the PostgreSQL probe against
the example app on a throwaway PostgreSQL, for 5 minutes by default, and prints a table.
Targets: RSS <= 60 MB, CPU <= 2 % of one core.

    .venv/bin/python bench/footprint.py [--duration 300]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness.processes import migrate, start_app, start_daemon
from tests.harness.servers import PgCluster, free_port

RSS_TARGET_MB = 60.0
CPU_TARGET = 0.02


def config(tmp: Path, app_url: str, dsn: str) -> Path:
    path = tmp / "rollbackd.toml"
    probes = "".join(
        f'\n[[probes.http]]\nname = "{name}"\nurl = "{app_url}{route}"\ntimeout = "300ms"\n'
        for name, route in (("health", "/health"), ("users", "/api/users"), ("stats", "/api/stats"))
    )
    path.write_text(f"""\
[daemon]
state_dir = "{tmp}"
interval = "1s"
listen = "127.0.0.1:{free_port()}"
mode = "dry-run"
log_format = "json"

[database]
dsn = "{dsn}"
expected_tables = ["users", "images", "audit_log"]

[probes.postgres]
timeout = "800ms"
{probes}""")
    return path


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds to measure")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rollbackd-bench-"))
    cluster = PgCluster()
    cluster.start()
    app = daemon = None
    try:
        dsn = cluster.create_database("visionforge")
        migrate(dsn).check_returncode()
        app, app_url = start_app(dsn)
        daemon = start_daemon(config(tmp, app_url, dsn))
        proc = psutil.Process(daemon.pid)
        time.sleep(5)  # let imports and the first cycles settle before measuring
        cpu0, t0 = sum(proc.cpu_times()[:2]), time.monotonic()
        rss: list[float] = []
        while time.monotonic() - t0 < args.duration:
            rss.append(proc.memory_info().rss / 1e6)
            time.sleep(1)
        # What the daemon alone costs the host: RSS also counts the shared libraries' pages
        # that other processes hold too (libpython, libc, libcrypto: about 16 MB here).
        full = proc.memory_full_info()
        cpu = (sum(proc.cpu_times()[:2]) - cpu0) / (time.monotonic() - t0)
        ticks = [json.loads(line)["duration"] for line in daemon.output().splitlines()
                 if line.startswith("{") and '"event": "cycle"' in line]
    finally:
        for p in (daemon, app):
            if p is not None:
                p.close()
        cluster.destroy()
    rows = [
        ("RSS max (MB)", f"{max(rss):.1f}", f"<= {RSS_TARGET_MB:.0f}", max(rss) <= RSS_TARGET_MB),
        ("RSS median (MB)", f"{statistics.median(rss):.1f}", "", True),
        ("PSS at the end (MB)", f"{full.pss / 1e6:.1f}", "", True),
        ("USS at the end (MB)", f"{full.uss / 1e6:.1f}", "", True),
        ("CPU (share of one core)", f"{cpu * 100:.2f} %", f"<= {CPU_TARGET * 100:.0f} %",
         cpu <= CPU_TARGET),
        ("probe tick p50 (ms)", f"{quantile(ticks, 0.5) * 1000:.1f}", "", True),
        ("probe tick p99 (ms)", f"{quantile(ticks, 0.99) * 1000:.1f}", "", True),
        ("ticks measured", str(len(ticks)), "", True),
    ]
    print(f"rollbackd footprint: 3 HTTP probes + PostgreSQL probe, 1 s interval, "
          f"{args.duration:.0f} s")
    print(f"{'measure':<26}{'value':>12}  {'target':<10}{'ok':>4}")
    for name, value, target, ok in rows:
        print(f"{name:<26}{value:>12}  {target:<10}{'yes' if ok else 'NO':>4}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
