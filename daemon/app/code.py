"""Rolling the application's code back to the version a restore point recorded.

* ``git``: ``git checkout --detach <commit>`` in the app directory, then the install command.
  A work tree with uncommitted changes is refused: a checkout would carry them over or stop
  halfway, and they may be someone's hotfix that nothing else keeps.
* ``symlink``: ``current`` is switched to ``releases/<release>`` atomically (a new symlink
  beside it, renamed over it). Nothing is deleted: the release rolled back from stays.

Both report the version they left, so that the step can be undone. Failures are returned as
a :class:`~daemon.app.result.StepResult`, never raised.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from pathlib import Path

from daemon.app.result import StepResult
from daemon.app.snapshot import SnapshotError, git_commit, symlink_release
from daemon.config import GitCode, SymlinkCode
from daemon.fmt import excerpt
from daemon.proc import run_command

_COMMIT = re.compile(r"^[0-9a-f]{7,64}$")


def current_version(code: GitCode | SymlinkCode, *, timeout: float = 15.0) -> str | None:
    """The deployed version as a restore point records it (see
    :func:`daemon.app.snapshot.code_version`): the commit, or the release ``current`` points to.
    ``None`` when it cannot be determined."""
    try:
        if isinstance(code, GitCode):
            return git_commit(code.dir, timeout=timeout)
        return symlink_release(code)
    except SnapshotError:
        return None


def roll_back_code(code: GitCode | SymlinkCode, target_version: str, *,
                   timeout: float) -> StepResult:
    """Put the code at ``target_version`` (a commit for git, a release for symlink)."""
    started = time.monotonic()
    if isinstance(code, GitCode):
        result = _git(code, target_version, started + timeout)
    else:
        result = _symlink(code, target_version)
    return StepResult(result.ok, result.message, result.output, time.monotonic() - started,
                      result.details)


# -- git ---------------------------------------------------------------------------------


def _git_env() -> dict[str, str]:
    # GIT_DIR & co. from our own environment would point git at another repository.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["GIT_TERMINAL_PROMPT"] = "0"
    return env


def _git_argv(directory: Path, *args: str) -> list[str]:
    # The checkout belongs to the app's user: without safe.directory git refuses it.
    return ["git", "-c", f"safe.directory={directory}", "-C", str(directory), *args]


def _git(code: GitCode, target: str, deadline: float) -> StepResult:
    directory = code.dir
    if not _COMMIT.match(target):
        return StepResult(False, f"{target!r} is not a git commit id; refusing to check it out")
    try:
        previous = git_commit(directory, timeout=_left(deadline))
    except SnapshotError as exc:
        return StepResult(False, str(exc))
    resolved = _resolve(directory, target, deadline)
    if isinstance(resolved, StepResult):
        return resolved
    dirty = _dirty_files(directory, deadline)
    if isinstance(dirty, StepResult):
        return dirty
    if dirty:
        shown = ", ".join(dirty[:10]) + (f" and {len(dirty) - 10} more" if len(dirty) > 10 else "")
        return StepResult(False, f"{directory} has uncommitted changes in {shown}; refusing to "
                          "check out over them (commit or stash them, then retry)",
                          details={"previous": previous, "dirty": dirty})
    details = {"previous": previous, "target": resolved}
    undo = (f"undo: git -C {directory} checkout --detach {previous}" if previous != resolved
            else "nothing to undo")
    output = ""
    if previous != resolved:
        checkout = run_command(_git_argv(directory, "checkout", "--detach", resolved),
                               timeout=_left(deadline), env=_git_env())
        output = checkout.output
        if not checkout.ok:
            return StepResult(False, f"{checkout.failure('git checkout')} (still at "
                              f"{previous[:12]})", output, details=details)
        try:
            head = git_commit(directory, timeout=_left(deadline))
        except SnapshotError as exc:
            return StepResult(False, f"checked out {resolved[:12]} but {exc}; {undo}", output,
                              details=details)
        if head != resolved:
            return StepResult(False, f"after the checkout HEAD is {head[:12]}, not "
                              f"{resolved[:12]}; {undo}", output, details=details)
    moved = (f"checked out {resolved[:12]} (was {previous[:12]})" if previous != resolved
             else f"already at {resolved[:12]}")
    if code.install is None:
        return StepResult(True, f"{moved}; {undo}", output, details=details)
    # Also when nothing moved: an earlier attempt may have stopped between checkout and install.
    install = run_command(code.install, timeout=_left(deadline), cwd=directory)
    output = excerpt(output, install.output)
    name = Path(code.install[0]).name
    if not install.ok:
        return StepResult(False, f"{moved}, but {install.failure(f'install ({name})')}; {undo}",
                          output, details=details)
    return StepResult(True, f"{moved} and ran install ({name}); {undo}", output,
                      details=details)


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.001)


def _resolve(directory: Path, target: str, deadline: float) -> str | StepResult:
    """The full id of commit ``target``, or why it cannot be checked out."""
    done = run_command(_git_argv(directory, "rev-parse", "--verify", "--quiet",
                                 f"{target}^{{commit}}"),
                       timeout=_left(deadline), env=_git_env())
    commit = done.stdout.strip()
    if done.error is not None:
        return StepResult(False, f"cannot look up commit {target}: {done.error}")
    if not done.ok or not commit:
        return StepResult(False, f"commit {target} is not in the repository at {directory} "
                          "(was it fetched?)", done.output)
    return commit


def _dirty_files(directory: Path, deadline: float) -> list[str] | StepResult:
    """Tracked files with changes, staged or not. Untracked files do not count: git itself
    refuses a checkout that would overwrite one, and that refusal is reported."""
    done = run_command(_git_argv(directory, "status", "--porcelain=v1", "-z",
                                 "--untracked-files=no"),
                       timeout=_left(deadline), env=_git_env())
    if not done.ok:
        return StepResult(False, done.failure(f"git status in {directory}"), done.output)
    files: list[str] = []
    entries = iter(done.stdout.split("\0"))
    for entry in entries:
        if len(entry) < 4:
            continue
        files.append(entry[3:])
        if entry[0] in "RC":
            next(entries, None)  # a rename's or copy's source path follows
    return files


# -- symlink -----------------------------------------------------------------------------


def _release_dir(code: SymlinkCode, target: str) -> Path | None:
    """The directory for ``target``: a release name, or an absolute path as
    :func:`daemon.app.snapshot.symlink_release` records a release outside ``releases``."""
    if Path(target).is_absolute():
        return Path(target)
    if not target or "/" in target or target in {".", ".."}:
        return None
    return code.releases / target


def _symlink(code: SymlinkCode, target: str) -> StepResult:
    current = code.current
    release = _release_dir(code, target)
    if release is None:
        return StepResult(False, f"{target!r} is not a release name; refusing to switch")
    if not release.is_dir():
        return StepResult(False, f"release {release} does not exist; {current} left as it is")
    if current.exists() and not current.is_symlink():
        return StepResult(False, f"{current} is not a symlink; refusing to replace it")
    old_link = str(current.readlink()) if current.is_symlink() else None
    previous = _previous_release(code, old_link)
    details = {"previous": previous, "previous_link": old_link, "target": target}
    if old_link is not None and _same_dir(current, release):
        return StepResult(True, f"{current} already points to {release}", details=details)
    # Keep the link's style: a relative link keeps the tree relocatable.
    relative = old_link is not None and not Path(old_link).is_absolute()
    value = os.path.relpath(release, current.parent) if relative else str(release.absolute())
    try:
        _switch(current, value)
    except OSError as exc:
        return StepResult(False, f"cannot switch {current} to {release}: "
                          f"{exc.strerror or exc}; it still points to {old_link}",
                          details=details)
    was = f" (was {previous})" if previous else ""
    undo = f"; undo: switch {current} back to {old_link}" if old_link else ""
    return StepResult(True, f"switched {current} to {release}{was}{undo}", details=details)


def _previous_release(code: SymlinkCode, old_link: str | None) -> str | None:
    if old_link is None:
        return None
    try:
        return symlink_release(code)
    except SnapshotError:
        return old_link  # dangling: the link's text is all there is


def _same_dir(current: Path, release: Path) -> bool:
    try:
        return current.resolve(strict=True) == release.resolve(strict=True)
    except OSError:
        return False


def _switch(current: Path, value: str) -> None:
    """Point ``current`` at ``value`` in one rename: readers see the old or the new link."""
    temp = current.with_name(f".{current.name}.rollbackd-{secrets.token_hex(4)}")
    temp.symlink_to(value)
    try:
        temp.replace(current)
    except OSError:
        temp.unlink(missing_ok=True)
        raise
    fd = os.open(current.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
