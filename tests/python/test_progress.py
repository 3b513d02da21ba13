"""``ProgressCallback``: named tqdm bars, or nothing at all when disabled.

Bars are captured by replacing ``tqdm.auto.tqdm`` with a recording fake (when tqdm is
not installed, a fake ``tqdm.auto`` module is put in ``sys.modules`` instead).
"""

from __future__ import annotations

import sys
import time
import types

import pytest

from gilfree import DualNode, Pipeline, ProgressCallback, SeqEngine, node
from gilfree.progress import ProgressCallback as ProgressCallbackFromModule


class FakeBar:
    instances: list["FakeBar"] = []

    def __init__(self, iterable=None, desc=None, total=None, leave=True, disable=False,
                 **kwargs):
        self.desc = desc
        self.total = total
        self.leave = leave
        self.disable = disable
        self.kwargs = kwargs
        self.n = 0
        self.updates: list = []
        self.postfixes: list = []
        self.descriptions: list = [desc]
        self.closed = False
        FakeBar.instances.append(self)

    def update(self, n=1):
        self.updates.append(n)
        self.n += n

    def set_postfix_str(self, s="", refresh=True):
        self.postfixes.append(s)

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        self.postfixes.append(dict(ordered_dict or {}, **kwargs))

    def set_description(self, desc=None, refresh=True):
        self.desc = desc
        self.descriptions.append(desc)

    set_description_str = set_description

    def refresh(self, *a, **k):
        pass

    def reset(self, total=None):
        self.n = 0
        if total is not None:
            self.total = total

    def close(self):
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@pytest.fixture
def bars(monkeypatch):
    FakeBar.instances = []
    try:
        import tqdm.auto
    except ImportError:
        fake_pkg = types.ModuleType("tqdm")
        fake_auto = types.ModuleType("tqdm.auto")
        fake_auto.tqdm = FakeBar
        fake_pkg.auto = fake_auto
        fake_pkg.tqdm = FakeBar
        monkeypatch.setitem(sys.modules, "tqdm", fake_pkg)
        monkeypatch.setitem(sys.modules, "tqdm.auto", fake_auto)
    else:
        monkeypatch.setattr(tqdm.auto, "tqdm", FakeBar)
    return FakeBar.instances


@node
def load(x):
    return x + 1


@node
def transform(load):
    return load * 2


def _pipe():
    return Pipeline([load, transform], name="my_pipe")


def _shown(instances):
    return [b for b in instances if not b.disable]


def _text(bar):
    return " ".join(str(s) for s in [*bar.descriptions, *bar.postfixes] if s)


def test_export():
    assert ProgressCallback is ProgressCallbackFromModule


def test_disabled_draws_nothing(bars, capsys):
    engine = SeqEngine(callbacks=[ProgressCallback(enable=False)])
    assert _pipe().run({"x": 1}, engine=engine) == {"load": 2, "transform": 4}
    assert _pipe().map({"x": [1, 2]}, map_over="x", engine=engine) == [
        {"load": 2, "transform": 4}, {"load": 3, "transform": 6}]
    assert _shown(bars) == []
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_disabled_with_real_tqdm_prints_nothing(capfd):
    pytest.importorskip("tqdm")
    engine = SeqEngine(callbacks=[ProgressCallback(enable=False)])
    _pipe().map({"x": [1, 2, 3]}, map_over="x", engine=engine)
    _pipe().run({"x": 1}, engine=engine)
    out = capfd.readouterr()
    assert out.out == "" and out.err == ""


def test_run_bar_has_pipeline_name_and_node_names(bars):
    engine = SeqEngine(callbacks=[ProgressCallback(enable=True)])
    _pipe().run({"x": 1}, engine=engine)
    shown = _shown(bars)
    assert shown, "no bar was drawn"
    assert any("my_pipe" in (b.desc or "") for b in shown)
    text = " ".join(_text(b) for b in shown)
    assert "load" in text and "transform" in text
    main = next(b for b in shown if "my_pipe" in (b.desc or ""))
    assert main.total == 2 and main.n == 2
    assert all(b.closed for b in shown)


def test_map_bars_have_pipeline_name_and_one_per_node(bars):
    engine = SeqEngine(callbacks=[ProgressCallback(enable=True)])
    _pipe().map({"x": [1, 2, 3]}, map_over="x", engine=engine)
    shown = _shown(bars)
    main = [b for b in shown if "my_pipe" in (b.desc or "")]
    assert len(main) == 1
    assert main[0].total == 3 and main[0].n == 3
    per_node = {b.desc.strip(): b for b in shown if b not in main}
    assert set(per_node) == {"load", "transform"}
    assert all(b.total == 3 and b.n == 3 for b in per_node.values())
    assert all(b.closed for b in shown)


def test_unnamed_pipeline_still_gets_a_bar(bars):
    engine = SeqEngine(callbacks=[ProgressCallback()])
    Pipeline([load, transform]).map({"x": [1, 2]}, map_over="x", engine=engine)
    shown = _shown(bars)
    assert shown and all(b.desc for b in shown)


def test_cached_nodes_advance_the_bars(bars, tmp_path):
    from gilfree import DiskCache

    engine = SeqEngine(cache=DiskCache(tmp_path), callbacks=[ProgressCallback()])
    _pipe().map({"x": [1, 2]}, map_over="x", engine=engine)
    bars.clear()
    _pipe().map({"x": [1, 2]}, map_over="x", engine=engine)
    shown = _shown(bars)
    assert shown and all(b.n == b.total for b in shown)


def test_nested_pipeline_bars_named(bars):
    @node
    def score(transform):
        return transform + 1

    outer = Pipeline([_pipe().as_node(), score], name="outer")
    outer.map({"x": [1, 2]}, map_over="x", engine=SeqEngine(callbacks=[ProgressCallback()]))
    descs = " ".join(b.desc or "" for b in _shown(bars))
    assert "outer" in descs
    assert all(b.closed for b in _shown(bars))


def test_batch_node_progress(bars):
    def enc_one(x):
        return x

    def enc_many(x):
        return list(x)

    p = Pipeline([DualNode("enc", singular=enc_one, batch=enc_many)], name="batchy")
    p.map({"x": [1, 2, 3, 4]}, map_over="x", engine=SeqEngine(callbacks=[ProgressCallback()]))
    shown = _shown(bars)
    main = next(b for b in shown if "batchy" in (b.desc or ""))
    assert main.n == 4
    assert any((b.desc or "").strip() == "enc" and b.n == 4 for b in shown)


def test_error_closes_bars(bars):
    @node
    def boom(x):
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        Pipeline([boom], name="failing").run(
            {"x": 1}, engine=SeqEngine(callbacks=[ProgressCallback()]))
    assert all(b.closed for b in _shown(bars))


def test_failed_map_closes_bars_and_next_run_gets_a_fresh_bar(bars):
    calls = []

    @node
    def flaky(x):
        calls.append(x)
        if x == 2:
            raise RuntimeError("bad item")
        return x

    p = Pipeline([flaky], name="flaky_pipe")
    engine = SeqEngine(callbacks=[ProgressCallback()])
    with pytest.raises(RuntimeError):
        p.map({"x": [1, 2, 3]}, map_over="x", engine=engine)
    assert all(b.closed for b in _shown(bars))
    bars.clear()
    assert p.run({"x": 5}, engine=engine) == {"flaky": 5}
    main = [b for b in _shown(bars) if "flaky_pipe" in (b.desc or "")]
    assert len(main) == 1 and main[0].total == 1 and main[0].n == 1


def test_nested_run_has_a_bar_per_pipeline(bars):
    @node
    def score(transform):
        return transform + 1

    outer = Pipeline([_pipe().as_node(), score], name="outer")
    # "load" is pruned: the sibling consumes only "transform"
    assert outer.run({"x": 1}, engine=SeqEngine(callbacks=[ProgressCallback()])) == {
        "transform": 4, "score": 5}
    shown = _shown(bars)
    descs = [b.desc or "" for b in shown]
    assert any("outer" in d for d in descs)
    assert any("my_pipe" in d for d in descs)
    inner = next(b for b in shown if "my_pipe" in (b.desc or ""))
    assert inner.n == inner.total == 2
    assert all(b.closed for b in shown)


def test_nested_mapped_pipeline_has_named_bars(bars):
    @node
    def sq(v):
        return v * v

    inner = Pipeline([sq], name="squares")
    outer = Pipeline([inner.as_node(map_over="v")], name="outer")
    outer.run({"v": [1, 2, 3]}, engine=SeqEngine(callbacks=[ProgressCallback()]))
    shown = _shown(bars)
    items_bar = next(b for b in shown if "squares" in (b.desc or ""))
    assert items_bar.total == 3 and items_bar.n == 3
    assert any((b.desc or "").strip() == "sq" and b.n == 3 for b in shown)
    assert all(b.closed for b in shown)


# -- nested pipelines on every engine: one bar per level, every bar ends full ----------
@node(output_name="y")
def _work(x):
    return x + 1


def _summary(bars):
    return sorted((b.desc.strip(), b.n, b.total) for b in bars)


def _assert_all_full_and_closed(bars):
    assert bars, "no bar was drawn"
    for b in bars:
        assert b.closed, f"bar {b.desc!r} left open"
        assert b.n == b.total, f"bar {b.desc!r} ended at {b.n}/{b.total}"


def test_a_nested_mapped_pipeline_node_counts_in_its_parents_run_bar(bars, engine_factory):
    inner = Pipeline([_work], name="inner")
    outer = Pipeline([inner.as_node(map_over="x")], name="outer")
    engine = engine_factory(callbacks=[ProgressCallback()])
    assert outer.run({"x": [1, 2, 3]}, engine=engine) == {"y": [2, 3, 4]}
    _assert_all_full_and_closed(bars)
    assert ("outer", 1, 1) in _summary(bars)  # it used to end at 0/1 (red in Jupyter)


@node(output_name="y")
def _slow_work(x):
    time.sleep(0.01)  # long enough for the outer items to overlap on a concurrent engine
    return x + 1


def test_concurrent_items_share_one_bar_per_nested_level(bars, engine_factory):
    inner = Pipeline([_slow_work], name="inner")
    outer = Pipeline([inner.as_node(map_over="x")], name="outer")
    engine = engine_factory(callbacks=[ProgressCallback()])
    xs = [list(range(k, k + 5)) for k in range(8)]  # 8 outer items of 5 inner items
    out = outer.map({"x": xs}, map_over="x", engine=engine)
    assert out == [{"y": [v + 1 for v in x]} for x in xs]
    _assert_all_full_and_closed(bars)
    # The outer level: 8 items. The inner level: 40 items in total, and no bar ever
    # counted past its total (concurrent items used to merge: inner 100/50).
    assert ("outer", 8, 8) in _summary(bars)
    inner_items = [b for b in bars if b.desc.strip() == "inner" and not b.leave]
    assert sum(b.total for b in inner_items) == 40
