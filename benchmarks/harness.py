"""Measuring candidates side by side: interleaved rounds, cold and warm, one table.

A candidate is one way of doing a workload (a gilfree engine, or the tool a user would
pick instead).  Warm candidates build their state (pool, engine) once and are warmed up
by one untimed call; cold candidates build it inside every timed call, as a first call
in a fresh notebook would.  Rounds are interleaved (A B A B ...) so drift on a noisy
machine hits every candidate alike.
"""

from __future__ import annotations

import gc
import statistics
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Candidate:
    label: str
    group: str                                   # "baseline" | "gilfree" | "peer"
    run: Callable[[Any], Any]                    # one timed call, given the state
    make: Callable[[], Any] = lambda: None       # builds the state (pool, engine)
    close: Callable[[Any], None] = lambda state: None
    mode: str = "warm"                           # "warm" | "cold" | "-" (no state)
    check: Callable[[Any], bool] | None = None   # validates one result
    rounds: int | None = None                    # fewer rounds for very slow peers
    unavailable: str | None = None               # why it cannot run here
    samples: list[float] = field(default_factory=list)
    error: str | None = None
    state: Any = None

    @property
    def name(self) -> str:
        return self.label if self.mode == "-" else f"{self.label} [{self.mode}]"


def optional(module: str) -> str | None:
    """None when ``module`` imports, else the reason it cannot."""
    try:
        __import__(module)
    except Exception as exc:  # ImportError, or a broken install
        return f"{module} not importable ({type(exc).__name__}: {exc})"
    return None


def measure(candidates: list[Candidate], rounds: int) -> list[Candidate]:
    live = [c for c in candidates if c.unavailable is None]
    for c in live:
        if c.mode != "cold":
            try:
                c.state = c.make()
                result = c.run(c.state)  # warm-up, untimed
                if c.check is not None and not c.check(result):
                    c.error = "wrong result"
            except Exception as exc:
                c.error = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
    for r in range(rounds):
        for c in live:
            if c.error or (c.rounds is not None and r >= c.rounds):
                continue
            gc.collect()
            try:
                if c.mode == "cold":
                    t0 = time.perf_counter()
                    state = c.make()
                    c.run(state)
                    c.samples.append(time.perf_counter() - t0)
                    c.close(state)
                else:
                    t0 = time.perf_counter()
                    c.run(c.state)
                    c.samples.append(time.perf_counter() - t0)
            except Exception as exc:
                c.error = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
    for c in live:
        if c.mode != "cold" and c.state is not None:
            c.close(c.state)
            c.state = None
    return candidates


def summarize(c: Candidate) -> dict[str, Any]:
    s = sorted(c.samples)
    if not s:
        return {"name": c.name, "group": c.group, "error": c.error or c.unavailable}
    p95 = s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]
    return {"name": c.name, "group": c.group, "rounds": len(s), "median": statistics.median(s),
            "min": s[0], "p95": p95, "samples": s, "error": c.error}


def table(rows: list[dict[str, Any]], *, per_item: int | None = None,
          baseline: str | None = None) -> str:
    """Markdown table: time (or us/item), speedup vs the baseline, ratio to best peer."""
    ok = [r for r in rows if "median" in r and not r.get("error")]
    base = next((r["median"] for r in ok if r["name"] == baseline), None)
    peers = [r["median"] for r in ok if r["group"] == "peer"]
    best_peer = min(peers) if peers else None
    unit = "us/item" if per_item else "ms"
    scale = (1e6 / per_item) if per_item else 1e3
    out = [f"| candidate | median {unit} | min {unit} | p95 {unit} | rounds | vs loop | vs best peer |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "median" not in r or r.get("error"):
            out.append(f"| {r['name']} | - | - | - | - | - | {r.get('error') or 'not run'} |")
            continue
        speed = f"{base / r['median']:.2f}x" if base else "-"
        # > 1 means faster than the best peer
        vs_peer = f"{best_peer / r['median']:.2f}x" if best_peer else "-"
        out.append(f"| {r['name']} | {r['median'] * scale:.2f} | {r['min'] * scale:.2f} | "
                   f"{r['p95'] * scale:.2f} | {r['rounds']} | {speed} | {vs_peer} |")
    return "\n".join(out)
