"""``ProgressCallback``: tqdm bars (notebook widgets in Jupyter), named, not numbered.

One bar per pipeline *level*: the top-level pipeline, each nested pipeline under it, and
so on (a level is the path of pipeline ids from the top, ``ctx.hierarchy_path``). A map
gets a bar counting items plus one per node; a plain run gets a bar counting nodes.

Why levels and not calls: the items of an outer map run a nested pipeline once each,
and on a concurrent engine several of those nested calls are under way at once. They
share one bar whose total grows with every call that starts (50 items each, 3 calls:
150), and it closes when the last of them ends; a bar per call would be dozens of bars,
and one bar keyed by the pipeline alone mixed their counts (``inner 100/50``).

A bar that closes full is green in Jupyter; one that closes short (an error that
stopped the map or run) is red, which is what it should say.
"""

from __future__ import annotations

from typing import Any

from ..callbacks import CallbackContext, PipelineCallback

Level = tuple[str, ...]


class _Bars:
    """The bars of one level: the main bar, node bars (maps), how many calls are open."""

    __slots__ = ("main", "nodes", "open", "is_map")

    def __init__(self, main: Any, is_map: bool):
        self.main = main
        self.nodes: dict[str, Any] = {}
        self.open = 1
        self.is_map = is_map

    def grow(self, total: int) -> None:
        self.open += 1
        for bar in (self.main, *self.nodes.values()):
            bar.total = (bar.total or 0) + total
            bar.refresh()

    def close(self) -> None:
        for bar in (*self.nodes.values(), self.main):
            bar.close()


class _NoBar:
    """A disabled callback's bar: it counts, draws nothing, and needs no tqdm."""

    __slots__ = ("total", "n")

    def __init__(self, total: int):
        self.total, self.n = total, 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def refresh(self) -> None: ...
    def close(self) -> None: ...
    def set_postfix_str(self, s: str = "") -> None: ...


class ProgressCallback(PipelineCallback):
    """One bar per pipeline level (its name), counting items in a map or nodes in a
    run; in a map, one bar per node too."""

    def __init__(self, enable: bool = True, **tqdm_options: Any):
        self.enable = enable
        self.tqdm_options = tqdm_options
        self._levels: dict[Level, _Bars] = {}

    # -- bars ---------------------------------------------------------------------------
    @property
    def _bars(self) -> dict[str, Any]:
        """The bars drawn now, by description (HyperNodes' tests read ``_bars``):
        none when disabled, none after a run or map has ended."""
        return {bar.desc: bar for bars in self._levels.values()
                for bar in (bars.main, *bars.nodes.values()) if not isinstance(bar, _NoBar)}

    def _new_bar(self, desc: str, total: int, depth: int) -> Any:
        if not self.enable:
            return _NoBar(total)
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, leave=depth == 0, disable=not self.enable,
                    **self.tqdm_options)

    def _name(self, pipeline_id: str | None, ctx: CallbackContext) -> str:
        if pipeline_id is None:
            return "pipeline"
        return ctx.get_pipeline_metadata(pipeline_id).get("pipeline_name", pipeline_id)

    def _open(self, ctx: CallbackContext, total: int, is_map: bool) -> None:
        level = tuple(ctx.hierarchy_path)
        bars = self._levels.get(level)
        if bars is not None:
            bars.grow(total)
            return
        indent = "  " * ctx.depth
        main = self._new_bar(indent + self._name(ctx.current_pipeline_id, ctx), total,
                             ctx.depth)
        self._levels[level] = _Bars(main, is_map)

    def _end(self, level: Level) -> None:
        """One call at ``level`` ended (or failed): close its bars after the last one,
        and any nested level still open under it (a nested call that failed early)."""
        bars = self._levels.get(level)
        if bars is None:
            return
        bars.open -= 1
        if bars.open > 0:
            return
        n = len(level)
        for key in [k for k in self._levels if len(k) >= n and k[:n] == level]:
            self._levels.pop(key).close()

    def _count_node(self, ctx: CallbackContext, label: str) -> None:
        bars = self._levels.get(tuple(ctx.hierarchy_path))
        if bars is None:
            return
        if bars.is_map:
            bar = bars.nodes.get(label)
            if bar is None:
                bar = bars.nodes[label] = self._new_bar(f"{'  ' * ctx.depth}  {label}",
                                                        bars.main.total, ctx.depth)
            bar.update(1)
        else:
            bars.main.set_postfix_str(label)
            bars.main.update(1)

    def _in_map(self, ctx: CallbackContext) -> bool:
        bars = self._levels.get(tuple(ctx.hierarchy_path))
        return bars is not None and bars.is_map

    # -- a run: one bar counting nodes ------------------------------------------------
    def on_pipeline_start(self, pipeline_id: str, inputs: dict, ctx: CallbackContext) -> None:
        if not self._in_map(ctx):  # an item of this level's map is not a run of its own
            total = ctx.get_pipeline_metadata(pipeline_id).get("total_nodes", 0)
            self._open(ctx, total, is_map=False)

    def on_pipeline_end(self, pipeline_id: str, outputs: dict, duration: float,
                        ctx: CallbackContext) -> None:
        if not self._in_map(ctx):
            self._end(tuple(ctx.hierarchy_path))

    def on_node_end(self, node_id: str, outputs: dict, duration: float, ctx: CallbackContext) -> None:
        self._count_node(ctx, node_id)

    def on_node_cached(self, node_id: str, signature: str, ctx: CallbackContext) -> None:
        self._count_node(ctx, node_id)

    def on_nested_pipeline_end(self, parent_id: str, child_id: str, duration: float,
                               ctx: CallbackContext) -> None:
        # The nested pipeline is one node of its parent: it counts there, like any node.
        self._count_node(ctx, self._name(child_id, ctx))

    def on_error(self, node_id: str, error: BaseException, ctx: CallbackContext) -> None:
        if not self._in_map(ctx):  # a failed run ends here: no on_pipeline_end follows
            self._end(tuple(ctx.hierarchy_path))
        # In a map the item failed, not the map: "collect" goes on, and "raise" ends it
        # with on_map_end.

    # -- a map: one bar counting items, one per node ----------------------------------
    def on_map_start(self, total_items: int, ctx: CallbackContext) -> None:
        self._open(ctx, total_items, is_map=True)

    def on_map_item_end(self, item_index: int, duration: float, ctx: CallbackContext) -> None:
        bars = self._levels.get(tuple(ctx.hierarchy_path))
        if bars is not None:
            bars.main.update(1)

    def on_map_end(self, total_duration: float, ctx: CallbackContext) -> None:
        self._end(tuple(ctx.hierarchy_path))
