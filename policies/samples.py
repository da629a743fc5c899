"""What probes hand to the core: a signal's value at a moment, or unknown."""

from __future__ import annotations

import re
from collections.abc import Mapping

Reading = Mapping[str, float | None]
"""Signal name to value as one probe measured it; ``None`` means it could not measure."""

SIGNAL_NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)+")
"""Dotted lowercase names such as ``http.error_ratio`` or ``http.api.latency_p95``."""

