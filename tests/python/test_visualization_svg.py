"""Pipeline.visualize without Graphviz: gilfree's own SVG layout (gilfree.viz.svg_layout)."""

from __future__ import annotations

import builtins
import re
import shutil
import warnings
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
        with warnings.catch_warnings():  # "dark" is a HyperNodes name it does not have
            warnings.filterwarnings("ignore", "unknown style", UserWarning)
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


# -- style= (HyperNodes' themes) -----------------------------------------------------
def _fills(svg: str) -> dict[str, tuple[str, str]]:
    """node id -> (fill, stroke) of its first shape, from the SVG."""
    out = {}
    for g in ET.fromstring(svg).iter(f"{SVG}g"):
        if g.get("data-id"):
            shape = next(e for e in g if e.tag in (f"{SVG}rect", f"{SVG}ellipse"))
            out[g.get("data-id")] = (shape.get("fill"), shape.get("stroke"))
    return out


def _styled() -> Pipeline:
    def one(y):
        return y

    def batch(y):
        return y

    return Pipeline([step, DualNode("w", one, batch),
                     Pipeline([step2], name="inner").as_node()])


def test_named_style_colours_svg_and_dot(no_graphviz):
    from gilfree.viz_themes import DESIGN_STYLES

    p = _styled()
    plain = p.visualize()
    drawing = p.visualize(style="sunny")
    sunny = DESIGN_STYLES["sunny"]
    fills = _fills(drawing.svg)
    assert fills != _fills(plain.svg)
    for nid, kind in (("step", "func"), ("one", "dual"), ("inner", "pipeline"),
                      ("input_x", "input")):
        c = sunny.colors(kind)
        assert fills[nid] == (c.fill, c.outline), nid
        # The DOT text (Graphviz) is drawn in the same colours.
        assert re.search(rf'"{nid}" \[[^\n]*fillcolor="{c.fill}", color="{c.outline}"',
                         drawing.source), nid
    assert "#e3f1e3" not in drawing.svg + drawing.source  # none of gilfree's own fills
    assert f'color="{sunny.edge_color}"' in drawing.source
    assert f'stroke="{sunny.edge_color}"' in drawing.svg
    # None, "default" and the default theme itself all draw gilfree's own look.
    assert viz.to_dot(p, style="default") == viz.to_dot(p) == plain.source
    assert to_svg(p, style=DESIGN_STYLES["default"]) == plain.svg


def test_custom_theme_colours_appear(no_graphviz):
    from gilfree import GraphvizTheme
    from gilfree.viz_themes import ColorPair, NodeStyle, create_custom_theme

    theme = create_custom_theme(ColorPair("#112233", "#223344", "#fefefe"),
                                ColorPair("#445566"), ColorPair("#778899", "#8899aa"),
                                edge_color="#abcdef", dual_color=ColorPair("#123456"))
    drawing = _styled().visualize(style=theme)
    fills = _fills(drawing.svg)
    assert fills["step"] == ("#112233", "#223344")
    assert fills["one"][0] == "#123456" and fills["inner"][0] == "#445566"
    assert fills["input_x"] == ("#778899", "#8899aa")
    assert 'fill="#fefefe"' in drawing.svg  # the function boxes' text colour
    assert 'stroke="#abcdef"' in drawing.svg
    for text in ('fillcolor="#112233", color="#223344", fontcolor="#fefefe"',
                 'fillcolor="#123456"', 'fillcolor="#445566"', 'fillcolor="#778899"',
                 'color="#abcdef"'):
        assert text in drawing.source, text
    # A theme built the HyperNodes way: its font reaches the DOT text too.
    own = GraphvizTheme(font_name="Courier", edge_color="#010203",
                        node_styles={"function": NodeStyle(color=ColorPair("#fedcba"))})
    dot = viz.to_dot(_styled(), style=own)
    assert 'fontname="Courier"' in dot and 'color="#010203"' in dot
    assert '"step" [' in dot and 'fillcolor="#fedcba"' in dot


def test_unknown_style_warns_and_draws_default(no_graphviz):
    p = _styled()
    # HyperNodes draws unknown names in its default style (its own tests pass "dark"
    # and "minimal"), so gilfree warns instead of raising, naming the known styles.
    with pytest.warns(UserWarning, match=r"unknown style 'dark'.*'sunny'") as rec:
        drawing = p.visualize(style="dark")
    assert rec[0].filename == __file__  # points at the caller's line
    assert drawing.source == viz.to_dot(p)
    with pytest.raises(ValueError, match="unknown style 42.*GraphvizTheme"):
        p.visualize(style=42)
