"""Writing the config files of a restore point back where they were.

All or nothing where it can be: every snapshot copy is checked against the manifest's sha256,
and every file checked to be writable as recorded, before the first file is touched; a
damaged copy refuses the whole step. Then each file that differs is kept beside itself as
``<file>.rollbackd-<timestamp>`` and replaced atomically (temp file in the same directory,
write, fsync, owner and mode as recorded, rename, fsync of the directory). A file already
identical is left untouched (its mtime too); one whose content matches but whose mode or
owner differs gets those back without a rewrite.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from daemon.app.result import StepResult
from daemon.durable import ConfigFile, replace_atomically, sha256_file, write_new
from daemon.fmt import stamp

KEPT_INFIX = ".rollbackd-"


@dataclass(frozen=True, slots=True)
class _Plan:
    """What to do with one file: its recorded state, the copy's bytes and its current state."""

    entry: ConfigFile
    target: Path
    content: bytes
    current: os.stat_result | None
    same_content: bool

    @property
    def needs_write(self) -> bool:
        return not self.same_content

    @property
    def needs_attrs(self) -> bool:
        info = self.current
        return info is not None and (
            stat.S_IMODE(info.st_mode) != self.entry.mode
            or (info.st_uid, info.st_gid) != (self.entry.uid, self.entry.gid))


def restore_config_files(backup_dir: Path, backup_id: str,
                         entries: Sequence[ConfigFile]) -> StepResult:
    """Restore the config files ``entries`` of backup ``backup_id`` (whose copies are under
    ``backup_dir``); see the module docstring.

    ``details``: ``changed`` (rewritten), ``created`` (were missing), ``attributes`` (mode or
    owner put back), ``unchanged``, ``kept`` (file -> its pre-rollback copy).
    """
    started = time.monotonic()
    if not entries:
        return StepResult(True, f"restore point {backup_id} holds no config files")
    plans = _plan(backup_dir, entries)
    if isinstance(plans, str):
        return StepResult(False, f"config rollback refused, no file changed: {plans}",
                          duration=time.monotonic() - started)
    kept_stamp = stamp(time.time())
    report = _Report()
    for plan in plans:
        error = _apply(plan, kept_stamp, report)
        if error is not None:
            return StepResult(False, f"config rollback stopped at {plan.target}: {error}; "
                              f"{report.summary()}", duration=time.monotonic() - started,
                              details=report.details())
    return StepResult(True, f"config files from {backup_id}: {report.summary()}",
                      duration=time.monotonic() - started, details=report.details())


class _Report:
    def __init__(self) -> None:
        self.changed: list[str] = []
        self.created: list[str] = []
        self.attributes: list[str] = []
        self.unchanged: list[str] = []
        self.kept: dict[str, str] = {}

    def summary(self) -> str:
        parts = [f"{len(self.changed)} restored" + _names(self.changed)]
        if self.created:
            parts.append(f"{len(self.created)} recreated" + _names(self.created))
        if self.attributes:
            parts.append(f"{len(self.attributes)} mode/owner fixed" + _names(self.attributes))
        parts.append(f"{len(self.unchanged)} already identical")
        if self.kept:
            parts.append("previous versions kept as *" + KEPT_INFIX + "<timestamp>")
        return ", ".join(parts)

    def details(self) -> dict[str, object]:
        return {"changed": self.changed, "created": self.created,
                "attributes": self.attributes, "unchanged": self.unchanged,
                "kept": self.kept}


def _names(paths: list[str]) -> str:
    return f" ({', '.join(paths)})" if paths else ""


# -- checking, before anything changes ----------------------------------------------------


def _plan(backup_dir: Path, entries: Sequence[ConfigFile]) -> list[_Plan] | str:
    """A plan per file, or why none may be carried out (every problem found, named)."""
    backup_dir = backup_dir.resolve()
    plans: list[_Plan] = []
    problems: list[str] = []
    for entry in entries:
        plan = _plan_one(backup_dir, entry)
        if isinstance(plan, str):
            problems.append(plan)
        else:
            plans.append(plan)
    return "; ".join(problems) if problems else plans


def _plan_one(backup_dir: Path, entry: ConfigFile) -> _Plan | str:
    copy = (backup_dir / entry.file).resolve()
    if not copy.is_relative_to(backup_dir):
        return f"the copy of {entry.path} ({entry.file}) lies outside the backup"
    try:
        content = copy.read_bytes()
    except OSError as exc:
        return f"the copy of {entry.path} cannot be read ({exc.strerror or exc})"
    if hashlib.sha256(content).hexdigest() != entry.sha256:
        return f"the copy of {entry.path} ({copy}) is damaged: its sha256 differs from the manifest"
    # The snapshot read through a symlink; writing goes to the same file it read.
    target = Path(os.path.realpath(entry.path))
    if not target.parent.is_dir():
        return f"the directory of {entry.path} no longer exists"
    try:
        current: os.stat_result | None = target.stat()
    except FileNotFoundError:
        current = None
    except OSError as exc:
        return f"cannot examine {target}: {exc.strerror or exc}"
    if current is not None and not stat.S_ISREG(current.st_mode):
        return f"{target} is no longer a regular file"
    same = current is not None and _digest(target) == entry.sha256
    plan = _Plan(entry, target, content, current, same)
    if (plan.needs_write or plan.needs_attrs) and not _may_own(entry.uid, entry.gid):
        return (f"cannot give {target} back its owner uid {entry.uid} gid {entry.gid} "
                f"(rollbackd runs as uid {os.geteuid()})")
    return plan



def _digest(path: Path) -> str | None:
    try:
        return sha256_file(path)[0]
    except OSError:
        return None


def _may_own(uid: int, gid: int) -> bool:
    """Whether a file we write can be given this owner and group (chown rules, no privilege
    but root's)."""
    if os.geteuid() == 0:
        return True
    return uid == os.geteuid() and (gid == os.getegid() or gid in os.getgroups())


# -- changing ------------------------------------------------------------------------------


def _apply(plan: _Plan, stamp: str, report: _Report) -> str | None:
    """Carry out one plan, recording it in ``report``; an error line, or ``None``."""
    path = str(plan.target)
    try:
        if plan.needs_write:
            if plan.current is not None:
                report.kept[path] = str(_keep(plan.target, plan.current, stamp))
            _write_atomic(plan.target, plan.content, plan.entry)
            (report.changed if plan.current is not None else report.created).append(path)
        elif plan.needs_attrs:
            os.chown(plan.target, plan.entry.uid, plan.entry.gid)
            plan.target.chmod(plan.entry.mode)
            report.attributes.append(path)
        else:
            report.unchanged.append(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _keep(target: Path, info: os.stat_result, stamp: str) -> Path:
    """Copy the current file to ``<file>.rollbackd-<stamp>`` (same mode), durably."""
    content = target.read_bytes()
    kept = target.with_name(f"{target.name}{KEPT_INFIX}{stamp}")
    counter = 1
    while kept.exists() or kept.is_symlink():
        kept = target.with_name(f"{target.name}{KEPT_INFIX}{stamp}-{counter}")
        counter += 1
    _write_new(kept, content, stat.S_IMODE(info.st_mode), (info.st_uid, info.st_gid))
    return kept


def _write_atomic(target: Path, content: bytes, entry: ConfigFile) -> None:
    replace_atomically(target, content, mode=entry.mode, owner=_owner(entry.uid, entry.gid))


def _write_new(path: Path, content: bytes, mode: int, owner: tuple[int, int]) -> None:
    write_new(path, content, mode=mode, owner=_owner(*owner))


def _owner(uid: int, gid: int) -> tuple[int, int] | None:
    """The owner to give a file we write, when we may (see :func:`_may_own`)."""
    return (uid, gid) if _may_own(uid, gid) else None
