"""How the demo tells what happens: on a terminal, a live panel (rich) with the state of the
app, the traffic and rollbackd under the story's lines; otherwise plain lines, one per event,
each with the seconds since the demo began, and the state every few seconds."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from types import TracebackType
from typing import TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.text import Text

PLAIN_STATUS_EVERY = 10.0
"""Seconds between two state lines in plain output (the events are printed as they come)."""

STYLES = {"ok": "green", "bad": "red", "fail": "bold red", "step": "cyan", "note": "dim",
          "head": "bold"}


class View:
    """``event()`` for the story, ``status()`` for the state now; a context manager."""

    def __init__(self, out: TextIO | None = None, *, live: bool | None = None,
                 quiet: bool = False) -> None:
        self.out = out or sys.stdout
        self.console = Console(file=self.out, highlight=False, soft_wrap=True)
        self.live_mode = self.console.is_terminal if live is None else live
        self.quiet = quiet
        self.started = time.monotonic()
        self._live: Live | None = None
        self._status: list[str] = []
        self._status_printed = 0.0

    def __enter__(self) -> View:
        if self.live_mode and not self.quiet:
            self._live = Live(self._panel(), console=self.console, refresh_per_second=4,
                              transient=True)
            self._live.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            live.stop()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def event(self, text: str, kind: str = "") -> None:
        """One line of the story (``kind``: ok, bad, fail, step, note, head); ``quiet`` shows
        only ``fail``: the demo did not get to its end."""
        if self.quiet and kind != "fail":
            return
        if self.live_mode:
            self.console.print(Text.assemble((f"{self.elapsed:6.1f}s  ", "dim"),
                                             (text, STYLES.get(kind, ""))))
        else:
            print(f"[{self.elapsed:6.1f}s] {text}", file=self.out, flush=True)

    def line(self, text: str) -> None:
        """A line without a time (results, the report, how to reach things)."""
        if self.quiet:
            return
        if self.live_mode:
            self.console.print(Text(text))
        else:
            print(text, file=self.out, flush=True)

    def status(self, lines: Sequence[str]) -> None:
        """The state now: the live panel's content, or (plain) a few lines every so often."""
        self._status = list(lines)
        if self.quiet:
            return
        if self._live is not None:
            self._live.update(self._panel())
            return
        if not self.live_mode and time.monotonic() - self._status_printed >= PLAIN_STATUS_EVERY:
            self._status_printed = time.monotonic()
            for line in lines:
                print(f"[{self.elapsed:6.1f}s]   | {line}", file=self.out, flush=True)

    def _panel(self) -> Panel:
        body = Group(*(Text(line) for line in self._status)) if self._status else Text("...")
        return Panel(body, title="rollbackd demo", title_align="left", border_style="blue")
