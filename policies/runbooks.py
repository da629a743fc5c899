"""Runbooks as data: each rollback action maps to an ordered plan of typed steps.

The bundled runbooks follow the VisionForge rollback procedures (DESIGN section 4); a policy
file may define its own in ``[[runbook]]`` tables and a rule may name one with ``runbook =``.
Everything here is pure: the executor (``daemon.runbooks``) carries the steps out.

A step's ``idempotent`` says whether running it twice is harmless: only those are retried,
and only those are run again when a crashed run is recovered; the others (a restore, a
down-migration, an arbitrary command) are first observed, then continued or paged.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec

from policies.schema import Model, SchemaError, Within, convert, replace
from policies.units import Duration, format_duration

StepKind = Literal[
    "notify", "page", "assess", "stop_app", "start_app", "safety_backup", "restore_database",
    "rollback_code", "rollback_config", "run_down_migration", "validate", "wait_healthy",
    "exec",
]
Template = Literal["emergency", "planned", "decision", "status", "completion"]
Checklist = Literal["database", "application", "data"]
RestoreStrategy = Literal["auto", "clone", "swap", "in_place"]

MAX_RETRIES = 5


class RunbookError(ValueError):
    """A runbook that cannot be used; ``str()`` names the runbook and the step."""


class _Args(Model):
    pass


class NoArgs(_Args):
    pass


class NotifyArgs(_Args):
    template: Template = "status"


class PageArgs(_Args):
    template: Template = "emergency"


class StopArgs(_Args):
    force: bool = False
    """True: kill at once (an immediate rollback); False: SIGTERM, wait ``grace``, then kill."""
    grace: Annotated[Duration, Within(le=3600)] | None = None
    """Up to 1h; None: the process adapter's ``stop_timeout``."""


class RestoreArgs(_Args):
    strategy: RestoreStrategy = "auto"
    """auto: the deploy's clone when one was taken, else a swap restore."""
    tables: tuple[str, ...] = ()
    """Only these tables' data (a selective rollback), in one transaction."""
    skip_unchanged: bool = True
    """Skip the restore when the live schema and migration version equal the restore
    point's (a failed migration that PostgreSQL rolled back): no data window is undone."""


class CommandArgs(_Args):
    command: Annotated[tuple[str, ...], msgspec.Meta(min_length=1)]
    """An argv list, never a shell string."""


class ValidateArgs(_Args):
    checklist: Checklist


_ARGS: Mapping[str, type[_Args]] = {
    "notify": NotifyArgs, "page": PageArgs, "assess": NoArgs, "stop_app": StopArgs,
    "start_app": NoArgs, "safety_backup": NoArgs, "restore_database": RestoreArgs,
    "rollback_code": NoArgs, "rollback_config": NoArgs, "run_down_migration": CommandArgs,
    "validate": ValidateArgs, "wait_healthy": NoArgs, "exec": CommandArgs,
}

# (timeout in seconds, retries, idempotent) when the runbook does not say otherwise.
_DEFAULTS: Mapping[str, tuple[float, int, bool]] = {
    "notify": (30.0, 2, True),
    "page": (30.0, 2, True),
    "assess": (120.0, 1, True),
    "stop_app": (120.0, 1, True),
    "start_app": (120.0, 2, True),
    "safety_backup": (3600.0, 0, True),
    "restore_database": (3600.0, 0, False),
    "rollback_code": (600.0, 1, True),
    "rollback_config": (60.0, 1, True),
    "run_down_migration": (600.0, 0, False),
    "validate": (300.0, 1, True),
    "wait_healthy": (120.0, 0, True),
    "exec": (300.0, 0, False),
}


@dataclass(frozen=True, slots=True)
class Step:
    kind: StepKind
    args: _Args
    timeout: float
    retries: int
    idempotent: bool

    @property
    def restores(self) -> bool:
        """Whether this step replaces live data (a page precedes nothing else like it)."""
        return self.kind in ("restore_database", "run_down_migration")

    def describe(self) -> str:
        """``restore_database (strategy=auto) timeout 1h, not idempotent``."""
        given = msgspec.structs.asdict(self.args)
        args = ", ".join(f"{k}={_show(v)}" for k, v in given.items() if v is not None)
        retry = f", {self.retries} retries" if self.retries else ""
        kind = "" if self.idempotent else ", not idempotent"
        return (f"{self.kind}{f' ({args})' if args else ''} timeout "
                f"{format_duration(self.timeout)}{retry}{kind}")


def _show(value: Any) -> str:
    if isinstance(value, tuple | list):
        return "[" + " ".join(map(str, value)) + "]"
    if isinstance(value, float):
        return format_duration(value)
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass(frozen=True, slots=True)
class Runbook:
    name: str
    steps: tuple[Step, ...]
    description: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def restores_database(self) -> bool:
        return any(s.kind == "restore_database" for s in self.steps)

    @property
    def needs_database(self) -> bool:
        """Whether a step of it changes the database or copies it whole (a backup, a restore,
        a down-migration), none of which can run without it."""
        return any(s.kind in DATABASE_STEPS for s in self.steps)

    @property
    def tables(self) -> tuple[str, ...]:
        """The tables its restore steps put back (a selective rollback); () when none do, or
        when they restore the whole database."""
        found: list[str] = []
        for s in self.steps:
            if isinstance(s.args, RestoreArgs):
                found += [t for t in s.args.tables if t not in found]
        return tuple(found)

    def describe(self) -> list[str]:
        return [f"{i:>2}. {step.describe()}" for i, step in enumerate(self.steps, 1)]


def step(kind: StepKind, *, timeout: float | None = None, retries: int | None = None,
         **args: Any) -> Step:
    """A step of ``kind`` with its defaults; raises RunbookError naming what is wrong."""
    if kind not in _ARGS:
        raise RunbookError(f"unknown step {kind!r} (known: {', '.join(_ARGS)})")
    default_timeout, default_retries, idempotent = _DEFAULTS[kind]
    try:
        parsed = convert(args, _ARGS[kind])
    except SchemaError as exc:
        where = ".".join(str(k) for k in exc.keys) or "arguments"
        message = _ARGUMENT_WORDS.get(exc.message, exc.message)
        raise RunbookError(f"{where}: {message}") from None
    chosen_retries = default_retries if retries is None else retries
    if not 0 <= chosen_retries <= MAX_RETRIES:
        raise RunbookError(f"retries: must be between 0 and {MAX_RETRIES}")
    if chosen_retries and not idempotent:
        raise RunbookError(f"retries: {kind} is not idempotent and is never retried")
    return Step(kind, parsed, default_timeout if timeout is None else timeout, chosen_retries,
                idempotent)


_ARGUMENT_WORDS = {"unknown key": "unknown argument",
                   "required key is missing": "required argument is missing"}


def _builtin(name: str, description: str, *steps: Step) -> Runbook:
    return Runbook(name, tuple(steps), description)


BUILTIN: Mapping[str, Runbook] = {r.name: r for r in (
    _builtin(
        "immediate_rollback", "A failed migration: stop at once, restore, roll back, restart.",
        step("page", template="emergency"),
        step("stop_app", force=True),
        step("restore_database"),
        step("validate", checklist="database"),
        step("rollback_code"),
        step("rollback_config"),
        step("start_app"),
        step("validate", checklist="application"),
        step("notify", template="completion"),
    ),
    _builtin(
        "planned_rollback", "Failed data validation or a compromised app: assess, notify, "
        "stop gracefully, keep a safety copy, restore, roll back, validate, restart.",
        step("assess"),
        step("notify", template="planned"),
        step("stop_app", force=False),
        step("safety_backup"),
        step("restore_database"),
        step("rollback_code"),
        step("rollback_config"),
        step("validate", checklist="database"),
        step("start_app"),
        step("validate", checklist="application"),
        step("validate", checklist="data"),
        step("notify", template="completion"),
    ),
    _builtin(
        "selective_rollback", "Code and configuration only; the database is left as it is.",
        step("notify", template="planned"),
        step("stop_app", force=False),
        step("rollback_code"),
        step("rollback_config"),
        step("start_app"),
        step("validate", checklist="application"),
        step("notify", template="completion"),
    ),
    _builtin(
        "code_only", "The previous release's code; configuration and database untouched.",
        step("stop_app", force=False),
        step("rollback_code"),
        step("start_app"),
        step("validate", checklist="application"),
        step("notify", template="completion"),
    ),
    _builtin(
        "config_only", "The restore point's configuration files; code and database untouched.",
        step("stop_app", force=False),
        step("rollback_config"),
        step("start_app"),
        step("validate", checklist="application"),
        step("notify", template="completion"),
    ),
)}

ACTION_RUNBOOK: Mapping[str, str] = {
    "immediate_rollback": "immediate_rollback",
    "planned_rollback": "planned_rollback",
    "selective_rollback": "selective_rollback",
}


class _RunbookFile(Model):
    name: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]*$", max_length=60)]
    steps: Annotated[list[dict[str, Any]], msgspec.Meta(min_length=1)]
    description: str = ""


def parse_runbooks(tables: Sequence[Any], path: str) -> dict[str, Runbook]:
    """The ``[[runbook]]`` tables of a policy file: ``name``, optional ``description`` and
    ``steps = [{ step = "stop_app", force = true }, ...]`` (each step's own arguments, plus
    ``timeout`` and ``retries``). Raises RunbookError naming file, runbook and step."""
    found: dict[str, Runbook] = {}
    for index, raw in enumerate(tables):
        label = raw.get("name", f"#{index + 1}") if isinstance(raw, dict) else f"#{index + 1}"
        where = f"{path}: runbook {label}"
        try:
            table = convert(raw, _RunbookFile)
        except SchemaError as exc:
            key = ".".join(str(k) for k in exc.keys) or "runbook"
            raise RunbookError(f"{where}: {key}: {exc.message}") from None
        if table.name in found or table.name in BUILTIN:
            raise RunbookError(f"{where}: name: a runbook {table.name} is already defined"
                               + (" (bundled)" if table.name in BUILTIN else ""))
        steps = tuple(_parse_step(raw_step, f"{where}: step {i}")
                      for i, raw_step in enumerate(table.steps, 1))
        _kept_first(steps, where)
        found[table.name] = Runbook(table.name, steps, table.description)
    return found


def _kept_first(steps: Sequence[Step], where: str) -> None:
    """Every destructive database step is preceded by a kept copy. A restore keeps the data
    it replaces itself; a down-migration, which may drop a column, cannot."""
    kinds = [s.kind for s in steps]
    for index, kind in enumerate(kinds, 1):
        if kind == "run_down_migration" and "safety_backup" not in kinds[:index]:
            raise RunbookError(f"{where}: step {index} (run_down_migration): a down-migration "
                               "changes the live database and may drop data: put a "
                               "safety_backup step before it")


def _parse_step(raw: Mapping[str, Any], where: str) -> Step:
    values = dict(raw)
    kind = values.pop("step", None)
    if not isinstance(kind, str):
        raise RunbookError(f"{where}: step: required key is missing (the step's kind)")
    timeout, retries = values.pop("timeout", None), values.pop("retries", None)
    try:
        seconds = None if timeout is None else _duration(timeout)
        if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int)):
            raise RunbookError("retries: must be a whole number")
        return step(kind, timeout=seconds, retries=retries, **values)  # type: ignore[arg-type]
    except RunbookError as exc:
        raise RunbookError(f"{where} ({kind}): {exc}") from None


class _Timeout(Model):
    timeout: Annotated[Duration, Within(gt=0, le=24 * 3600)]


def _duration(value: Any) -> float:
    try:
        return float(convert({"timeout": value}, _Timeout).timeout)
    except SchemaError as exc:
        raise RunbookError(f"timeout: {exc.message}") from None


def resolve(action: str, named: str | None, defined: Mapping[str, Runbook]) -> Runbook | None:
    """The runbook a decision runs: the rule's ``runbook`` when it names one, else the action's
    bundled one; None for actions that run no runbook (evaluate, page, fix_forward)."""
    if named is not None:
        return defined.get(named) or BUILTIN.get(named)
    bundled = ACTION_RUNBOOK.get(action)
    return None if bundled is None else BUILTIN[bundled]


def unknown_runbooks(names: Iterable[str | None], defined: Mapping[str, Runbook]) -> list[str]:
    return sorted({n for n in names if n is not None and n not in defined and n not in BUILTIN})


_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}(\.[A-Za-z_][A-Za-z0-9_$]{0,62})?$")


def table_names(values: Iterable[str]) -> tuple[str, ...]:
    """Table names a person gave (``users``, ``public.images``; each may be a comma list),
    checked as plain SQL identifiers, optionally schema-qualified, duplicates dropped.
    Raises RunbookError naming the first that is not one."""
    names: list[str] = []
    for value in values:
        for name in (part.strip() for part in value.split(",") if part.strip()):
            if not _TABLE.match(name):
                raise RunbookError(f"table {name!r} is not a table name (letters, digits and "
                                   "_, optionally schema.table, at most 63 characters each)")
            if name not in names:
                names.append(name)
    if not names:
        raise RunbookError("no table named")
    return tuple(names)


def with_tables(runbook: Runbook, tables: Sequence[str]) -> Runbook:
    """``runbook`` made to restore the data of ``tables`` only (a selective rollback chosen by
    a person): its restore steps restore those tables; one without a restore step (the bundled
    selective_rollback rolls back code and configuration only) gets one, checked by the
    database checklist, right after the app is stopped. The name says the tables: a run
    recovered after a crash must not be continued with the runbook's own steps."""
    steps = [dataclasses.replace(s, args=replace(s.args, tables=tuple(tables)))
             if isinstance(s.args, RestoreArgs) else s for s in runbook.steps]
    if not runbook.restores_database:
        stops = [i for i, s in enumerate(steps) if s.kind == "stop_app"]
        at = stops[0] + 1 if stops else next(
            (i for i, s in enumerate(steps) if s.kind not in ("notify", "page", "assess")),
            len(steps))
        steps[at:at] = [step("restore_database", tables=list(tables)),
                        step("validate", checklist="database")]
    return Runbook(f"{runbook.name}[{','.join(tables)}]", tuple(steps),
                   runbook.description, runbook.labels)


DATABASE_STEPS: tuple[str, ...] = ("restore_database", "safety_backup", "run_down_migration")
"""The steps that change the database: in a fleet, one host runs them once for all."""

FOLLOWER_DROPS: tuple[str, ...] = (*DATABASE_STEPS, "assess", "page", "notify")
"""What a host following a fleet incident leaves out: the database part (another host did it
once) and the notices (the host that did it pages; the others journal only)."""

FOLLOWER_SUFFIX = "@fleet"


def fleet_follower(runbook: Runbook) -> Runbook:
    """The part of ``runbook`` a host that follows a fleet incident runs once the database is
    restored: its own app, code and configuration, and the checks (stop and start app, roll
    back code and config, validate, wait healthy, exec). Named ``<name>@fleet``, so a run
    recovered after a crash is continued with these steps, not the whole runbook's."""
    if runbook.name.endswith(FOLLOWER_SUFFIX):
        return runbook
    steps = tuple(s for s in runbook.steps if s.kind not in FOLLOWER_DROPS)
    return Runbook(f"{runbook.name}{FOLLOWER_SUFFIX}", steps,
                   f"{runbook.description} (a fleet follower's part: no database step, "
                   "no page)".strip(), runbook.labels)


def with_fleet_followers(runbooks: Mapping[str, Runbook]) -> dict[str, Runbook]:
    """``runbooks`` and each one's follower part (what a recovered follower run may be
    continued with)."""
    found = dict(runbooks)
    for runbook in runbooks.values():
        follower = fleet_follower(runbook)
        found.setdefault(follower.name, follower)
    return found
