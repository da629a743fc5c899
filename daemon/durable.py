"""Files written so that a crash leaves either the old content or the whole new one."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


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
