"""Counts how many calls run at once, for the tests of pools and engines: ``with peak:``
around a call's work, then ``peak.most``."""

from __future__ import annotations

import threading


class Peak:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.most = 0

    def __enter__(self) -> "Peak":
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.running -= 1
