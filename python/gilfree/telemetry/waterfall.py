"""A Gantt-style chart of the spans a ``TelemetryCallback`` recorded (needs plotly)."""

from __future__ import annotations

from typing import Any

_COLOURS = {"node": "lightblue", "pipeline": "lightsalmon", "map": "plum"}


def create_waterfall_chart(span_data: list[dict[str, Any]]) -> Any:
    """A plotly ``Figure``: one horizontal bar per span, in ms from the first start.

    Each span is a dict with ``name``, ``start_time`` (s), ``duration`` (s), ``depth``,
    ``type`` (``"node"``, ``"pipeline"`` or ``"map"``) and ``cached``. Parents come
    above their children (by depth, pipelines first, then start time); cached spans are
    green. Raises ``ImportError`` if plotly is not installed.
    """
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise ImportError("the waterfall chart needs plotly: pip install plotly") from None
    fig = go.Figure()
    if not span_data:
        fig.add_annotation(text="No span data available", xref="paper", yref="paper",
                           x=0.5, y=0.5, showarrow=False)
        fig.update_layout(title="Pipeline Execution Waterfall (No Data)", height=300)
        return fig
    t0 = min(s["start_time"] for s in span_data)
    spans = sorted(span_data, key=lambda s: (s.get("depth", 0),
                                             0 if s.get("type") == "pipeline" else 1,
                                             s["start_time"]))
    for i, s in enumerate(spans):
        y = len(spans) - i  # the first span on top
        start, duration = (s["start_time"] - t0) * 1000, s["duration"] * 1000
        cached = s.get("cached", False)
        label = f"{s['name']} (cached)" if cached else s["name"]
        fig.add_trace(go.Bar(
            y=[y], x=[duration], base=start, orientation="h", name=label, showlegend=False,
            marker=dict(color="lightgreen" if cached else _COLOURS.get(s.get("type"), "lightblue"),
                        line=dict(color="gray", width=1)),
            hovertemplate=(f"<b>{label}</b><br>Start: {start:.1f} ms<br>"
                           f"Duration: {duration:.2f} ms<br>Depth: {s.get('depth', 0)}"
                           "<extra></extra>")))
        fig.add_annotation(x=start, y=y, text=s["name"], showarrow=False, xanchor="right")
    end = max((s["start_time"] - t0 + s["duration"]) * 1000 for s in span_data)
    fig.update_layout(title="Pipeline Execution Waterfall", xaxis_title="Time (ms)",
                      barmode="overlay", height=max(400, len(spans) * 40),
                      yaxis=dict(showticklabels=False, range=[0.5, len(spans) + 0.5]),
                      xaxis=dict(range=[0, end * 1.1 or 1]), plot_bgcolor="white",
                      margin=dict(l=200, r=50, t=80, b=50))
    return fig
