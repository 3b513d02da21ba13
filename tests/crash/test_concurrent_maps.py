"""Crash matrix: two threads map on one engine at the same time (a web server's request
handlers sharing an engine).  Every engine: both get their own, correct, ordered results,
also when one of the maps fails."""

from __future__ import annotations

import pytest

from crash_helpers import ALL


@pytest.mark.parametrize("engine_name", ALL)
def test_two_threads_map_on_one_engine(run_case, engine_name):
    rc, res, err = run_case("""
        @node(output_name="y")
        def double(x):
            time.sleep(0.005)
            return 2 * x

        @node(output_name="y")
        def negate(x):
            time.sleep(0.005)
            if x == 13:
                raise ValueError("thirteen")
            return -x

        engine = make_engine()
        barrier = threading.Barrier(2)
        got = {}

        def mapper(name, pipeline, xs, **options):
            barrier.wait()
            try:
                out = pipeline.map({"x": xs}, map_over="x", engine=engine, **options)
                got[name] = [r["y"] if isinstance(r, dict) else f"{type(r).__name__}: {r}"
                             for r in out]
            except Exception as exc:
                got[name] = f"{type(exc).__name__}: {exc}"

        threads = [
            threading.Thread(target=mapper, args=("a", Pipeline([double]), list(range(40)))),
            threading.Thread(target=mapper, args=("b", Pipeline([negate]),
                                                   list(range(100, 140)))),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        report(**got, hung=any(t.is_alive() for t in threads))
        # Once more, one of them failing, under "collect".
        got.clear()
        threads = [
            threading.Thread(target=mapper, args=("a", Pipeline([double]), list(range(40)))),
            threading.Thread(target=mapper, args=("b", Pipeline([negate]), list(range(20))),
                             kwargs={"on_error": "collect"}),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        report(a2=got.get("a"), b2=got.get("b"), hung2=any(t.is_alive() for t in threads))
        engine.shutdown()
    """, timeout=90)
    assert rc == 0, err
    assert not res["hung"] and not res["hung2"], res
    assert res["a"] == [2 * x for x in range(40)], res
    assert res["b"] == [-x for x in range(100, 140)], res
    assert res["a2"] == [2 * x for x in range(40)], res
    assert res["b2"] == [-x if x != 13 else "ValueError: thirteen" for x in range(20)], res
