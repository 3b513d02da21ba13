"""Candidates shared by several workloads: gilfree engines cold and warm, thread pools."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from harness import Candidate, optional


def engine_pair(name: str, make: Callable[[], Any], call: Callable[[Any], Any],
                check: Callable[[Any], bool] | None = None, cold: bool = True) -> list[Candidate]:
    """A gilfree engine, warm (reused) and cold (fresh engine inside the timed call)."""
    out = [Candidate(name, "gilfree", call, make=make, close=lambda e: e.shutdown(),
                     mode="warm", check=check)]
    if cold:
        out.append(Candidate(name, "gilfree", call, make=make, close=lambda e: e.shutdown(),
                             mode="cold", check=check))
    return out


def thread_pool_pair(workers: int, call: Callable[[ThreadPoolExecutor], Any],
                     check: Callable[[Any], bool] | None = None) -> list[Candidate]:
    label = f"ThreadPoolExecutor({workers})"
    make = lambda: ThreadPoolExecutor(workers)  # noqa: E731
    close = lambda ex: ex.shutdown()  # noqa: E731
    return [Candidate(label, "peer", call, make=make, close=close, mode="warm", check=check),
            Candidate(label, "peer", call, make=make, close=close, mode="cold", check=check)]


def dask_threads(call: Callable[[], Any], rounds: int | None = None,
                 check: Callable[[Any], bool] | None = None) -> Candidate:
    return Candidate("dask (threaded scheduler)", "peer", lambda _: call(), mode="-",
                     rounds=rounds, check=check, unavailable=optional("dask"))
