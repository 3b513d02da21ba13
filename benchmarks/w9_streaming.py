"""W9, streaming: 1,000,000 items from a generator through an I/O stage (``time.sleep``
of 2 ms on the driver's threads) and a CPU stage (~11 us of pure Python in worker
processes), results consumed as they come.

Rows:

- ``ThreadEngine(), imap over a generator``: ``pipeline.imap({"x": generator}, ...)``,
  fetch hinted ``executor="thread"``, crunch hinted ``executor="process"``.
- ``ThreadEngine(), map on a list``: the same pipeline and engine; the generator is
  materialised with ``list()`` first (inside the timed call: what a user with a
  generator pays to use ``map``), then ``map`` returns every result at once.
- the hand-written peer: a feeder thread submits the fetches to a
  ``ThreadPoolExecutor(256)`` (ThreadEngine's default thread count) in input order and
  hands their futures through a bounded ``queue.Queue``; ``multiprocessing.Pool.imap``
  (chunked) runs the CPU stage over them; it streams the same generator.

Every row consumes its results the same way (counts them, checks each one's position,
sums them; the sum is checked against a closed form).

Measuring.  Each timed call runs in a fresh interpreter (``child``), started untimed
before the call: it imports gilfree, starts the engine (or the peer's pools) and warms
it with a 2,000-item run, then reads its RSS (the *baseline*), resets the kernel's peak
RSS mark (``/proc/self/clear_refs``), and on the word "go" runs and times the call; the
peak is then ``VmHWM``, the kernel's exact high-water mark of that process (the driver:
the iterator, the I/O threads, the scheduler), workers not included (the table's worker
column has them, sampled).  A fresh interpreter per call keeps one row's memory (a
million-result list freed but kept by the allocator) out of the next row's figures; the
harness samples the child as the row's "driver".  Throughput = items / the call's wall
time.  Each row's note gives the throughput and the peak RSS above the baseline.

Bars (issue 16): the imap row's peak driver RSS <= 150 MiB above its baseline, and its
throughput within 1.2x of the map-on-a-list row (>= 1/1.2 of it).

Sizes: 1,000,000 items in full and ``--quick`` runs; a full run gives each row 3 rounds,
``--quick`` one (one call, measured on the shared 2-core VM: map on a list 20-32 s, the
peer 37-39 s, imap at 6069d17 58-76 s, plus a few seconds' untimed start per call).
``--tiny`` (the smoke test) shrinks the input to 20,000 items (``common.size``).
"""

from __future__ import annotations

import gc
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from common import cores, size
from harness import Candidate, Timed

from gilfree import Pipeline, node

ID, TITLE = "W9", "streaming: imap over 1,000,000 generated items, I/O 2 ms -> CPU ~11 us"
ITEMS = 1_000_000
#: (id, title, candidates function, items for per-item units or None, baseline name)
WORKLOADS = [("W9", TITLE, "candidates", ITEMS, None)]
HERE = Path(__file__).resolve().parent

IO_S = 0.002            # the I/O stage: a 2 ms blocking call (releases the GIL)
CRUNCH_ITERATIONS = 300  # the CPU stage: ~11 us of pure Python on the development VM
SCALE = 1000            # a result is x * SCALE + (crunch % SCALE): its position shows
IO_THREADS = 256        # the peer's I/O threads: ThreadEngine's default max_workers
PEER_QUEUE = 1024       # the peer's bound on items fetched or fetching ahead of the CPU
PEER_CHUNK = 256        # the peer's Pool.imap chunksize
WARM_ITEMS = 2000       # the untimed warm-up run in each child
ROUNDS = 3              # per row in a full run (~20 s each)
START_TIMEOUT_S = 120.0  # a child that is not ready by then has failed
RUN_TIMEOUT_S = 900.0    # nor one whose call takes longer (a hang fails, not blocks)
BAR_RSS_MIB, BAR_RATIO = 150, 1.2


# -- the workload's functions --------------------------------------------------------
def generate(n: int) -> Iterator[int]:
    """The input: a generator of unknown length (as a file or a queue would be)."""
    for i in range(n):
        yield i


def fetch_value(x: int) -> int:
    time.sleep(IO_S)  # a network call: releases the GIL
    return x


def crunch(v: int) -> int:
    s = 0
    for i in range(CRUNCH_ITERATIONS):  # pure Python: holds the GIL
        s += (i * 31 + v) % 7
    return v * SCALE + s % SCALE


fetch = node(output_name="v", executor="thread")(fetch_value)
work = node(output_name="y", executor="process")(crunch)


def pipeline() -> Pipeline:
    return Pipeline([fetch, work])


def expected_total(n: int) -> int:
    """The sum of ``crunch(x)`` for x < n in closed form: ``(i * 31 + v) % 7`` cycles with
    period 7 in i (and depends on v only modulo 7), so crunch's loop sum is a function of
    ``v % 7``, computed once per residue."""
    per_residue = [crunch(r) - r * SCALE for r in range(7)]
    return SCALE * n * (n - 1) // 2 + sum(per_residue[r] * len(range(r, n, 7))
                                          for r in range(7))


def consume(results: Any, key: str | None = "y") -> tuple[int, int, int]:
    """What every row does with its results as they come: count, check the position,
    sum.  Returns (count, misplaced, total)."""
    n = misplaced = total = 0
    for r in results:
        y = r[key] if key is not None else r
        if y // SCALE != n:
            misplaced += 1
        total += y
        n += 1
    return n, misplaced, total


def peer_stream(xs: Any, io: Any, pool: Any) -> Iterator[int]:
    """The hand-written peer: fetches in a thread pool, crunch in a process pool,
    streaming.  A feeder thread submits each fetch in input order and puts its future
    on a bounded queue (backpressure: at most ``PEER_QUEUE`` items fetched or fetching
    ahead of the CPU stage); ``Pool.imap`` reads their results in order, in chunks."""
    q: queue.Queue = queue.Queue(PEER_QUEUE)

    def feed():
        for x in xs:
            q.put(io.submit(fetch_value, x))
        q.put(None)

    threading.Thread(target=feed, daemon=True).start()

    def fetched():
        while (f := q.get()) is not None:
            yield f.result()

    yield from pool.imap(crunch, fetched(), chunksize=PEER_CHUNK)


# -- the rows, each in a fresh interpreter -----------------------------------------------
def _gilfree_row(n: int, streaming: bool) -> tuple[Callable, Callable]:
    from gilfree.engines import ThreadEngine

    engine, pipe = ThreadEngine(), pipeline()
    if streaming:
        def run():
            return consume(pipe.imap({"x": generate(n)}, map_over="x", output_name="y",
                                     engine=engine))
        warm = pipe.imap({"x": generate(WARM_ITEMS)}, map_over="x", output_name="y",
                         engine=engine)
    else:
        def run():
            xs = list(generate(n))  # materialised first
            return consume(pipe.map({"x": xs}, map_over="x", output_name="y",
                                    engine=engine))
        warm = pipe.map({"x": list(generate(WARM_ITEMS))}, map_over="x", output_name="y",
                        engine=engine)
    consume(warm)  # starts the threads and the worker processes
    return run, engine.shutdown


def _peer_row(n: int) -> tuple[Callable, Callable]:
    import multiprocessing
    from concurrent.futures import ThreadPoolExecutor

    pool = multiprocessing.Pool(cores())  # first: it forks, before any thread exists
    io = ThreadPoolExecutor(IO_THREADS)
    consume(peer_stream(generate(WARM_ITEMS), io, pool), key=None)

    def close():
        io.shutdown()
        pool.terminate()
        pool.join()

    return (lambda: consume(peer_stream(generate(n), io, pool), key=None)), close


ROWS = {"imap": lambda n: _gilfree_row(n, True),
        "map": lambda n: _gilfree_row(n, False),
        "peer": _peer_row}


def _status(field: str) -> int:
    """A ``/proc/self/status`` figure in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(argv: list[str]) -> int:
    """One timed call in this fresh interpreter: ``child(["imap", "1000000"])``.  Speaks
    on stdout in lines starting with "W9 " (anything else there is not ours)."""
    row, n = argv[0], int(argv[1])
    run, close = ROWS[row](n)
    gc.collect()
    base = _status("VmRSS")
    try:  # the peak so far belongs to the start-up: the kernel's mark starts again here
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    print("W9 ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        close()
        return 1
    t0 = time.perf_counter()
    count, misplaced, total = run()
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM")
    print("W9 " + json.dumps({"seconds": seconds, "count": count, "misplaced": misplaced,
                              "total": total, "base": base, "peak": peak,
                              "reset": reset}), flush=True)
    close()
    return 0


class Child:
    """The parent's side of one fresh interpreter: started (untimed) by ``start``, told
    to go by ``go``, killed by ``close`` if still alive.  Every wait is bounded."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.lines: queue.Queue = queue.Queue()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, row: str, n: int) -> None:
        self.close()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH"))
                                            if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys, w9_streaming as w; "
             "sys.exit(w.child(sys.argv[1:]))", row, str(n)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=HERE)
        self.lines = queue.Queue()
        out, lines = self.proc.stdout, self.lines

        def read():
            for line in out:
                if line.startswith("W9 "):
                    lines.put(line[3:].strip())
            lines.put(None)  # the child's stdout closed: it exited

        threading.Thread(target=read, daemon=True, name="w9-child-reader").start()
        self._expect("ready", START_TIMEOUT_S, f"W9 {row} child did not start")

    def _expect(self, what: str | None, timeout: float, why: str) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.close()
            raise TimeoutError(f"{why} within {timeout:.0f} s (killed)") from None
        if line is None or (what is not None and line != what):
            code = self.proc.wait(timeout=30) if self.proc is not None else None
            raise RuntimeError(f"{why}: the child exited (code {code}; its stderr is in "
                               f"the log above)" if line is None else f"{why}: {line!r}")
        return line

    def go(self) -> dict:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        out = json.loads(self._expect(None, RUN_TIMEOUT_S, "W9 child did not report"))
        self.proc.wait(timeout=START_TIMEOUT_S)
        self.proc = None
        return out

    def close(self, _: Any = None) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None


MIB = 1024 * 1024


def _note(calls: list[dict], n: int, extra: str = "") -> str:
    rates = [n / c["seconds"] for c in calls]
    growth = max((c["peak"] - c["base"]) / MIB for c in calls)
    base = max(c["base"] / MIB for c in calls)
    how = "VmHWM after a reset" if all(c["reset"] for c in calls) else \
        "VmHWM since start (the reset was refused: an upper bound)"
    return (f"throughput {statistics.median(rates):,.0f} items/s (median of "
            f"{len(calls)}); peak driver RSS {growth:.0f} MiB above its baseline of "
            f"{base:.0f} MiB (max over calls; {how}){extra}")


def candidates(quick: bool) -> list[Candidate]:
    n = size(ITEMS)
    total = expected_total(n)
    calls: dict[str, list[dict]] = {"imap": [], "map": [], "peer": []}
    labels = {"imap": "ThreadEngine(), imap over a generator",
              "map": "ThreadEngine(), map on a list",
              "peer": f"hand-written: queue.Queue({PEER_QUEUE}) + TPE({IO_THREADS}) fetch "
                      f"-> Pool({cores()}).imap(chunksize={PEER_CHUNK}) crunch"}
    groups = {"imap": "gilfree", "map": "gilfree", "peer": "peer"}
    rows: dict[str, Candidate] = {}

    def refresh_notes() -> None:
        for row, c in rows.items():
            if not calls[row]:
                continue
            extra = ""
            if row == "imap" and calls["map"] and n != ITEMS:
                extra = f"; the bars apply to {ITEMS:,} items, not {n:,}"
            elif row == "imap" and calls["map"]:
                mine = statistics.median(n / x["seconds"] for x in calls["imap"])
                theirs = statistics.median(n / x["seconds"] for x in calls["map"])
                growth = max((x["peak"] - x["base"]) / MIB for x in calls["imap"])
                extra = (f"; {mine / theirs:.2f}x the map-on-a-list row's throughput "
                         f"(bar >= {1 / BAR_RATIO:.2f}x: "
                         f"{'met' if mine * BAR_RATIO >= theirs else 'missed'}); RSS bar "
                         f"<= {BAR_RSS_MIB} MiB: "
                         f"{'met' if growth <= BAR_RSS_MIB else 'missed'}")
            c.note = _note(calls[row], n, extra)

    def make_row(row: str) -> Candidate:
        def run(child: Child) -> Timed:
            got = child.go()
            calls[row].append(got)
            refresh_notes()
            ok = got["count"] == n and got["misplaced"] == 0 and got["total"] == total
            return Timed(got["seconds"], result=got, ok=ok)

        c = Candidate(labels[row], groups[row], run, make=Child, close=Child.close,
                      mode="-", warmup=lambda _: None, before=lambda ch: ch.start(row, n),
                      pid=lambda ch: ch.pid, key=not quick, rounds=ROUNDS,
                      note="each call in a fresh interpreter, started and warmed untimed")
        if row == "imap" and not hasattr(Pipeline, "imap"):
            c.unavailable = "Pipeline.imap does not exist yet (issue 16 in progress)"
        return c

    for row in ("imap", "map", "peer"):
        rows[row] = make_row(row)
    return list(rows.values())


if __name__ == "__main__":  # this workload alone: the same as run.py --only <id>
    import run

    sys.exit(run.main(["--only", ID, *sys.argv[1:]]))
