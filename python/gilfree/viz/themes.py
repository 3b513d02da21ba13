"""Colour themes for pipeline drawings: HyperNodes' ``GraphvizTheme`` and
``DESIGN_STYLES`` (``from gilfree import DESIGN_STYLES, GraphvizTheme``).

A theme says, per kind of box, the fill, outline and text colour, plus the edge colour
and font. The kinds are HyperNodes' ``node_styles`` keys: ``"function"``, ``"dual"``,
``"pipeline"``, ``"data"`` (inputs); ``colors(kind)`` also takes the drawing's own
names (``"func"``, ``"input"``). ``resolve_theme(style)`` turns what
``visualize(style=...)`` was given (a name, a theme, or None) into a theme.

``DESIGN_STYLES["default"]`` is gilfree's own look; ``"hypernodes"`` is HyperNodes'
default palette, and every other name of HyperNodes' registry is here with its
colours. Plain data, no dependencies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

EDGE_LIGHT = "#1e293b"
EDGE_DARK = "#e2e8f0"


def calculate_outline(hex_color: str, factor: float = 0.7) -> str:
    """A darker shade of ``hex_color`` (``#rrggbb`` or ``#rgb``), for outlines."""
    c = hex_color.lstrip("#")
    if len(c) == 3:
        c = "".join(x * 2 for x in c)
    try:
        rgb = [max(0, min(255, int(int(c[i:i + 2], 16) * factor))) for i in (0, 2, 4)]
    except ValueError:
        return hex_color
    return "#" + "".join(f"{v:02x}" for v in rgb) if len(c) == 6 else hex_color


@dataclass(frozen=True)
class ColorPair:
    """A box's fill, outline (a darker fill when not given) and text colour."""

    fill: str
    outline: str | None = None
    text: str = "#000000"

    def __post_init__(self) -> None:
        if self.outline is None:
            object.__setattr__(self, "outline", calculate_outline(self.fill))


@dataclass
class NodeStyle:
    """How one kind of box looks; ``graphviz_attrs`` gives the DOT node attributes."""

    shape: str = "box"
    style: str = "filled,rounded"
    is_bold: bool = False
    margin: str = "0.1"
    penwidth: str = "1.5"
    color: ColorPair = field(default_factory=lambda: ColorPair(fill="#c7c7c7"))

    @property
    def graphviz_attrs(self) -> dict[str, str]:
        return {"shape": self.shape, "style": self.style, "fillcolor": self.color.fill,
                "color": str(self.color.outline), "fontcolor": self.color.text,
                "margin": self.margin, "penwidth": self.penwidth}


#: the drawing's kinds -> HyperNodes' node_styles keys
_KIND = {"func": "function", "input": "data", "bound_data": "data", "group": "data"}


@dataclass
class GraphvizTheme:
    """A complete look: fonts, edge colour, DOT attributes and one style per kind."""

    font_name: str = "Helvetica"
    base_font_size: int = 12
    edge_font_size: int = 10
    edge_color: str = EDGE_LIGHT
    graph_attr: dict[str, str] = field(default_factory=dict)
    node_attr_defaults: dict[str, str] = field(default_factory=dict)
    edge_attr: dict[str, str] = field(default_factory=dict)
    node_styles: dict[str, NodeStyle] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.graph_attr = self.graph_attr or {"ranksep": "0.7", "nodesep": "0.5",
                                              "bgcolor": "transparent"}
        self.node_attr_defaults = self.node_attr_defaults or {
            "shape": "plain", "style": "filled,rounded", "fontname": self.font_name,
            "fontsize": str(self.base_font_size), "margin": "0.05"}
        self.edge_attr = self.edge_attr or {
            "fontname": self.font_name, "fontsize": str(self.edge_font_size),
            "penwidth": "1.5", "color": self.edge_color, "arrowsize": "0.7",
            "arrowhead": "vee"}

    def colors(self, kind: str) -> ColorPair:
        """The colours of a box of ``kind`` (a dual node without its own style is
        drawn as a function; anything unknown in grey)."""
        key = _KIND.get(kind, kind)
        style = self.node_styles.get(key) or (self.node_styles.get("function")
                                              if key == "dual" else None)
        return style.color if style is not None else ColorPair(fill="#c7c7c7")


def create_custom_theme(func_color: ColorPair, pipe_color: ColorPair, input_color: ColorPair,
                        edge_color: str = EDGE_LIGHT, dual_color: ColorPair | None = None
                        ) -> GraphvizTheme:
    """A theme from the colours of function, pipeline and input boxes (as HyperNodes')."""
    return GraphvizTheme(edge_color=edge_color, node_styles={
        "function": NodeStyle(is_bold=True, color=func_color),
        "pipeline": NodeStyle(is_bold=True, color=pipe_color),
        "dual": NodeStyle(is_bold=True, color=dual_color or func_color),
        "data": NodeStyle(color=input_color),
        "bound_data": NodeStyle(color=input_color),
        "group": NodeStyle(color=input_color),
        "bound_group": NodeStyle(color=input_color),
    })


def _pairs(*spec: tuple[str, str, str]) -> list[ColorPair]:
    return [ColorPair(*s) for s in spec]


_B = "#000000"
#: name -> (function, pipeline, input) colours (fill, outline, text) and edge colour;
#: HyperNodes' registry, its "default" under the name "hypernodes".
_HYPERNODES = {
    "hypernodes": (("#ffd8a8", "#f08c00", _B), ("#d0bfff", "#6741d9", _B), ("#b2f2bb", "#2f9e44", _B), EDGE_LIGHT),
    "legacy": (("#87D3F9", "#5e93ae", _B), ("#D5BCFE", "#9583b1", _B), ("#FFC661", "#b28a43", _B), EDGE_LIGHT),
    "dark_neon_solid": (("#08F7FE", "#FFFFFF", _B), ("#FE53BB", "#FFFFFF", _B), ("#39FF14", "#FFFFFF", _B), "#FFFFFF"),
    "dark_neon_wire": (("#0a1a1c", "#08F7FE", "#08F7FE"), ("#1a0a16", "#FE53BB", "#FE53BB"), ("#0a1a0a", "#39FF14", "#39FF14"), EDGE_DARK),
    "dark_neon": (("#00e5ff", "#ffffff", _B), ("#d500f9", "#ffffff", "#ffffff"), ("#00e676", "#ffffff", _B), EDGE_DARK),
    "dark_soft": (("#4dd0e1", "#b2ebf2", _B), ("#e040fb", "#f3e5f5", "#ffffff"), ("#69f0ae", "#b9f6ca", _B), EDGE_DARK),
    "dark_deep": (("#01579b", "#4fc3f7", "#e1f5fe"), ("#4a148c", "#ea80fc", "#f3e5f5"), ("#1b5e20", "#69f0ae", "#e8f5e9"), EDGE_DARK),
    "bright_mint": (("#9ee0ff", "#6e9cb2", _B), ("#e7b3ff", "#a17db2", _B), ("#b7f5ce", "#80ab90", _B), EDGE_LIGHT),
    "sunny": (("#B0EEB9", "#7ba681", _B), ("#EBBCF6", "#a483ac", _B), ("#FBE897", "#afa269", _B), EDGE_LIGHT),
    "coral_sunset": (("#A3D5FC", "#7295b0", _B), ("#FBC7C7", "#af8b8b", _B), ("#fdba74", "#b18251", _B), EDGE_LIGHT),
    "tailwind_pastel": (("#7dd3fc", "#5793b0", _B), ("#fdba74", "#b18251", _B), ("#86efac", "#5da778", _B), EDGE_LIGHT),
    "cool_breeze": (("#9ee0ff", "#6e9cb2", _B), ("#7dd3fc", "#5793b0", _B), ("#b7f5ce", "#80ab90", _B), EDGE_LIGHT),
    "warm_glow": (("#FBE897", "#afa269", _B), ("#FBC7C7", "#af8b8b", _B), ("#fdba74", "#b18251", _B), EDGE_LIGHT),
    "lavender_fields": (("#86efac", "#5da778", _B), ("#e7b3ff", "#a17db2", _B), ("#EBBCF6", "#a483ac", _B), EDGE_LIGHT),
    "vivid_pastel": (("#7dd3fc", "#5793b0", _B), ("#EBBCF6", "#a483ac", _B), ("#FBE897", "#afa269", _B), EDGE_LIGHT),
    "nord_soft": (("#88C0D0", "#5f8691", _B), ("#A3BE8C", "#728562", _B), ("#E5E9F0", "#a0a3a8", _B), EDGE_LIGHT),
    "soft_candy": (("#BDE0FE", "#849cb1", _B), ("#FFC8DD", "#b28c9a", _B), ("#CDB4DB", "#8f7d99", _B), EDGE_LIGHT),
    "warm_flow": (("#F8AD9D", "#ad796d", _B), ("#FFDAB9", "#b29881", _B), ("#FBC4AB", "#af8977", _B), EDGE_LIGHT),
    "tropical_ocean": (("#A5FFD6", "#73b295", _B), ("#84DCC6", "#5c9a8a", _B), ("#FFA69E", "#b2746e", _B), EDGE_LIGHT),
    "sunrise": (("#79ADDC", "#54799a", _B), ("#FFC09F", "#b2866f", _B), ("#FFEE93", "#b2a666", _B), EDGE_LIGHT),
}

#: gilfree's own look (the colours of its drawings when no style is given).
DEFAULT_THEME = create_custom_theme(
    ColorPair("#e3f1e3", "#4f8a4f"), ColorPair("#dde4f7", "#5a6fa8"),
    ColorPair("#ffffff", "#666666"), edge_color="#555555",
    dual_color=ColorPair("#fde9c9", "#c98a2b"))

#: name -> theme, for ``visualize(style="name")``
DESIGN_STYLES: dict[str, GraphvizTheme] = {"default": DEFAULT_THEME}
DESIGN_STYLES.update({name: create_custom_theme(*_pairs(f, p, i), edge_color=edge)
                      for name, (f, p, i, edge) in _HYPERNODES.items()})


def resolve_theme(style: Any = None) -> GraphvizTheme:
    """The theme ``style`` names: None or ``"default"`` gives gilfree's look, a name of
    ``DESIGN_STYLES`` that theme, a ``GraphvizTheme`` itself; else ``ValueError``."""
    if style is None:
        return DEFAULT_THEME
    if isinstance(style, GraphvizTheme):
        return style
    if isinstance(style, str) and style in DESIGN_STYLES:
        return DESIGN_STYLES[style]
    raise ValueError(f"unknown style {style!r}: use a GraphvizTheme or one of "
                     f"{sorted(DESIGN_STYLES)}")
