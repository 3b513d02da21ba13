"""Pipeline.visualize without Graphviz: gilfree's own SVG layout (gilfree._svg_layout)."""

from __future__ import annotations

import builtins
import re
import shutil
import xml.etree.ElementTree as ET

import pytest

from gilfree import DualNode, Pipeline, node
from gilfree import visualization as viz
from gilfree.visualization import PipelineDrawing, to_svg

SVG = "{http://www.w3.org/2000/svg}"


@node(output_name="cleaned")
def clean(text: str) -> str:
    return text.strip()


@node(output_name=("words", "count"))
def split(cleaned: str, sep: str = " ") -> tuple[list, int]:
    parts = cleaned.split(sep)
    return parts, len(parts)


@node(output_name="report")
def report(n, prefix):
    return f"{prefix}{n}"


@node(output_name="y")
def step(x):
    return x + 1


@node(output_name="z")
def step2(y):
    return y * 2


def _nested() -> Pipeline:
    prep = Pipeline([clean, split], name="prep")
    deep = Pipeline([step2], name="deep")
    mid = Pipeline([step, deep.as_node()], name="mid")
    return Pipeline([prep.as_node(input_mapping={"doc": "text"},
                                  output_mapping={"count": "n"}, map_over="doc"),
                     report, mid.as_node()], name="outer").bind(prefix="n=")


@pytest.fixture
def no_graphviz(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "graphviz" or name.startswith("graphviz."):
            raise ImportError("No module named 'graphviz'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)


def _boxes(svg: str) -> dict[str, tuple[float, float, float, float]]:
    """Node id -> (x0, y0, x1, y1) of its (front) shape."""
    out = {}
    for g in ET.fromstring(svg).iter(f"{SVG}g"):
        if "node" not in g.get("class", "").split():
            continue
        shapes = [e for e in g if e.tag in (f"{SVG}rect", f"{SVG}ellipse")]
        e = shapes[-1] if g.get("class") == "node pipeline" else shapes[0]
        if e.tag == f"{SVG}ellipse":
            cx, cy, rx, ry = (float(e.get(k)) for k in ("cx", "cy", "rx", "ry"))
            out[g.get("data-id")] = (cx - rx, cy - ry, cx + rx, cy + ry)
        else:
            x, y, w, h = (float(e.get(k)) for k in ("x", "y", "width", "height"))
            out[g.get("data-id")] = (x, y, x + w, y + h)
    return out


def _clusters(svg: str) -> dict[str, tuple[float, float, float, float]]:
    out = {}
    for g in ET.fromstring(svg).iter(f"{SVG}g"):
        if g.get("class") == "cluster":
            r = g.find(f"{SVG}rect")
            x, y, w, h = (float(r.get(k)) for k in ("x", "y", "width", "height"))
            out[g.find(f"{SVG}title").text] = (x, y, x + w, y + h)
    return out


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _inside(a, b) -> bool:
    return b[0] <= a[0] and b[1] <= a[1] and a[2] <= b[2] and a[3] <= b[3]


def test_visualize_draws_without_graphviz(no_graphviz, tmp_path):
    drawing = _nested().visualize()
    assert isinstance(drawing, PipelineDrawing) and drawing.engine == "svg"
    svg = drawing._repr_svg_()
    ET.fromstring(svg)  # well-formed
    assert set(_boxes(svg)) == {"input_doc", "input_sep", "input_prefix", "input_x",
                                "prep", "report", "mid"}
    for text in ("prep", "map over doc", "→ n", "prefix = 'n='", "→ report", "outer"):
        assert f">{text}<".replace("'", "&#x27;") in svg
    html = drawing._repr_html_()
    assert html.startswith("<div") and svg in html
    drawing.save(tmp_path / "p.svg")
    assert (tmp_path / "p.svg").read_text() == svg
    _nested().visualize(filename=str(tmp_path / "p.html"))
    page = (tmp_path / "p.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page


def test_hypernodes_engines_and_options(no_graphviz):
    p = _nested()
    for kwargs in ({"engine": "ipywidget"}, {"engine": "html"}, {"engine": "svg"},
                   {"interactive": True}, {"engine": None},
                   {"group_inputs": True, "style": "dark", "show_legend": True,
                    "separate_outputs": True, "return_type": "html", "flatten": False}):
        drawing = p.visualize(**kwargs)
        assert drawing.engine == "svg" and "<svg" in drawing._repr_html_()
    with pytest.raises(ValueError, match="engine='nope' is not known"):
        p.visualize(engine="nope")


def test_auto_engine_uses_graphviz_when_installed(monkeypatch):
    monkeypatch.setattr(viz, "graphviz_available", lambda: True)
    assert viz._pick_engine("auto", False) == "graphviz"
    assert viz._pick_engine("graphviz", False) == "graphviz"
    assert viz._pick_engine("ipywidget", False) == "svg"
    monkeypatch.setattr(viz, "graphviz_available", lambda: False)
    assert viz._pick_engine("auto", False) == "svg"


@pytest.mark.parametrize("orient", ["TB", "LR", "BT", "RL"])
@pytest.mark.parametrize("depth", [1, 2, None])
def test_layout_boxes_do_not_overlap(orient, depth):
    svg = to_svg(_nested(), depth=depth, orient=orient)
    boxes = _boxes(svg)
    ids = sorted(boxes)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            assert not _overlap(boxes[a], boxes[b]), (a, b)
    clusters = _clusters(svg)
    if depth == 1:
        assert not clusters and "prep" in boxes
    else:
        assert {"prep", "mid"} <= set(clusters) and "prep" not in boxes
        assert ("mid__deep" in clusters) == (depth is None)
        assert not _overlap(clusters["prep"], clusters["mid"])
        for nid, box in boxes.items():  # each box inside exactly its own clusters
            for cid, cbox in clusters.items():
                member = nid.startswith(cid + "__")
                assert _inside(box, cbox) if member else not _overlap(box, cbox), (nid, cid)
    # Every edge of the DOT drawing is drawn.
    assert svg.count('class="edge"') == len(re.findall(r" -> ", viz.to_dot(_nested(), depth)))


def test_layout_marks_node_kinds_and_escapes():
    def one(x):
        return x

    def batch(x):
        return x

    @node(output_name="a<b>&c")
    def weird(y: int) -> int:
        return y

    p = Pipeline([DualNode("y", one, batch), weird]).bind(x="</g>&")
    svg = to_svg(p, show_types=False)
    root = ET.fromstring(svg)  # special characters escaped: still well-formed
    kinds = {g.get("data-id"): g.get("class") for g in root.iter(f"{SVG}g")
             if g.get("data-id")}
    assert kinds == {"input_x": "node input", "one": "node dual", "weird": "node func"}
    assert "→ a&lt;b&gt;&amp;c" in svg and "[batch]" in svg
    assert 'stroke-dasharray="6,4"' in svg  # the bound input is dashed
    assert "<svg" in to_svg(Pipeline([]))  # an empty pipeline draws too


def test_graphviz_engine_when_installed(monkeypatch, tmp_path):
    """With Graphviz present the default draws with it (faked here: no `dot` in CI)."""
    calls = []

    def fake_render(source, format="svg"):
        calls.append(format)
        if format == "svg":  # what dot writes: a prolog that HTML cannot embed
            return b'<?xml version="1.0"?>\n<!DOCTYPE svg>\n<svg id="dot">x</svg>\n'
        return b"\x89PNG fake"

    monkeypatch.setattr(viz, "graphviz_available", lambda: True)
    monkeypatch.setattr(viz, "render", fake_render)
    drawing = _nested().visualize(filename=tmp_path / "p.png")
    assert drawing.engine == "graphviz" and calls == ["png"]
    assert (tmp_path / "p.png").read_bytes() == b"\x89PNG fake"
    assert drawing._repr_svg_() == '<svg id="dot">x</svg>\n'
    assert '<svg id="dot">' in drawing._repr_html_()
    assert _nested().visualize(engine="svg").engine == "svg"  # own layout when asked
