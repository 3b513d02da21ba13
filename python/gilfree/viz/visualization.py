"""Draw a pipeline (``Pipeline.visualize``): gilfree's own SVG layout, or Graphviz.

The drawing is built here in plain Python once, as DOT source (``to_dot``) and as a
plain model that ``svg_layout`` lays out as SVG (``to_svg``), so ``visualize()``
shows a picture with nothing installed.  Graphviz (the ``graphviz`` package when it is
importable, else the ``dot`` executable) is used when its programs are installed or
asked for with ``engine="graphviz"``, and is needed for PNG/PDF files.  See
docs/visualization.md.
"""

from __future__ import annotations

import inspect
import os
import re
import reprlib
import shutil
import subprocess
import typing
import warnings
from typing import Any

from ..errors import GilfreeError
from .themes import DEFAULT_THEME, DESIGN_STYLES, GraphvizTheme, resolve_theme

ORIENTS = ("TB", "LR", "BT", "RL")
_INSTALL_HINT = (
    "rendering with Graphviz (PNG/PDF files, engine='graphviz') needs Graphviz: "
    "`pip install graphviz` (the `viz` extra of gilfree) and install the "
    "Graphviz programs (`apt-get install graphviz` or `brew install graphviz`). "
    "The DOT source is available without it: gilfree.visualization.to_dot(pipeline)"
)


class GraphvizNotFoundError(GilfreeError, ImportError, RuntimeError):
    """Neither the ``graphviz`` package nor the ``dot`` executable is available."""

    def __init__(self, msg: str = _INSTALL_HINT):
        super().__init__(msg)


# -- labels -------------------------------------------------------------------------
def _esc(text: Any) -> str:
    """Escape for a Graphviz HTML-like label (all our labels are HTML-like)."""
    text = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace('"', "&quot;").replace("\n", " ")


def _short_repr(value: Any, limit: int = 30) -> str:
    r = reprlib.Repr()
    r.maxstring = r.maxother = limit
    text = " ".join(r.repr(value).split())  # one line, whatever the object prints
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _annotations(func: Any) -> dict[str, Any]:
    """Parameter and ``return`` annotations of a node's function ({} when none)."""
    if func is None:
        return {}
    try:  # resolves string annotations (``from __future__ import annotations``)
        return typing.get_type_hints(func)
    except Exception:  # unresolvable forward reference, or not a plain function
        try:
            sig = inspect.signature(func)
        except (TypeError, ValueError):
            return {}
        hints = {n: p.annotation for n, p in sig.parameters.items()
                 if p.annotation is not p.empty}
        if sig.return_annotation is not sig.empty:
            hints["return"] = sig.return_annotation
        return hints


def _fmt_type(t: Any) -> str:
    if t is type(None):  # get_type_hints turns ``-> None`` into NoneType
        return "None"
    return t if isinstance(t, str) else inspect.formatannotation(t)


def _output_types(func: Any, outputs: tuple[str, ...]) -> dict[str, str]:
    """The return type per output: ``-> tuple[A, B]`` is split over two outputs."""
    ret = _annotations(func).get("return")
    if ret is None:
        return {}
    if len(outputs) == 1:
        return {outputs[0]: _fmt_type(ret)}
    args = typing.get_args(ret) if typing.get_origin(ret) is tuple else ()
    if len(args) == len(outputs) and Ellipsis not in args:
        return {o: _fmt_type(a) for o, a in zip(outputs, args)}
    return {}


def _renamed(label: str | None, old: str, new: str) -> str | None:
    """Edge label across a mapping: ``y → y1``, chained to ``y → y1 → x`` when both."""
    if old == new:
        return label
    start = label if label and label.split(" → ")[-1] == old else old
    return f"{start} → {new}"


def _attrs(**attrs: str) -> str:
    # Labels are HTML-like (<...>) so that names can be bold and types small.
    return ", ".join(f"{k}=<{v}>" if k == "label" else f'{k}="{v}"' for k, v in attrs.items())


# -- DOT construction ---------------------------------------------------------------
class _DotBuilder:
    """Accumulates DOT lines; ``draw`` is called once per (nested) pipeline."""

    def __init__(self, show_types: bool, theme: GraphvizTheme = DEFAULT_THEME):
        self.show_types = show_types
        self.theme = theme
        self.lines: list[str] = []
        # Edges are written after all nodes, at top level: an edge written inside a
        # cluster would pull its outer endpoint into that cluster.
        self.edges: list[str] = []
        self._used: set[str] = set()
        # The same drawing as a plain model, for the SVG layout that needs no Graphviz
        # (svg_layout): boxes with text rows, clusters, edges.
        self.nodes: dict[str, dict[str, Any]] = {}
        self.clusters: dict[str, dict[str, Any]] = {}
        self.model_edges: list[tuple[str, str, str | None]] = []
        self._cluster: str | None = None
        self.orient, self.title = "TB", None

    def new_id(self, hint: str) -> str:
        # Readable but unique: two nested pipelines may both contain a node "clean".
        base = re.sub(r"\W", "_", hint) or "n"
        nid, k = base, 1
        while nid in self._used:
            k += 1
            nid = f"{base}_{k}"
        self._used.add(nid)
        return nid

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def edge(self, src: str, dst: str, label: str | None) -> None:
        extra = f" [{_attrs(label=_esc(label))}]" if label else ""
        self.model_edges.append((src, dst, label))
        self.edges.append(f'    "{src}" -> "{dst}"{extra};')

    def draw(self, pipeline: Any, depth: int | None, scope: str, indent: int,
             feeds: dict[str, tuple[str, str | None]]) -> dict[str, tuple[str, str | None]]:
        """Draw ``pipeline``'s inputs and nodes.

        ``feeds`` maps an input name to the (node id, edge label) that provides it from
        the enclosing pipeline.  Returns the same for every output drawn here, so that
        outer consumers can draw their edges to the node that really produces it.
        """
        graph = pipeline.graph
        bound = pipeline.bound_inputs
        sources: dict[str, tuple[str, str | None]] = {}
        for arg in graph.root_args:
            if arg in feeds and arg not in bound:
                sources[arg] = feeds[arg]
                continue
            nid = self.new_id(f"{scope}input_{arg}")
            sources[arg] = (nid, None)
            if arg in bound:  # dashed: a default the caller need not pass
                text = f"{arg} = {_short_repr(bound[arg])}"
                label, style = _esc(text), "dashed"
            else:
                label, style = _esc(arg), "dotted" if arg in graph.optional_args else "solid"
                text = arg
                typ = self._input_type(graph, arg)
                if typ:
                    label += f' <FONT POINT-SIZE="10">: {_esc(typ)}</FONT>'
                    text += f" : {typ}"
            self._record(nid, "input", [(text, "normal")], style)
            attrs = dict(shape="ellipse", style=style)
            if self.theme is not DEFAULT_THEME:  # gilfree's own inputs are unfilled
                attrs.update(style=f"filled,{style}", **self._paint("input"))
            self.emit(indent, f'"{nid}" [{_attrs(label=label, **attrs)}];')

        for n in graph.execution_order:
            # Execution order: every argument's source (input or producer) is known.
            inputs = {arg: sources[arg] for arg in n.root_args}
            self._draw_node(n, depth, scope, indent, inputs, sources)
        return sources

    def _input_type(self, graph: Any, arg: str) -> str | None:
        if not self.show_types:
            return None
        for n in graph.execution_order:  # the first consumer that annotates it wins
            if arg in n.root_args:
                typ = _annotations(getattr(n, "func", None)).get(arg)
                if typ is not None:
                    return _fmt_type(typ)
        return None

    def _draw_node(self, n: Any, depth: int | None, scope: str, indent: int,
                   inputs: dict[str, tuple[str, str | None]],
                   sources: dict[str, tuple[str, str | None]]) -> None:
        nested = getattr(n, "is_pipeline_node", False)
        if nested and (depth is None or depth > 1):
            cid = self.new_id(f"{scope}{n.name}")
            self.emit(indent, f"subgraph cluster_{cid} {{")
            self.emit(indent + 1, f"label=<<B>{_esc(n.name)}</B>{self._mapped(n)}>;")
            self.emit(indent + 1, 'style="rounded,filled"; fillcolor="#f4f6fb"; color="#7a8bb5";')
            self.clusters[cid] = {"rows": [(n.name, "bold")] + self._mapped_rows(n),
                                  "parent": self._cluster}
            outer_cluster, self._cluster = self._cluster, cid
            # Across the boundary an edge is labelled "outer → inner" when renamed.
            feeds = {}
            for outer, (src, label) in inputs.items():
                inner = n.inner_name(outer)
                feeds[inner] = (src, _renamed(label, outer, inner))
            inner_out = self.draw(n.pipeline, None if depth is None else depth - 1,
                                  f"{cid}__", indent + 1, feeds)
            self._cluster = outer_cluster
            self.emit(indent, "}")
            for inner in n.inner_outputs:
                outer = n.output_mapping.get(inner, inner)
                src, label = inner_out[inner]
                sources[outer] = (src, _renamed(label, inner, outer))
            return

        nid = self.new_id(f"{scope}{n.name}")
        outs = tuple(n.output_names)
        types = _output_types(getattr(n, "func", None), outs) if self.show_types else {}
        rows = [f"<B>{_esc(n.name)}</B>"]
        plain = [(n.name, "bold")]
        if nested:  # collapsed: one box for the whole inner pipeline
            rows[0] += self._mapped(n)
            plain += self._mapped_rows(n)
            kind = "pipeline"
            attrs = dict(shape="box3d", style="filled", **self._paint(kind))
        elif getattr(n, "is_dual_node", False):
            tags = "batch, stateful" if getattr(n, "is_stateful", False) else "batch"
            rows.append(f'<I><FONT POINT-SIZE="10">[{tags}]</FONT></I>')
            plain.append((f"[{tags}]", "italic"))
            kind = "dual"
            attrs = dict(shape="box", style="rounded,filled", **self._paint(kind),
                         peripheries="2")
        else:
            kind = "func"
            attrs = dict(shape="box", style="rounded,filled", **self._paint(kind))
        for o in outs:
            typ = f" : {types[o]}" if o in types else ""
            rows.append(f'<FONT POINT-SIZE="10">→ {_esc(o)}{_esc(typ)}</FONT>')
            plain.append((f"→ {o}{typ}", "small"))
        self._record(nid, kind, plain)
        self.emit(indent, f'"{nid}" [{_attrs(label="<BR/>".join(rows), **attrs)}];')
        for arg, (src, label) in inputs.items():
            self.edge(src, nid, label)
        # Label edges out of a multi-output node with the output they carry.
        for o in outs:
            sources[o] = (nid, o if len(outs) > 1 else None)

    def _paint(self, kind: str) -> dict[str, str]:
        """DOT colour attributes of a box of ``kind`` in the theme.  gilfree's own look
        sets only the fill (its DOT output stays as it always was); any other theme
        also gives the outline and text colours."""
        c = self.theme.colors(kind)
        if self.theme is DEFAULT_THEME:
            return {"fillcolor": c.fill}
        return {"fillcolor": c.fill, "color": str(c.outline), "fontcolor": c.text}

    def _record(self, nid: str, kind: str, rows: list, style: str = "solid") -> None:
        self.nodes[nid] = {"kind": kind, "rows": rows, "style": style,
                           "cluster": self._cluster}

    def dot(self) -> str:
        return "digraph pipeline {\n" + "\n".join(self.lines + self.edges) + "\n}\n"

    def svg(self) -> str:
        from .svg_layout import layout_svg

        return layout_svg(self.nodes, self.clusters, self.model_edges, self.orient,
                          self.title, self.theme)

    @staticmethod
    def _mapped_rows(n: Any) -> list:
        return [(f"map over {', '.join(n.map_over)}", "small")] if n.map_over else []

    @staticmethod
    def _mapped(n: Any) -> str:
        if not n.map_over:
            return ""
        return f'<BR/><FONT POINT-SIZE="10">map over {_esc(", ".join(n.map_over))}</FONT>'


def to_dot(pipeline: Any, depth: int | None = 1, orient: str = "TB",
           show_types: bool = True, style: Any = None) -> str:
    """The Graphviz DOT source of ``pipeline`` (pure Python; Graphviz not needed).

    ``depth=1`` draws nested pipelines as one node each; ``depth=2`` expands one level
    of nesting into clusters, and ``depth=None`` expands every level.  ``style``: a
    name of ``DESIGN_STYLES`` or a ``GraphvizTheme`` (None: gilfree's own colours).
    """
    return _build(pipeline, depth, orient, show_types, style).dot()


def to_svg(pipeline: Any, depth: int | None = 1, orient: str = "TB",
           show_types: bool = True, style: Any = None) -> str:
    """``pipeline`` drawn as SVG by gilfree's own layout (pure Python; no Graphviz)."""
    return _build(pipeline, depth, orient, show_types, style).svg()


def _theme(style: Any) -> GraphvizTheme:
    """The theme for ``style=``.  A name that is not a style warns and draws in the
    default colours rather than raising: HyperNodes falls back to its default for
    unknown names, and its tests and docs pass names it does not have ("dark",
    "minimal", "modern"), so raising would break HyperNodes code."""
    if isinstance(style, str) and style not in DESIGN_STYLES:
        warnings.warn(f"unknown style {style!r}, drawn in the default colours: use a "
                      f"GraphvizTheme or one of {sorted(DESIGN_STYLES)}", UserWarning,
                      stacklevel=_caller_level())
        return DEFAULT_THEME
    return resolve_theme(style)  # anything else that is not a theme: ValueError


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside gilfree (the user's call, whether
    it went through ``Pipeline.visualize``, ``visualize`` or ``to_dot``)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # gilfree/
    frame, level = inspect.currentframe(), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(here):
        frame, level = frame.f_back, level + 1
    return level - 1  # counted from warnings.warn's caller, not from this helper


def _build(pipeline: Any, depth: int | None, orient: str, show_types: bool,
           style: Any = None) -> "_DotBuilder":
    if depth is not None and (not isinstance(depth, int) or isinstance(depth, bool) or depth < 1):
        raise ValueError(f"depth={depth!r} must be an integer >= 1, or None (expand all)")
    if orient not in ORIENTS:
        raise ValueError(f"orient={orient!r} must be one of {list(ORIENTS)}")
    theme = _theme(style)
    b = _DotBuilder(show_types, theme)
    title = f' label=<{_esc(pipeline.name)}>; labelloc="t";' if pipeline.name else ""
    b.emit(1, f"rankdir={orient};{title}")
    font = theme.font_name
    b.emit(1, f'graph [fontname="{font}"]; node [fontname="{font}", '
              f'fontsize="{theme.base_font_size}"]; edge [fontname="{font}", '
              f'fontsize="{theme.edge_font_size}", color="{theme.edge_color}"];')
    b.draw(pipeline, depth, "", 1, {})
    b.orient, b.title = orient, pipeline.name
    return b


# -- rendering ----------------------------------------------------------------------
# visualize(engine=...): "graphviz" asks for Graphviz; HyperNodes' interactive engines
# ("ipywidget", interactive=True) and "svg"/"html" get gilfree's own SVG layout, which
# shows inline in Jupyter and needs nothing installed; "auto" (the default) uses
# Graphviz when its programs are installed and the own layout otherwise.
BUILTIN_ENGINES = ("svg", "html", "ipywidget", "widget", "interactive", "gilfree", "builtin")
ENGINES = ("auto", "graphviz") + BUILTIN_ENGINES
_OWN_FORMATS = ("svg", "html", "htm", "dot", "gv")


def graphviz_available() -> bool:
    """Whether ``render`` can work here.

    The ``graphviz`` package only wraps the ``dot`` executable, so ``dot`` on PATH is
    what counts either way.
    """
    return shutil.which("dot") is not None


def render(source: str, format: str = "svg") -> bytes:
    """Run Graphviz on DOT ``source``; the output file's bytes in ``format``."""
    try:
        import graphviz as gv
    except ImportError:
        gv = None
    if gv is not None:
        try:
            return gv.Source(source).pipe(format=format)
        except gv.ExecutableNotFound as exc:  # the package is a wrapper around `dot`
            raise GraphvizNotFoundError() from exc
    dot = shutil.which("dot")
    if dot is None:
        raise GraphvizNotFoundError()
    proc = subprocess.run([dot, f"-T{format}"], input=source.encode(), capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"Graphviz `dot -T{format}` failed: "
                           f"{proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def _html_page(svg: str, title: str) -> str:
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{_esc(title)}</title></head>\n<body>\n{svg}\n</body></html>\n")


class PipelineDrawing:
    """A drawn pipeline: shows inline in Jupyter, ``.source`` is the DOT text.

    ``engine`` is ``"graphviz"`` (SVG and every other format from the ``dot``
    program) or ``"svg"`` (gilfree's own layout: SVG and HTML with nothing installed;
    other formats still need Graphviz).
    """

    def __init__(self, source: str, engine: str = "graphviz",
                 svg: str | None = None, name: str | None = None):
        self.source = source
        self.engine = engine
        self.name = name or "pipeline"
        self._svg = svg

    @property
    def svg(self) -> str:
        """The SVG text of the drawing (computed once)."""
        if self._svg is None:
            data = render(self.source, "svg").decode("utf-8")
            # Graphviz writes an XML prolog and DOCTYPE: not allowed inside HTML.
            self._svg = data[data.index("<svg"):] if "<svg" in data else data
        return self._svg

    def pipe(self, format: str = "svg") -> bytes:
        if format == "svg":
            return self.svg.encode("utf-8")
        if format in ("html", "htm"):
            return _html_page(self.svg, self.name).encode("utf-8")
        return render(self.source, format)

    def save(self, filename: str | os.PathLike) -> str:
        """Write ``filename``; its extension picks the format (``.dot``: the source).

        ``.svg``, ``.html`` and ``.dot`` need nothing installed; other formats (``.png``,
        ``.pdf``, ...) need Graphviz (``GraphvizNotFoundError`` says what to install).
        """
        filename = os.fspath(filename)
        ext = os.path.splitext(filename)[1].lower().lstrip(".")
        if not ext:
            raise ValueError(f"filename {filename!r} needs an extension: "
                             ".svg, .html, .dot, or .png/.pdf (with Graphviz)")
        if ext not in _OWN_FORMATS and not graphviz_available():
            raise GraphvizNotFoundError(
                f"writing {filename!r} (.{ext}) needs Graphviz; .svg, .html and .dot "
                f"files need nothing installed. {_INSTALL_HINT}")
        data = self.source.encode() if ext in ("dot", "gv") else self.pipe(ext)
        with open(filename, "wb") as f:
            f.write(data)
        return filename

    def _repr_svg_(self) -> str | None:
        try:
            return self.svg
        except GraphvizNotFoundError:  # Graphviz went away: Jupyter shows __repr__
            return None

    def _repr_html_(self) -> str | None:
        svg = self._repr_svg_()
        if svg is None:
            return None
        # Scroll rather than shrink a wide pipeline to unreadable text.
        return f'<div class="gilfree-drawing" style="overflow:auto;max-width:100%">{svg}</div>'

    def __str__(self) -> str:
        return self.source

    def __repr__(self) -> str:
        return (f"<PipelineDrawing {self.name!r} ({self.engine}): "
                f"{self.source.count(chr(10))} lines of DOT>")


def _pick_engine(engine: Any, interactive: bool) -> str:
    if interactive:  # HyperNodes' interactive=True: its widget; here the own HTML view
        return "svg"
    if engine is None:
        engine = "auto"
    if not isinstance(engine, str) or engine.lower() not in ENGINES:
        raise ValueError(f"engine={engine!r} is not known: use one of {list(ENGINES)} "
                         "(custom engine objects are not supported)")
    engine = engine.lower()
    if engine == "auto":
        return "graphviz" if graphviz_available() else "svg"
    if engine == "graphviz":
        if not graphviz_available():  # asked for by name: say what is missing
            raise GraphvizNotFoundError(
                "engine='graphviz' needs Graphviz; without it, leave engine out (the "
                f"default draws with gilfree's own SVG layout). {_INSTALL_HINT}")
        return "graphviz"
    return "svg"


def visualize(pipeline: Any, filename: str | os.PathLike | None = None,
              engine: Any = "auto", depth: int | None = 1, orient: str = "TB",
              show_types: bool = True, interactive: bool = False,
              style: Any = None, **_: Any) -> PipelineDrawing:
    """Draw ``pipeline``; write ``filename`` if given (format from its extension).

    Returns a ``PipelineDrawing`` either way.  ``style``: a name of ``DESIGN_STYLES``
    or a ``GraphvizTheme``, used by both renderers (an unknown name warns and draws in
    the default colours, as HyperNodes does).  Options HyperNodes knows but gilfree
    does not draw (``show_legend``, ``group_inputs``, ``separate_outputs``,
    ``return_type``, ...) are accepted and ignored.
    """
    kind = _pick_engine(engine, interactive)
    b = _build(pipeline, depth, orient, show_types, style)
    drawing = PipelineDrawing(b.dot(), engine=kind, svg=b.svg() if kind == "svg" else None,
                              name=pipeline.name)
    if filename is not None:
        drawing.save(filename)
    return drawing
