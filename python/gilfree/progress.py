"""``ProgressCallback``: tqdm bars (notebook widgets in Jupyter), named, not numbered."""

from __future__ import annotations

from typing import Any

from .callbacks import CallbackContext, PipelineCallback


class ProgressCallback(PipelineCallback):
    """One bar per pipeline run or map (with the pipeline's name), one per node."""

    def __init__(self, enable: bool = True, **tqdm_options: Any):
        self.enable = enable
        self.tqdm_options = tqdm_options
        self._bars: dict[tuple[str, str], Any] = {}
        self._map_total: dict[str, int] = {}

    def _bar(self, key: tuple[str, str], desc: str, total: int, ctx: CallbackContext) -> Any:
        bar = self._bars.get(key)
        if bar is None:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc=desc, leave=ctx.depth == 0, disable=not self.enable,
                       **self.tqdm_options)
            self._bars[key] = bar
        return bar

    def _name(self, pipeline_id: str, ctx: CallbackContext) -> str:
        return ctx.get_pipeline_metadata(pipeline_id).get("pipeline_name", pipeline_id)

    def _close(self, pipeline_id: str) -> None:
        for key in [k for k in self._bars if k[0] == pipeline_id]:
            self._bars.pop(key).close()

    # -- a plain run: one bar counting nodes ------------------------------------------
    def on_pipeline_start(self, pipeline_id: str, inputs: dict, ctx: CallbackContext) -> None:
        if pipeline_id not in self._map_total:
            total = ctx.get_pipeline_metadata(pipeline_id).get("total_nodes", 0)
            self._bar((pipeline_id, ""), self._name(pipeline_id, ctx), total, ctx)

    def on_pipeline_end(self, pipeline_id: str, outputs: dict, duration: float,
                        ctx: CallbackContext) -> None:
        if pipeline_id not in self._map_total:
            self._close(pipeline_id)

    def _node_done(self, node_id: str, ctx: CallbackContext) -> None:
        pid = ctx.current_pipeline_id
        if pid in self._map_total:
            self._bar((pid, node_id), f"  {node_id}", self._map_total[pid], ctx).update(1)
        elif (pid, "") in self._bars:
            bar = self._bars[(pid, "")]
            bar.set_postfix_str(node_id)
            bar.update(1)

    def on_node_end(self, node_id: str, outputs: dict, duration: float, ctx: CallbackContext) -> None:
        self._node_done(node_id, ctx)

    def on_node_cached(self, node_id: str, signature: str, ctx: CallbackContext) -> None:
        self._node_done(node_id, ctx)

    def on_error(self, node_id: str, error: BaseException, ctx: CallbackContext) -> None:
        pid = ctx.current_pipeline_id
        if pid in self._map_total:
            return  # under the "collect" policy the map goes on
        if pid is not None:
            self._close(pid)

    # -- a map: one bar counting items, one per node ----------------------------------
    def on_map_start(self, total_items: int, ctx: CallbackContext) -> None:
        pid = ctx.current_pipeline_id
        self._map_total[pid] = total_items
        self._bar((pid, ""), self._name(pid, ctx), total_items, ctx)

    def on_map_item_end(self, item_index: int, duration: float, ctx: CallbackContext) -> None:
        bar = self._bars.get((ctx.current_pipeline_id, ""))
        if bar is not None:
            bar.update(1)

    def on_map_end(self, total_duration: float, ctx: CallbackContext) -> None:
        pid = ctx.current_pipeline_id
        self._map_total.pop(pid, None)
        self._close(pid)
