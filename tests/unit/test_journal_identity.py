"""A journal is the one its state directory had: an emptied, missing, replaced or swapped one
is an error naming the path, never taken for a fresh journal or written to silently."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from daemon.journal import Journal, JournalError, StateDirError
from tests.harness.journal import previous_release_journal


def make(state: Path) -> Journal:
    journal = Journal.in_state_dir(state)
    journal.add_event(1.0, {"type": "pause", "by": "ops", "reason": ""})
    return journal


def test_a_new_journal_records_its_id_beside_it(tmp_path: Path) -> None:
    journal = make(tmp_path / "state")
    journal.close()
    marker = tmp_path / "state" / "journal.id"
    assert marker.read_text().strip() == journal.id and len(journal.id) == 32
    again = Journal.in_state_dir(tmp_path / "state")
    assert again.id == journal.id and again.last_event_id() == 1
    again.close()


def test_an_emptied_journal_is_not_taken_for_a_fresh_one(tmp_path: Path) -> None:
    make(tmp_path / "state").close()
    path = tmp_path / "state" / "journal.sqlite3"
    path.write_bytes(b"")
    with pytest.raises(JournalError) as refused:
        Journal(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: the journal is empty (0 bytes)") and "\n" not in message
    assert "journal.id" in message and path.stat().st_size == 0

    path.unlink()
    with pytest.raises(JournalError, match="the journal is missing"):
        Journal(path)
    assert not path.exists()


def test_an_incidents_directory_is_history_too(tmp_path: Path) -> None:
    (tmp_path / "state" / "incidents" / "1").mkdir(parents=True)
    with pytest.raises(JournalError, match="incidents exists"):
        Journal.in_state_dir(tmp_path / "state")


def test_moving_the_history_aside_starts_afresh(tmp_path: Path) -> None:
    make(tmp_path / "state").close()
    (tmp_path / "state" / "journal.sqlite3").write_bytes(b"")
    (tmp_path / "state" / "journal.id").rename(tmp_path / "journal.id.old")
    journal = Journal.in_state_dir(tmp_path / "state")
    assert journal.last_event_id() == 0
    journal.close()


def test_another_journal_in_its_place_is_refused(tmp_path: Path) -> None:
    make(tmp_path / "state").close()
    make(tmp_path / "other").close()
    path = tmp_path / "state" / "journal.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.copy(tmp_path / "other" / "journal.sqlite3", path)
    where = re.escape(str(path))
    with pytest.raises(JournalError, match=f"^{where}: not the journal of this state directory"):
        Journal(path)


def test_a_previous_release_journal_gets_its_marker_on_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    previous_release_journal(path)
    journal = Journal(path)
    journal.close()
    assert (tmp_path / "journal.id").read_text().strip() == journal.id


def test_a_journal_replaced_while_open_refuses_reads_and_writes(tmp_path: Path) -> None:
    journal = make(tmp_path / "state")
    make(tmp_path / "other").close()
    journal.check()
    where = re.escape(str(journal.path))
    os.replace(tmp_path / "other" / "journal.sqlite3", journal.path)
    for attempt in (journal.check, journal.last_event_id,
                    lambda: journal.add_event(2.0, {"type": "resume", "by": "ops"})):
        with pytest.raises(JournalError, match=f"^{where}: the journal file was replaced"):
            attempt()
    journal.path.unlink()
    with pytest.raises(JournalError, match=f"^{where}: the journal rollbackd opened is gone"):
        journal.add_event(2.0, {"type": "resume", "by": "ops"})
    journal.close()


def test_a_journal_copied_over_the_open_one_is_refused(tmp_path: Path) -> None:
    journal = make(tmp_path / "state")
    # Same file, another journal's id (as when another journal is copied over it in place).
    other = sqlite3.connect(journal.path)
    other.execute("UPDATE journal_meta SET value = 'f' || value WHERE key = 'id'")
    other.commit()
    other.close()
    with pytest.raises(JournalError, match="the journal's id changed"):
        journal.add_event(2.0, {"type": "resume", "by": "ops"})
    with pytest.raises(JournalError, match="the journal's id changed"):
        journal.check()
    journal.close()


def test_a_state_dir_that_is_a_file_is_a_state_dir_error(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    with pytest.raises(StateDirError, match="not a directory"):
        Journal.in_state_dir(tmp_path / "state")
