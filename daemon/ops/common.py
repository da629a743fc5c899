"""What every operation opens: the journal, the backup store, the database settings."""

from __future__ import annotations

from daemon.config import Config, DatabaseSettings
from daemon.db.backups import BackupStore
from daemon.journal import Journal, JournalError


class OpsError(Exception):
    """An operation that cannot be carried out; ``str()`` is the one line the operator reads."""


FLEET_BY_HAND = ("this host is in fleet {fleet}: a rollback by hand changes the database the "
                 "fleet shares, and the other hosts do not follow it (their code stays as it "
                 "is)")
"""Why a rollback or a restore by hand on a host of a fleet is refused without
--without-fleet."""


def refused_in_fleet(fleet: str) -> OpsError:
    """A rollback or a restore by hand that would change ``fleet``'s shared database."""
    return OpsError(f"not executed: {FLEET_BY_HAND.format(fleet=fleet)}; to roll the fleet "
                    "back, decide on this host's incident (rollbackd decide N rollback: the "
                    "daemons roll back every host, the database once), or pass "
                    "--without-fleet to act from this host alone")


def open_journal(config: Config) -> Journal:
    try:
        return Journal.in_state_dir(config.daemon.state_dir)
    except JournalError as exc:
        raise OpsError(str(exc)) from None


def open_store(config: Config) -> BackupStore:
    db = config.database
    return BackupStore(config.backups,
                       connect_timeout=db.connect_timeout if db is not None else 5.0)


def database(config: Config) -> DatabaseSettings:
    if config.database is None:
        raise OpsError("the config has no [database] section (needed for backups)")
    return config.database
