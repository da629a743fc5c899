"""What a restore point keeps besides the database: the config files and the code version.

Config files are copied byte for byte with their mode and owner, so that rolling the config
back (write to temp, fsync, rename) can recreate them exactly; the code version is what the
code adapter rolls back to: a git commit, or the release directory ``current`` points to.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from daemon.config import AppSettings, GitCode, SymlinkCode
from daemon.pgtools import PgToolError, run_tool

CONFIG_DIR = "config"
GIT_TIMEOUT = 15.0
CHUNK = 1 << 20


class SnapshotError(Exception):
    """A config file or code version that cannot be captured; ``str()`` names the path."""


class ConfigFile(BaseModel):
    """One config file as it was at snapshot time."""

    model_config = ConfigDict(frozen=True)

    path: str
    """The absolute path the file lives at (where a rollback writes it back)."""
    file: str
    """The copy, relative to the backup directory (``config/srv/app/.env``)."""
    sha256: str
    size: int
    mode: int
    """Permission bits (``stat.S_IMODE``), e.g. ``0o640``."""
    uid: int
    gid: int


def sha256_file(path: Path) -> tuple[str, int]:
    """``(hex sha256, size)`` of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def snapshot_config(files: Iterable[Path], backup_dir: Path) -> list[ConfigFile]:
    """Copy each config file into ``backup_dir/config/`` (mirroring its absolute path).

    The copy is made from bytes read once, and the checksum is of those very bytes, so a file
    rewritten meanwhile cannot leave a copy that disagrees with its recorded sha256. Raises
    ``SnapshotError`` for a file that is missing or unreadable: a restore point that silently
    lacks a config file would roll back to a broken configuration.
    """
    taken: list[ConfigFile] = []
    for given in files:
        source = Path(given).absolute()
        try:
            info = source.stat()
            if not stat.S_ISREG(info.st_mode):
                raise SnapshotError(f"config file {source} is not a regular file")
            content = source.read_bytes()
        except OSError as exc:
            raise SnapshotError(f"cannot snapshot config file {source}: "
                                f"{exc.strerror or exc}") from None
        relative = Path(CONFIG_DIR) / source.relative_to(source.anchor)
        target = backup_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_private(target, content)
        taken.append(ConfigFile(
            path=str(source), file=relative.as_posix(),
            sha256=hashlib.sha256(content).hexdigest(), size=len(content),
            mode=stat.S_IMODE(info.st_mode), uid=info.st_uid, gid=info.st_gid,
        ))
    return taken


def _write_private(target: Path, content: bytes) -> None:
    """Write the copy readable by us only: config files hold secrets, whatever their mode."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _write_all(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, content: bytes) -> None:
    view = memoryview(content)
    while view:
        written = os.write(fd, view)
        view = view[written:]


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
        result = run_tool(argv, env=env, timeout=timeout)
    except PgToolError as exc:
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
