"""Callbacks: hooks an engine calls, always in the driver process and thread."""

from __future__ import annotations

from typing import Any, Iterable, Sequence


class CallbackContext:
    """State shared by the callbacks of one run: free-form ``data`` plus where we are."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.hierarchy_path: list[str] = []

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def push_pipeline(self, pipeline_id: str) -> None:
        self.hierarchy_path.append(pipeline_id)

    def pop_pipeline(self) -> str:
        return self.hierarchy_path.pop()

    @property
    def depth(self) -> int:
        """0 for the top-level pipeline, 1 inside a nested one, and so on."""
        return max(len(self.hierarchy_path) - 1, 0)

    @property
    def current_pipeline_id(self) -> str | None:
        return self.hierarchy_path[-1] if self.hierarchy_path else None

    @property
    def parent_pipeline_id(self) -> str | None:
        return self.hierarchy_path[-2] if len(self.hierarchy_path) > 1 else None

    def set_pipeline_metadata(self, pipeline_id: str, metadata: dict[str, Any]) -> None:
        self.data[f"_pipeline_metadata:{pipeline_id}"] = metadata

    def get_pipeline_metadata(self, pipeline_id: str) -> dict[str, Any]:
        return self.data.get(f"_pipeline_metadata:{pipeline_id}", {})


class PipelineCallback:
    """Subclass and override what you need; every hook is a no-op by default."""

    @property
    def supported_engines(self) -> Sequence[Any] | None:
        """Engine classes (or their names) this callback works with; None means all."""
        return None

    def on_pipeline_start(self, pipeline_id: str, inputs: dict, ctx: CallbackContext) -> None: ...
    def on_pipeline_end(self, pipeline_id: str, outputs: dict, duration: float, ctx: CallbackContext) -> None: ...
    def on_node_start(self, node_id: str, inputs: dict, ctx: CallbackContext) -> None: ...
    def on_node_end(self, node_id: str, outputs: dict, duration: float, ctx: CallbackContext) -> None: ...
    def on_node_cached(self, node_id: str, signature: str, ctx: CallbackContext) -> None: ...
    def on_error(self, node_id: str, error: BaseException, ctx: CallbackContext) -> None: ...
    def on_nested_pipeline_start(self, parent_id: str, child_id: str, ctx: CallbackContext) -> None: ...
    def on_nested_pipeline_end(self, parent_id: str, child_id: str, duration: float, ctx: CallbackContext) -> None: ...
    def on_map_start(self, total_items: int, ctx: CallbackContext) -> None: ...
    def on_map_item_start(self, item_index: int, ctx: CallbackContext) -> None: ...
    def on_map_item_end(self, item_index: int, duration: float, ctx: CallbackContext) -> None: ...
    def on_map_item_cached(self, item_index: int, signature: str, ctx: CallbackContext) -> None: ...
    def on_map_end(self, total_duration: float, ctx: CallbackContext) -> None: ...


def check_supported(callbacks: Iterable[PipelineCallback], engine: Any) -> None:
    """Raise ``ValueError`` before anything runs if a callback refuses this engine."""
    for cb in callbacks:
        allowed = cb.supported_engines
        if allowed is None:
            continue
        names = {a if isinstance(a, str) else a.__name__ for a in allowed}
        if not any(c.__name__ in names for c in type(engine).__mro__):
            # Worded as HyperNodes words it (code may match on it), plus the list.
            raise ValueError(
                f"Callback {type(cb).__name__} is not compatible with engine "
                f"{type(engine).__name__}: {type(cb).__name__} does not support "
                f"{type(engine).__name__}; it supports {sorted(names)}"
            )
