"""``TelemetryCallback``: spans for pipelines, nodes and maps (HyperNodes' tracing).

With Logfire installed (``pip install logfire``; call ``logfire.configure()`` first),
every span is also a Logfire/OpenTelemetry span. Without it the spans are only recorded
in ``span_data``, for ``get_waterfall_chart()``: HyperNodes raises ImportError there,
gilfree still gives the timings (and says once that nothing is sent).
"""

from __future__ import annotations

import time
import warnings
from typing import Any

from ..callbacks import CallbackContext, PipelineCallback


class TelemetryCallback(PipelineCallback):
    """A span per pipeline run, node, map and (``trace_map_items``) map item.

    ``span_data`` lists the finished spans as dicts (``name``, ``start_time``,
    ``duration``, ``depth``, ``parent``, ``cached``, ``type``), the input of
    ``get_waterfall_chart()``. ``logfire_instance`` replaces the ``logfire`` module
    (anything with ``span(name, **attributes)`` returning a context manager whose
    ``__enter__`` gives an object with ``set_attribute``).
    """

    def __init__(self, trace_map_items: bool = True, logfire_instance: Any = None):
        if logfire_instance is None:
            try:
                import logfire as logfire_instance
            except ImportError:
                warnings.warn("logfire is not installed (pip install logfire): "
                              "TelemetryCallback records spans for get_waterfall_chart() "
                              "only", stacklevel=2)
        self.logfire = logfire_instance
        self.trace_map_items = trace_map_items
        self.span_data: list[dict[str, Any]] = []
        # (pipeline path, kind, name) -> open spans, latest last. gilfree delivers events
        # in the driver thread; on a concurrent engine several items' spans of the same
        # node are open at once, so each key keeps a stack.
        self._open: dict[tuple, list[Any]] = {}

    # -- spans --------------------------------------------------------------------------
    def _key(self, ctx: CallbackContext, kind: str, name: Any) -> tuple:
        return (tuple(ctx.hierarchy_path), kind, name)

    def _start(self, ctx: CallbackContext, kind: str, name: Any, title: str,
               **attributes: Any) -> None:
        span = None
        if self.logfire is not None:
            span = self.logfire.span(title, **attributes).__enter__()
        self._open.setdefault(self._key(ctx, kind, name), []).append(span)

    def _end(self, ctx: CallbackContext, kind: str, name: Any, error: BaseException | None = None,
             **attributes: Any) -> bool:
        """Close the latest open span of this key; False if none was open."""
        stack = self._open.get(self._key(ctx, kind, name))
        if not stack:
            return False
        span = stack.pop()
        if not stack:
            del self._open[self._key(ctx, kind, name)]
        if span is not None:
            for k, v in attributes.items():
                span.set_attribute(k, v)
            if error is None:
                span.__exit__(None, None, None)
            else:
                span.set_attribute("error", str(error))
                span.set_attribute("error_type", type(error).__name__)
                span.__exit__(type(error), error, error.__traceback__)
        return True

    def _record(self, name: str, duration: float, ctx: CallbackContext, kind: str,
                parent: str | None, cached: bool = False) -> None:
        # Events of concurrent engines reach the driver late: the start is derived
        # from the end and the measured duration, not from when "start" was delivered.
        self.span_data.append({"name": name, "start_time": time.time() - duration,
                               "duration": duration, "depth": ctx.depth, "parent": parent,
                               "cached": cached, "type": kind})

    # -- events -------------------------------------------------------------------------
    def on_pipeline_start(self, pipeline_id: str, inputs: dict, ctx: CallbackContext) -> None:
        self._start(ctx, "pipeline", pipeline_id, f"pipeline:{pipeline_id}",
                    pipeline_id=pipeline_id, depth=ctx.depth, inputs=str(inputs)[:500])

    def on_pipeline_end(self, pipeline_id: str, outputs: dict, duration: float,
                        ctx: CallbackContext) -> None:
        self._end(ctx, "pipeline", pipeline_id, duration=duration, outputs=str(outputs)[:500])
        self._record(pipeline_id, duration, ctx, "pipeline", ctx.parent_pipeline_id)

    def on_node_start(self, node_id: str, inputs: dict, ctx: CallbackContext) -> None:
        self._start(ctx, "node", node_id, f"node:{node_id}", node_id=node_id, depth=ctx.depth,
                    inputs=str(inputs)[:500])

    def on_node_end(self, node_id: str, outputs: dict, duration: float,
                    ctx: CallbackContext) -> None:
        self._end(ctx, "node", node_id, duration=duration, outputs=str(outputs)[:500])
        self._record(node_id, duration, ctx, "node", ctx.current_pipeline_id)

    def on_node_cached(self, node_id: str, signature: str, ctx: CallbackContext) -> None:
        # A cache hit has no on_node_start in gilfree: its span opens and closes here.
        self._start(ctx, "node", node_id, f"node:{node_id}", node_id=node_id, depth=ctx.depth)
        self._end(ctx, "node", node_id, cached=True, cache_signature=signature)
        self._record(node_id, 0.001, ctx, "node", ctx.current_pipeline_id, cached=True)

    def on_error(self, node_id: str, error: BaseException, ctx: CallbackContext) -> None:
        if not self._end(ctx, "node", node_id, error=error) and self.logfire is not None:
            self.logfire.error(f"Error in {node_id}: {error}", node_id=node_id,
                               error_type=type(error).__name__)

    def on_map_start(self, total_items: int, ctx: CallbackContext) -> None:
        self._start(ctx, "map", None, "map_operation", total_items=total_items, depth=ctx.depth)

    def on_map_item_start(self, item_index: int, ctx: CallbackContext) -> None:
        if self.trace_map_items:
            self._start(ctx, "item", item_index, f"map_item[{item_index}]",
                        item_index=item_index, depth=ctx.depth + 1)

    def on_map_item_cached(self, item_index: int, signature: str, ctx: CallbackContext) -> None:
        if self.trace_map_items:
            stack = self._open.get(self._key(ctx, "item", item_index))
            if stack and stack[-1] is not None:
                stack[-1].set_attribute("cached", True)
                stack[-1].set_attribute("cache_signature", signature)

    def on_map_item_end(self, item_index: int, duration: float, ctx: CallbackContext) -> None:
        if self.trace_map_items:
            self._end(ctx, "item", item_index, duration=duration)

    def on_map_end(self, total_duration: float, ctx: CallbackContext) -> None:
        self._end(ctx, "map", None, total_duration=total_duration)
        self._record("map_operation", total_duration, ctx, "map", ctx.current_pipeline_id)

    def get_waterfall_chart(self) -> Any:
        """A plotly figure of ``span_data`` (shows itself in Jupyter); needs plotly."""
        from .waterfall import create_waterfall_chart

        return create_waterfall_chart(self.span_data)
