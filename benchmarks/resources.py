"""CPU and memory of a process tree, sampled by a background thread during a timed call.

    sampler.start(root_pid)   # None: this process (the driver)
    ... the timed call ...
    stats = sampler.stop()    # {} when psutil is missing

cores busy = CPU seconds used by the root and its descendants (the workers) / wall
seconds: ``cpu_avg`` over the whole call, ``cpu_peak`` the busiest window of at least
``PEAK_WINDOW`` seconds (a call shorter than that has peak = average).  Memory is the
peak RSS seen: of the root (``rss_driver_mib``), of the largest single worker
(``rss_worker_mib``) and of all workers together (``rss_workers_total_mib``).

Overhead is kept off the measured code: the thread first wakes after ``PEAK_WINDOW``
(a shorter call is read once, at its end: its peak is its average anyway, and its
memory is the reading at the end), then every ``INTERVAL`` seconds,
reads one /proc file per process (psutil) and rediscovers children only every
``CHILDREN_EVERY`` wake-ups, through /proc/<pid>/task/<tid>/children rather than a scan
of every process on the machine.  The driver's own CPU comes from ``time.process_time``
(nanoseconds) rather than 10 ms clock ticks, which matters for calls of a few ms.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

INTERVAL = 0.010
CHILDREN_EVERY = 5
PEAK_WINDOW = 0.050
MIB = 1024 * 1024

try:
    import psutil
except ImportError:  # the report says so; timing still works
    psutil = None


def unavailable_reason() -> str | None:
    return None if psutil is not None else "psutil not installed: no CPU/memory columns"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _children(pid: int) -> list[int]:
    """Live descendants of ``pid``, through the kernel's per-thread children lists."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except (OSError, ValueError):
                continue
            kids = [k for k in kids if _alive(k)]
            out += kids
            todo += kids
    return out


def descendants(pid: int | None = None) -> list[int]:
    """Every process below ``pid`` (default: this one)."""
    pid = pid or os.getpid()
    if os.path.exists(f"/proc/{pid}/task"):
        return _children(pid)
    if psutil is None:
        return []
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


class Sampler:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled and psutil is not None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._stats: dict[str, Any] = {}

    def start(self, root: int | None = None, exclude: set[int] = frozenset()) -> None:
        """Sample ``root`` (default: this process) and its descendants, except the
        ``exclude`` processes (other candidates' idle workers) and theirs."""
        if not self.enabled:
            return
        self._stop.clear()
        self._stats = {}
        ready = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(root, set(exclude), ready),
                                        daemon=True, name="bench-sampler")
        self._thread.start()
        ready.wait()

    def stop(self) -> dict[str, Any]:
        if not self.enabled or self._thread is None:
            return {}
        self._stop.set()
        self._thread.join()
        self._thread = None
        return self._stats

    # -- the sampling thread ----------------------------------------------------------
    def _loop(self, root: int | None, exclude: set[int], ready: threading.Event) -> None:
        own = root is None or root == os.getpid()
        proc = psutil.Process(root or os.getpid())

        def root_cpu() -> float:
            if own:
                return time.process_time()
            t = proc.cpu_times()
            return t.user + t.system

        workers: dict[int, list] = {}  # pid -> [Process, cpu at first sight, cpu last, rss peak]

        def discover(first: bool) -> None:
            for pid in descendants(proc.pid):
                if pid in workers or pid in exclude:
                    continue
                try:
                    p = psutil.Process(pid)
                    t = p.cpu_times()
                    cpu = t.user + t.system
                except psutil.Error:
                    continue
                # A worker alive at the start counts from there; one born during the
                # call spent all its CPU in it.
                workers[pid] = [p, cpu if first else 0.0, cpu, 0]

        t0 = time.perf_counter()
        c0 = root_cpu()
        discover(True)
        ready.set()
        rss_driver = rss_total = 0
        history: list[tuple[float, float]] = []
        n = 0
        while True:
            # The first reading waits PEAK_WINDOW: a call shorter than that is read once,
            # when it ends, so this thread never takes the GIL in the middle of it (it
            # did, and W1's 200 GIL hand-offs in ~12 ms were measured ~0.4 ms slower).
            stopping = self._stop.wait(PEAK_WINDOW if n == 0 else INTERVAL)
            n += 1
            if n % CHILDREN_EVERY == 0 or stopping:
                discover(False)
            now = time.perf_counter()
            try:
                rss_driver = max(rss_driver, proc.memory_info().rss)
                cpu = root_cpu() - c0
            except psutil.Error:
                cpu = history[-1][1] if history else 0.0
            total = 0
            for w in workers.values():
                try:
                    t = w[0].cpu_times()
                    w[2] = t.user + t.system
                    rss = w[0].memory_info().rss
                except psutil.Error:
                    continue  # exited: its last reading stands
                w[3] = max(w[3], rss)
                total += rss
            rss_total = max(rss_total, total)
            cpu += sum(w[2] - w[1] for w in workers.values())
            history.append((now - t0, cpu))
            if stopping:
                break
        wall = max(history[-1][0], 1e-9)
        avg = history[-1][1] / wall
        peak = avg
        if wall > PEAK_WINDOW:
            j = 0
            pts = [(0.0, 0.0)] + history
            for i in range(1, len(pts)):
                while pts[i][0] - pts[j + 1][0] >= PEAK_WINDOW:
                    j += 1
                dt = pts[i][0] - pts[j][0]
                if dt >= PEAK_WINDOW:
                    peak = max(peak, (pts[i][1] - pts[j][1]) / dt)
        live = [w for w in workers.values() if w[3]]
        self._stats = {
            "cpu_avg": round(avg, 3), "cpu_peak": round(peak, 3),
            "rss_driver_mib": round(rss_driver / MIB, 1),
            "workers": len(live),
            "rss_worker_mib": round(max((w[3] for w in live), default=0) / MIB, 1),
            "rss_workers_total_mib": round(rss_total / MIB, 1),
        }
