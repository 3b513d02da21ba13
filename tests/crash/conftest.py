"""The failure matrix runs each case in its own interpreter, under a timeout: a case that
hangs fails instead of hanging the suite, and a crash cannot take pytest down with it."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap

import pytest

from crash_helpers import results

#: What every case script starts with: the engine under test and a JSON reporter.
PRELUDE = """
import functools, json, os, signal, sys, time
from gilfree import Pipeline, node, stateful
from gilfree.engines import ProcessEngine
ProcessEngine = functools.partial(ProcessEngine, start_method=START_METHOD)

def report(**values):
    print("RESULT " + json.dumps(values), flush=True)
"""


def _start(code: str, start_method: str) -> subprocess.Popen:
    # A script file, as a user would run: tracebacks then show the source lines.
    with tempfile.NamedTemporaryFile("w", suffix="_case.py", delete=False) as f:
        f.write(PRELUDE.replace("START_METHOD", repr(start_method)) + textwrap.dedent(code))
    proc = subprocess.Popen([sys.executable, f.name], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    proc.script = f.name  # removed by the fixture
    return proc


@pytest.fixture(params=["forkserver", "spawn"])
def start_method(request):
    """Every case runs with both ways of starting workers."""
    return request.param


@pytest.fixture
def run_case(start_method):
    """run_case(code, timeout=60) -> (returncode, results dict, stderr)."""
    def run(code: str, timeout: float = 60):
        proc = _start(code, start_method)
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
def start_case(start_method):
    """start_case(code) -> Popen, for cases the test interrupts or kills."""
    procs = []

    def start(code: str) -> subprocess.Popen:
        p = _start(code, start_method)
        procs.append(p)
        return p
    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate()
        os.unlink(p.script)
