"""A bounded window of recent samples per signal, read by the decision engine."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

from policies.samples import Sample


class SignalWindows:
    """Keeps, per signal, the samples of the last ``max_age`` seconds (at most ``max_points``).

    Unknown values are kept too: the engine needs to know since when a signal is blind.
    """

    def __init__(self, max_age: float, max_points: int = 10_000) -> None:
        if max_age <= 0 or max_points <= 0:
            raise ValueError("max_age and max_points must be positive")
        self.max_age = max_age
        self.max_points = max_points
        self._windows: dict[str, deque[Sample]] = {}

    def add(self, samples: Iterable[Sample]) -> None:
        for sample in samples:
            window = self._windows.get(sample.signal)
            if window is None:
                window = self._windows[sample.signal] = deque(maxlen=self.max_points)
            if window and sample.t < window[-1].t:
                raise ValueError(
                    f"sample for {sample.signal} at t={sample.t} is older than the last one"
                )
            window.append(sample)
            self._expire(window, sample.t)

    def _expire(self, window: deque[Sample], now: float) -> None:
        horizon = now - self.max_age
        while window and window[0].t < horizon:
            window.popleft()

    def latest(self, signal: str) -> Sample | None:
        window = self._windows.get(signal)
        return window[-1] if window else None

    def since(self, signal: str, t: float) -> list[Sample]:
        """Samples of ``signal`` taken at or after ``t``, oldest first."""
        window = self._windows.get(signal)
        if not window:
            return []
        return [s for s in window if s.t >= t]

    def signals(self) -> Iterator[str]:
        return iter(sorted(self._windows))

    def __len__(self) -> int:
        return sum(len(w) for w in self._windows.values())
