"""Config rollback with real files, modes and a real restore point's config snapshot."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import msgspec
import pytest

from daemon.app.config_files import restore_config_files
from daemon.config import BackupSettings
from daemon.db.backups import BackupStore, Manifest, new_id
from daemon.durable import snapshot_config


class Site:
    """An app's config files and a restore point that snapshotted them."""

    def __init__(self, tmp_path: Path) -> None:
        self.app = tmp_path / "srv" / "visionforge"
        self.app.mkdir(parents=True)
        self.env = self.app / ".env"
        self.settings = self.app / "settings.json"
        self.store = BackupStore(BackupSettings(dir=tmp_path / "backups"))

    def write(self, path: Path, text: str, mode: int) -> None:
        path.write_text(text)
        path.chmod(mode)

    def restore_point(self) -> Manifest:
        backup_id = new_id("restore_point", time.time())
        directory = self.store.path(backup_id)
        directory.mkdir(parents=True)
        entries = snapshot_config([self.env, self.settings], directory)
        return Manifest(id=backup_id, kind="restore_point", method="custom", data="data.dump",
                        database="visionforge", server_version="15.0",
                        server_version_num=150000, pg_dump_version="15.0",
                        created_at=time.time(), created_at_iso="", duration=0.0, snapshot="",
                        files=[], config=entries, size=0, tables=[])

    def copy_of(self, manifest: Manifest, path: Path) -> Path:
        entry = next(e for e in manifest.config if e.path == str(path))
        return self.store.path(manifest.id) / entry.file


@pytest.fixture
def site(tmp_path: Path) -> Site:
    made = Site(tmp_path)
    made.write(made.env, "DATABASE_URL=postgresql:///visionforge\nFEATURE_X=off\n", 0o640)
    made.write(made.settings, '{"workers": 4}\n', 0o644)
    return made


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def kept_copies(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.rollbackd-*"))


def test_changed_files_are_restored_with_their_mode_and_the_old_one_is_kept(site: Site) -> None:
    manifest = site.restore_point()
    site.write(site.env, "DATABASE_URL=postgresql:///visionforge\nFEATURE_X=on\n", 0o666)
    settings_mtime = site.settings.stat().st_mtime_ns

    result = restore_config_files(site.store.path(manifest.id), manifest.id, manifest.config)

    assert result.ok, result.message
    assert site.env.read_text() == "DATABASE_URL=postgresql:///visionforge\nFEATURE_X=off\n"
    assert mode(site.env) == 0o640
    [kept] = kept_copies(site.env)
    assert kept.read_text() == "DATABASE_URL=postgresql:///visionforge\nFEATURE_X=on\n"
    assert mode(kept) == 0o666  # the pre-rollback file as it was
    assert result.details["changed"] == [str(site.env)]
    assert result.details["unchanged"] == [str(site.settings)]
    assert result.details["kept"] == {str(site.env): str(kept)}
    assert site.settings.stat().st_mtime_ns == settings_mtime  # identical: not rewritten
    assert kept_copies(site.settings) == []
    assert "1 restored" in result.message and "1 already identical" in result.message
    temp_files = [p.name for p in site.app.iterdir() if p.name.endswith(".tmp")]
    assert temp_files == []


def test_a_damaged_snapshot_copy_refuses_the_whole_step_and_changes_nothing(site: Site) -> None:
    manifest = site.restore_point()
    site.write(site.env, "FEATURE_X=on\n", 0o600)
    site.write(site.settings, '{"workers": 64}\n', 0o600)
    site.copy_of(manifest, site.settings).write_text('{"workers": 5}\n')  # bit rot
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns, mode(p))
              for p in (site.env, site.settings)}

    result = restore_config_files(site.store.path(manifest.id), manifest.id, manifest.config)

    assert not result.ok
    assert "refused, no file changed" in result.message
    assert "settings.json" in result.message and "damaged" in result.message
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns, mode(p))
            for p in (site.env, site.settings)} == before
    assert kept_copies(site.env) == [] and kept_copies(site.settings) == []


def test_a_missing_snapshot_copy_also_refuses_everything(site: Site) -> None:
    manifest = site.restore_point()
    site.write(site.env, "FEATURE_X=on\n", 0o600)
    site.copy_of(manifest, site.settings).unlink()
    result = restore_config_files(site.store.path(manifest.id), manifest.id, manifest.config)
    assert not result.ok and "cannot be read" in result.message
    assert site.env.read_text() == "FEATURE_X=on\n"


def test_a_file_deleted_since_the_deploy_is_recreated(site: Site) -> None:
    manifest = site.restore_point()
    site.env.unlink()
    result = restore_config_files(site.store.path(manifest.id), manifest.id, manifest.config)
    assert result.ok, result.message
    assert site.env.read_text().endswith("FEATURE_X=off\n") and mode(site.env) == 0o640
    assert result.details["created"] == [str(site.env)]
    assert result.details["kept"] == {}


def test_only_the_mode_is_put_back_when_the_content_is_identical(site: Site) -> None:
    manifest = site.restore_point()
    site.env.chmod(0o644)
    mtime = site.env.stat().st_mtime_ns
    inode = site.env.stat().st_ino

    result = restore_config_files(site.store.path(manifest.id), manifest.id, manifest.config)

    assert result.ok, result.message
    assert mode(site.env) == 0o640
    assert (site.env.stat().st_mtime_ns, site.env.stat().st_ino) == (mtime, inode)
    assert result.details["attributes"] == [str(site.env)]
    assert kept_copies(site.env) == []


def test_a_second_rollback_keeps_both_previous_versions(site: Site) -> None:
    manifest = site.restore_point()
    site.write(site.env, "first bad edit\n", 0o640)
    assert restore_config_files(site.store.path(manifest.id), manifest.id, manifest.config).ok
    site.write(site.env, "second bad edit\n", 0o640)
    assert restore_config_files(site.store.path(manifest.id), manifest.id, manifest.config).ok
    assert sorted(p.read_text() for p in kept_copies(site.env)) == [
        "first bad edit\n", "second bad edit\n"]


def test_a_symlinked_config_file_is_restored_in_the_file_it_points_to(site: Site) -> None:
    real = site.app / "shared.env"
    site.env.rename(real)
    site.env.symlink_to("shared.env")
    manifest = site.restore_point()
    real.write_text("changed\n")

    result = restore_config_files(site.store.path(manifest.id), manifest.id, manifest.config)

    assert result.ok, result.message
    assert site.env.is_symlink() and os.readlink(site.env) == "shared.env"
    assert real.read_text().endswith("FEATURE_X=off\n")


def test_a_restore_point_without_config_files_is_a_no_op(site: Site) -> None:
    manifest = msgspec.structs.replace(site.restore_point(), config=[])
    result = restore_config_files(site.store.path(manifest.id), manifest.id, manifest.config)
    assert result.ok and "holds no config files" in result.message
