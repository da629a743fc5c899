"""What every side effect on the app host returns: one line, the output, structured facts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class StepResult:
    """The outcome of one side effect (stop or start the app, switch the code, put config
    files back).

    ``message`` is one line an operator can act on; ``output`` the last lines of what the
    commands involved printed (empty when none ran); ``details`` structured facts for the
    journal and the incident report (e.g. the previous commit, the files changed).
    """

    ok: bool
    message: str
    output: str = ""
    duration: float = 0.0
    details: Mapping[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "message": self.message, "output": self.output,
                "duration": round(self.duration, 3), "details": dict(self.details)}
