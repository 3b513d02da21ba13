"""Crash matrix: a @stateful constructor fails (a model whose weights file is missing).
Every engine: it is attempted at most once per worker per map (Seq/Thread/Async: once
per map), every item that needed it fails with that error and its traceback, the
workers live on (no respawn loop)."""

from __future__ import annotations

import pytest

from crash_helpers import ALL, SPAWN


@pytest.mark.parametrize("engine_name", [*ALL, SPAWN])
def test_failing_stateful_constructor_is_attempted_once_per_worker(run_case, engine_name,
                                                                    tmp_path):
    rc, res, err = run_case(f"""
        import traceback
        BUILDS = {str(tmp_path / "builds")!r}

        @stateful
        class Broken:
            def __init__(self):
                with open(BUILDS, "a") as f:  # O_APPEND: one line per attempt, any process
                    f.write(f"{{os.getpid()}}\\n")
                raise RuntimeError("no weights file")
            def __call__(self, x):
                return x

        @node(output_name="y")
        def predict(x, model):
            return model(x)

        def builds():
            try:
                with open(BUILDS) as f:
                    n = len(f.read().split())
                os.unlink(BUILDS)
                return n
            except FileNotFoundError:
                return 0

        engine = make_engine()
        p = Pipeline([predict])
        out = p.map({{"x": list(range(20)), "model": Broken()}}, map_over="x",
                    engine=engine, on_error="collect")
        report(collect=[f"{{type(r).__name__}}: {{r}}" for r in out], collect_builds=builds())
        try:
            p.map({{"x": list(range(20)), "model": Broken()}}, map_over="x", engine=engine)
        except RuntimeError as exc:
            report(msg=str(exc), text="".join(traceback.format_exception(exc)))
        report(raise_builds=builds(), workers=WORKERS, pids=getattr(engine, "pids", None))
        engine.shutdown()
    """)
    assert rc == 0, err
    assert res["collect"] == ["RuntimeError: no weights file"] * 20, res["collect"]
    assert 1 <= res["collect_builds"] <= res["workers"], res
    assert res["msg"] == "no weights file"
    assert 'raise RuntimeError("no weights file")' in res["text"]
    assert 1 <= res["raise_builds"] <= res["workers"], res
    if res["pids"] is not None:
        assert len(res["pids"]) == 2  # the workers live on: no respawn loop
