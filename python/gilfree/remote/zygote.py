"""The forkserver of ProcessEngine's ``start_method="forkserver"`` (started by
``_core.ProcessPool`` before any pool thread exists, once per driver).

    driver (ProcessPool)                       this process (single-threaded)
    SPAWN + two descriptors ─────────────────▶ fork; the child becomes a worker
                                                (``process_worker.main`` on fds 3 and 4)
            ◀───────────────────────────────── SPAWNED pid (or the fork's error)
            ◀───────────────────────────────── EXITED pid + wait status, per child
    end of stream ───────────────────────────▶ exit

Workers forked here start with what every worker imports already imported, once.
"""

from __future__ import annotations

import os
import signal

from .process_worker import _core_module, main


def zygote_main(argv: list[str]) -> None:
    """The forkserver: import what workers need once, then fork one per request.

    argv: ``3 <driver pid>``; fd 3 is the control socket. It stays single-threaded, so
    forking is safe: it imports nothing that starts threads (numpy's BLAS may: workers
    import such modules themselves, when a payload needs them). It reaps its children and
    reports each exit status to the driver.
    """
    import select

    ctl_fd, parent = int(argv[-2]), int(argv[-1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    c = _core_module()
    c.set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(0)
    # The point: imported once, here. A payload (a pickled plan) needs pipeline and its
    # graph, and batch for a DualNode: imported in each new worker instead, they took
    # ~1.7 ms of its start (payload loaded in 2.2 ms, now 0.5 ms). Encoding results
    # imports engines (transport leaves engines behind), and so does a module of nodes
    # that names one: 0.4-0.6 ms of a worker's first batch.
    from ..model import batch  # noqa: F401
    from .. import callbacks  # noqa: F401
    from .. import engines  # noqa: F401
    from ..run import execute  # noqa: F401
    from ..model import pipeline  # noqa: F401
    from . import transport  # noqa: F401
    # A worker imports the user's module of nodes, and each @node hashes its function's
    # source (inspect.getsource -> tokenize), whose first use compiles tokenize's regular
    # expressions on CPython 3.11 (3.12 tokenizes in C): 2-3 ms of every new worker's
    # start (W3's module: 2.2-3.8 ms to import, 0.5-0.8 ms once warmed). Warmed once
    # here, forked workers inherit them compiled.
    from ..model.node import code_hash_of

    code_hash_of(zygote_main)
    kinds = dict(c.FRAME_KINDS)
    ch = c.Channel(ctl_fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    while True:
        ready, _, _ = select.select([ctl_fd, wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
        while True:  # reap and report
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            ch.send(kinds["exited"], pid, b"", status.to_bytes(4, "little", signed=True), [])
        if ctl_fd not in ready:
            continue
        frame = ch.recv()
        if frame is None:  # the driver is gone
            os._exit(0)
        kind, _, _, _, fds = frame
        if kind != kinds["spawn"] or len(fds) != 2:
            for fd in fds:
                os.close(fd)
            continue
        try:
            pid = os.fork()
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            ch.send(kinds["spawned"], 0, b"", str(exc).encode(), [])
            continue
        if pid == 0:
            try:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.close(wake_r)
                os.close(wake_w)
                os.close(ctl_fd)
                os.dup2(fds[0], 3)
                os.dup2(fds[1], 4)
                for fd in fds:
                    if fd not in (3, 4):
                        os.close(fd)
                main(["3", "4", str(os.getppid())])
            finally:
                os._exit(1)
        for fd in fds:
            os.close(fd)
        ch.send(kinds["spawned"], pid, b"", b"", [])
