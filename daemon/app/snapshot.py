"""The code version a restore point records: what the code adapter rolls back to, a git
commit or the release directory ``current`` points to. (The config files it keeps are copied
by :func:`daemon.durable.snapshot_config`.)
"""

from __future__ import annotations

import os
from pathlib import Path

from daemon.config import AppSettings, GitCode, SymlinkCode
from daemon.proc import ProcError, run_process

GIT_TIMEOUT = 15.0


class SnapshotError(Exception):
    """A config file or code version that cannot be captured; ``str()`` names the path."""


def code_version(app: AppSettings | None, *, timeout: float = GIT_TIMEOUT) -> str | None:
    """The deployed code's version: ``None`` without a code adapter.

    git: the commit ``HEAD`` is at in the app directory. symlink: the name of the release
    directory ``current`` points to, when it is inside ``releases`` (else its resolved path).
    Raises ``SnapshotError`` when it cannot be determined.
    """
    if app is None or app.code is None:
        return None
    if isinstance(app.code, GitCode):
        return git_commit(app.code.dir, timeout=timeout)
    return symlink_release(app.code)


def git_commit(directory: Path, *, timeout: float = GIT_TIMEOUT) -> str:
    """``git rev-parse HEAD`` in ``directory``, with a timeout and no prompts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["GIT_TERMINAL_PROMPT"] = "0"
    # The daemon runs as its own user and the app's checkout belongs to the app's user; git
    # then refuses the repository as of "dubious ownership" unless it is declared safe.
    argv = ["git", "-c", f"safe.directory={directory}", "-C", str(directory),
            "rev-parse", "--verify", "HEAD"]
    try:
        result = run_process(argv, env=env, timeout=timeout)
    except ProcError as exc:
        raise SnapshotError(f"cannot read the code version of {directory}: {exc}") from None
    commit = result.stdout.strip()
    if result.returncode != 0 or not commit:
        reason = result.stderr.strip().splitlines()[-1:] or ["no output"]
        raise SnapshotError(f"cannot read the git commit of {directory}: {reason[0]}")
    return commit


def symlink_release(code: SymlinkCode) -> str:
    if not code.current.is_symlink():
        raise SnapshotError(f"{code.current} is not a symlink to a release")
    target = code.current.resolve()
    if not target.is_dir():
        raise SnapshotError(f"{code.current} points to {target}, which is not a directory")
    releases = code.releases.resolve()
    if target.parent == releases:
        return target.name
    return str(target)
