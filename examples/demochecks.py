"""What the demo verifies, as pure functions of what it gathered: the traffic's acknowledged
writes against the rows found in the live and the kept database, and where the time of a
rollback went (from the journal's decisions, runs and steps). No I/O here, so that each rule
is tested on its own (tests/unit/test_demo_checks.py) and bench/recovery.py shares them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from examples.traffic import Write


@dataclass(frozen=True, slots=True)
class Check:
    """One verified (or unmet) fact of the demo's end state."""

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"demo: {'verified' if self.ok else 'NOT MET '} {self.name}: {self.detail}"


def _ids(writes: Sequence[Write], limit: int = 8) -> str:
    shown = ", ".join(str(w.id) for w in writes[:limit])
    return shown + (f" and {len(writes) - limit} more" if len(writes) > limit else "")


def present(write: Write, rows: Mapping[str, int]) -> bool:
    """Whether ``rows`` (e-mail -> id of a database's users) holds this very write: its
    e-mail with its id (a restored sequence hands the same ids to other rows again)."""
    return rows.get(write.email) == write.id


@dataclass(frozen=True)
class RowReport:
    """Where every acknowledged write is, by when it was acknowledged:

    * ``before``: before the deploy began, hence before its restore point was taken: each must
      be in the live (restored) database;
    * ``window``: after the deploy began and before the rollback brought the app back: each
      must be in the live database or in the kept copy of the replaced one; those only in the
      kept copy are the data window the restore undid;
    * ``after``: once the rollback was done: each must be in the live database.
    """

    before: list[Write]
    before_missing: list[Write]
    window: list[Write]
    window_in_live: list[Write]
    window_kept_only: list[Write]
    window_lost: list[Write]
    after: list[Write]
    after_missing: list[Write]
    kept: str | None
    reused_ids: list[int] = field(default_factory=list)
    """Ids of kept-only rows that the live database now gives to other rows."""

    @property
    def lost(self) -> list[Write]:
        return self.before_missing + self.window_lost + self.after_missing

    def _before_check(self) -> Check:
        return Check(
            "rows written before the deploy", not self.before_missing,
            f"all {len(self.before)} present in the live database" if not self.before_missing
            else f"{len(self.before_missing)} of {len(self.before)} MISSING from the live "
                 f"database (ids {_ids(self.before_missing)})")

    def checks(self, *, restored: bool = True) -> list[Check]:
        """``restored``: False when nothing was rolled back, and every write since the deploy
        must simply be live (the ``after`` writes, then)."""
        if not restored:
            return [self._before_check(), Check(
                "rows written after the deploy", not self.after_missing,
                f"all {len(self.after)} present in the live database (nothing was restored)"
                if not self.after_missing else
                f"{len(self.after_missing)} of {len(self.after)} MISSING from the live "
                f"database (ids {_ids(self.after_missing)})")]
        found = [self._before_check()]
        if self.window_lost:
            detail = (f"{len(self.window_lost)} of {len(self.window)} acknowledged writes are "
                      f"in neither the live database nor "
                      f"{self.kept or 'a kept copy'} (ids {_ids(self.window_lost)})")
        elif self.window_kept_only:
            detail = (f"{len(self.window)} acknowledged; the {len(self.window_kept_only)} the "
                      f"restore undid are kept in {self.kept} (ids "
                      f"{_ids(self.window_kept_only)})")
            if self.window_in_live:
                detail += (f"; {len(self.window_in_live)} also in the live database (written "
                           "before the restore point was taken)")
            if self.reused_ids:
                detail += (f"; {len(self.reused_ids)} of their ids were given to new rows "
                           "since (merge them by e-mail, not by id)")
        else:
            detail = f"all {len(self.window)} present in the live database"
        found.append(Check("rows written after the deploy", not self.window_lost, detail))
        found.append(Check(
            "rows written after the rollback", not self.after_missing,
            f"all {len(self.after)} present in the live database" if not self.after_missing
            else f"{len(self.after_missing)} of {len(self.after)} MISSING from the live "
                 f"database (ids {_ids(self.after_missing)})"))
        return found


def classify_rows(writes: Sequence[Write], *, deployed_at: float, recovered_at: float,
                  live: Mapping[str, int], kept: Mapping[str, int] | None,
                  kept_name: str | None) -> RowReport:
    """``live`` and ``kept``: e-mail -> id of the traffic's users in the live database and in
    the kept copy (None when no copy was kept). ``deployed_at``: when the deploy began;
    ``recovered_at``: when the rolled back app could take writes again."""
    before = [w for w in writes if w.at < deployed_at]
    window = [w for w in writes if deployed_at <= w.at < recovered_at]
    after = [w for w in writes if w.at >= recovered_at]
    kept_rows = kept or {}
    in_live = [w for w in window if present(w, live)]
    kept_only = [w for w in window if not present(w, live) and present(w, kept_rows)]
    lost = [w for w in window if not present(w, live) and not present(w, kept_rows)]
    live_ids = set(live.values())
    return RowReport(
        before=before, before_missing=[w for w in before if not present(w, live)],
        window=window, window_in_live=in_live, window_kept_only=kept_only, window_lost=lost,
        after=after, after_missing=[w for w in after if not present(w, live)],
        kept=kept_name, reused_ids=sorted(w.id for w in kept_only if w.id in live_ids))


# -- where the time went ---------------------------------------------------------------------


class StepLike(Protocol):
    """A journal run step (daemon.journal.RunStep) as far as timings need it."""

    @property
    def kind(self) -> str: ...

    @property
    def started_at(self) -> float: ...

    @property
    def ended_at(self) -> float | None: ...

    @property
    def outcome(self) -> str | None: ...

    @property
    def details(self) -> Mapping[str, Any]: ...


def step_base(plan: Sequence[str], steps: Sequence[StepLike]) -> int:
    """Whether a run's journaled step indexes count from 0 or 1 (the journal does not say):
    its first step is the plan's first, so its index is the base."""
    indexes = [getattr(s, "idx", 0) for s in steps]
    first = min(indexes, default=0)
    if first == 1 and plan and steps and steps[indexes.index(1)].kind == plan[0]:
        return 1
    return 0


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    seconds: float | None
    """None: it did not happen (or was not journaled)."""
    note: str = ""


PHASES = ("fault -> decision", "decision -> app stopped", "restore", "code and config",
          "validation", "app healthy", "total")


def _span(steps: Sequence[StepLike], kinds: tuple[str, ...]) -> float | None:
    chosen = [s for s in steps if s.kind in kinds and s.ended_at is not None]
    if not chosen:
        return None
    return sum((s.ended_at or s.started_at) - s.started_at for s in chosen)


def recovery_phases(*, fault_at: float | None, decided_at: float | None,
                    steps: Sequence[StepLike], healthy_at: float | None) -> list[Phase]:
    """Where the time of one rollback went: the fault (a failed migration journaled, the first
    bad sample the demo saw, ...) to the decision, the decision to the app stopped, the
    restore, code and config, the validations, the app's start until it answered healthy,
    and the total from the fault to the app healthy."""
    stopped = next((s.ended_at for s in steps if s.kind == "stop_app" and s.outcome == "ok"),
                   None)
    start = [s for s in steps if s.kind == "start_app" and s.outcome == "ok"]
    restore = _span(steps, ("restore_database", "safety_backup"))
    skipped = any(s.kind == "restore_database" and s.outcome == "skipped" for s in steps)

    def diff(later: float | None, earlier: float | None) -> float | None:
        return None if later is None or earlier is None else max(0.0, later - earlier)

    return [
        Phase("fault -> decision", diff(decided_at, fault_at)),
        Phase("decision -> app stopped", diff(stopped, decided_at)),
        Phase("restore", restore, "skipped: the database was unchanged" if skipped else
              "includes the safety backup" if any(s.kind == "safety_backup" for s in steps)
              else ""),
        Phase("code and config", _span(steps, ("rollback_code", "rollback_config"))),
        Phase("validation", _span(steps, ("validate", "assess"))),
        Phase("app healthy", diff(healthy_at, start[0].started_at) if start else None,
              "from start_app to the first healthy answer"),
        Phase("total", diff(healthy_at, fault_at), "from the fault to the app healthy"),
    ]
