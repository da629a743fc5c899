"""The demo behind ``scripts/demo``: VisionForge on a throwaway PostgreSQL, watched by rollbackd.

rollbackd runs in dry-run mode, so nothing is ever rolled back here; break the app with the
fault knobs it prints and watch the status lines and /metrics change.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.harness.paths import APP_DIR
from tests.harness.processes import Proc, migrate, start_app
from tests.harness.servers import PgCluster, free_port

ROOT = Path(__file__).resolve().parent.parent


def demo_config(workdir: Path, app_url: str, dsn: str, pidfile: Path, listen: str) -> str:
    state = workdir / "state"
    return f"""\
[daemon]
state_dir = "{state}"
interval = "2s"
listen = "{listen}"
mode = "dry-run"

[app]
name = "visionforge"

[database]
dsn = "{dsn}"
migrations = "knex"
expected_tables = ["users", "images", "audit_log"]

[backups]
dir = "{state / 'backups'}"
min_free = "100MB"

# Every probe must answer within 80 % of the 2 s interval.
[probes.postgres]
timeout = "1.5s"

[probes.migrations]
timeout = "1.5s"

[[probes.http]]
name = "health"
url = "{app_url}/health"
timeout = "1s"
window = "30s"

[[probes.http]]
name = "users"
url = "{app_url}/api/users"
timeout = "1s"
window = "30s"

[probes.process]
name = "app"
pidfile = "{pidfile}"
timeout = "1s"

[probes.system]
paths = ["{workdir}"]
timeout = "1s"
"""


def echo(proc: Proc, shown: int) -> int:
    """Print what ``proc`` wrote since ``shown`` characters; return the new count."""
    output = proc.output()
    print(output[shown:], end="", flush=True)
    return len(output)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=0,
                        help="stop after this many seconds (default: until Ctrl-C)")
    parser.add_argument("--port", type=int, default=9797, help="rollbackd's HTTP port")
    args = parser.parse_args()
    stop = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    workdir = Path(tempfile.mkdtemp(prefix="rollbackd-demo-"))
    cluster = PgCluster()
    procs: list[Proc] = []
    try:
        print(f"demo: starting PostgreSQL on 127.0.0.1:{cluster.port}", flush=True)
        cluster.start()
        dsn = cluster.create_database("visionforge")
        result = migrate(dsn)
        if result.returncode != 0:
            print(f"demo: migration failed: {result.stderr}", file=sys.stderr)
            return 1
        pidfile = workdir / "visionforge.pid"
        app, app_url = start_app(dsn, pidfile=pidfile)
        procs.append(app)
        port = args.port
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            port = free_port()  # someone already listens there
        except httpx.HTTPError:
            pass
        config = workdir / "rollbackd.toml"
        config.write_text(demo_config(workdir, app_url, dsn, pidfile,
                                      f"127.0.0.1:{port}"))
        print(f"demo: VisionForge at {app_url} (migrations in {APP_DIR / 'migrations'})")
        print(f"demo: rollbackd at http://127.0.0.1:{port}/metrics, config {config}")
        print(f"demo: break the app:  curl -X POST {app_url}/admin/faults "
              """-H 'content-type: application/json' -d '{"error_ratio": 1.0}'""")
        print(f"demo: slow it down:   curl -X POST {app_url}/admin/faults "
              """-H 'content-type: application/json' -d '{"latency_ms": 800}'""")
        print(f"demo: mend it:        curl -X DELETE {app_url}/admin/faults", flush=True)
        daemon = Proc([sys.executable, "-m", "daemon", "run", "--config", str(config)])
        procs.append(daemon)
        deadline = time.monotonic() + args.duration if args.duration else None
        shown = 0
        while not stop and daemon.running():
            if deadline is not None and time.monotonic() >= deadline:
                break
            shown = echo(daemon, shown)
            time.sleep(0.5)
        failed = not daemon.running() and not stop
        daemon.close()
        echo(daemon, shown)
        return 1 if failed else 0
    finally:
        for proc in reversed(procs):
            proc.close()
        cluster.destroy()
        print("demo: stopped everything it started", flush=True)


if __name__ == "__main__":
    sys.exit(main())
