"""Waiting for a condition in tests: polled, with a deadline, never a fixed sleep."""

from __future__ import annotations

import time


def wait_until(predicate, timeout: float = 10.0) -> bool:
    """Wait for a condition (polled) with a deadline; no fixed sleeps as synchronisation."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()
