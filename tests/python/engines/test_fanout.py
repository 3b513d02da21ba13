"""Nested maps as one map of all inner items (run/fanout.py): spread over the workers,
same results, errors and item numbers as one inner map per outer item."""

from __future__ import annotations

import os

import pytest

from gilfree import (AutoEngine, DiskCache, Pipeline, PipelineCallback, ProcessEngine,
                     SeqEngine, node)
from gilfree.engines import AsyncEngine, ThreadEngine

from cpu_busy import spin


@node(output_name="samples")
def make_samples(task, per_task):
    return [task * 100 + k for k in range(per_task)]


@node(output_name="scored")
def score(sample, scale):
    spin(20_000)
    if sample == 203 and scale == 7:  # the error cases pass scale=7
        raise ValueError("sample 203")
    return (sample * scale, os.getpid())


@node(output_name="total")
def summarize(scores):
    return sum(s for s, _ in scores)


def pipeline():
    inner = Pipeline([score], name="per_sample").as_node(
        input_mapping={"samples": "sample"}, output_mapping={"scored": "scores"},
        map_over="samples")
    return Pipeline([make_samples, inner, summarize], name="per_task")


def run(engine, tasks, per_task, scale=1, **options):
    return pipeline().map({"task": tasks, "per_task": per_task, "scale": scale},
                          map_over="task", engine=engine, **options)


ENGINES = [ProcessEngine, AutoEngine, ThreadEngine, AsyncEngine]


@pytest.mark.parametrize("cls", ENGINES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("shape", [(1, 24), (3, 7), (12, 2), (2, 0)])
def test_same_results_as_one_inner_map_per_item(cls, shape):
    tasks, per_task = list(range(shape[0])), shape[1]
    expected = [{"total": sum((t * 100 + k) for k in range(per_task)), "samples":
                 [t * 100 + k for k in range(per_task)]} for t in tasks]
    with cls() as engine:
        out = run(engine, tasks, per_task)
    assert [{"total": r["total"], "samples": r["samples"]} for r in out] == expected
    assert all(len(r["scores"]) == per_task for r in out)


def test_one_outer_item_uses_every_worker():
    with ProcessEngine(workers=2) as engine:
        out = run(engine, [0], 40)
    pids = {pid for _, pid in out[0]["scores"]}
    assert len(pids) == 2 and os.getpid() not in pids


def test_inner_inputs_that_differ_per_item_travel_with_their_rows():
    p = pipeline()
    with ProcessEngine() as engine:
        out = p.map({"task": [0, 1, 3], "per_task": 3, "scale": [1, 10, 100]},
                    map_over=["task", "scale"], engine=engine)
    assert [r["total"] for r in out] == [0 + 1 + 2, 10 * (100 + 101 + 102),
                                         100 * (300 + 301 + 302)]


@pytest.mark.parametrize("cls", [ProcessEngine, ThreadEngine], ids=lambda c: c.__name__)
def test_an_inner_error_fails_its_outer_item_and_names_both_items(cls):
    with cls() as engine:
        out = run(engine, [0, 1, 2, 3], 5, scale=7, on_error="collect")
        assert [r["total"] for k, r in enumerate(out) if k != 2] == [70, 3570, 10570]
        err = out[2]
        assert isinstance(err, ValueError)
        notes = err.__notes__
        assert "gilfree: raised in node 'score' (map item 3)" in notes, notes
        assert "gilfree: inside nested pipeline 'per_sample' (map item 2)" in notes, notes
        with pytest.raises(ValueError, match="sample 203") as info:
            run(engine, [0, 1, 2, 3], 5, scale=7)
        assert "gilfree: inside nested pipeline 'per_sample' (map item 2)" in \
            info.value.__notes__
    with SeqEngine() as seq:  # the same notes as an inner map per item
        assert run(seq, [0, 1, 2, 3], 5, scale=7, on_error="collect")[2].__notes__ == notes


class Recorder(PipelineCallback):
    """Every event: (hook, depth of the pipeline path, its int/str arguments, pipeline
    ids as "P": the tests build their pipelines anew)."""

    def __init__(self):
        self.events = []

    def __getattribute__(self, name):
        if name.startswith("on_"):
            return lambda *args: self.events.append((name, len(args[-1].hierarchy_path), tuple(
                "P" if isinstance(a, str) and a.startswith("pipeline_") else a
                for a in args[:-1] if isinstance(a, (int, str)) and not isinstance(a, bool))))
        return super().__getattribute__(name)


def well_formed_inner_maps(events, inner_depth=2):
    """Each inner map (at ``inner_depth``) opens with on_nested_pipeline_start and
    on_map_start(n), numbers its items below n, once each, and closes; several may be
    open at once (their items interleave), so an item counts against any open one.
    Returns how many closed."""
    open_maps, closed = [], 0
    for hook, depth, args in events:
        if hook == "on_nested_pipeline_start" and depth == inner_depth - 1:
            open_maps.append(None)  # its size comes with its on_map_start
        elif hook == "on_map_start" and depth == inner_depth:
            assert open_maps and open_maps[-1] is None, events
            open_maps[-1] = [args[0], set()]
        elif hook == "on_map_item_start" and depth == inner_depth:
            mine = [m for m in open_maps if m and args[0] < m[0] and args[0] not in m[1]]
            assert mine, (args, open_maps)
            mine[0][1].add(args[0])
        elif hook == "on_nested_pipeline_end" and depth == inner_depth - 1:
            # one that got all its items, else (an error stopped it) the oldest
            done = [m for m in open_maps if m and len(m[1]) == m[0]] or open_maps
            open_maps.remove(done[0])
            closed += 1
    assert not open_maps
    return closed


@pytest.mark.parametrize("cls", ENGINES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("shape", [(1, 30), (4, 3), (3, 0)])
def test_with_callbacks_the_events_are_those_of_an_inner_map_per_item(cls, shape):
    tasks, per_task = list(range(shape[0])), shape[1]
    with SeqEngine(callbacks=[Recorder()]) as seq:
        run(seq, tasks, per_task)
        want = seq.callbacks[0].events
    got = Recorder()
    with (cls(workers=2, callbacks=[got]) if cls is ProcessEngine else
          cls(callbacks=[got])) as engine:
        out = run(engine, tasks, per_task)
    assert [r["total"] for r in out] == [sum(t * 100 + k for k in range(per_task))
                                         for t in tasks]
    assert sorted(got.events) == sorted(want)  # the same events, in an engine's order
    assert well_formed_inner_maps(got.events) == len(tasks)
    if cls is ProcessEngine and shape == (1, 30):  # spread: both workers
        assert len({pid for _, pid in out[0]["scores"]}) == 2


def test_with_callbacks_an_inner_error_still_closes_its_inner_map():
    got = Recorder()
    with ProcessEngine(callbacks=[got]) as engine:
        out = run(engine, [0, 1, 2, 3], 5, scale=7, on_error="collect")
    assert isinstance(out[2], ValueError) and out[3]["total"] == 7 * sum(range(300, 305))
    assert well_formed_inner_maps(got.events) == 4
    assert ("on_error", 2, ("score",)) in got.events
    got.events.clear()
    with ProcessEngine(callbacks=[got]) as engine, pytest.raises(ValueError):
        run(engine, [0, 1, 2, 3], 5, scale=7)
    well_formed_inner_maps(got.events)  # those opened are closed
    maps = [e for e in got.events if e[0] in ("on_map_start", "on_map_end")]
    assert maps[0] == ("on_map_start", 1, (4,)) and maps[-1][0] == "on_map_end"


def test_a_progress_bar_counts_a_fanned_out_map():
    from gilfree import ProgressCallback

    bars = ProgressCallback(enable=False)
    with ProcessEngine(callbacks=[bars]) as engine:
        out = run(engine, [0, 1, 2], 8)
    assert [r["total"] for r in out] == [sum(range(8)), sum(range(100, 108)),
                                         sum(range(200, 208))]
    assert bars._levels == {}  # every bar closed


def test_auto_engine_explains_the_fan_out():
    with AutoEngine() as engine:
        out = run(engine, [0], 120)  # ~80 ms of work: enough to pay for processes
        rows = {r["node"]: r for r in engine.explain().rows}
    assert out[0]["total"] == sum(range(120))
    assert rows["per_sample"]["executor"] == "fan-out"
    assert rows["per_sample/score"]["executor"] == "process", rows
    pids = {pid for _, pid in out[0]["scores"][2:]}  # the first two were measured here
    assert os.getpid() not in pids


def test_a_hinted_nested_pipeline_runs_whole_where_it_says():
    inner = Pipeline([score], name="per_sample").as_node(
        input_mapping={"samples": "sample"}, output_mapping={"scored": "scores"},
        map_over="samples", executor="process")
    p = Pipeline([make_samples, inner, summarize])
    with ThreadEngine() as engine:
        out = p.map({"task": [0], "per_task": 12, "scale": 1}, map_over="task",
                    engine=engine)
    assert len({pid for _, pid in out[0]["scores"]}) == 1  # one worker ran it all


@node(output_name="scored")
def score_counted(sample, scale):
    with open(os.environ["GILFREE_TEST_CALLS"], "a") as f:  # workers get the driver's env
        f.write(f"{sample}\n")
    spin(20_000)
    return (sample * scale, os.getpid())


def counted_pipeline(cache_inner=True):
    inner = Pipeline([score_counted], name="per_sample").as_node(
        input_mapping={"samples": "sample"}, output_mapping={"scored": "scores"},
        map_over="samples", cache=cache_inner)
    return Pipeline([make_samples, inner, summarize], name="per_task")


@pytest.mark.parametrize("cls", [ProcessEngine, AutoEngine, ThreadEngine],
                         ids=lambda c: c.__name__)
def test_with_a_cache_the_inner_items_still_run_as_one_map(cls, tmp_path, monkeypatch):
    calls = tmp_path / "calls.txt"
    calls.write_text("")
    monkeypatch.setenv("GILFREE_TEST_CALLS", str(calls))
    inputs = {"task": [0], "per_task": 24, "scale": 1}
    expected = [sum(range(24))]

    def counted() -> int:
        return len(calls.read_text().split())

    options = {"workers": 2} if cls is ProcessEngine else {}
    with cls(cache=DiskCache(tmp_path / "cache"), **options) as engine:
        out = counted_pipeline().map(inputs, map_over="task", engine=engine)
        assert [r["total"] for r in out] == expected and counted() == 24
        if cls is ProcessEngine:  # one outer item, its inner items over both workers
            assert len({pid for r in out for _, pid in r["scores"]}) == 2
        again = counted_pipeline().map(inputs, map_over="task", engine=engine)
        assert [r["total"] for r in again] == expected and counted() == 24  # all hits
    with SeqEngine(cache=DiskCache(tmp_path / "cache")) as seq:
        # SeqEngine runs an inner map per outer item: the keys are the same
        assert [r["total"] for r in counted_pipeline().map(
            inputs, map_over="task", engine=seq)] == expected
    assert counted() == 24


def test_a_nested_node_with_cache_false_is_not_cached_inside_a_fan_out(tmp_path,
                                                                       monkeypatch):
    calls = tmp_path / "calls.txt"
    calls.write_text("")
    monkeypatch.setenv("GILFREE_TEST_CALLS", str(calls))
    with ProcessEngine(cache=DiskCache(tmp_path / "cache")) as engine:
        for _ in range(2):
            out = counted_pipeline(cache_inner=False).map(
                {"task": [0, 1], "per_task": 6, "scale": 1}, map_over="task", engine=engine)
            assert [r["total"] for r in out] == [sum(range(6)), sum(range(100, 106))]
    assert len(calls.read_text().split()) == 24  # ran twice: nothing cached inside


@pytest.mark.parametrize("cls", ENGINES, ids=lambda c: c.__name__)
def test_run_spreads_a_nested_map_like_a_map_does(cls):
    inputs = {"task": 0, "per_task": 40, "scale": 1}
    with (cls(workers=2) if cls is ProcessEngine else cls()) as engine:
        out = pipeline().run(inputs, engine=engine)
    with SeqEngine() as seq:
        expected = pipeline().run(inputs, engine=seq)
    assert out["total"] == expected["total"] == sum(range(40))
    assert [s for s, _ in out["scores"]] == [s for s, _ in expected["scores"]]
    if cls is ProcessEngine:  # one outer item, every worker (it ran here before)
        assert len({pid for _, pid in out["scores"]}) == 2, out["scores"]


def test_run_names_an_inner_error_as_one_inner_map_would():
    inputs = {"task": 2, "per_task": 5, "scale": 7}  # sample 203 raises
    with ProcessEngine() as engine, pytest.raises(ValueError, match="sample 203") as got:
        pipeline().run(inputs, engine=engine)
    with SeqEngine() as seq, pytest.raises(ValueError, match="sample 203") as want:
        pipeline().run(inputs, engine=seq)
    assert got.value.__notes__ == want.value.__notes__


# -- DaskEngine: a cluster's map per stage, the inner items as one map --------------------
@pytest.fixture(params=["cluster", "threads"])
def dask_engine(request):
    """DaskEngine on the session's LocalCluster (2 workers), and on dask's threads."""
    pytest.importorskip("distributed", reason='pip install "dask[distributed]"')
    from gilfree.engines import DaskEngine

    if request.param == "cluster":
        engine = DaskEngine(client=request.getfixturevalue("dask_client"))
    else:
        engine = DaskEngine(scheduler="threads", num_workers=2)
    yield engine
    engine.shutdown()


@pytest.mark.parametrize("shape", [(1, 24), (3, 7), (12, 2), (2, 0)])
def test_dask_same_results_as_one_inner_map_per_item(dask_engine, shape):
    tasks, per_task = list(range(shape[0])), shape[1]
    with SeqEngine() as seq:
        expected = run(seq, tasks, per_task)
    out = run(dask_engine, tasks, per_task)
    assert [(r["total"], r["samples"], [s for s, _ in r["scores"]]) for r in out] == \
        [(r["total"], r["samples"], [s for s, _ in r["scores"]]) for r in expected]


def test_dask_one_outer_item_uses_every_worker(dask_client):
    from gilfree.engines import DaskEngine

    with DaskEngine(client=dask_client) as engine:
        out = run(engine, [0], 40)
    pids = {pid for _, pid in out[0]["scores"]}
    assert len(pids) == 2 and os.getpid() not in pids  # it ran in one worker before


def test_dask_an_inner_error_names_both_items_as_one_inner_map_per_item_would(dask_engine):
    out = run(dask_engine, [0, 1, 2, 3], 5, scale=7, on_error="collect")
    assert [r["total"] for k, r in enumerate(out) if k != 2] == [70, 3570, 10570]
    with SeqEngine() as seq:
        want = run(seq, [0, 1, 2, 3], 5, scale=7, on_error="collect")[2]
    assert isinstance(out[2], ValueError) and out[2].__notes__ == want.__notes__
    with pytest.raises(ValueError, match="sample 203") as info:
        run(dask_engine, [0, 1, 2, 3], 5, scale=7)
    assert "gilfree: inside nested pipeline 'per_sample' (map item 2)" in info.value.__notes__


@node(output_name="samples")
def samples_unless_one(task, per_task):
    if task == 1:
        raise KeyError("no samples for task 1")
    return [task * 100 + k for k in range(per_task)]


@node(output_name="total")
def summarize_logged(scores, log):
    with open(log, "a") as f:  # a file: the cluster's workers started before this test
        f.write(f"{type(scores).__name__}\n")
    return sum(s for s, _ in scores)


def test_dask_an_item_failed_before_the_fan_out_is_skipped_by_the_stages_after(
        dask_engine, tmp_path):
    inner = Pipeline([score], name="per_sample").as_node(
        input_mapping={"samples": "sample"}, output_mapping={"scored": "scores"},
        map_over="samples")
    p = Pipeline([samples_unless_one, inner, summarize_logged], name="per_task")
    log = tmp_path / "summaries.txt"
    log.write_text("")
    out = p.map({"task": [0, 1, 2], "per_task": 3, "scale": 1, "log": str(log)},
                map_over="task", engine=dask_engine, on_error="collect")
    assert isinstance(out[1], KeyError) and "map item 1" in " ".join(out[1].__notes__)
    assert [out[0]["total"], out[2]["total"]] == [0 + 1 + 2, 200 + 201 + 202]
    assert log.read_text().split() == ["list", "list"]  # not run for item 1 (no scores)


@node(output_name="scored")
def score_logged(sample, scale, log):
    with open(log, "a") as f:  # a file: the cluster's workers started before this test
        f.write(f"{sample}\n")
    return (sample * scale, os.getpid())


def test_dask_with_a_cache_the_inner_items_are_cached_as_one_inner_map_per_item(
        dask_client, tmp_path):
    from gilfree.engines import DaskEngine

    log = tmp_path / "calls.txt"
    log.write_text("")
    inner = Pipeline([score_logged], name="per_sample").as_node(
        input_mapping={"samples": "sample"}, output_mapping={"scored": "scores"},
        map_over="samples")
    p = Pipeline([make_samples, inner, summarize], name="per_task")
    inputs = {"task": [0, 1], "per_task": 6, "scale": 1, "log": str(log)}

    def calls() -> int:
        return len(log.read_text().split())

    with DaskEngine(client=dask_client, cache=DiskCache(tmp_path / "cache")) as engine:
        for _ in range(2):
            out = p.map(inputs, map_over="task", engine=engine)
            assert [r["total"] for r in out] == [sum(range(6)), sum(range(100, 106))]
            assert calls() == 12  # the second map: every inner item from the cache
    with SeqEngine(cache=DiskCache(tmp_path / "cache")) as seq:
        assert [r["total"] for r in p.map(inputs, map_over="task", engine=seq)] == \
            [sum(range(6)), sum(range(100, 106))]
    assert calls() == 12  # one inner map per item finds the same keys


@pytest.mark.parametrize("shape", [(1, 12), (3, 4)])
def test_dask_with_callbacks_the_events_are_those_of_an_inner_map_per_item(dask_client,
                                                                           shape):
    from gilfree.engines import DaskEngine

    tasks, per_task = list(range(shape[0])), shape[1]
    with SeqEngine(callbacks=[Recorder()]) as seq:
        run(seq, tasks, per_task)
        want = seq.callbacks[0].events
    got = Recorder()
    with DaskEngine(client=dask_client, callbacks=[got]) as engine:
        out = run(engine, tasks, per_task)
    assert sorted(got.events) == sorted(want)
    assert well_formed_inner_maps(got.events) == len(tasks)
    if shape == (1, 12):
        assert len({pid for _, pid in out[0]["scores"]}) == 2


def test_run_with_callbacks_spreads_and_tells_one_inner_map():
    inputs = {"task": 0, "per_task": 30, "scale": 1}
    with SeqEngine(callbacks=[Recorder()]) as seq:
        pipeline().run(inputs, engine=seq)
        want = seq.callbacks[0].events
    got = Recorder()
    with ProcessEngine(workers=2, callbacks=[got]) as engine:
        out = pipeline().run(inputs, engine=engine)
    assert sorted(got.events) == sorted(want)
    assert well_formed_inner_maps(got.events) == 1
    assert len({pid for _, pid in out["scores"]}) == 2
