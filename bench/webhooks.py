"""The Alertmanager webhook under pressure: answers, journal, main loop, memory.

Starts `rollbackd run` (no database: the API and the main loop only) on loopback and sends it
Alertmanager version-4 notifications of a few alerts each, open-loop: each request is sent at
its scheduled time whatever the earlier ones are doing, as many Alertmanagers would. Then
counts what the journal holds. Latency is measured from the scheduled send time, so a client
falling behind shows up in it rather than hiding.

The default client writes HTTP/1.1 on asyncio streams itself (keep-alive connections, as
Alertmanager's): httpx's AsyncClient costs ~2.5 ms of CPU a request here, so at 500/s it
saturates a core and measures its own lag (``--client httpx`` to see it).

Targets: 0 lost (every alert answered 200 is in the journal), p99 <= 50 ms, the main loop's
interval jitter <= 100 ms, RSS growth bounded.

    .venv/bin/python bench/webhooks.py [--rate 500] [--seconds 60] [--alerts 3]
                                       [--client raw|httpx]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import secrets
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness.config import config_file
from tests.harness.processes import Proc, daemon_url, scrape, start_daemon
from tests.harness.servers import free_port

P99_TARGET_MS = 50.0
JITTER_TARGET_MS = 100.0
POOL = 50
"""Distinct alerts (label sets) the notifications cycle through: Alertmanager re-sends the
same groups, so the engine's set of alerts stays bounded as in production."""


def write_config(tmp: Path, interval: str) -> tuple[Path, str]:
    token = "tok-" + secrets.token_hex(16)
    (tmp / "api.token").write_text(token + "\n")
    path = config_file(tmp, daemon={"interval": interval, "listen": f"127.0.0.1:{free_port()}",
                                    "mode": "dry-run", "log_format": "json"},
                       app={"name": "bench"},
                       extra=f'[api]\ntoken_files = ["{tmp / "api.token"}"]\n')
    return path, token


def notification(request: int, alerts: int) -> dict[str, Any]:
    """Request ``request``'s alerts: a label set from the pool, firing or resolved in turn;
    the fingerprint (not a label, so not part of the alert's identity) names the request."""
    return {"version": "4", "groupKey": "{}:{alertname=\"BenchAlert\"}", "truncatedAlerts": 0,
            "status": "firing", "receiver": "rollbackd", "groupLabels": {},
            "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am",
            "alerts": [{"status": ("firing", "resolved")[(request // POOL) % 2],
                        "labels": {"alertname": "BenchAlert", "severity": "warning",
                                   "instance": f"web-{(request * alerts + k) % POOL}"},
                        "annotations": {}, "startsAt": "2030-01-01T00:00:00Z",
                        "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus",
                        "fingerprint": f"r{request}a{k}"} for k in range(alerts)]}


@dataclass
class Load:
    latencies: list[float] = field(default_factory=list)
    """Seconds from the scheduled send to the answer, of every request answered 200."""
    lateness: list[float] = field(default_factory=list)
    """Seconds the client started a send after its scheduled time (the client's own lag)."""
    statuses: dict[str, int] = field(default_factory=dict)
    accepted: set[str] = field(default_factory=set)
    """Fingerprints of the alerts answered 200."""


PATH = "/api/v1/alertmanager"
CONNECTIONS = 100
TIMEOUT = 120.0
Post = Callable[[int], Awaitable[int]]
"""Send request ``i``'s body; its status code."""


class IdledError(ConnectionError):
    """A kept-alive connection the server had closed: the request never reached it."""


class RawClient:
    """Just enough HTTP/1.1 for the bench: POST a prepared request on a kept-alive
    connection (at most CONNECTIONS), read the status and a Content-Length body."""

    def __init__(self, url: str, token: str, bodies: list[bytes]) -> None:
        self.host, port = url.removeprefix("http://").rsplit(":", 1)
        self.port = int(port)
        self.requests = [
            (f"POST {PATH} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {token}\r\n"
             f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
             ).encode() + body for body in bodies]
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.slots = asyncio.Semaphore(CONNECTIONS)

    async def post(self, i: int) -> int:
        async with self.slots:
            if self.idle:
                try:
                    return await self._exchange(*self.idle.pop(), i)
                except IdledError:
                    pass  # closed by the server while idle (keep-alive timeout): not sent
            return await self._exchange(*await asyncio.open_connection(self.host, self.port), i)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        i: int) -> int:
        try:
            writer.write(self.requests[i])
            status, keep = await asyncio.wait_for(self._answer(reader), TIMEOUT)
        except BaseException:
            writer.close()
            raise
        if keep:
            self.idle.append((reader, writer))
        else:
            writer.close()
        return status

    @staticmethod
    async def _answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
        first = await reader.readline()
        if not first:
            raise IdledError("the connection was closed before an answer")
        status = int(first.split()[1])
        length, keep = 0, True
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                keep = False
        await reader.readexactly(length)
        return status, keep

    async def aclose(self) -> None:
        for _, writer in self.idle:
            writer.close()


@contextlib.asynccontextmanager
async def client(kind: str, url: str, token: str, bodies: list[bytes]) -> AsyncIterator[Post]:
    if kind == "raw":
        raw = RawClient(url, token, bodies)
        try:
            yield raw.post
        finally:
            await raw.aclose()
        return
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits,
                                 timeout=TIMEOUT, trust_env=False) as http:

        async def post(i: int) -> int:
            return (await http.post(PATH, content=bodies[i])).status_code

        yield post


async def drive(kind: str, url: str, token: str, rate: float, seconds: float,
                alerts: int) -> Load:
    load = Load()
    bodies = [json.dumps(notification(i, alerts)).encode() for i in range(int(rate * seconds))]
    async with client(kind, url, token, bodies) as post:

        async def send(i: int, due: float) -> None:
            load.lateness.append(time.monotonic() - due)
            try:
                status = await post(i)
            except (OSError, TimeoutError, ValueError, httpx.HTTPError,
                    asyncio.IncompleteReadError) as exc:
                key = type(exc).__name__
            else:
                key = str(status)
                if status == 200:
                    load.latencies.append(time.monotonic() - due)
                    load.accepted.update(f"r{i}a{k}" for k in range(alerts))
            load.statuses[key] = load.statuses.get(key, 0) + 1

        start = time.monotonic() + 0.2
        tasks = []
        for i in range(len(bodies)):
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            tasks.append(asyncio.create_task(send(i, due)))
        await asyncio.gather(*tasks)
    return load


def journaled(state: Path) -> list[str]:
    """Fingerprints of the bench's alert events in the journal (repeats included)."""
    db = sqlite3.connect(f"file:{state / 'journal.sqlite3'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT payload FROM events WHERE type = 'alert'").fetchall()
    finally:
        db.close()
    return [json.loads(payload)["fingerprint"] for (payload,) in rows]


@dataclass(frozen=True)
class Cycles:
    count: int
    jitter: float
    """The largest deviation (seconds) of the time between two cycle starts from the
    interval."""
    longest: float
    """Seconds of the longest cycle (the loop runs the engine on the webhooks' events then)."""


def cycles(output: str, interval: float) -> Cycles:
    """From the daemon's log: a cycle line is written at its end, with its duration."""
    starts, durations = [], []
    for raw in output.splitlines():
        if raw.startswith("{") and '"event": "cycle"' in raw:
            line = json.loads(raw)
            durations.append(float(line["duration"]))
            starts.append(datetime.fromisoformat(line["timestamp"]).timestamp() - durations[-1])
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    return Cycles(len(starts), max((abs(g - interval) for g in gaps), default=0.0),
                  max(durations, default=0.0))


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_mb(proc: Proc) -> float:
    return float(psutil.Process(proc.pid).memory_info().rss) / 2**20


def cpu_seconds(proc: Proc) -> float:
    times = psutil.Process(proc.pid).cpu_times()
    return float(times.user + times.system)


def metric(url: str, name: str) -> float:
    return sum(v for (n, _), v in scrape(url).items() if n == name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--alerts", type=int, default=3, help="alerts per notification")
    parser.add_argument("--interval", type=float, default=1.0, help="main loop interval (s)")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rollbackd-bench-") as tmp:
        config, token = write_config(Path(tmp), f"{args.interval}s")
        proc = start_daemon(config)
        url = daemon_url(config)
        try:
            rss_before, cpu_before = rss_mb(proc), cpu_seconds(proc)
            client_cpu, wall = time.process_time(), time.monotonic()
            load = asyncio.run(drive(args.client, url, token, args.rate, args.seconds, args.alerts))
            client_cpu, wall = time.process_time() - client_cpu, time.monotonic() - wall
            rss_after, daemon_cpu = rss_mb(proc), cpu_seconds(proc) - cpu_before
            commits = metric(url, "rollbackd_journal_commit_requests_count")
            commit_seconds = metric(url, "rollbackd_journal_commit_duration_seconds_sum")
            busy = scrape(url).get(("rollbackd_api_requests_rejected_total",
                                    (("reason", "busy"),)), 0.0)
        finally:
            proc.close()
        output = proc.output()
        found = journaled(Path(tmp) / "state")
    sent = sum(load.statuses.values())
    ok = load.statuses.get("200", 0)
    lost = len(load.accepted - set(found))
    loop = cycles(output, args.interval)
    p99 = quantile(load.latencies, 0.99) * 1000
    rows = [
        ("rate (requests/s) x seconds", f"{args.rate:g} x {args.seconds:g} "
         f"({args.alerts} alerts each, {args.client} client)", ""),
        ("requests sent", f"{sent}", ""),
        ("answers", ", ".join(f"{k}: {v}" for k, v in sorted(load.statuses.items())), ""),
        ("refused as busy (503)", f"{busy:g}", ""),
        ("alerts answered 200", f"{len(load.accepted)}", ""),
        ("alerts journaled", f"{len(found)} ({len(found) - len(set(found))} repeated)", ""),
        ("lost (200 but not journaled)", f"{lost}", "ok" if lost == 0 else "FAIL"),
        ("latency p50 / p95", f"{quantile(load.latencies, 0.5) * 1000:.1f} / "
         f"{quantile(load.latencies, 0.95) * 1000:.1f} ms", ""),
        ("latency p99", f"{p99:.1f} ms", "ok" if p99 <= P99_TARGET_MS else "FAIL"),
        ("latency max", f"{max(load.latencies, default=float('nan')) * 1000:.1f} ms", ""),
        ("client send lateness p99", f"{quantile(load.lateness, 0.99) * 1000:.1f} ms", ""),
        ("journal commits", f"{commits:g}"
         + (f" ({ok / commits:.1f} requests each, {commit_seconds / commits * 1000:.1f} ms "
            "each)" if commits else ""), ""),
        ("cycles / longest", f"{loop.count} / {loop.longest * 1000:.0f} ms", ""),
        ("max interval jitter", f"{loop.jitter * 1000:.0f} ms",
         "ok" if loop.jitter * 1000 <= JITTER_TARGET_MS else "FAIL"),
        ("CPU of one core: daemon / client", f"{daemon_cpu / wall:.0%} / "
         f"{client_cpu / wall:.0%} (over {wall:.1f} s)", ""),
        ("RSS before / after", f"{rss_before:.1f} / {rss_after:.1f} MB", ""),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, verdict in rows:
        print(f"{name:<{width}}  {value:<44} {verdict}")
    failed = lost or p99 > P99_TARGET_MS or loop.jitter * 1000 > JITTER_TARGET_MS
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
