"""DaskEngine's own LocalCluster, hosted in a child process of the driver.

    driver (DaskEngine)                      host: python -m gilfree.engines._dask_host
      HostedCluster(options) ── stdin: ───▶ LocalCluster(**options): scheduler + nannies
        (options, dask config, sys.path)     here; worker processes are its children
        pickled by transport.dump_file       (read back by transport.load_file)
      ◀── stdout: {"address", "pid"} ──────   then waits for EOF on stdin
      Client(address)
      close(): stdin closed (or the driver  ─▶ cluster.close(), exit
        died: EOF all the same)

Why not in the driver: a LocalCluster's scheduler and nannies share the driver's
process, and what they keep (monitoring samples, task groups, received messages,
names from unpickling) is small objects allocated while a map's rows and results fill
CPython's memory arenas: each pins its 1 MiB arena after the map, and the driver grew by
~20 MiB per map of 1,000,000 items (issue 14).  Here they grow nobody's memory but
their own.  Ctrl-C is the driver's: the host ignores SIGINT.
"""

from __future__ import annotations

import collections
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..remote import transport


def no_message_log() -> Any:
    """Each BatchedSend (client -> scheduler, scheduler -> each worker and client) keeps
    its last distributed.admin.low-level-log-length (1000) messages under 1 MB for
    debugging: every batch's rows, long after the map.  Our cluster and client keep
    none (a caller's client keeps its settings)."""
    import dask

    return dask.config.set({"distributed.admin.low-level-log-length": 0})


def _no_message_log_plugin() -> Any:
    """A scheduler plugin: the streams to workers and clients that connect later (a
    nanny's replacement worker) keep no log either; the config is read when each stream
    is made, long after the cluster started."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    class NoMessageLog(SchedulerPlugin):
        name = "gilfree-no-message-log"

        @staticmethod
        def _quiet(stream: Any) -> None:
            log = getattr(stream, "recent_message_log", None)
            if log is not None and log.maxlen != 0:
                stream.recent_message_log = collections.deque(maxlen=0)

        def add_worker(self, scheduler: Any, worker: str) -> None:
            self._quiet(scheduler.stream_comms.get(worker))

        def add_client(self, scheduler: Any, client: str) -> None:
            self._quiet(scheduler.client_comms.get(client))

    return NoMessageLog()


class HostedCluster:
    """The driver's handle on the host process: ``scheduler_address``, ``pid``, ``close``."""

    def __init__(self, options: dict[str, Any], timeout: float):
        import dask

        import gilfree

        env = dict(os.environ)  # gilfree importable there as here (a checkout, a notebook)
        path = str(Path(gilfree.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (path, env.get("PYTHONPATH")) if p)
        # The answer comes on a pipe of its own: stdout and stderr stay the driver's, for
        # the workers' prints and logs, as with a LocalCluster in the driver.
        read_fd, write_fd = os.pipe()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gilfree.engines._dask_host", str(write_fd)],
                stdin=subprocess.PIPE, pass_fds=(write_fd,), env=env)
        finally:
            os.close(write_fd)
        self._answers = os.fdopen(read_fd, "r")
        try:
            # The driver's sys.path: workers (spawned by the host) import what the
            # driver can, e.g. a module beside the script or appended in a notebook.
            transport.dump_file((options, dask.config.config, sys.path), self.process.stdin)
            self.process.stdin.flush()
            answer = self._read_line(timeout)
        except BaseException:
            self.close(timeout=5)
            raise
        if "error" in answer:
            self.close(timeout=5)
            raise RuntimeError(f"DaskEngine could not start its LocalCluster: {answer['error']}")
        self.scheduler_address: str = answer["address"]
        self.pid: int = answer["pid"]

    def _read_line(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        out = self._answers
        while not select.select([out], [], [], 0.1)[0]:  # Ctrl-C lands within 0.1 s
            if self.process.poll() is not None:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"DaskEngine's LocalCluster did not start in {timeout} s")
        line = out.readline()
        if not line:
            raise RuntimeError("DaskEngine's LocalCluster process exited while starting "
                               f"(exit code {self.process.wait()}); its log is above")
        return json.loads(line)

    def close(self, timeout: float = 10) -> None:
        try:
            self.process.stdin.close()  # EOF: the host closes its cluster and exits
        except OSError:
            pass
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._answers.close()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the driver's map
    options, config, path = transport.load_file(sys.stdin.buffer)
    sys.path[:] = [*path, *(p for p in sys.path if p not in path)]
    import dask

    dask.config.update(dask.config.config, config, priority="new")
    try:
        from distributed import LocalCluster

        kwargs = dict(options.get("scheduler_kwargs", {}))
        kwargs["plugins"] = [*kwargs.get("plugins", ()), _no_message_log_plugin()]
        with no_message_log():
            cluster = LocalCluster(**{**options, "scheduler_kwargs": kwargs})
    except Exception as exc:
        with os.fdopen(int(sys.argv[1]), "w") as answers:
            answers.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
        sys.exit(1)
    with os.fdopen(int(sys.argv[1]), "w") as answers:
        answers.write(json.dumps({"address": cluster.scheduler_address, "pid": os.getpid()})
                      + "\n")
    sys.stdin.buffer.read()  # until the driver closes us, or dies
    cluster.close(timeout=10)


if __name__ == "__main__":
    main()
