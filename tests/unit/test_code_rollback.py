"""Code rollback on a real git repository and real release directories with symlinks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.app.code import current_version, roll_back_code
from daemon.config import GitCode, SymlinkCode

INSTALL = """
import sys
from pathlib import Path
version = Path("VERSION").read_text().strip()
print(f"installing dependencies for {version}")
if version == "broken":
    sys.stderr.write("npm ERR! missing: left-pad@1.3.0\\n")
    sys.exit(2)
Path("installed.marker").write_text(version)
"""


def git(repo: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.invalid")
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          env=env, timeout=30, check=True)
    return done.stdout.strip()


def commit(repo: Path, version: str) -> str:
    (repo / "VERSION").write_text(f"{version}\n")
    (repo / "app.js").write_text(f"console.log('{version}')\n")
    git(repo, "add", "VERSION", "app.js", "install.py", ".gitignore")
    git(repo, "commit", "-q", "-m", f"release {version}")
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "visionforge"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "install.py").write_text(INSTALL)
    (path / ".gitignore").write_text("installed.marker\n")
    return path


def git_code(repo: Path, install: bool = True) -> GitCode:
    return GitCode(dir=repo,
                   install=[sys.executable, "install.py"] if install else None)


# --- git ---------------------------------------------------------------------------------


def test_git_rollback_checks_out_the_commit_runs_install_and_reports_the_previous(
        repo: Path) -> None:
    v1 = commit(repo, "v1")
    v2 = commit(repo, "v2")
    code = git_code(repo)
    assert current_version(code) == v2

    result = roll_back_code(code, v1, timeout=30)

    assert result.ok, result.message
    assert git(repo, "rev-parse", "HEAD") == v1
    assert (repo / "VERSION").read_text() == "v1\n"
    assert (repo / "installed.marker").read_text() == "v1"  # install ran in the app directory
    assert "installing dependencies for v1" in result.output
    assert result.details == {"previous": v2, "target": v1}
    assert f"checkout --detach {v2}" in result.message  # how to undo it
    assert current_version(code) == v1


def test_a_short_commit_id_is_resolved_to_the_full_one(repo: Path) -> None:
    v1 = commit(repo, "v1")
    commit(repo, "v2")
    result = roll_back_code(git_code(repo, install=False), v1[:10], timeout=30)
    assert result.ok, result.message
    assert git(repo, "rev-parse", "HEAD") == v1 and result.details["target"] == v1


def test_a_dirty_work_tree_is_refused_naming_the_files(repo: Path) -> None:
    v1 = commit(repo, "v1")
    v2 = commit(repo, "v2")
    (repo / "app.js").write_text("console.log('hotfix on the server')\n")

    result = roll_back_code(git_code(repo), v1, timeout=30)

    assert not result.ok
    assert "uncommitted changes" in result.message and "app.js" in result.message
    assert result.details["dirty"] == ["app.js"]
    assert git(repo, "rev-parse", "HEAD") == v2
    assert (repo / "app.js").read_text() == "console.log('hotfix on the server')\n"
    assert not (repo / "installed.marker").exists()


def test_an_untracked_file_alone_does_not_block_the_rollback(repo: Path) -> None:
    v1 = commit(repo, "v1")
    commit(repo, "v2")
    (repo / "uploads.log").write_text("runtime output\n")
    result = roll_back_code(git_code(repo, install=False), v1, timeout=30)
    assert result.ok, result.message
    assert (repo / "uploads.log").exists()


def test_a_failing_install_is_reported_with_its_output_and_the_way_back(repo: Path) -> None:
    broken = commit(repo, "broken")
    good = commit(repo, "v2")

    result = roll_back_code(git_code(repo), broken, timeout=30)

    assert not result.ok
    assert "install (python" in result.message and "exit status 2" in result.message
    assert "npm ERR! missing: left-pad@1.3.0" in result.message
    assert "installing dependencies for broken" in result.output
    assert "npm ERR! missing: left-pad@1.3.0" in result.output
    assert git(repo, "rev-parse", "HEAD") == broken  # checked out; the report says so
    assert f"checkout --detach {good}" in result.message
    assert result.details["previous"] == good


def test_an_unknown_commit_is_refused_and_nothing_changes(repo: Path) -> None:
    v1 = commit(repo, "v1")
    result = roll_back_code(git_code(repo), "0123456789abcdef0123456789abcdef01234567",
                            timeout=30)
    assert not result.ok and "is not in the repository" in result.message
    assert git(repo, "rev-parse", "HEAD") == v1
    assert not (repo / "installed.marker").exists()


def test_a_version_that_is_not_a_commit_id_never_reaches_git(repo: Path) -> None:
    commit(repo, "v1")
    result = roll_back_code(git_code(repo), "--orphan=evil", timeout=30)
    assert not result.ok and "not a git commit id" in result.message
    assert git(repo, "branch", "--show-current") == "main"


def test_rolling_back_to_the_current_commit_reruns_install_only(repo: Path) -> None:
    v1 = commit(repo, "v1")
    result = roll_back_code(git_code(repo), v1, timeout=30)
    assert result.ok and "already at" in result.message
    assert (repo / "installed.marker").read_text() == "v1"


def test_a_directory_that_is_no_git_repository_is_a_failure(tmp_path: Path) -> None:
    code = GitCode(dir=tmp_path)
    assert current_version(code) is None
    result = roll_back_code(code, "0123456", timeout=30)
    assert not result.ok and str(tmp_path) in result.message


# --- symlink -----------------------------------------------------------------------------


@pytest.fixture
def releases(tmp_path: Path) -> SymlinkCode:
    root = tmp_path / "srv"
    for name in ("v1", "v2"):
        (root / "releases" / name).mkdir(parents=True)
        (root / "releases" / name / "VERSION").write_text(name)
    (root / "current").symlink_to("releases/v2")
    return SymlinkCode(current=root / "current", releases=root / "releases")


def test_symlink_rollback_switches_current_and_keeps_the_newer_release(
        releases: SymlinkCode) -> None:
    assert current_version(releases) == "v2"

    result = roll_back_code(releases, "v1", timeout=5)

    assert result.ok, result.message
    assert releases.current.readlink() == Path("releases/v1")  # still relative, as it was
    assert (releases.current / "VERSION").read_text() == "v1"
    assert (releases.releases / "v2" / "VERSION").read_text() == "v2"
    assert result.details["previous"] == "v2"
    assert result.details["previous_link"] == "releases/v2"
    assert current_version(releases) == "v1"
    leftovers = [p.name for p in releases.current.parent.iterdir()]
    assert sorted(leftovers) == ["current", "releases"]


def test_an_absolute_link_stays_absolute(releases: SymlinkCode) -> None:
    releases.current.unlink()
    releases.current.symlink_to(releases.releases / "v2")
    result = roll_back_code(releases, "v1", timeout=5)
    assert result.ok
    assert releases.current.readlink() == (releases.releases / "v1").absolute()


def test_a_missing_release_is_refused_and_current_is_left_alone(releases: SymlinkCode) -> None:
    result = roll_back_code(releases, "v0", timeout=5)
    assert not result.ok and "does not exist" in result.message
    assert releases.current.readlink() == Path("releases/v2")


def test_a_release_name_with_a_path_in_it_is_refused(releases: SymlinkCode) -> None:
    result = roll_back_code(releases, "../releases/v1", timeout=5)
    assert not result.ok and "not a release name" in result.message
    assert releases.current.readlink() == Path("releases/v2")


def test_a_current_that_is_a_real_directory_is_never_replaced(releases: SymlinkCode) -> None:
    releases.current.unlink()
    releases.current.mkdir()
    (releases.current / "data").write_text("precious")
    result = roll_back_code(releases, "v1", timeout=5)
    assert not result.ok and "not a symlink" in result.message
    assert (releases.current / "data").read_text() == "precious"


def test_rolling_back_to_the_release_in_place_changes_nothing(releases: SymlinkCode) -> None:
    result = roll_back_code(releases, "v2", timeout=5)
    assert result.ok and "already points" in result.message
    assert releases.current.readlink() == Path("releases/v2")
