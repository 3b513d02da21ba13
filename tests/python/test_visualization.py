"""Pipeline.visualize: the DOT source (pure Python) and rendering with Graphviz."""

from __future__ import annotations

import builtins
import re
import shutil

import pytest

from gilfree import DualNode, Pipeline, node
from gilfree import visualization as viz
from gilfree.visualization import GraphvizNotFoundError, PipelineDrawing, to_dot


# The `graphviz` package is only a wrapper around the `dot` executable: without `dot`
# nothing can be rendered, with or without the package.
needs_graphviz = pytest.mark.skipif(
    shutil.which("dot") is None,
    reason="Graphviz is not installed (no `dot` executable on PATH): "
           "apt-get install graphviz / brew install graphviz",
)


@node(output_name="cleaned")
def clean(text: str) -> str:
    return text.strip()


@node(output_name=("words", "count"))
def split(cleaned: str, sep: str = " ") -> tuple[list, int]:
    parts = cleaned.split(sep)
    return parts, len(parts)


@node(output_name="report")
def summarize(count, prefix):
    return f"{prefix}{count}"


@node(output_name="report")
def report(n, prefix):
    return f"{prefix}{n}"


def _ids(dot: str) -> list[str]:
    """Declared node ids (lines like `"id" [label=...]`)."""
    return re.findall(r'^\s*"([^"]+)" \[', dot, flags=re.M)


def _edges(dot: str) -> set[tuple[str, str]]:
    return set(re.findall(r'"([^"]+)" -> "([^"]+)"', dot))


# -- DOT source ---------------------------------------------------------------------
def test_simple_pipeline_nodes_inputs_and_edges():
    dot = to_dot(Pipeline([clean, split, summarize], name="text"))
    assert dot.startswith("digraph") and dot.rstrip().endswith("}")
    assert "rankdir=TB" in dot and "label=<text>" in dot
    assert set(_ids(dot)) == {"input_text", "input_sep", "input_prefix",
                              "clean", "split", "summarize"}
    assert _edges(dot) == {("input_text", "clean"), ("clean", "split"),
                           ("input_sep", "split"), ("split", "summarize"),
                           ("input_prefix", "summarize")}
    # Output names with the return types, split over a tuple; parameter types on inputs.
    assert "→ cleaned : str" in dot
    assert "→ words : list" in dot and "→ count : int" in dot
    assert re.search(r'"input_text" \[label=<text <FONT[^>]*>: str</FONT>>', dot)
    # Edges out of a multi-output node say which output they carry.
    assert '"split" -> "summarize" [label=<count>]' in dot
    # An input with a default everywhere is optional: dotted.
    assert re.search(r'"input_sep" \[[^\n]*style="dotted"', dot)


def test_show_types_false_and_orient():
    dot = to_dot(Pipeline([clean, split]), show_types=False, orient="LR")
    assert "rankdir=LR" in dot
    assert ": str" not in dot and ": int" not in dot
    assert "→ cleaned" in dot


def test_bad_depth_and_orient_are_rejected():
    p = Pipeline([clean])
    with pytest.raises(ValueError, match="depth"):
        to_dot(p, depth=0)
    with pytest.raises(ValueError, match="orient"):
        to_dot(p, orient="sideways")


def test_dual_node_is_marked_as_batch():
    def scale_one(x: float, factor: float) -> float:
        return x * factor

    def scale_batch(x: list, factor: float) -> list:
        return [v * factor for v in x]

    dot = to_dot(Pipeline([DualNode("scaled", scale_one, scale_batch)]))
    line = next(l for l in dot.splitlines() if l.strip().startswith('"scale"'))
    assert "[batch]" in line and 'peripheries="2"' in line
    assert "→ scaled : float" in line


def test_bound_inputs_are_dashed_with_their_value():
    p = Pipeline([clean, split, summarize]).bind(prefix="n=", sep=",")
    dot = to_dot(p)
    assert re.search(r'"input_prefix" \[label=<prefix = \'n=\'>, [^\n]*style="dashed"', dot)
    assert re.search(r'"input_sep" \[label=<sep = \',\'>, [^\n]*style="dashed"', dot)
    assert re.search(r'"input_text" \[[^\n]*style="solid"', dot)
    # Long values are shortened to one line.
    dot = to_dot(Pipeline([summarize]).bind(prefix="x" * 500 + "\n"))
    label = re.search(r'"input_prefix" \[label=<([^\n]*)>, shape', dot).group(1)
    assert len(label) < 60 and "xxx" in label


def _nested():
    inner = Pipeline([clean, split], name="prep")
    mapped = inner.as_node(input_mapping={"doc": "text"}, output_mapping={"count": "n"},
                           map_over="doc")
    return Pipeline([mapped, report], name="outer")


def test_nested_collapsed_at_depth_1():
    dot = to_dot(_nested(), depth=1)
    line = next(l for l in dot.splitlines() if l.strip().startswith('"prep"'))
    assert 'shape="box3d"' in line and "map over doc" in line and "→ n" in line
    assert "cluster" not in dot
    assert "clean" not in dot and "split" not in dot  # inner nodes hidden
    assert ("input_doc", "prep") in _edges(dot)
    assert ("prep", "report") in _edges(dot)


def test_nested_expanded_at_depth_2_and_none():
    for depth in (2, None):
        dot = to_dot(_nested(), depth=depth)
        assert "subgraph cluster_prep {" in dot
        assert "map over doc" in dot
        assert {"prep__clean", "prep__split"} <= set(_ids(dot))
        assert "prep" not in _ids(dot)  # no collapsed box any more
        # Edges cross the mapping: outer name -> inner name, inner -> outer.
        assert '"input_doc" -> "prep__clean" [label=<doc → text>]' in dot
        assert '"prep__split" -> "report" [label=<count → n>]' in dot
        # The outer input is declared outside the cluster (not pulled into it).
        cluster = dot[dot.index("subgraph cluster_prep"):]
        cluster = cluster[:cluster.index("\n    }")]
        assert '"input_doc" [' not in cluster and "->" not in cluster


def test_depth_counts_levels_and_inner_bound_inputs_stay_inside():
    @node(output_name="y")
    def step(x: int) -> int:
        return x + 1

    @node(output_name="z")
    def step2(y, k):
        return y + k

    deep = Pipeline([step2], name="deep").bind(k=3)
    mid = Pipeline([step, deep], name="mid")
    top = Pipeline([mid], name="top")
    assert "step2" not in to_dot(top, depth=2) and "cluster_mid__deep" not in to_dot(top, depth=2)
    dot = to_dot(top, depth=3)
    assert to_dot(top, depth=None) == dot
    deep_cluster = dot[dot.index("subgraph cluster_mid__deep"):]
    assert '"mid__deep__input_k" [label=<k = 3>' in deep_cluster.split("}")[0]
    assert ("mid__step", "mid__deep__step2") in _edges(dot)


def test_labels_are_escaped():
    @node(output_name='a<b>&"c"')
    def f(x):
        return x

    p = Pipeline([f], name="<&>").bind(x="</TD>&")
    dot = to_dot(p)
    assert "label=<&lt;&amp;&gt;>" in dot
    assert "→ a&lt;b&gt;&amp;&quot;c&quot;" in dot
    assert "x = '&lt;/TD&gt;&amp;'" in dot
    for label in re.findall(r"label=<(.*?)>[,;\]]", dot):  # no raw specials left
        text = re.sub(r"</?(B|I|BR|FONT)[^>]*>", "", label)
        assert "<" not in text and ">" not in text and '"' not in text
        assert not re.search(r"&(?!amp;|lt;|gt;|quot;)", text)


def test_node_ids_are_unique_across_nested_pipelines():
    @node(output_name="y")
    def step(x: int) -> int:
        return x + 1

    a = Pipeline([step], name="stage").as_node(output_mapping={"y": "y1"})
    b = Pipeline([step], name="stage").as_node(input_mapping={"y1": "x"},
                                                 output_mapping={"y": "y2"})
    top = Pipeline([a, b])
    for depth in (1, 2):
        ids = _ids(to_dot(top, depth=depth))
        assert len(ids) == len(set(ids)) == 3  # input x and two nodes
    dot = to_dot(top, depth=2)
    assert "cluster_stage {" in dot and "cluster_stage_2 {" in dot
    assert '"stage__step" -> "stage_2__step" [label=<y → y1 → x>]' in dot
    assert top.run({"x": 1}) == {"y1": 2, "y2": 3}


@pytest.fixture
def no_graphviz(monkeypatch):
    """Neither the `graphviz` package nor the `dot` executable can be found."""
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "graphviz" or name.startswith("graphviz."):
            raise ImportError("No module named 'graphviz'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)


def test_dot_file_needs_no_graphviz(tmp_path, no_graphviz):
    assert not viz.graphviz_available()
    p = Pipeline([clean, split])
    drawing = p.visualize(filename=tmp_path / "p.dot")
    assert (tmp_path / "p.dot").read_text() == drawing.source == to_dot(p)
    assert "<svg" in drawing._repr_svg_()  # drawn by gilfree's own layout


# -- rendering ----------------------------------------------------------------------
@needs_graphviz
def test_render_svg_file(tmp_path):
    p = Pipeline([clean, split, summarize], name="text")
    out = tmp_path / "pipeline.svg"
    with pytest.warns(UserWarning, match="unknown style"):
        drawing = p.visualize(filename=str(out), depth=2, style="ignored-hypernodes-option")
    svg = out.read_text()
    assert "<svg" in svg and "summarize" in svg
    assert isinstance(drawing, PipelineDrawing)
    p.visualize(filename=tmp_path / "pipeline.png")
    assert (tmp_path / "pipeline.png").read_bytes()[:4] == b"\x89PNG"


@needs_graphviz
def test_inline_object_for_jupyter():
    drawing = _nested().visualize(depth=2)
    svg = drawing._repr_svg_()
    assert svg.lstrip().startswith("<?xml") or "<svg" in svg
    assert "prep" in svg and "clean" in svg
    assert drawing.source == to_dot(_nested(), depth=2) == str(drawing)
    assert drawing.pipe("svg").decode() == svg
    assert drawing.pipe(format="png")[:4] == b"\x89PNG"


def test_missing_graphviz_error(no_graphviz, tmp_path):
    """Only Graphviz's own formats, or engine="graphviz" by name, need Graphviz."""
    p = Pipeline([clean])
    for call in (lambda: p.visualize(filename=tmp_path / "p.png"),
                 lambda: p.visualize(engine="graphviz"),
                 lambda: PipelineDrawing(to_dot(p)).pipe("png")):
        with pytest.raises(GraphvizNotFoundError) as info:
            call()
        msg = str(info.value)
        assert "pip install graphviz" in msg and "gilfree[" not in msg
        assert "apt-get install graphviz" in msg and "brew install graphviz" in msg
    assert isinstance(info.value, ImportError) and isinstance(info.value, RuntimeError)
    with pytest.raises(GraphvizNotFoundError, match=r"\.svg, \.html and \.dot"):
        p.visualize(filename=tmp_path / "p.pdf")
    assert not (tmp_path / "p.png").exists() and not (tmp_path / "p.pdf").exists()
    assert "digraph" in to_dot(p)  # the source never needs Graphviz
