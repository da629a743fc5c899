"""``rollbackd run --record FILE``: what the decision engine is fed, written as a replay that
``rollbackd simulate`` steps through to the daemon's own decisions.

A cycle feeds the engine its samples at the cycle's time, then the events journaled since the
last cycle, each at its own time, then decides once at the cycle's time. The replay contract
decides once per distinct ``t``, after all its lines, so every line of a cycle carries the
cycle's time as ``t`` and an event's own time as ``at`` (policies/replay.py). The events the
daemon reads from the journal at start (a restart's last deploy, a pause) are fed before the
first cycle: they are written with the first cycle's ``t``, before its samples.

The samples are written as the engine uses them (``Engine.value``), as the contract asks: a
migration failure the daemon holds at 1 over the migration tool's reading is written as 1.
Where the daemon's engine and a replay's differ on what an event does to a signal (the daemon
goes back to the probe's reading when a deploy begins or a rollback restored the database; a
replay sets 0), a ``signals`` line at the event's time gives the value the daemon used. A
shadow engine fed the very lines written tells where: the contract's semantics are not
restated here.

What a recording cannot hold: the open incident and the automatic rollbacks a restarted daemon
takes back from the journal, and a reload that changes the policy or the mode (a new engine):
the recording stops there, with a log line. A write that fails is logged once and the
recording stops; the daemon goes on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, TextIO

from daemon.logs import get_logger
from policies.catalogue import EVENT_FED_PREFIX
from policies.engine import Engine
from policies.policy import Policy


class RecordError(Exception):
    """The recording cannot be opened; ``str()`` is the operator's one line."""


class Fed(Protocol):
    """What the recorder reads of the daemon's engine: the values it uses."""

    def value(self, signal: str) -> float | None: ...


def as_replayed(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A journaled event as a replay line holds it. A replay assumes a deploy without
    ``verified`` has a verified restore point; the daemon does not: say which."""
    event = dict(payload)
    if event.get("type") == "deploy" and event.get("phase") == "begin":
        event["verified"] = event.get("verified", False)
    return event


class Recorder:
    def __init__(self, handle: TextIO, path: Path, policy: Policy) -> None:
        self._handle: TextIO | None = handle
        self.path = path
        self.log = get_logger().bind(recording=str(path))
        self._shadow = Engine(policy, recorded=True)
        self._step: float | None = None
        self._pending: list[tuple[float, dict[str, Any]]] = []
        self._names: set[str] = set()

    @classmethod
    def open(cls, path: Path, policy: Policy) -> Recorder:
        """Appends to ``path``, a line at a time; RecordError when it cannot."""
        try:
            earlier = path.is_file() and path.stat().st_size > 0
            handle = path.open("a", buffering=1, encoding="utf-8")
        except OSError as exc:
            raise RecordError(f"cannot record to {path}: {exc.strerror or exc}") from None
        recorder = cls(handle, path, policy)
        if earlier:
            recorder.log.warning("appending to an earlier recording: a replay of the file runs "
                                 "one engine through both")
        return recorder

    @property
    def recording(self) -> bool:
        return self._handle is not None

    def signals(self, t: float, values: Mapping[str, float | None], engine: Fed) -> None:
        """The cycle at ``t`` observed ``values`` (the engine has them)."""
        if self._handle is None:
            return
        try:
            self._step = t
            for at, event in self._pending:
                self._write(self._line(at, {"event": event}))
                self._shadow.record(at, event)
            self._pending.clear()
            used = {n: engine.value(n) for n in values if not n.startswith(EVENT_FED_PREFIX)}
            self._names.update(used)
            self._write({"t": t, "signals": used})
            self._shadow.observe(t, used)
        except Exception as exc:  # a recording must never cost a cycle its decisions
            self._failed(exc)

    def event(self, t: float, payload: Mapping[str, Any], engine: Fed) -> None:
        """The engine recorded ``payload`` at ``t``."""
        if self._handle is None:
            return
        event = as_replayed(payload)
        if self._step is None:  # read from the journal at start, before the first cycle
            self._pending.append((t, event))
            return
        try:
            self._write(self._line(t, {"event": event}))
            self._shadow.record(t, event)
            differ = {n: engine.value(n) for n in sorted(self._names)
                      if engine.value(n) != self._shadow.value(n)}
            if differ:
                self._write(self._line(t, {"signals": differ}))
                self._shadow.observe(t, differ)
        except Exception as exc:
            self._failed(exc)

    def stop(self, why: str) -> None:
        """Stop recording, saying why; the file keeps what was written."""
        if self._handle is None:
            return
        self.log.error("recording stopped", why=why)
        self._close(quiet=True)

    def _failed(self, exc: Exception) -> None:
        self.stop(str(exc) if isinstance(exc, RecordError)
                  else f"cannot record: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        self._close(quiet=False)

    def _close(self, quiet: bool) -> None:
        """``quiet``: the recording already stopped with a log line; a close that fails the
        same way (the rest of a line that could not be written) says nothing new."""
        handle, self._handle = self._handle, None
        if handle is None:
            return
        try:
            handle.close()
        except OSError as exc:
            if not quiet:
                self.log.error("recording stopped", why=f"cannot close: {exc.strerror or exc}")

    def _line(self, at: float, body: dict[str, Any]) -> dict[str, Any]:
        assert self._step is not None
        return {"t": self._step, **({} if at == self._step else {"at": at}), **body}

    def _write(self, line: dict[str, Any]) -> None:
        assert self._handle is not None
        try:
            self._handle.write(json.dumps(line) + "\n")
        except (OSError, ValueError) as exc:
            raise RecordError(f"cannot write to {self.path}: {exc}") from None
