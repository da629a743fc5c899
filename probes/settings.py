"""Settings of each probe kind, as they appear under ``[probes]`` and ``[database]`` in the config.

They live beside the probes (not in ``daemon``) so that a probe can be built and tested from
its settings alone; ``daemon.config`` composes them into the whole file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, HttpUrl, model_validator

from policies.units import Duration
from probes.base import ProbeSettings, StrictModel

MigrationPreset = Literal[
    "knex",
    "prisma",
    "golang-migrate",
    "flyway",
    "liquibase",
    "node-pg-migrate",
    "alembic",
    "django",
    "rails",
    "sequelize",
]

MIGRATION_PRESETS: tuple[str, ...] = get_args(MigrationPreset)


class HttpProbeSettings(ProbeSettings):
    """``[[probes.http]]``: requests to one URL; 5xx and failed requests count as errors."""

    url: HttpUrl
    method: Literal["GET", "HEAD"] = "GET"
    timeout: Duration = Field(default=2.0, gt=0)
    window: Duration = Field(default=60.0, gt=0, description="sliding window of ratios, quantiles")
    requests: int = Field(default=1, ge=1, le=20, description="requests per tick")


class SqlCheck(StrictModel):
    """A data validation: the query returns the offending rows; any row means the check fails.

    So does a query that no longer fits the schema (SQLSTATE class 42, e.g. a column a deploy
    renamed), except permission denied; a timeout or a lost connection leaves it unknown.
    """

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    sql: str = Field(min_length=1)


class CustomMigrations(StrictModel):
    """Queries for a migration tool without a preset; each returns one number (or no row = 0)."""

    failed: str | None = None
    in_progress: str | None = None
    version: str | None = None

    @model_validator(mode="after")
    def _one_query(self) -> CustomMigrations:
        if not (self.failed or self.in_progress or self.version):
            raise ValueError("give at least one of failed, in_progress, version")
        return self


class PostgresProbeSettings(StrictModel):
    """``[probes.postgres]``: health and validators of ``[database]``; on when a database is set."""

    enabled: bool = True
    timeout: Duration = Field(default=3.0, gt=0)
    statement_timeout: Duration = Field(default=2.0, gt=0)
    lock_timeout: Duration = Field(default=1.0, gt=0)
    blocked_after: Duration = Field(default=30.0, gt=0, description="lock waits longer are blocked")


class MigrationsProbeSettings(StrictModel):
    """``[probes.migrations]``: the migration tool's state; on when a tool is configured."""

    enabled: bool = True
    timeout: Duration = Field(default=3.0, gt=0)


class ProcessProbeSettings(StrictModel):
    """``[probes.process]``: the app's main process, found by exactly one of the three ways."""

    name: str = Field(default="app", pattern=r"^[a-z][a-z0-9_]*$")
    timeout: Duration = Field(default=2.0, gt=0)
    unit: str | None = Field(default=None, pattern=r"^[A-Za-z0-9@_.:\\-]+\.service$")
    pidfile: Path | None = None
    cmdline: list[str] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one_finder(self) -> ProcessProbeSettings:
        given = [k for k in ("unit", "pidfile", "cmdline") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of unit, pidfile, cmdline")
        return self


class SystemProbeSettings(StrictModel):
    """``[probes.system]``: free space of the given paths and available memory."""

    paths: list[Path] = Field(default_factory=lambda: [Path("/")])
    timeout: Duration = Field(default=2.0, gt=0)


class PrometheusProbeSettings(ProbeSettings):
    """``[[probes.prometheus]]``: an instant PromQL query mapped to one named signal."""

    url: HttpUrl
    query: str = Field(min_length=1)
    signal: str = Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
    timeout: Duration = Field(default=3.0, gt=0)
