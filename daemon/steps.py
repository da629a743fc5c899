"""What every side-effect step of a rollback returns, and how steps run commands."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.pgtools import PgToolError, run_tool

EXCERPT_LINES = 10
EXCERPT_CHARS = 2000


@dataclass(frozen=True, slots=True)
class StepResult:
    """The outcome of one side effect, as the runbook executor journals it.

    ``message`` is one line an operator can act on; ``output`` the last lines of what the
    commands involved printed (empty when none ran); ``details`` structured facts for the
    journal and the incident report (e.g. the previous commit, the files changed).
    """

    ok: bool
    message: str
    output: str = ""
    duration: float = 0.0
    details: Mapping[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "message": self.message, "output": self.output,
                "duration": round(self.duration, 3), "details": dict(self.details)}


def excerpt(*texts: str, lines: int = EXCERPT_LINES) -> str:
    """The last non-blank ``lines`` of the given outputs (stdout, then stderr), bounded."""
    kept: list[str] = []
    for text in texts:
        kept += [line.rstrip() for line in text.splitlines() if line.strip()]
    tail = "\n".join(kept[-lines:])
    return tail[-EXCERPT_CHARS:]


def describe_status(returncode: int) -> str:
    """``exit status 3`` or ``killed by SIGKILL``, as a person reads a child's end."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """One command run to its end (``returncode``) or not (``error``: timeout, not startable)."""

    argv: tuple[str, ...]
    returncode: int | None
    stdout: str = ""
    stderr: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def output(self) -> str:
        return excerpt(self.stdout, self.stderr)

    def failure(self, what: str) -> str:
        """One line saying how ``what`` failed, with the last line of its output."""
        if self.error is not None:
            return f"{what} failed: {self.error}"
        assert self.returncode is not None
        last = self.output.splitlines()[-1:] or ["no output"]
        return f"{what} failed with {describe_status(self.returncode)}: {last[0]}"


def run_command(argv: Sequence[str], *, timeout: float, cwd: Path | None = None,
                env: Mapping[str, str] | None = None) -> CommandOutcome:
    """Run ``argv`` through :func:`daemon.pgtools.run_tool` (own session, killed on timeout).

    The command is looked up first, so that "not found" is reported as such.
    """
    args = tuple(str(a) for a in argv)
    environ = dict(os.environ if env is None else env)
    if cwd is not None and not cwd.is_dir():
        return CommandOutcome(args, None, error=f"working directory {cwd} does not exist")
    missing = _not_executable(args[0], cwd, environ)
    if missing is not None:
        return CommandOutcome(args, None, error=missing)
    try:
        done = run_tool(list(args), env=environ, timeout=max(timeout, 0.001), cwd=cwd)
    except PgToolError as exc:
        return CommandOutcome(args, None, error=str(exc))
    return CommandOutcome(args, done.returncode, done.stdout, done.stderr)


def _not_executable(command: str, cwd: Path | None, env: Mapping[str, str]) -> str | None:
    """Why ``command`` cannot be executed, or ``None`` when it can."""
    if "/" in command:
        path = Path(command) if cwd is None else cwd / command
        if path.is_file() and os.access(path, os.X_OK):
            return None
        return f"cannot run {command}: {'not executable' if path.exists() else 'no such file'}"
    if shutil.which(command, path=env.get("PATH", os.defpath)) is None:
        return f"cannot run {command}: not found on PATH"
    return None
