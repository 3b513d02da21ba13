"""Draw a pipeline as SVG without Graphviz: a small layered (Sugiyama-style) layout.

``visualization._DotBuilder`` records what it draws as a plain model (boxes, clusters,
edges); this module lays that model out and writes SVG, so ``Pipeline.visualize()``
works on a machine with nothing but gilfree installed (no system package, no extra
dependency: design.md prefers dependencies that earn their place).  The steps are the
classic ones, kept simple because pipelines are small DAGs:

1. layers by longest path (inputs pulled down next to their first consumer);
2. edges spanning several layers get invisible "dummy" points, so they bend around
   the nodes in between instead of crossing them;
3. order within a layer by barycenter sweeps, keeping each cluster (an expanded nested
   pipeline) contiguous so that its box does not cover outsiders;
4. positions pulled toward the neighbours' mean, then pushed apart to stay disjoint.
"""

from __future__ import annotations

from html import escape
from typing import Any

_FONT = "Helvetica, Arial, sans-serif"
# Approximate glyph widths of Helvetica (px per character): no font metrics are at
# hand, and a box a little too wide looks better than text spilling out of it.
_CHAR_W = {"bold": 7.4, "normal": 6.9, "small": 5.9, "italic": 5.9}
_SIZE = {"bold": 12, "normal": 12, "small": 10, "italic": 10}
_ROW_H = 15
_GAP = 28          # between boxes of a layer
_LAYER_GAP = 54    # between layers (room for edge labels and cluster titles)
_PAD = 14          # cluster padding
_MARGIN = 16
_DASH = {"dotted": "2,3", "dashed": "6,4"}


class _Box:
    __slots__ = ("id", "kind", "rows", "style", "path", "w", "h", "layer", "u", "dummy")

    def __init__(self, nid: str, kind: str, rows: list, style: str, path: tuple,
                 dummy: bool = False):
        self.id, self.kind, self.rows, self.style, self.path = nid, kind, rows, style, path
        self.dummy = dummy
        if dummy:
            self.w = self.h = 2.0
        else:
            text_w = max((len(t) * _CHAR_W[s] for t, s in rows), default=20)
            self.w = text_w + (36 if kind == "input" else 24)
            self.h = len(rows) * _ROW_H + (16 if kind == "input" else 12)
        self.layer, self.u = 0, 0.0


def _cluster_path(cid: str | None, clusters: dict) -> tuple:
    path = []
    while cid is not None:
        path.append(cid)
        cid = clusters[cid]["parent"]
    return tuple(reversed(path))


def _common(a: tuple, b: tuple) -> tuple:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def layout_svg(nodes: dict, clusters: dict, edges: list, orient: str = "TB",
               title: str | None = None, theme: Any = None) -> str:
    """The SVG text of the model recorded by ``visualization._DotBuilder``, in the
    colours of ``theme`` (a ``viz_themes.GraphvizTheme``; None: gilfree's own look)."""
    from .themes import resolve_theme

    theme = resolve_theme(theme)
    horizontal = orient in ("LR", "RL")
    boxes = {nid: _Box(nid, d["kind"], d["rows"], d.get("style", "solid"),
                       _cluster_path(d["cluster"], clusters)) for nid, d in nodes.items()}
    if horizontal:  # lay out along u/v as for TB, with each box turned a quarter
        for b in boxes.values():
            b.w, b.h = b.h, b.w
    preds: dict[str, list[str]] = {n: [] for n in boxes}
    succs: dict[str, list[str]] = {n: [] for n in boxes}
    for src, dst, _ in edges:
        succs[src].append(dst)
        preds[dst].append(src)

    # 1. Layers: longest path, in a topological order (Kahn; the model is a DAG).
    indeg = {n: len(p) for n, p in preds.items()}
    order = [n for n in boxes if indeg[n] == 0]
    for n in order:
        for s in succs[n]:
            indeg[s] -= 1
            if indeg[s] == 0:
                order.append(s)
    for n in order:
        boxes[n].layer = max((boxes[p].layer + 1 for p in preds[n]), default=0)
    for n in order:  # an input sits just above its first consumer, not at the top
        if not preds[n] and succs[n]:
            boxes[n].layer = min(boxes[s].layer for s in succs[n]) - 1

    # 2. Dummy points on long edges; ``chains`` keeps each edge's points in order.
    chains: list[tuple[list[str], str | None]] = []
    adj_up: dict[str, list[str]] = {n: [] for n in boxes}
    adj_down: dict[str, list[str]] = {n: [] for n in boxes}
    for k, (src, dst, label) in enumerate(edges):
        chain = [src]
        path = _common(boxes[src].path, boxes[dst].path)
        for layer in range(boxes[src].layer + 1, boxes[dst].layer):
            d = _Box(f"__d{k}_{layer}", "dummy", [], "", path, dummy=True)
            d.layer = layer
            boxes[d.id] = d
            adj_up[d.id], adj_down[d.id] = [], []
            chain.append(d.id)
        chain.append(dst)
        for a, b in zip(chain, chain[1:]):
            adj_down[a].append(b)
            adj_up[b].append(a)
        chains.append((chain, label))

    nlayers = max((b.layer for b in boxes.values()), default=-1) + 1
    layers: list[list[str]] = [[] for _ in range(nlayers)]
    for nid, b in boxes.items():  # insertion order: a sensible first ordering
        layers[b.layer].append(nid)

    # 3. Ordering: barycenter sweeps, clusters kept together.
    def reorder(layer: list[str], adj: dict[str, list[str]], index: dict[str, float]) -> None:
        bary = {}
        for i, n in enumerate(layer):
            nb = [index[m] for m in adj[n] if m in index]
            bary[n] = sum(nb) / len(nb) if nb else float(i)
        group: dict[tuple, list[float]] = {}
        for n in layer:
            for depth in range(1, len(boxes[n].path) + 1):
                group.setdefault(boxes[n].path[:depth], []).append(bary[n])
        mean = {g: sum(v) / len(v) for g, v in group.items()}

        def key(n: str) -> tuple:
            p = boxes[n].path
            return tuple(mean[p[:d]] for d in range(1, len(p) + 1)) + (bary[n],)

        layer.sort(key=key)

    for _ in range(3):
        for adj, rng in ((adj_up, range(1, nlayers)), (adj_down, range(nlayers - 2, -1, -1))):
            for li in rng:
                ref = layers[li - 1] if adj is adj_up else layers[li + 1]
                reorder(layers[li], adj, {n: float(i) for i, n in enumerate(ref)})

    # 4. Coordinates along the layer (u), then across layers (v).
    def sep(a: _Box, b: _Box) -> float:
        gap = _GAP if not (a.dummy or b.dummy) else _GAP / 2
        # Leave room for the walls of the clusters that one side is in and not the other.
        common = len(_common(a.path, b.path))
        walls = (len(a.path) - common) + (len(b.path) - common)
        # Turned a quarter (LR/RL), a cluster's title lies along the layer.
        wall = _PAD + (2 * _ROW_H + 6 if horizontal else 0)
        return (a.w + b.w) / 2 + gap + walls * wall

    def place(layer: list[str], desired: dict[str, float]) -> None:
        pos = [desired[n] for n in layer]
        for i in range(1, len(layer)):
            pos[i] = max(pos[i], pos[i - 1] + sep(boxes[layer[i - 1]], boxes[layer[i]]))
        shift = sum(desired[n] - p for n, p in zip(layer, pos)) / max(len(layer), 1)
        for n, p in zip(layer, pos):
            boxes[n].u = p + shift

    for layer in layers:
        place(layer, {n: 0.0 for n in layer})
    for _ in range(4):
        for adj, rng in ((adj_up, range(1, nlayers)), (adj_down, range(nlayers - 2, -1, -1))):
            for li in rng:
                want = {}
                for n in layers[li]:
                    nb = [boxes[m].u for m in adj[n]]
                    want[n] = sum(nb) / len(nb) if nb else boxes[n].u
                place(layers[li], want)

    _separate_clusters(boxes, clusters, horizontal)

    thick = [max((boxes[n].h for n in layer), default=0.0) for layer in layers]
    # Room for the walls (and, upright, the titles) of the clusters that start or end
    # at a layer, so that a cluster's box does not reach into the next layer's boxes.
    span: dict[str, list[int]] = {}
    for b in boxes.values():
        if not b.dummy:
            for cid in b.path:
                lo_hi = span.setdefault(cid, [b.layer, b.layer])
                lo_hi[0], lo_hi[1] = min(lo_hi[0], b.layer), max(lo_hi[1], b.layer)
    room = [[0.0, 0.0] for _ in range(nlayers)]
    for cid, (lo, hi) in span.items():
        wall = _PAD + (0 if horizontal else len(clusters[cid]["rows"]) * _ROW_H + 6)
        room[lo][0] += wall
        room[hi][1] += wall
    vcenter, v = [], 0.0
    for li in range(nlayers):
        v += room[li][0]
        vcenter.append(v + thick[li] / 2)
        v += thick[li] + room[li][1] + _LAYER_GAP
    vtotal = max(v - _LAYER_GAP, 0.0)

    # Final x/y of box centres (and sizes back to upright for LR/RL).
    def xy(b: _Box) -> tuple[float, float]:
        vv = vcenter[b.layer]
        if orient in ("BT", "RL"):
            vv = vtotal - vv
        return (vv, b.u) if horizontal else (b.u, vv)

    centre = {n: xy(b) for n, b in boxes.items()}
    size = {n: ((b.h, b.w) if horizontal else (b.w, b.h)) for n, b in boxes.items()}

    # Cluster boxes: around their members, innermost first.
    cbox: dict[str, list[float]] = {}
    for cid in sorted(clusters, key=lambda c: -len(_cluster_path(c, clusters))):
        xs: list[float] = []
        ys: list[float] = []
        for n, b in boxes.items():
            if not b.dummy and b.path and b.path[-1] == cid:
                (cx, cy), (w, h) = centre[n], size[n]
                xs += [cx - w / 2, cx + w / 2]
                ys += [cy - h / 2, cy + h / 2]
        for sub, (x0, y0, x1, y1) in cbox.items():
            if clusters[sub]["parent"] == cid:
                xs += [x0, x1]
                ys += [y0, y1]
        if xs:
            label_w = max(len(t) * _CHAR_W[s] for t, s in clusters[cid]["rows"])
            x0, x1 = min(xs) - _PAD, max(xs) + _PAD
            if x1 - x0 < label_w + 2 * _PAD:
                grow = (label_w + 2 * _PAD - (x1 - x0)) / 2
                x0, x1 = x0 - grow, x1 + grow
            top = len(clusters[cid]["rows"]) * _ROW_H + 6
            cbox[cid] = [x0, min(ys) - _PAD - top, x1, max(ys) + _PAD]

    # Shift everything into view.
    xs = [c[0] - size[n][0] / 2 for n, c in centre.items()] + [b[0] for b in cbox.values()]
    ys = [c[1] - size[n][1] / 2 for n, c in centre.items()] + [b[1] for b in cbox.values()]
    title_h = 26 if title else 0
    dx = _MARGIN - min(xs, default=0.0)
    dy = _MARGIN + title_h - min(ys, default=0.0)
    centre = {n: (x + dx, y + dy) for n, (x, y) in centre.items()}
    cbox = {c: [b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy] for c, b in cbox.items()}
    width = max([x + size[n][0] / 2 for n, (x, _) in centre.items()]
                + [b[2] for b in cbox.values()] + [2 * _MARGIN + 8 * len(title or "")]) + _MARGIN
    height = max([y + size[n][1] / 2 for n, (_, y) in centre.items()]
                 + [b[3] for b in cbox.values()] + [title_h + _MARGIN]) + _MARGIN

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
           f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
           f'font-family="{_FONT}" class="gilfree-pipeline">',
           '<defs><marker id="gf-arrow" viewBox="0 0 10 10" refX="9" refY="5" '
           'markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
           f'<path d="M0,0 L10,5 L0,10 z" fill="{theme.edge_color}"/></marker></defs>']
    if title:
        out.append(f'<text x="{width / 2:.1f}" y="{_MARGIN + 12}" text-anchor="middle" '
                   f'font-size="14" font-weight="bold">{escape(title)}</text>')
    for cid in sorted(cbox, key=lambda c: len(_cluster_path(c, clusters))):
        x0, y0, x1, y1 = cbox[cid]
        out.append(f'<g class="cluster"><title>{escape(cid)}</title>'
                   f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0:.1f}" '
                   f'height="{y1 - y0:.1f}" rx="10" fill="#f4f6fb" stroke="#7a8bb5"/>')
        out += _text_rows(clusters[cid]["rows"], (x0 + x1) / 2, y0 + 6)
        out.append("</g>")
    for n, b in boxes.items():
        if not b.dummy:
            out.append(_node(n, b, centre[n], size[n], theme.colors(b.kind)))
    for chain, label in chains:  # after the boxes: arrowheads stay on top
        out.append(_edge([centre[n] for n in chain], size[chain[0]], size[chain[-1]],
                         orient, label, theme.edge_color))
    out.append("</svg>")
    return "\n".join(out)


def _separate_clusters(boxes: dict, clusters: dict, horizontal: bool) -> None:
    """Open a gap wherever two sibling units (a cluster or a lone box) overlap.

    Ordering keeps a cluster contiguous within each layer, but its box spans its widest
    layer, which may reach under a neighbour placed in another layer.
    """
    wall = _PAD + (2 * _ROW_H + 6 if horizontal else 0)
    parents = [None] + sorted(clusters, key=lambda c: -len(_cluster_path(c, clusters)))
    for parent in parents[1:] + [None]:  # innermost first: inner moves widen outer units
        depth = len(_cluster_path(parent, clusters)) if parent else 0
        for _ in range(50):
            units: dict[str, list[float]] = {}  # key -> [u0, u1, layer0, layer1]
            for n, b in boxes.items():
                if b.dummy or b.path[:depth] != (_cluster_path(parent, clusters) if parent else ()):
                    continue
                key = b.path[depth] if len(b.path) > depth else n
                pad = wall * (len(b.path) - depth)
                e = [b.u - b.w / 2 - pad, b.u + b.w / 2 + pad, b.layer, b.layer]
                if key in units:
                    e0 = units[key]
                    e = [min(e0[0], e[0]), max(e0[1], e[1]), min(e0[2], e[2]), max(e0[3], e[3])]
                units[key] = e
            order = sorted(units.items(), key=lambda kv: (kv[1][0] + kv[1][1]) / 2)
            hit = None
            for i, (ka, a) in enumerate(order):
                for kb, b in order[i + 1:]:
                    if a[2] <= b[3] and b[2] <= a[3] and b[0] < a[1] + _GAP / 2 \
                            and (ka in clusters or kb in clusters):
                        hit = (ka, kb, a[1] + _GAP / 2 - b[0], b[0])
                        break
                if hit:
                    break
            if hit is None:
                break
            ka, kb, shift, edge = hit
            for n, b in boxes.items():  # everything right of the gap, except the left unit
                in_left = n == ka or ka in b.path
                if not in_left and b.u - b.w / 2 >= edge - wall * len(b.path) - 1e-6:
                    b.u += shift


def _text_rows(rows: list, cx: float, top: float, color: str = "#000000") -> list[str]:
    # Black is SVG's default: only another colour is written (the default look's
    # SVG stays as it was).
    paint = "" if color.lower() in ("#000000", "#000", "black") else f' fill="{color}"'
    lines = []
    for i, (text, style) in enumerate(rows):
        weight = ' font-weight="bold"' if style == "bold" else ""
        italic = ' font-style="italic"' if style == "italic" else ""
        y = top + (i + 1) * _ROW_H - 3
        lines.append(f'<text x="{cx:.1f}" y="{y:.1f}" text-anchor="middle" '
                     f'font-size="{_SIZE[style]}"{weight}{italic}{paint}>{escape(text)}</text>')
    return lines


def _node(nid: str, b: _Box, c: tuple[float, float], s: tuple[float, float],
          colors: Any) -> str:
    (cx, cy), (w, h) = c, s
    x, y = cx - w / 2, cy - h / 2
    fill, stroke = colors.fill, colors.outline
    parts = [f'<g class="node {b.kind}" data-id="{escape(nid)}"><title>{escape(nid)}</title>']
    if b.kind == "input":
        dash = f' stroke-dasharray="{_DASH[b.style]}"' if b.style in _DASH else ""
        parts.append(f'<ellipse cx="{cx:.1f}" cy="{cy:.1f}" rx="{w / 2:.1f}" ry="{h / 2:.1f}" '
                     f'fill="{fill}" stroke="{stroke}"{dash}/>')
    else:
        if b.kind == "pipeline":  # a stacked look: a pipeline of several nodes
            parts.append(f'<rect x="{x + 4:.1f}" y="{y - 4:.1f}" width="{w:.1f}" height="{h:.1f}" '
                         f'fill="{fill}" stroke="{stroke}"/>')
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" '
                     f'rx="{0 if b.kind == "pipeline" else 8}" fill="{fill}" stroke="{stroke}"/>')
        if b.kind == "dual":  # double border, as in the Graphviz drawing
            parts.append(f'<rect x="{x + 3:.1f}" y="{y + 3:.1f}" width="{w - 6:.1f}" '
                         f'height="{h - 6:.1f}" rx="6" fill="none" stroke="{stroke}"/>')
    top = cy - len(b.rows) * _ROW_H / 2
    parts += _text_rows(b.rows, cx, top, colors.text)
    parts.append("</g>")
    return "".join(parts)


def _edge(points: list[tuple[float, float]], s0: tuple[float, float],
          s1: tuple[float, float], orient: str, label: str | None,
          color: str = "#555555") -> str:
    # Leave the source by its side facing the flow, enter the target likewise.
    axis = {"TB": (0, 1), "BT": (0, -1), "LR": (1, 0), "RL": (-1, 0)}[orient]
    (x0, y0), (x1, y1) = points[0], points[-1]
    start = (x0 + axis[0] * s0[0] / 2, y0 + axis[1] * s0[1] / 2)
    end = (x1 - axis[0] * s1[0] / 2, y1 - axis[1] * s1[1] / 2)
    pts = [start] + points[1:-1] + [end]
    d = [f"M{start[0]:.1f},{start[1]:.1f}"]
    for (ax, ay), (bx, by) in zip(pts, pts[1:]):  # smooth: control points along the flow
        if axis[0]:
            mid = (ax + bx) / 2
            d.append(f"C{mid:.1f},{ay:.1f} {mid:.1f},{by:.1f} {bx:.1f},{by:.1f}")
        else:
            mid = (ay + by) / 2
            d.append(f"C{ax:.1f},{mid:.1f} {bx:.1f},{mid:.1f} {bx:.1f},{by:.1f}")
    svg = (f'<g class="edge"><path d="{" ".join(d)}" fill="none" stroke="{color}" '
           f'stroke-width="1.2" marker-end="url(#gf-arrow)"/>')
    if label:
        a, b = pts[(len(pts) - 1) // 2], pts[(len(pts) - 1) // 2 + 1]
        lx, ly = (a[0] + b[0]) / 2, (a[1] + b[1]) / 2
        # A white halo first (not paint-order: some SVG renderers ignore it).
        for paint in ('fill="#ffffff" stroke="#ffffff" stroke-width="3"', 'fill="#333333"'):
            svg += (f'<text x="{lx + 4:.1f}" y="{ly + 3:.1f}" font-size="10" {paint}>'
                    f'{escape(label)}</text>')
    return svg + "</g>"
