"""Deploy a VisionForge release on a site of release directories, as its deploy tooling would.

    python examples/visionforge/deploy.py --site DIR --release NAME [--set KEY=VALUE ...]
        [--no-restart] [--no-migrate]

A site is laid out for rollbackd's ``symlink`` code adapter::

    DIR/releases/NAME/        one directory per release: app.py, RELEASE (its name),
                              migrations/*.sql (every migration up to that release)
    DIR/current -> releases/NAME
    DIR/shared/visionforge.env   the app's config file (VF_DSN, VF_PORT, VF_PIDFILE, ...),
                              read by ``app.py --env-file``
    DIR/shared/app.log        the output of an app this tool starts

The steps, in order: write the ``--set`` settings into the config file (atomically), switch
``current`` to the release (a new symlink renamed over the old one), restart the app (SIGTERM
to the pid in ``VF_PIDFILE``, then ``current/app.py`` started in a session of its own, and
waited for until /health reports the release), and apply the release's migrations with
``migrate.py`` (its output passed through). Exit status: 0 deployed, 1 a step failed (the
migration's own error on stderr; what ran before it stays: a deploy tool does not undo),
2 usage.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ENV_FILE = Path("shared") / "visionforge.env"
APP_LOG = Path("shared") / "app.log"
STOP_TIMEOUT = 15.0
START_TIMEOUT = 30.0


class DeployError(Exception):
    """A step that failed; ``str()`` says which and why."""


def read_settings(path: Path) -> list[tuple[str, str]]:
    """The config file's ``KEY=VALUE`` lines in order (comments and blank lines dropped)."""
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            pairs.append((key.strip(), value.strip()))
    return pairs


def write_settings(path: Path, changes: Sequence[tuple[str, str]]) -> None:
    """Set ``changes`` in the config file, keeping its other lines; atomically (temp file,
    fsync, rename), with the file's mode kept."""
    lines = path.read_text(encoding="utf-8").splitlines()
    pending = dict(changes)
    out = []
    for line in lines:
        key = line.partition("=")[0].strip()
        if key in pending and not key.startswith("#"):
            out.append(f"{key}={pending.pop(key)}")
        else:
            out.append(line)
    out += [f"{key}={value}" for key, value in pending.items()]
    tmp = path.with_name(f".{path.name}.deploy-{os.getpid()}")
    tmp.write_text("\n".join(out) + "\n", encoding="utf-8")
    tmp.chmod(path.stat().st_mode & 0o7777)
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    tmp.replace(path)


def switch(site: Path, release: str) -> str | None:
    """Point ``current`` at ``releases/<release>``; returns the release it pointed to."""
    target = site / "releases" / release
    if not (target / "app.py").is_file():
        raise DeployError(f"no release {release}: {target}/app.py is missing")
    current = site / "current"
    previous = current.resolve().name if current.is_symlink() else None
    tmp = site / f".current.deploy-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(Path("releases") / release)
    tmp.replace(current)
    return previous


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"  # a zombie has exited; its parent has yet to reap it


def stop_app(pidfile: Path) -> str:
    """SIGTERM to the app the pidfile names (only if it runs app.py), then SIGKILL."""
    pid = _pid(pidfile)
    if pid is None or _gone(pid) or "app.py" not in _cmdline(pid):
        return "the app was not running"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        if _gone(pid):
            return f"stopped pid {pid}"
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return f"killed pid {pid} (no exit {STOP_TIMEOUT:g}s after SIGTERM)"


def start_app(site: Path, release: str, port: str) -> int:
    """``current/app.py --env-file ...`` in a session of its own (it outlives this tool),
    waited for until /health reports ``release``; its pid."""
    log = (site / APP_LOG).open("ab")
    with log:
        child = subprocess.Popen(
            [sys.executable, str(site / "current" / "app.py"), "--env-file",
             str(site / ENV_FILE), "--no-access-log"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    url = f"http://127.0.0.1:{port}/health"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise DeployError(f"the app exited with status {child.returncode} at start "
                              f"(see {site / APP_LOG})")
        with contextlib.suppress(httpx.HTTPError, ValueError):
            answer = httpx.get(url, timeout=2, trust_env=False).json()
            if answer.get("version") == release:
                return child.pid
        time.sleep(0.1)
    raise DeployError(f"the app did not report {release} on {url} within {START_TIMEOUT:g}s")


def run_migrations(dsn: str, migrations: Path) -> int:
    return subprocess.run([sys.executable, str(HERE / "migrate.py"), "--dsn", dsn,
                           "--dir", str(migrations)], check=False).returncode


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--site", type=Path, required=True, help="the site directory")
    parser.add_argument("--release", required=True, help="the release to deploy")
    parser.add_argument("--set", dest="settings", action="append", default=[],
                        metavar="KEY=VALUE", help="a setting of the new config (repeatable)")
    parser.add_argument("--no-restart", dest="restart", action="store_false",
                        help="leave the running app alone")
    parser.add_argument("--no-migrate", dest="migrate", action="store_false",
                        help="do not apply the release's migrations")
    args = parser.parse_args(argv)
    for setting in args.settings:
        if "=" not in setting or not setting.partition("=")[0]:
            parser.error(f"--set {setting!r}: expected KEY=VALUE")
    return args


def say(message: str) -> None:
    print(f"deploy: {message}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    site: Path = args.site.resolve()
    env_file = site / ENV_FILE
    try:
        if args.settings:
            write_settings(env_file, [tuple(s.split("=", 1)) for s in args.settings])
            say(f"config {env_file}: set {', '.join(s.split('=', 1)[0] for s in args.settings)}")
        settings = dict(read_settings(env_file))
        previous = switch(site, args.release)
        say(f"code: current -> releases/{args.release} (was {previous or 'nothing'})")
        if args.restart:
            pidfile = settings.get("VF_PIDFILE")
            if pidfile:
                say(stop_app(Path(pidfile)))
            pid = start_app(site, args.release, settings.get("VF_PORT", "8080"))
            say(f"app {args.release} started (pid {pid})")
        if args.migrate:
            if not settings.get("VF_DSN"):
                raise DeployError(f"{env_file} has no VF_DSN: nothing to migrate")
            code = run_migrations(settings["VF_DSN"], site / "current" / "migrations")
            if code != 0:
                say(f"migrations of {args.release} failed (exit status {code})")
                return 1
            say(f"migrations of {args.release} applied")
    except (DeployError, OSError) as exc:
        print(f"deploy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
