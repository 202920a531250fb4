"""The attribution-graph page: one self-contained, offline HTML page of a prompt's attribution graph, laid out as
circuit-tracer draws it.

Layout. Columns are the prompt's token positions (the token texts along the bottom, whitespace and control
characters visible, :func:`featgraph.labels.visible_token`); rows are layers: the embeddings at the bottom, then CLT
layers 0 … L−1, the logits on top (node attribute ``layer``: −1, 0 … L−1, L = ``meta["n_layers"]``). The nodes of one
(layer, position) cell sit side by side, most influential (smallest cumulative ``influence``) first, wrapping onto
further lines past :data:`PER_LINE`; a column is as wide as its fullest cell and a row as tall as its fullest cell,
so crowded cells never overlap their neighbours. Positions are computed here, in page pixels, and embedded in the
page (``x`` grows with the position, ``y`` grows downwards, so the logits have the smallest ``y``).

Drawing. Features are circles coloured by supernode (node attribute ``community``; :func:`featgraph.layout.
community_palette` colours, as the other pages) or amber without one; error nodes grey squares; embeddings green
rounded squares; logits purple diamonds. Edges are SVG lines coloured by sign (:data:`POSITIVE` red-orange for
excitatory, :data:`NEGATIVE` blue for inhibitory) with width ∝ |weight| / max |weight| of the page, strongest drawn
on top; a slider hides the weakest share of edges (at most :data:`DEFAULT_SHOWN_EDGES` are shown at first).
Hovering or clicking a node keeps it, its edges and its neighbours and dims the rest; the side panel shows its
label, kind, layer, position, token, activation, influence, supernode, strongest inputs and outputs and, for a
feature with dashboard attributes (``top_contexts``, ``top_logits``, ``act_histogram`` …), its dashboard. The legend
lists the supernodes (``meta["community_labels"]``, size); clicking one keeps its members and the edges among them.
``#<node id>`` and ``#supernode=<n>`` links open a node or a supernode on load.

Safety. Text from the model or the data (tokens, labels, ids, contexts, the title) reaches the page only as JSON
inside one ``<script>`` (jinja's ``tojson``: ``<``, ``>``, ``&`` and ``'`` escaped, non-ASCII as ``\\uXXXX``, so a
lone surrogate is an escape too) and is shown with ``textContent`` / ``setAttribute``; the ``<title>`` gets a
cleaned copy. The page records its health in ``<body>`` attributes for headless checks, as the other pages do:
``data-ready``, ``data-nodes-drawn``, ``data-edges-drawn``, ``data-edges-shown``, ``data-errors``,
``data-selected``, ``data-dimmed``.
"""

from __future__ import annotations

import math
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from crosscoder.errors import FeatgraphError
from crosscoder.io import atomic_file

from .graph import FeatureGraph, _py, json_ready
from .html import DASHBOARD_KEYS, _env, _node_info, _round_sig
from .labels import visible_token
from .layout import community_palette

__all__ = ["write_attribution_html", "check_attribution_graph", "attribution_layout", "AttributionLayout", "KIND_STYLE", "POSITIVE", "NEGATIVE",
           "PER_LINE", "LOGITS_PER_LINE", "DEFAULT_SHOWN_EDGES"]

KINDS = ("feature", "error", "embedding", "logit")
KIND_STYLE = {
    "feature": {"shape": "circle", "color": "#e6a532", "name": "feature"},
    "error": {"shape": "square", "color": "#8c8c8c", "name": "MLP error"},
    "embedding": {"shape": "rounded", "color": "#5aae61", "name": "embedding"},
    "logit": {"shape": "diamond", "color": "#9467bd", "name": "logit"},
}
"""Shape and colour of each node kind (features take their supernode's colour when they have one)."""
POSITIVE = "#d6604d"
"""Colour of edges with a positive (excitatory) weight."""
NEGATIVE = "#4393c3"
"""Colour of edges with a negative (inhibitory) weight."""
PER_LINE = 8
"""Nodes side by side in one cell before the cell wraps onto another line."""
LOGITS_PER_LINE = 32
"""The same for the logits (all at the last position, labelled above; circuit-tracer's default is at most 10)."""
NODE_GAP = 18.0
"""Distance between neighbouring node centres in a cell (page pixels)."""
CELL_PAD = 10.0
MIN_COL = 64.0
"""Narrowest column (room for its token's text)."""
MIN_ROW = 56.0
LEFT = 64.0   # room for the row labels
TOP = 64.0    # room for the logits' labels
BOTTOM = 34.0  # room for the token texts
RIGHT = 72.0   # room for the last logits' slanted labels
DEFAULT_SHOWN_EDGES = 2500
"""The page opens showing at most this many edges, the strongest (the slider shows the rest)."""


# ---- checks and the grid ---------------------------------------------------------------------------------------------
def _int_column(graph: FeatureGraph, name: str) -> list[int]:
    col = graph.node_attrs.get(name)
    if col is None:
        raise FeatgraphError(f"the attribution graph has no node attribute {name!r}; build it with "
                             "AttributionGraph.to_feature_graph (every node needs 'layer' and 'position')")
    out = []
    for nid, v in zip(graph.node_ids, col):
        v = _py(v)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not float(v).is_integer():
            raise FeatgraphError(f"node {nid!r} has {name} {v!r}; every node of an attribution graph needs an integer {name}")
        out.append(int(v))
    return out


def check_attribution_graph(graph: FeatureGraph) -> tuple[list[str], list[int], list[int], int]:
    """``(kind, layer, position, n_layers)`` per node of an attribution graph; FeatgraphError (one line) for a graph
    that is not one. A missing ``kind`` column is read from the layer (−1 embedding, ``n_layers`` logit, else feature)."""
    if graph.meta.get("kind") != "attribution":
        raise FeatgraphError(f"this is not an attribution graph (meta kind {graph.meta.get('kind')!r}); build one with "
                             "featgraph.attribution.attribution_graph(...).to_feature_graph()")
    layer, position = _int_column(graph, "layer"), _int_column(graph, "position")
    kinds = graph.node_attrs.get("kind")
    n_layers = graph.meta.get("n_layers")
    if not isinstance(n_layers, int) or isinstance(n_layers, bool):
        inner = [lay for lay, k in zip(layer, kinds or [None] * graph.n_nodes) if k in ("feature", "error")]
        n_layers = max(inner) + 1 if inner else max([0, *layer])
    if kinds is None:
        kinds = ["embedding" if lay < 0 else "logit" if lay >= n_layers else "feature" for lay in layer]
    kinds = [str(k) for k in kinds]
    for nid, k, lay, pos in zip(graph.node_ids, kinds, layer, position):
        if k not in KINDS:
            raise FeatgraphError(f"node {nid!r} has kind {k!r}; an attribution graph's kinds are {', '.join(KINDS)}")
        if not -1 <= lay <= n_layers or pos < 0:
            raise FeatgraphError(f"node {nid!r} sits at layer {lay}, position {pos}, outside the graph's layers -1..{n_layers} "
                                 "and positions ≥ 0; rebuild the graph with AttributionGraph.to_feature_graph")
    return kinds, layer, position, n_layers


def _influence(graph: FeatureGraph) -> np.ndarray:
    """(n,) cumulative influence share (smaller = more influential); missing values count as least influential."""
    col = graph.node_attrs.get("influence", [None] * graph.n_nodes)
    out = np.array([np.nan if v is None else float(v) for v in col], dtype=np.float64)
    return np.where(np.isfinite(out), out, np.inf)


class AttributionLayout:
    """Where the page puts every node: ``xy`` (n, 2) page pixels; ``columns`` [(x0, x1)] per position; ``rows``
    [(y0, y1)] per row (row 0 = embeddings, row l + 1 = layer l, the last row = logits); ``size`` (width, height)."""

    def __init__(self, xy: np.ndarray, columns: list[tuple[float, float]], rows: list[tuple[float, float]], size: tuple[float, float]):
        self.xy, self.columns, self.rows, self.size = xy, columns, rows, size


def attribution_layout(layer: list[int], position: list[int], influence: np.ndarray, n_layers: int, n_positions: int) -> AttributionLayout:
    """The grid layout (module docstring): node k of a cell, ordered by influence (ties by node order), sits at slot
    k mod :data:`PER_LINE` of line k div :data:`PER_LINE` (:data:`LOGITS_PER_LINE` in the logits' row), centred in
    its cell.

    >>> lay = attribution_layout([-1, 0, 0, 1], [0, 1, 1, 1], np.array([0.5, 0.2, 0.1, 1.0]), 1, 2)
    >>> bool(lay.xy[2, 0] < lay.xy[1, 0]), bool(lay.xy[1, 1] == lay.xy[2, 1])  # node 2 is more influential: it comes first
    (True, True)
    >>> bool(lay.xy[3, 1] < lay.xy[1, 1] < lay.xy[0, 1])  # logits above layer 0 above the embeddings
    True
    """
    n_rows = n_layers + 2
    cells: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i in sorted(range(len(layer)), key=lambda i: (influence[i], i)):
        cells[(layer[i] + 1, position[i])].append(i)
    per_line = [PER_LINE] * (n_rows - 1) + [LOGITS_PER_LINE]
    units = np.zeros(n_positions)   # nodes side by side in the column's widest cell
    lines = np.zeros(n_rows)        # lines in the row's tallest cell
    for (r, p), members in cells.items():
        units[p] = max(units[p], min(len(members), per_line[r]))
        lines[r] = max(lines[r], math.ceil(len(members) / per_line[r]))
    width = np.maximum(MIN_COL, units * NODE_GAP + 2 * CELL_PAD)
    height = np.maximum(MIN_ROW, lines * NODE_GAP + 2 * CELL_PAD)
    x0 = LEFT + np.r_[0.0, np.cumsum(width)[:-1]]
    y0 = TOP + np.r_[0.0, np.cumsum(height[::-1])[:-1]][::-1]  # the last row (logits) at the top
    xy = np.zeros((len(layer), 2))
    for (r, p), members in cells.items():
        n_lines = math.ceil(len(members) / per_line[r])
        for k, i in enumerate(members):
            line, slot = divmod(k, per_line[r])
            in_line = min(per_line[r], len(members) - line * per_line[r])
            xy[i, 0] = x0[p] + width[p] / 2 + (slot - (in_line - 1) / 2) * NODE_GAP
            xy[i, 1] = y0[r] + height[r] / 2 + (line - (n_lines - 1) / 2) * NODE_GAP
    columns = [(float(a), float(a + w)) for a, w in zip(x0, width)]
    rows = [(float(a), float(a + h)) for a, h in zip(y0, height)]
    size = (float(LEFT + width.sum() + RIGHT), float(TOP + height.sum() + BOTTOM))
    return AttributionLayout(xy, columns, rows, size)


# ---- page data -------------------------------------------------------------------------------------------------------
_SURROGATE = re.compile("[\ud800-\udfff]")


def _text(v: Any) -> str:
    """``v`` as text a page can hold: lone surrogates (a split byte-level token) become U+FFFD."""
    return _SURROGATE.sub("\ufffd", str(v))


def _title_text(title: str) -> str:
    """The ``<title>``: one line, control characters and surrogates replaced (jinja escapes the rest)."""
    return "".join(" " if ch in "\t\n\r" else "\ufffd" if ch < " " or "\ud800" <= ch <= "\udfff" else ch for ch in str(title))


def _num(v: Any) -> float | None:
    v = _py(v)
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _supernodes(graph: FeatureGraph, kinds: list[str], influence: np.ndarray) -> tuple[list[int], list[dict]]:
    """Per node its supernode (−1 none; only features are grouped) and one legend entry per supernode, largest
    first: id, label (``meta["community_labels"]``, else "supernode N"), size, colour, members (most influential first)."""
    col = graph.node_attrs.get("community", [None] * graph.n_nodes)
    comm = []
    for v, k in zip(col, kinds):
        v = _py(v)
        comm.append(int(v) if k == "feature" and isinstance(v, int) and not isinstance(v, bool) and v >= 0 else -1)
    ids = sorted({c for c in comm if c >= 0})
    palette = community_palette(max(ids) + 1) if ids else []
    labels = graph.meta.get("community_labels") or {}
    members: dict[int, list[int]] = defaultdict(list)
    for i in sorted(range(graph.n_nodes), key=lambda i: (influence[i], i)):
        if comm[i] >= 0:
            members[comm[i]].append(i)
    out = []
    for c in sorted(ids, key=lambda c: (-len(members[c]), c)):
        label = labels.get(str(c)) if isinstance(labels, dict) else None
        out.append({"id": c, "label": _text(label) if label else f"supernode {c}", "size": len(members[c]),
                    "color": palette[c], "members": members[c]})
    return comm, out


def _dashboard(node: dict) -> dict | None:
    """The feature dashboard the panel shows (html.py's ``_node_info`` fields), only where the node has any."""
    if not node.get("top_contexts") and not any(node.get(k) is not None for k in (*DASHBOARD_KEYS, "max_act")):
        return None
    skip = ("hookpoints", "layer_profile", "peak_hookpoint", "frequency", "label", "community")  # shown elsewhere, or not per prompt
    info = {k: v for k, v in _node_info(node, []).items() if k not in skip}
    info["max_act"] = _num(node.get("max_act"))  # None rather than 0 where unknown
    return json_ready(info)


def _logit_header(graph: FeatureGraph, kinds: list[str]) -> list[dict]:
    """The target logits, most likely first: visible token text and probability."""
    text = {}
    for i, k in enumerate(kinds):
        if k == "logit":
            token = _py(graph.node_attrs.get("token", [None] * graph.n_nodes)[i])
            text[token] = graph.node_attrs.get("token_text", [""] * graph.n_nodes)[i]
    tokens, probs = graph.meta.get("logit_tokens"), graph.meta.get("logit_probabilities")
    if isinstance(tokens, list) and isinstance(probs, list) and len(tokens) == len(probs):
        pairs = list(zip(tokens, probs))
    else:  # from the logit nodes themselves
        pairs = [(_py(graph.node_attrs.get("token", [None] * graph.n_nodes)[i]), graph.node_attrs.get("activation", [None] * graph.n_nodes)[i])
                 for i, k in enumerate(kinds) if k == "logit"]
    out = [{"token": visible_token(str(text[t])) if t in text else f"#{t}", "p": _num(p)} for t, p in pairs]
    return sorted(out, key=lambda d: -(d["p"] if d["p"] is not None else -1.0))


def _page_data(graph: FeatureGraph, title: str) -> dict:
    kinds, layer, position, n_layers = check_attribution_graph(graph)
    influence = _influence(graph)
    prompt_tokens = graph.meta.get("prompt_tokens")
    prompt_tokens = [str(t) for t in prompt_tokens] if isinstance(prompt_tokens, list) else []
    n_positions = max([1, len(prompt_tokens), *(p + 1 for p in position)])
    tokens = [visible_token(prompt_tokens[p]) if p < len(prompt_tokens) else f"[{p}]" for p in range(n_positions)]
    lay = attribution_layout(layer, position, influence, n_layers, n_positions)
    comm, supernodes = _supernodes(graph, kinds, influence)
    color_of = {s["id"]: s["color"] for s in supernodes}
    activation = graph.node_attrs.get("activation", [None] * graph.n_nodes)
    feature = graph.node_attrs.get("feature", [None] * graph.n_nodes)
    label = graph.node_attrs.get("label", [None] * graph.n_nodes)
    token_text = graph.node_attrs.get("token_text", [None] * graph.n_nodes)
    nodes, dashboards = [], {}
    for i in range(graph.n_nodes):
        k = kinds[i]
        tok = token_text[i] if token_text[i] is not None else (prompt_tokens[position[i]] if position[i] < len(prompt_tokens) else None)
        nodes.append({
            "id": _text(graph.node_ids[i]), "kind": k, "layer": layer[i], "pos": position[i],
            "x": round(float(lay.xy[i, 0]), 2), "y": round(float(lay.xy[i, 1]), 2),
            "color": color_of.get(comm[i], KIND_STYLE[k]["color"]), "community": comm[i] if comm[i] >= 0 else None,
            "label": _text(label[i]) if label[i] not in (None, "") else _text(graph.node_ids[i]),
            "token": visible_token(str(tok)) if tok is not None else "", "feature": _py(feature[i]) if k == "feature" else None,
            "activation": _num(activation[i]), "influence": float(influence[i]) if np.isfinite(influence[i]) else None,
        })
        if k == "feature":
            dash = _dashboard(graph.node(i))
            if dash is not None:
                dashboards[str(i)] = dash
    w = np.nan_to_num(graph.weights, nan=0.0, posinf=0.0, neginf=0.0) if graph.n_edges else np.zeros(0)
    order = np.lexsort((np.arange(graph.n_edges), np.abs(w)))  # weakest first: the strongest are drawn on top
    top = float(np.abs(w).max()) if len(w) else 0.0
    shown = min(graph.n_edges, DEFAULT_SHOWN_EDGES)
    kind_counts = {k: kinds.count(k) for k in KINDS}
    rows = ["Emb", *(f"L{lay_}" for lay_ in range(n_layers)), "Logit"]
    return {
        "title": _text(title), "prompt": visible_token(str(graph.meta.get("prompt", "".join(prompt_tokens)))),
        "tokens": tokens, "row_labels": rows, "columns": lay.columns, "rows": lay.rows, "size": list(lay.size),
        "nodes": nodes, "dashboards": dashboards, "supernodes": supernodes,
        "edges": {"src": graph.edge_src[order].tolist(), "dst": graph.edge_dst[order].tolist(), "w": _round_sig(w[order]).tolist()},
        "max_abs_weight": top, "initial_hidden_share": round(1.0 - shown / graph.n_edges, 6) if graph.n_edges else 0.0,
        "logits": _logit_header(graph, kinds), "replacement_score": _num(graph.meta.get("replacement_score")),
        "completeness_score": _num(graph.meta.get("completeness_score")), "n_nodes": graph.n_nodes, "n_edges": graph.n_edges,
        "kind_counts": kind_counts, "kind_style": KIND_STYLE, "positive": POSITIVE, "negative": NEGATIVE,
        "n_layers": n_layers,
    }


def write_attribution_html(graph: FeatureGraph, path: str | os.PathLike, title: str = "attribution graph") -> Path:
    """Write an attribution graph (:meth:`featgraph.attribution.AttributionGraph.to_feature_graph`, optionally with
    supernodes from :func:`featgraph.supernodes.find_supernodes` and dashboards) as one self-contained HTML page in
    circuit-tracer's layout (module docstring); returns the path.

    Raises FeatgraphError for a graph that is not an attribution graph (``meta["kind"]`` other than "attribution",
    or nodes without integer ``layer`` / ``position``).
    """
    data = _page_data(graph, title)
    html = _env().get_template("attribution_graph.html").render(heading=_title_text(title), data=data)
    with atomic_file(path) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return Path(path)
