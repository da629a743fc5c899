"""Run in a child process: one probe measured while this process has no file descriptor left.

``python -m tests.integration.starved_child KIND TARGET`` builds the probe (``http`` with a
URL, ``postgres`` or ``migrations`` with a DSN), lowers its own RLIMIT_NOFILE, opens
/dev/null until the kernel refuses (EMFILE), measures once, frees the descriptors, measures
again, and prints both outcomes as one JSON object. Only this child is starved, never the
test run.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import resource
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from policies.schema import convert
from probes.base import Probe
from probes.http import HttpProbe, aggregate_http
from probes.migrations import MigrationsProbe
from probes.postgres import PostgresProbe
from probes.runner import ProbeOutcome, measure_one
from probes.settings import HttpProbeSettings, MigrationsProbeSettings, PostgresProbeSettings

# Low enough to exhaust in a moment, high enough for the interpreter and the event loop.
SOFT_LIMIT = 64


def build(kind: str, target: str) -> Probe:
    if kind == "http":
        return HttpProbe(convert(
            {"name": "app", "url": target, "timeout": 2.0}, HttpProbeSettings))
    if kind == "postgres":
        return PostgresProbe(target, PostgresProbeSettings(), connect_timeout=2)
    if kind == "migrations":
        return MigrationsProbe(target, "knex", MigrationsProbeSettings(), connect_timeout=2)
    raise SystemExit(f"unknown probe kind {kind!r}")


@contextmanager
def no_descriptor_left() -> Iterator[None]:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(SOFT_LIMIT, hard), hard))
    held: list[int] = []
    try:
        while True:
            try:
                held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError as exc:
                if exc.errno != errno.EMFILE:
                    raise
                break
        yield
    finally:
        for fd in held:
            os.close(fd)


def as_json(outcome: ProbeOutcome) -> dict[str, Any]:
    return {"reading": dict(outcome.reading), "error": outcome.error,
            "problems": dict(outcome.problems)}


async def main(kind: str, target: str) -> dict[str, Any]:
    probe = build(kind, target)
    try:
        with no_descriptor_left():
            starved = await measure_one(probe, bound=10.0)
            aggregate = aggregate_http([probe]) if isinstance(probe, HttpProbe) else {}
        freed = await measure_one(probe, bound=10.0)
    finally:
        await probe.aclose()
    return {"starved": as_json(starved), "aggregate": aggregate, "freed": as_json(freed)}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2]))))
