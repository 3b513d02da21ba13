"""The crash matrix: one module per fault, each case parametrized over the engines it
applies to (``@pytest.mark.parametrize("engine_name", ...)``).

    fault                                 module                        engines
    node raises                           test_node_raises              all
    node hangs past timeout               test_timeout                  Thread Async Process
    worker process dies                   test_worker_death             Process Dask
    failing @stateful constructor         test_stateful_constructor     all
    unpicklable input/output/node/error   test_unpicklable              Process Dask
    Ctrl-C mid-map                        test_ctrl_c                   all
    exit with an open engine              test_exit_open_engine         all
    shutdown during a map                 test_shutdown_during_map      all
    a map inside a node, same engine      test_nested_map               all (+ timeout: Thread Async)
    two threads map on one engine         test_concurrent_maps          all
    ProcessEngine's own (initializer...)  test_process_faults           Process

"all" is Seq, Thread, Async, Process and Dask (skipped without dask.distributed), plus
"thread-mixed" and "process-mixed" (nodes spread over executors: maps of several stages);
ProcessEngine runs with both start methods where the cases predate this table.

Each case runs in its own interpreter under a timeout: a case that hangs fails instead of
hanging the suite, and a crash cannot take pytest down with it.  The case script starts
with PRELUDE, which gives it ``make_engine(**options)`` for the engine under test, a
JSON reporter and a process-tree reader.  The case's own code runs under
``if __name__ == "__main__":``, as a user's script must for Dask: its LocalCluster starts
worker processes that import the main module.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap

import pytest

from crash_helpers import results

PRELUDE = """
import functools, json, os, signal, sys, threading, time
from gilfree import Pipeline, node, stateful
from gilfree.errors import ExecutionError, SerializationError

ENGINE = ENGINE_NAME
TESTS_DIR = TESTS_DIR_PATH
#: Workers that run items in parallel (the @stateful build bound: once per worker).
WORKERS = 1 if ENGINE in ("seq", "thread", "async") else 2
#: "-mixed" engines spread every pipeline's top-level nodes over executors in turn
#: (tests/mixed_engines.py): the same cases as maps of several stages.
MIXED = {"thread-mixed": "ThreadEngine", "process-mixed": "ProcessEngine"}
if ENGINE.startswith("process"):
    from gilfree.engines import ProcessEngine
    ProcessEngine = functools.partial(
        ProcessEngine, start_method="spawn" if ENGINE == "process-spawn" else "forkserver")


def make_engine(**options):
    # Imported here: one engine's import error fails only its own cases.
    from gilfree import engines
    if ENGINE == "seq":
        return engines.SeqEngine(**options)
    if ENGINE == "thread":
        return engines.ThreadEngine(**options)
    if ENGINE == "async":
        return engines.AsyncEngine(**options)
    if ENGINE.startswith("process"):
        return ProcessEngine(**{"workers": 2, **options})
    if ENGINE == "dask":
        return engines.DaskEngine(**{"n_workers": 2, "threads_per_worker": 1, **options})
    if ENGINE in MIXED:
        sys.path.insert(0, TESTS_DIR)
        from mixed_engines import mixed
        if MIXED[ENGINE] == "ProcessEngine":
            options = {"workers": 2, **options}
        return mixed(getattr(engines, MIXED[ENGINE]))(**options)
    raise ValueError(ENGINE)


def report(**values):
    print("RESULT " + json.dumps(values), flush=True)


def descendants(pid=None):
    \"\"\"Every live process below ``pid`` (this one by default), grandchildren included.\"\"\"
    out, todo = set(), [pid or os.getpid()]
    while todo:
        p = todo.pop()
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = {int(c) for c in f.read().split()} - out
                    out |= kids
                    todo.extend(kids)
        except OSError:
            pass
    return sorted(out)
"""


def _start(code: str, engine_name: str, env: dict | None = None) -> subprocess.Popen:
    # A script file, as a user would run: tracebacks then show the source lines.
    body = textwrap.indent(textwrap.dedent(code), "    ")
    with tempfile.NamedTemporaryFile("w", suffix="_case.py", delete=False) as f:
        f.write(PRELUDE.replace("ENGINE_NAME", repr(engine_name))
                .replace("TESTS_DIR_PATH", repr(os.path.dirname(os.path.dirname(
                    os.path.abspath(__file__)))))
                + '\nif __name__ == "__main__":\n' + body + "\n")
    proc = subprocess.Popen([sys.executable, f.name], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    proc.script = f.name  # removed by the fixture
    return proc


@pytest.fixture
def run_case(engine_name):
    """run_case(code, timeout=60, env=None) -> (returncode, results dict, stderr)."""
    def run(code: str, timeout: float = 60, env: dict | None = None):
        proc = _start(code, engine_name, env)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            pytest.fail(f"case hung (> {timeout} s)\nstdout:\n{stdout}\nstderr:\n{stderr}")
        finally:
            os.unlink(proc.script)
        return proc.returncode, results(stdout), stderr
    return run


@pytest.fixture
def start_case(engine_name):
    """start_case(code, env=None) -> Popen, for cases the test interrupts or kills."""
    procs = []

    def start(code: str, env: dict | None = None) -> subprocess.Popen:
        p = _start(code, engine_name, env)
        procs.append(p)
        return p
    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate()
        os.unlink(p.script)
