"""Crash matrix: one thread shuts the engine down while another maps on it.  Every
engine: nothing hangs; the map either finishes all its items or raises an error that says
the engine was shut down during the map (not a bare pool error, not a hint to look for a
bad item)."""

from __future__ import annotations

import re
import textwrap

import pytest

from crash_helpers import ALL, ASYNC, THREAD, THREAD_MIXED


@pytest.mark.parametrize("engine_name", ALL)
def test_shutdown_during_a_map(run_case, engine_name, tmp_path):
    rc, res, err = run_case(f"""
        STARTED = {str(tmp_path / "started")!r}

        @node(output_name="y")
        def slow(x):
            with open(STARTED, "a") as f:
                f.write("1\\n")
            time.sleep(0.1)
            return x

        engine = make_engine()
        p = Pipeline([slow])
        p.map({{"x": [0]}}, map_over="x", engine=engine)  # started, code shipped
        os.unlink(STARTED)
        result = {{}}

        def mapper():
            try:
                result["out"] = [r["y"] for r in p.map({{"x": list(range(20))}}, map_over="x",
                                                       engine=engine)]
            except BaseException as exc:
                result["error"] = f"{{type(exc).__name__}}: {{exc}}"

        t = threading.Thread(target=mapper)
        t.start()
        deadline = time.monotonic() + 30
        while not os.path.exists(STARTED) and time.monotonic() < deadline:
            time.sleep(0.01)
        engine.shutdown()
        t.join(60)
        report(hung=t.is_alive(), **result)
    """, timeout=90)
    assert rc == 0, err
    assert not res["hung"], res
    if "out" in res:
        assert res["out"] == list(range(20)), res
    else:
        msg = res["error"]
        assert re.search(r"shut ?down", msg, re.I) and "during" in msg, msg
        assert "batch_size=1" not in msg, msg


#: The end of a case: ``p`` maps 20 items on ``engine`` (on_error="collect") in a thread;
#: once an item has started (the file STARTED exists), the engine is shut down.
SHUT_DOWN_MID_COLLECT_MAP = """
p.map({"x": [0]}, map_over="x", engine=engine)  # started, code shipped
os.unlink(STARTED)
result = {}

def mapper():
    try:
        out = p.map({"x": list(range(20))}, map_over="x", engine=engine)
        result["out"] = [r["y"] if isinstance(r, dict) else
                         f"{type(r).__name__}: {r}" for r in out]
    except BaseException as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"

t = threading.Thread(target=mapper)
t.start()
deadline = time.monotonic() + 30
while not os.path.exists(STARTED) and time.monotonic() < deadline:
    time.sleep(0.01)
engine.shutdown()
t.join(60)
report(hung=t.is_alive(), **result)
"""


def _every_item_ended(rc: int, res: dict, err: str) -> list:
    """Under "collect" nothing is lost: every item ends as its result or an
    EngineShutDown saying the engine was shut down during the map."""
    assert rc == 0, err
    assert not res["hung"], res
    assert "error" not in res, res  # "collect": the map itself does not raise
    out = res["out"]
    assert len(out) == 20
    for i, r in enumerate(out):
        if r != i:
            assert r.startswith("EngineShutDown: ") and "during" in r, (i, r)
    return out


@pytest.mark.parametrize("engine_name", ALL)
def test_shutdown_during_a_collect_map_with_callbacks_ends_every_item(run_case, engine_name,
                                                                      tmp_path):
    # Callbacks take the traced path (not the fast one).
    rc, res, err = run_case(f"""
        from gilfree import PipelineCallback
        STARTED = {str(tmp_path / "started")!r}

        @node(output_name="y")
        def slow(x):
            with open(STARTED, "a") as f:
                f.write("1\\n")
            time.sleep(0.1)
            return x

        # Few threads: items wait for one when the shutdown comes.
        few = {{"max_workers": 2}} if ENGINE in ("thread", "async") else {{}}
        engine = make_engine(on_error="collect", callbacks=[PipelineCallback()], **few)
        p = Pipeline([slow])
    """ + textwrap.indent(SHUT_DOWN_MID_COLLECT_MAP, "        "), timeout=90)
    _every_item_ended(rc, res, err)


@pytest.mark.parametrize("engine_name", [THREAD, ASYNC, THREAD_MIXED])
def test_shutdown_during_a_batch_step_under_collect_ends_every_item(run_case, engine_name,
                                                                   tmp_path):
    # A DualNode's batches run as pool tasks; a shutdown while they wait for a thread
    # must end the map with every item as its result or an EngineShutDown, as for
    # per-item steps (it raised for the whole map).
    rc, res, err = run_case(f"""
        from gilfree import DualNode, PipelineCallback
        STARTED = {str(tmp_path / "started")!r}

        def one(x):
            return x

        def batch(x):
            with open(STARTED, "a") as f:
                f.write("1\\n")
            time.sleep(0.2)
            return list(x)

        engine = make_engine(on_error="collect", callbacks=[PipelineCallback()],
                             batch_size=2, max_workers=2)
        p = Pipeline([DualNode("y", one, batch)])
    """ + textwrap.indent(SHUT_DOWN_MID_COLLECT_MAP, "        "), timeout=90)
    out = _every_item_ended(rc, res, err)
    assert any(r != i for i, r in enumerate(out)), out  # the shutdown came mid-map
