"""Files written so that a crash leaves either the old content or the whole new one, and
checked copies of files (the config files a restore point keeps); and the named crash points
at which tests stop rollbackd to kill it (:func:`hold_point`).

Config files are copied byte for byte with their mode and owner, so that rolling the config
back (write to temp, fsync, rename) can recreate them exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import msgspec

CONFIG_DIR = "config"
CHUNK = 1 << 20
HOLD_ENV = "ROLLBACKD_TEST_HOLD"
RELEASE_ENV = "ROLLBACKD_TEST_RELEASE"


class CopyError(Exception):
    """A file that cannot be copied; ``str()`` names the path."""


def fsync_dir(directory: Path) -> None:
    """Make the directory's entries (a new name, a rename) survive a crash."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new(path: Path, content: bytes, *, mode: int = 0o600,
              owner: tuple[int, int] | None = None) -> None:
    """Create ``path``, which must not exist, with ``content``; mode and owner are set on the
    descriptor before the content can be seen under its name. A failure removes the partial
    file (it would pass for a complete one); the new name is made durable."""
    _write(path, content, mode, owner)
    fsync_dir(path.parent)


def _write(path: Path, content: bytes, mode: int, owner: tuple[int, int] | None) -> None:
    try:
        # Created unreadable to others and opened exclusively.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            if owner is not None and (os.fstat(fd).st_uid, os.fstat(fd).st_gid) != owner:
                os.fchown(fd, *owner)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
    except OSError:
        with contextlib.suppress(OSError):
            path.unlink()
        raise


def replace_atomically(path: Path, content: bytes, *, mode: int = 0o600,
                       owner: tuple[int, int] | None = None) -> None:
    """Replace ``path`` by ``content``: a temp file in the same directory, written and synced,
    renamed over it, and the rename made durable. Readers see the old or the new file."""
    temp = path.with_name(f".{path.name}.rollbackd-{secrets.token_hex(4)}.tmp")
    # The temp name need not survive a crash; only the rename below is made durable.
    _write(temp, content, mode, owner)
    try:
        temp.replace(path)
    except OSError:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    fsync_dir(path.parent)


class ConfigFile(msgspec.Struct, frozen=True, kw_only=True):
    """One config file as it was at snapshot time, as a restore point's manifest records it:
    a record read back, not settings, so keys a newer rollbackd adds are ignored."""

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
    ``CopyError`` for a file that is missing or unreadable, or whose copy cannot be written
    (a full disk): a restore point that silently lacks a config file would roll back to a
    broken configuration.
    """
    taken: list[ConfigFile] = []
    for given in files:
        source = Path(given).absolute()
        try:
            info = source.stat()
            if not stat.S_ISREG(info.st_mode):
                raise CopyError(f"config file {source} is not a regular file")
            content = source.read_bytes()
        except OSError as exc:
            raise CopyError(f"cannot snapshot config file {source}: "
                                f"{exc.strerror or exc}") from None
        relative = Path(CONFIG_DIR) / source.relative_to(source.anchor)
        target = backup_dir / relative
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # Readable by us only: config files hold secrets, whatever their own mode.
            write_new(target, content)
        except OSError as exc:
            raise CopyError(f"cannot copy config file {source} into {backup_dir}: "
                            f"{exc.strerror or exc}") from None
        taken.append(ConfigFile(
            path=str(source), file=relative.as_posix(),
            sha256=hashlib.sha256(content).hexdigest(), size=len(content),
            mode=stat.S_IMODE(info.st_mode), uid=info.st_uid, gid=info.st_gid,
        ))
    return taken


def holds_at(point: str) -> bool:
    """Whether ``ROLLBACKD_TEST_HOLD`` names ``point`` (:func:`hold_point` would wait)."""
    wanted = os.environ.get(HOLD_ENV)
    return bool(wanted) and point in (p.strip() for p in (wanted or "").split(","))


def hold_point(point: str) -> None:
    """A named step where a test can stop rollbackd, to kill it (or disturb its world) exactly
    there: ``ROLLBACKD_TEST_HOLD=swap:after_first_rename`` (several: comma-separated).

    At a matching point the process writes ``rollbackd: test hold at <point> (pid N)`` on
    stderr and waits: until the file named by ``ROLLBACKD_TEST_RELEASE`` exists when that is
    set, else until it is killed. Without ``ROLLBACKD_TEST_HOLD`` it costs one environment
    lookup. Points:

    * ``swap:*`` (:mod:`daemon.db.restore.swap`): the steps of a swap restore;
    * ``backup:before_metadata`` (:mod:`daemon.db.backups`);
    * ``runbook:<index>:<kind>:before`` and ``runbook:<index>:<kind>:after``
      (:mod:`daemon.runbooks.executor`): each attempt at step ``<index>`` (1-based, as the
      journal numbers it) of a runbook run, e.g. ``runbook:3:restore_database:before``.
      ``before``: the attempt is journaled as begun, its side effect not yet started;
      ``after``: its side effect is done (or failed), the attempt not yet journaled as ended.
      The executor waits in a thread, so the daemon's event loop goes on meanwhile.
    * ``page:<template>:before_send`` and ``page:<template>:after_send``
      (:mod:`daemon.paging.outbox`): a page journaled and rendered, not yet sent; sent, not
      yet journaled as delivered.
    """
    if not holds_at(point):
        return
    release = os.environ.get(RELEASE_ENV)
    sys.stderr.write(f"rollbackd: test hold at {point} (pid {os.getpid()})\n")
    sys.stderr.flush()
    while release is None or not Path(release).exists():
        time.sleep(0.05)
