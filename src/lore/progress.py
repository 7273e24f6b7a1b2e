"""Progress where no bar can be drawn.

tqdm hides its bar when stderr is not a terminal (``disable=None``), which is right for log files
(no carriage-return noise) but leaves a long epoch silent. :class:`Heartbeat` gives such runs a
plain line every ``LORE_PROGRESS_SECONDS`` seconds (default 60) instead.
"""

from __future__ import annotations

import os
import time

from tqdm import tqdm


def progress_interval() -> float:
    text = os.environ.get("LORE_PROGRESS_SECONDS", "60")
    try:
        return max(float(text), 0.0)
    except ValueError:
        return 60.0


class Heartbeat:
    """``due()`` is true at most once per interval, and only while ``bar`` is hidden."""

    def __init__(self, bar: tqdm, interval: float | None = None):
        self.active = bool(bar.disable)
        self.interval = progress_interval() if interval is None else interval
        self.start = self.last = time.monotonic()

    def due(self) -> bool:
        if not self.active:
            return False
        now = time.monotonic()
        if now - self.last < self.interval:
            return False
        self.last = now
        return True

    def elapsed(self) -> float:
        return time.monotonic() - self.start
