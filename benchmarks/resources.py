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
memory is the reading at the end), then every ``INTERVAL`` seconds, an interval that
grows with the call (``GROWTH`` of the time so far, at most ``MAX_INTERVAL``),
reads one /proc file per process and rediscovers children only every
``CHILDREN_EVERY`` wake-ups, through /proc/<pid>/task/<tid>/children rather than a scan
of every process on the machine.  The growing interval matters for process pools on
few cores: every reading takes CPU from the workers (which the plain loop, on one core,
does not lose).  Measured on the 2-core VM, the driver's CPU during W3's ~750 ms
ProcessEngine map: 4-7 ms with no sampling; 24-60 ms sampled every 10 ms through psutil
(2-4 % of the two cores); 12-15 ms as now.  The driver's own CPU comes from
``time.process_time`` (nanoseconds) rather than 10 ms clock ticks, which matters for
calls of a few ms.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

INTERVAL = 0.010
GROWTH = 0.10
MAX_INTERVAL = 0.100
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


#: A process with more threads than this has its children found by their parent pid.
MANY_TASKS = 64


def _children(pid: int) -> list[int]:
    """Live descendants of ``pid``, through the kernel's per-thread children lists."""
    out, todo = [], [pid]
    while todo:
        kids = [k for k in _direct_children(todo.pop()) if _alive(k)]
        out += kids
        todo += kids
    return out


def _direct_children(p: int) -> list[int]:
    """The children of ``p``: one /proc file per thread of ``p`` (the children a thread
    forked). A driver with a thread pool has hundreds of threads: reading a file per
    thread, with the GIL between reads, every few wake-ups made W8's streaming row 10%
    slower (612 -> 679 ms, one --quick run each); then the parent pid of every process
    on the machine (tens, one file each) is read instead."""
    try:
        tasks = os.listdir(f"/proc/{p}/task")
    except OSError:
        return []
    if len(tasks) > MANY_TASKS:
        return _children_by_parent(p)
    kids: list[int] = []
    for tid in tasks:
        try:
            with open(f"/proc/{p}/task/{tid}/children") as f:
                kids += [int(k) for k in f.read().split()]
        except (OSError, ValueError):
            continue
    return kids


def _children_by_parent(p: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == p:
            kids.append(int(entry))
    return kids


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


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def cpu_and_rss(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, resident bytes) of ``pid``, None once it is gone: one read of
    /proc/<pid>/stat, about half what psutil's cpu_times() + memory_info() cost (two
    files each: ~135 us against ~76 us per wake-up for a driver and three children,
    measured)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        if psutil is None or os.path.exists("/proc/self/stat"):
            return None
        try:  # no /proc (not Linux): psutil
            p = psutil.Process(pid)
            t, m = p.cpu_times(), p.memory_info()
        except psutil.Error:
            return None
        return t.user + t.system, m.rss
    # fields[0] is field 3 of proc(5): utime 14, stime 15, rss 24 (pages)
    if fields[0] in (b"Z", b"X"):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK, int(fields[21]) * _PAGE


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
        root = root or os.getpid()

        def root_cpu() -> float | None:
            if own:
                return time.process_time()
            reading = cpu_and_rss(root)
            return reading and reading[0]

        workers: dict[int, list] = {}  # pid -> [cpu at first sight, cpu last, rss peak]

        history: list[list[float]] = []  # [seconds since start, CPU seconds so far]
        looked = 0.0  # when discover() last looked: a newcomer was born after it

        def discover(first: bool) -> None:
            nonlocal looked
            now = time.perf_counter() - t0
            for pid in descendants(root):
                if pid in workers or pid in exclude:
                    continue
                reading = cpu_and_rss(pid)
                if reading is None:
                    continue
                # A worker alive at the start counts from there; one born during the
                # call spent all its CPU in it, somewhere since the last look: spread
                # evenly over that stretch of history, or the window it was found in
                # shows more cores busy than the machine has.
                workers[pid] = [reading[0] if first else 0.0, reading[0], 0]
                if not first and now > looked:
                    for point in history:
                        if point[0] > looked:
                            point[1] += reading[0] * (point[0] - looked) / (now - looked)
            looked = now

        t0 = time.perf_counter()
        c0 = root_cpu() or 0.0
        discover(True)
        ready.set()
        rss_driver = rss_total = 0
        root_used, n = 0.0, 0
        while True:
            # The first reading waits PEAK_WINDOW: a call shorter than that is read once,
            # when it ends, so this thread never takes the GIL in the middle of it (it
            # did, and W1's 200 GIL hand-offs in ~12 ms were measured ~0.4 ms slower).
            wait = PEAK_WINDOW if n == 0 else min(
                MAX_INTERVAL, max(INTERVAL, GROWTH * (time.perf_counter() - t0)))
            stopping = self._stop.wait(wait)
            n += 1
            if n % CHILDREN_EVERY == 0 or stopping:
                discover(False)
            now = time.perf_counter()
            reading, cpu = cpu_and_rss(root), root_cpu()
            if reading is not None:
                rss_driver = max(rss_driver, reading[1])
            if cpu is not None:  # else the root exited: its last reading stands
                root_used = cpu - c0
            total = 0
            for pid, w in workers.items():
                reading = cpu_and_rss(pid)
                if reading is None:
                    continue  # exited: its last reading stands
                w[1], w[2] = reading[0], max(w[2], reading[1])
                total += reading[1]
            rss_total = max(rss_total, total)
            cpu = root_used + sum(w[1] - w[0] for w in workers.values())
            history.append([now - t0, cpu])
            if stopping:
                break
        wall = max(history[-1][0], 1e-9)
        avg = history[-1][1] / wall
        peak = avg
        if wall > PEAK_WINDOW:
            j = 0
            pts = [[0.0, 0.0]] + history
            for i in range(1, len(pts)):
                while pts[i][0] - pts[j + 1][0] >= PEAK_WINDOW:
                    j += 1
                dt = pts[i][0] - pts[j][0]
                if dt >= PEAK_WINDOW:
                    peak = max(peak, (pts[i][1] - pts[j][1]) / dt)
        live = [w for w in workers.values() if w[2]]
        self._stats = {
            "cpu_avg": round(avg, 3), "cpu_peak": round(peak, 3),
            "rss_driver_mib": round(rss_driver / MIB, 1),
            "workers": len(live),
            "rss_worker_mib": round(max((w[2] for w in live), default=0) / MIB, 1),
            "rss_workers_total_mib": round(rss_total / MIB, 1),
        }
