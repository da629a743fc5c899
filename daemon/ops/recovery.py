"""What a killed restore left behind, found and put right at `rollbackd run` start-up, and
shown (without changing anything) by `status`.

An in-place restore killed midway can leave the database refusing connections and restore
sessions lingering; a swap killed between its renames can leave no live database. Both are
recovered here in that order (the in-place recovery lets connections in, which the swap's
inspection then reads).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from daemon.config import Config
from daemon.db.restore import (
    InterruptedRestore,
    RestoreError,
    RestoreOptions,
    SwapRecovery,
    interrupted_in_place,
    recover_interrupted_in_place,
)
from daemon.locks import LockError
from daemon.ops.backups import swap_recovery
from daemon.ops.common import OpsError


@dataclass(frozen=True, slots=True)
class Recovery:
    """What was found (and, at start-up, done) about interrupted restores."""

    in_place: InterruptedRestore | None = None
    swap: SwapRecovery | None = None
    problems: list[str] = field(default_factory=list)
    """Why part of it could not be looked at (the server down, a rollback holding the lock)."""

    @property
    def found(self) -> bool:
        return self.in_place is not None or (self.swap is not None
                                             and self.swap.state != "none")

    @property
    def needs_operator(self) -> bool:
        return self.swap is not None and self.swap.needs_operator

    def describe(self) -> list[str]:
        lines = [] if self.in_place is None else [self.in_place.describe()]
        if self.swap is not None and self.swap.state != "none":
            lines += self.swap.describe()
        return lines + [f"could not check: {p}" for p in self.problems]

    def as_json(self) -> dict[str, Any]:
        return {"in_place": None if self.in_place is None else self.in_place.as_json(),
                "swap": None if self.swap is None else self.swap.as_json(),
                "problems": self.problems}


def recover_interrupted_restores(config: Config) -> Recovery:
    """Put right what killed restores left (under the rollback lock); for start-up."""
    return _recovery(config, repair=True)


def inspect_interrupted_restores(config: Config) -> Recovery:
    """The same, changing nothing and taking no lock; for ``status``."""
    return _recovery(config, repair=False)


def _recovery(config: Config, *, repair: bool) -> Recovery:
    if config.database is None:
        return Recovery()
    problems: list[str] = []
    in_place: InterruptedRestore | None = None
    try:
        in_place = (recover_interrupted_in_place(RestoreOptions.from_config(config)) if repair
                    else interrupted_in_place(config.daemon.state_dir))
    except (RestoreError, LockError) as exc:
        problems.append(f"interrupted in-place restores: {exc}")
    swap: SwapRecovery | None = None
    try:
        swap = swap_recovery(config, repair=repair)
    except OpsError as exc:
        problems.append(f"interrupted swaps: {exc}")
    return Recovery(in_place, swap, problems)
