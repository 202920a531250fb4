"""Self-contained, offline, interactive HTML pages of feature graphs (vis-network 9.1.2, inlined).

Two pages:

* :func:`write_html` — one graph: nodes coloured by community (or, with ``color_by``, by a numeric attribute on a
  diverging blue–grey–red scale), sized by frequency, laid out in advance (x by peak hookpoint, communities in
  bands along y; physics off above ``physics_max_nodes``), with a legend, a search box and a click panel
  (layer profile, top contexts);
* :func:`write_diff_html` — two stages of one graph: the union of their nodes, edges gained (green), lost (red,
  dashed), reweighted (dark grey, thickness ∝ |Δw|) and unchanged (faint), a side list of features ranked by
  how far their neighbourhood moved, and a legend with the counts of :class:`~featgraph.diff.EdgeDiff`.

Large graphs: above ``max_nodes`` (default :data:`DEFAULT_MAX_NODES`) a page shows a sample and says so at the
top of its side panel ("showing N of M features: ..."); see :func:`sample_nodes` for the rule and why.

Safety: text from the model or the data (tokens, contexts, labels, ids, the title) reaches the page only as
JSON inside a ``<script>`` (jinja's ``tojson`` escapes ``<``, ``>``, ``&`` and ``'``), and is rendered with
``textContent`` or vis-network's plain-text tooltip (``innerText``), so a token such as
``</script><img onerror=...>`` shows as text. The page records its own health in ``<body>`` attributes for
headless checks: ``data-ready``, ``data-nodes-drawn``, ``data-edges-drawn`` (after vis-network's first draw) and
``data-errors`` (a JSON list of messages caught by ``window.onerror`` and ``console.error``). A URL fragment
``#<node id>`` (percent-encoded) opens that node's details on load.
"""

from __future__ import annotations

import gc
import os
import re
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np

from crosscoder.errors import FeatgraphError
from crosscoder.io import atomic_file

from .graph import FeatureGraph, _py, json_ready
from .layout import (BOX, LAYOUT_MODES, UNASSIGNED, _community_ids, add_layout, community_layout, community_palette, layer_layout,
                     node_colors)

__all__ = ["DEFAULT_MAX_NODES", "RENDERERS", "WEBGL_MAX_NODES", "NodeSample", "community_colors", "diverging_colors", "layout_positions", "pyvis_network",
           "sample_nodes", "write_diff_html", "write_html"]

TEMPLATE_DIR = Path(__file__).parent / "templates"
DEFAULT_MAX_NODES = 5000
"""vis-network pages show at most this many features: vis-network draws ~5,000 nodes (and their edges) without
physics in about a second in a browser and the page stays near 5–10 MB; far beyond that panning becomes sluggish.
Larger graphs get the WebGL renderer (all nodes) unless a page asks for vis-network, which then samples."""
WEBGL_MAX_NODES = 200_000
"""WebGL pages show at most this many features (sampled above, as vis-network pages are above DEFAULT_MAX_NODES)."""
RENDERERS = ("auto", "vis", "webgl")

DIVERGING_STOPS = ("#2166ac", "#bdbdbd", "#b2182b")
"""Blue (low) – grey (middle) – red (high), from ColorBrewer's RdBu end points; grey marks "neither"."""
EDGE_STYLE = {"gained": "#2e9e44", "lost": "#d7301f", "reweighted": "#555555", "unchanged": "#d9d9d9"}
"""Diff page edge colour per status."""
SCALE_HINTS = {"rel_norm": (("only model A", "shared", "only model B"), (0.3, 0.7))}
"""Per attribute with a fixed meaning: words for the low end, middle and high end of its colour scale, and the two
values that split the legend's counts (rel_norm: shared if 0.3 < r < 0.7, as in the two-model crosscoder diff)."""


# ---- colours and layout --------------------------------------------------------------------------------------------
def community_colors(n: int) -> list[str]:
    """``n`` distinguishable colours, the most distinct first (:func:`featgraph.layout.community_palette`)."""
    return community_palette(n)


def _hex_rgb(c: str) -> np.ndarray:
    return np.array([int(c[k : k + 2], 16) for k in (1, 3, 5)], dtype=np.float64)


def diverging_colors(t: np.ndarray, stops: tuple[str, str, str] = DIVERGING_STOPS, missing: str = "#f2f2f2") -> list[str]:
    """Hex colour of each ``t`` in [0, 1] (clipped): linear in RGB from ``stops[0]`` at 0 through ``stops[1]`` at
    0.5 to ``stops[2]`` at 1; NaN gets ``missing``.

    >>> diverging_colors(np.array([0.0, 0.5, 1.0, np.nan]))
    ['#2166ac', '#bdbdbd', '#b2182b', '#f2f2f2']
    """
    t = np.asarray(t, dtype=np.float64)
    lo, mid, hi = (_hex_rgb(s) for s in stops)
    u = np.clip(np.nan_to_num(t, nan=0.5), 0.0, 1.0)[:, None]
    rgb = np.where(u < 0.5, lo + (mid - lo) * (u / 0.5), mid + (hi - mid) * ((u - 0.5) / 0.5))
    rgb = np.rint(rgb).astype(int)
    return [missing if np.isnan(v) else f"#{r:02x}{g:02x}{b:02x}" for v, (r, g, b) in zip(t, rgb)]


def layout_positions(graph: FeatureGraph, community: np.ndarray | None = None, gap: float = 22.0) -> np.ndarray:
    """(n, 2) positions: the graph's own ``x``, ``y`` when :func:`featgraph.layout.add_layout` set them (meta
    ``layout``), else the layer view (:func:`featgraph.layout.layer_layout`: x by peak hookpoint, communities in
    bands; a per-prompt graph by layer and activation). ``community`` is read from the graph (kept for callers)."""
    if _has_layout(graph):
        return np.c_[np.asarray(graph.node_attrs["x"], float), np.asarray(graph.node_attrs["y"], float)]
    return layer_layout(graph, gap)


def _has_layout(graph: FeatureGraph) -> bool:
    return graph.meta.get("layout") in LAYOUT_MODES and "x" in graph.node_attrs and "y" in graph.node_attrs


def _with_layout(graph: FeatureGraph, mode: str | None) -> FeatureGraph:
    """``graph`` itself when it is laid out in ``mode`` (any mode for None), else a copy laid out by
    :func:`featgraph.layout.add_layout` (seed from ``meta["seed"]``); the caller's graph is never changed."""
    if _has_layout(graph) and mode in (None, graph.meta["layout"]):
        return graph
    copy = FeatureGraph(list(graph.node_ids), dict(graph.node_attrs), graph.edge_src, graph.edge_dst, dict(graph.edge_attrs),
                        weight_key=graph.weight_key, directed=graph.directed, meta=dict(graph.meta), multigraph=graph.multigraph)
    seed = graph.meta.get("seed", 0)
    return add_layout(copy, seed=seed if isinstance(seed, int) else 0, mode=mode)


# ---- large graphs --------------------------------------------------------------------------------------------------
class NodeSample(NamedTuple):
    keep: np.ndarray  # (k,) indices of the nodes shown, ascending
    n_total: int      # nodes in the graph
    note: str         # what was left out, for the page ("" when every node is shown)


def _quotas(sizes: np.ndarray, budget: int) -> np.ndarray:
    """Per group, how many to keep: ∝ size (largest remainders), at least 1 while the budget allows, ≤ size."""
    exact = budget * sizes / sizes.sum()
    quota = np.minimum(np.maximum(np.floor(exact).astype(np.int64), 1), sizes)
    if len(sizes) > budget:  # more groups than room: one member from each of the largest groups
        quota = np.zeros_like(sizes)
        quota[np.argsort(-sizes, kind="stable")[:budget]] = 1
        return quota
    while quota.sum() > budget:  # the floor of 1 overshot: take back where the quota exceeds its share most
        quota[np.argmax(np.where(quota > 1, quota - exact, -np.inf))] -= 1
    spare = budget - int(quota.sum())
    for g in np.argsort(-(exact - quota), kind="stable")[:spare]:
        quota[g] += 1
    return quota


def sample_nodes(graph: FeatureGraph, max_nodes: int = DEFAULT_MAX_NODES) -> NodeSample:
    """The nodes a page shows: all of them up to ``max_nodes``; above that, a sample stratified by community.

    Community c with n_c of the n nodes gets a quota q_c ≈ max_nodes · n_c / n (largest remainders, so
    Σ q_c = max_nodes, and at least one node per community while there is room), filled with its q_c most
    frequent members (ties in node order). Edges are those among the kept nodes.

    Why sample rather than merge communities into super-nodes: every node on the page stays a real feature with
    its contexts and layer profile (the point of clicking one), each community keeps its share of the page so the
    picture of the partition is not distorted, and the most frequent features are the best measured ones (their
    edges rest on the most co-occurrences). What is lost — rare features and the edges that touch them — is said
    on the page.

    >>> g = FeatureGraph([f"F{i}" for i in range(6)], {"community": [0, 0, 0, 0, 1, 1],
    ...                  "frequency": [0.1, 0.4, 0.3, 0.2, 0.05, 0.5]})
    >>> sample_nodes(g, 3).keep.tolist()
    [1, 2, 5]
    """
    if max_nodes < 1:
        raise FeatgraphError(f"max_nodes must be at least 1; got {max_nodes}")
    n = graph.n_nodes
    if n <= max_nodes:
        return NodeSample(np.arange(n), n, "")
    community = np.asarray(graph.node_attrs.get("community", [0] * n), dtype=np.int64)
    freq = np.asarray(graph.node_attrs.get("frequency", [0.0] * n), dtype=np.float64)
    labels, group = np.unique(community, return_inverse=True)
    quota = _quotas(np.bincount(group), max_nodes)
    order = np.lexsort((np.arange(n), -freq, group))  # by community, then frequency descending
    starts = np.r_[0, np.cumsum(np.bincount(group))[:-1]]
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - starts[group[order]]
    keep = np.flatnonzero(rank < quota[group])
    kept_groups = int((quota > 0).sum())
    where = f"all {len(labels)} communities" if kept_groups == len(labels) else f"{kept_groups} of {len(labels)} communities"
    note = (f"showing {len(keep):,} of {n:,} features: the most frequent of each community, in proportion to its "
            f"size ({where} shown)")
    return NodeSample(keep, n, note)


def _induced(graph: FeatureGraph, keep: np.ndarray) -> FeatureGraph:
    """The subgraph on nodes ``keep`` (ascending indices) with the edges among them."""
    if len(keep) == graph.n_nodes:
        return graph
    new = np.full(graph.n_nodes, -1, dtype=np.int64)
    new[keep] = np.arange(len(keep))
    sel = (new[graph.edge_src] >= 0) & (new[graph.edge_dst] >= 0)
    ids = [graph.node_ids[i] for i in keep.tolist()]
    attrs = {k: [col[i] for i in keep.tolist()] for k, col in graph.node_attrs.items()}
    return FeatureGraph(ids, attrs, new[graph.edge_src[sel]], new[graph.edge_dst[sel]],
                        {k: np.asarray(v)[sel] for k, v in graph.edge_attrs.items()}, weight_key=graph.weight_key,
                        directed=graph.directed, meta=graph.meta, multigraph=graph.multigraph)


# ---- rendering -----------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _vis_assets() -> tuple[str, str]:
    """vis-network's script and stylesheet (shipped with pyvis), read once, to inline in every page."""
    import pyvis

    lib = Path(pyvis.__file__).parent / "templates" / "lib" / "vis-9.1.2"
    js, css = ((lib / name).read_text(encoding="utf-8") for name in ("vis-network.min.js", "vis-network.css"))
    if re.search(r"</(script|style)", js + css, re.I):  # would end the inline element early
        raise RuntimeError(f"vis-network assets in {lib} contain a closing tag and cannot be inlined")
    return js, css


VENDOR = {"graphology-0.26.0.umd.min.js": "LICENSE-graphology.txt", "sigma-3.0.3.min.js": "LICENSE-sigma.txt"}
"""The WebGL renderer's libraries under templates/vendor (from the npm registry: ``npm pack sigma@3.0.3
graphology@0.26.0``, the packages' own UMD bundles) and their licences (MIT), inlined into each WebGL page."""


@lru_cache(maxsize=1)
def _webgl_assets() -> str:
    """graphology, sigma.js (each after its licence, as a comment) and featgraph's webgl.js, as one script."""
    parts = []
    for lib, licence in VENDOR.items():
        text = (TEMPLATE_DIR / "vendor" / licence).read_text(encoding="utf-8").replace("*/", "* /")
        parts.append(f"/*! {lib}\n{text}*/\n" + (TEMPLATE_DIR / "vendor" / lib).read_text(encoding="utf-8"))
    parts.append((TEMPLATE_DIR / "webgl.js").read_text(encoding="utf-8"))
    js = "\n;\n".join(parts)
    if re.search(r"</script", js, re.I):
        raise RuntimeError("the WebGL renderer's scripts contain a closing tag and cannot be inlined")
    return js


@lru_cache(maxsize=1)
def _env():
    from jinja2 import Environment, FileSystemLoader

    return Environment(loader=FileSystemLoader(str(TEMPLATE_DIR)), autoescape=True)


def _render(template: str, path: str | os.PathLike, **context: Any) -> Path:
    from markupsafe import Markup

    if template.endswith("_webgl.html"):
        libs = {"webgl_js": Markup(_webgl_assets())}
    else:
        js, css = _vis_assets()
        libs = {"vis_js": Markup(js), "vis_css": Markup(css)}
    html = _env().get_template(template).render(**libs, **context)
    with atomic_file(path) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return Path(path)


def _column(graph: FeatureGraph, name: str, default: Any) -> list:
    return graph.node_attrs.get(name, [default] * graph.n_nodes)


def _tooltip(node: dict) -> str:
    """vis-network's hover text (plain text: vis shows it with innerText)."""
    comm = node.get("community")
    lines = [f"{node['id']}  community {'?' if comm is None else comm}", f"frequency {_num(node.get('frequency')):.2e}"]
    if node.get("label"):
        lines.insert(1, str(node["label"]))
    if "peak_hookpoint" in node:
        lines.append(f"peak {node['peak_hookpoint']}")
    if node.get("layer_profile"):
        lines.append("layer profile " + " ".join(f"{_num(v):.2f}" for v in node["layer_profile"]))
    for c in (node.get("top_contexts") or [])[:2]:
        if isinstance(c, dict):
            lines.append(f"…{c.get('left', '')}[{c.get('token', '')}]{c.get('right', '')}")
    return "\n".join(lines)


def _num(v: Any, default: float = 0.0) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return default
    return x if np.isfinite(x) else default


DASHBOARD_KEYS = ("density", "act_histogram", "quantile_examples", "top_logits", "bottom_logits")
"""Optional per-feature dashboard data (issue 14 contract), passed to the panel as they are when present."""


def _node_info(node: dict, hookpoints: list) -> dict:
    """What the click panel shows for one node (plain JSON values); dashboard fields only where the node has them."""
    comm = node.get("community")
    info = {
        "label": str(node.get("label") or ""), "community": _py(comm) if comm is not None else None,
        "frequency": _num(node.get("frequency")), "max_act": _num(node.get("max_act")),
        "peak_hookpoint": str(node.get("peak_hookpoint", "")), "hookpoints": hookpoints,
        "layer_profile": [_num(v) for v in node.get("layer_profile") or [0.0] * len(hookpoints)],
        "top_contexts": json_ready(node.get("top_contexts") or []),
    }
    for key in DASHBOARD_KEYS:
        if node.get(key) is not None:
            info[key] = json_ready(node[key])
    if node.get("side_label") is not None:
        info["side_label"] = str(node["side_label"])
    return info


def _neighbours(g: FeatureGraph, k: int = 8) -> list[list[dict]]:
    """Per node, its ``k`` strongest neighbours on the page (by |weight|), each ``{id, w, dir, m}`` with ``m`` every
    numeric (and string) edge attribute of that edge, rounded to 4 significant digits."""
    out: list[list[dict]] = [[] for _ in range(g.n_nodes)]
    if not g.n_edges:
        return out
    w = np.abs(np.nan_to_num(g.weights))
    node = np.r_[g.edge_src, g.edge_dst]
    other = np.r_[g.edge_dst, g.edge_src]
    edge = np.r_[np.arange(g.n_edges), np.arange(g.n_edges)]
    way = np.r_[np.ones(g.n_edges, dtype=np.int8), -np.ones(g.n_edges, dtype=np.int8)]  # 1: node → other
    order = np.lexsort((edge, -np.r_[w, w], node))
    starts = np.searchsorted(node[order], np.arange(g.n_nodes))
    rank = np.arange(len(order)) - starts[node[order]]
    chosen = order[rank < k]
    e_chosen = edge[chosen]
    cols = {}
    for name, col in g.edge_attrs.items():
        arr = np.asarray(col)[e_chosen]
        if arr.dtype.kind in "fiub":
            cols[name] = [None if v != v or v in (np.inf, -np.inf) else v for v in _round_sig(arr.astype(np.float64)).tolist()]
        elif arr.dtype.kind in "OUS":
            cols[name] = [v if isinstance(v, str) else json_ready(v) for v in arr.tolist()]
    names = list(cols)
    for k, (c, o) in enumerate(zip(node[chosen].tolist(), other[chosen].tolist())):
        entry = {"id": g.node_ids[o], "m": {name: cols[name][k] for name in names}}
        if g.directed:
            entry["dir"] = "out" if way[chosen[k]] > 0 else "in"
        out[c].append(entry)
    return out


def _round_sig(x: np.ndarray, digits: int = 4) -> np.ndarray:
    """``x`` rounded to ``digits`` significant digits (NaN, ±inf and 0 kept)."""
    finite = np.isfinite(x) & (x != 0)
    mag = np.zeros_like(x)
    mag[finite] = np.floor(np.log10(np.abs(x[finite])))
    scale = 10.0 ** (digits - 1 - mag)
    return np.where(finite, np.round(x * scale) / scale, x)


def _communities(full: FeatureGraph, shown: FeatureGraph, colors: dict[int, str]) -> list[dict]:
    """One entry per community: id, label (meta ``community_labels``), size in the whole graph, how many are on the
    page, colour; largest first."""
    labels = full.meta.get("community_labels") or {}
    comm_all = _community_ids(full)
    sizes = np.bincount(comm_all[comm_all >= 0]) if (comm_all >= 0).any() else np.zeros(0, dtype=np.int64)
    comm_shown = _community_ids(shown)
    shown_n = np.bincount(comm_shown[comm_shown >= 0], minlength=len(sizes)) if len(sizes) else sizes
    out = []
    for c in np.argsort(-sizes, kind="stable").tolist():
        if sizes[c] == 0:
            continue
        label = labels.get(str(c)) if isinstance(labels, dict) else None
        out.append({"id": c, "label": "" if label is None else str(label), "size": int(sizes[c]), "shown": int(shown_n[c]),
                    "color": colors.get(c, UNASSIGNED)})
    return out


def _page_positions(pos: np.ndarray) -> np.ndarray:
    """Page coordinates: a layout centred and scaled so its longer side spans [-BOX, BOX] (both layouts of a page
    then share one scale, and node sizes can be set in those units)."""
    if not len(pos):
        return pos
    lo, hi = pos.min(0), pos.max(0)
    half = float((hi - lo).max()) / 2
    return (pos - (lo + hi) / 2) * (BOX / half) if half > 0 else pos - (lo + hi) / 2


def _alternative(g: FeatureGraph, mode: str) -> tuple[str, np.ndarray]:
    """The other layout of the shown nodes, for the page's layout switch."""
    if mode == "community":
        return "layers", layer_layout(g)
    seed = g.meta.get("seed", 0)
    return "community", community_layout(g, seed=seed if isinstance(seed, int) else 0)


def _spacing(pos: np.ndarray) -> float:
    """The median distance from a node to its nearest neighbour (page units): how much room a node has."""
    if len(pos) < 2:
        return BOX
    from scipy.spatial import cKDTree

    d = cKDTree(pos).query(pos, k=2)[0][:, 1]
    d = d[d > 0]
    return float(np.median(d)) if len(d) else BOX


def _scaling(spacing: float) -> dict:
    """vis-network's node scaling for nodes ``spacing`` apart (median nearest-neighbour distance): the largest
    node's radius is 0.8 of it, the smallest 0.25, so only large neighbours overlap however many nodes a page has
    (and at most BOX/11 however few)."""
    room = min(spacing, BOX / 9)
    return {"min": round(0.25 * room, 2), "max": round(0.8 * room, 2)}


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a page's tens of thousands of small dicts are built (each collection
    walks every object of the process: a full one in the middle cost as much as the whole page); restored after."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _sizes(freq: np.ndarray) -> np.ndarray:
    top = freq.max() if len(freq) else 0.0
    return 6 + 24 * np.sqrt(freq / top) if top > 0 else np.full(len(freq), 10.0)


def _numeric_attr(graph: FeatureGraph, name: str) -> np.ndarray:
    if name not in graph.node_attrs:
        raise FeatgraphError(f"color_by={name!r} is not a node attribute; choose one of {sorted(graph.node_attrs)}")
    try:
        return np.array([np.nan if v is None else float(v) for v in graph.node_attrs[name]], dtype=np.float64)
    except (TypeError, ValueError):
        raise FeatgraphError(f"color_by={name!r} holds non-numeric values; colour by a numeric node attribute "
                             "(e.g. rel_norm) or leave color_by unset to colour by community") from None


def _scale_legend(name: str, values: np.ndarray, lo: float, hi: float) -> dict:
    """Legend of a diverging colour scale: gradient stops, tick values, words, and counts in three bins (split at
    the attribute's :data:`SCALE_HINTS` values, else at thirds of the range)."""
    words, cuts = SCALE_HINTS.get(name, (("low", "middle", "high"), (lo + (hi - lo) / 3, lo + 2 * (hi - lo) / 3)))
    finite = values[~np.isnan(values)]
    counts = [int((finite <= cuts[0]).sum()), int(((finite > cuts[0]) & (finite < cuts[1])).sum()), int((finite >= cuts[1]).sum())]
    ranges = [f"≤ {cuts[0]:.3g}", f"{cuts[0]:.3g}–{cuts[1]:.3g}", f"≥ {cuts[1]:.3g}"]
    return {
        "kind": "scale", "attr": name, "stops": diverging_colors(np.linspace(0, 1, 5)), "ticks": [lo, (lo + hi) / 2, hi],
        "words": list(words), "bins": [{"range": r, "word": w, "count": c} for r, w, c in zip(ranges, words, counts)],
        "missing": int(len(values) - len(finite)),
    }


def _color_by(graph: FeatureGraph, name: str) -> tuple[np.ndarray, list[str], dict]:
    """Per node: value, colour, and the legend. The scale spans [0, 1] when every value lies there (e.g. rel_norm,
    whose middle 0.5 is "shared"), else [min, max]."""
    values = _numeric_attr(graph, name)
    finite = values[~np.isnan(values)]
    if len(finite) and (finite.min() < 0 or finite.max() > 1):
        lo, hi = float(finite.min()), float(finite.max())
    else:
        lo, hi = 0.0, 1.0
    t = (values - lo) / (hi - lo) if hi > lo else np.where(np.isnan(values), np.nan, 0.5)
    return values, diverging_colors(t), _scale_legend(name, values, lo, hi)


def write_html(
    graph: FeatureGraph,
    path: str | os.PathLike,
    title: str = "feature graph",
    physics_max_nodes: int = 0,
    color_by: str | None = None,
    max_nodes: int | None = None,
    layout: str | None = None,
    renderer: str = "auto",
) -> Path:
    """Write ``graph`` as one self-contained HTML page; returns the path.

    Nodes sit where the graph's layout puts them (node ``x``, ``y`` from :func:`featgraph.layout.add_layout`;
    computed on a copy when missing), coloured by community (node ``color``), sized by frequency and labelled with
    their ``label`` (else id; drawn once large enough on screen). Edges inside a community take its colour,
    edges between communities are faint. The side panel has a legend of the communities (label and size; click
    to focus one), a layout switch (communities / layers), a search over ids, labels and tokens, and each
    feature's dashboard: label, community, layer profile, density and activation histogram, top and quantile
    examples, promoted and suppressed tokens, strongest neighbours with their edge measures. Selecting a feature
    (click, search, or a ``#<id>`` link) centres on it and dims all but it and its neighbours;
    ``#community=<n>`` fits the view to community n.

    Parameters
    ----------
    graph : FeatureGraph
        Node attributes used when present: ``community``, ``frequency``, ``label``, ``x``, ``y``, ``color``,
        ``peak_layer`` (or ``layer``), ``peak_hookpoint``, ``layer_profile``, ``top_contexts``, ``max_act``,
        ``density``, ``act_histogram``, ``quantile_examples``, ``top_logits``, ``bottom_logits``; meta
        ``community_labels``, ``layout``, ``hookpoints``.
    title : str
        Page title (shown as text).
    physics_max_nodes : int
        Force-directed physics (vis-network's) runs up to this many shown nodes; default 0: never, the layout is
        computed in Python.
    color_by : str, optional
        A numeric node attribute to colour by on a diverging blue–grey–red scale, e.g. ``rel_norm``
        (‖d_B‖/(‖d_A‖+‖d_B‖) of a two-model crosscoder: 0 only model A, 0.5 shared, 1 only model B); the
        legend then shows the scale instead of the communities. Missing values (None) are drawn near-white.
    max_nodes : int, optional
        Above this many nodes the page shows a stratified sample (:func:`sample_nodes`) and says so; None: every
        node with WebGL (up to :data:`WEBGL_MAX_NODES`), :data:`DEFAULT_MAX_NODES` with vis-network.
    layout : {"community", "layers"}, optional
        The layout the page opens with; None: the graph's own (``meta["layout"]``), else
        :func:`featgraph.layout.default_mode`.
    renderer : {"auto", "vis", "webgl"}
        "vis": vis-network (canvas; tooltips; fine up to a few thousand nodes); "webgl": sigma.js 3 over
        graphology (WebGL; a 20,000-node, 200,000-edge graph draws in a few seconds); "auto": vis-network up to
        :data:`DEFAULT_MAX_NODES` shown nodes, WebGL above.
    """
    if layout is not None and layout not in LAYOUT_MODES:
        raise FeatgraphError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUT_MODES)}")
    if renderer not in RENDERERS:
        raise FeatgraphError(f"unknown renderer {renderer!r}; choose one of {', '.join(RENDERERS)}")
    n_all = graph.n_nodes
    if renderer == "auto":
        renderer = "vis" if min(n_all, max_nodes or n_all) <= DEFAULT_MAX_NODES else "webgl"
    if max_nodes is None:
        max_nodes = DEFAULT_MAX_NODES if renderer == "vis" else WEBGL_MAX_NODES
    graph = _with_layout(graph, layout)
    mode = graph.meta["layout"]
    sample = sample_nodes(graph, max_nodes)
    if color_by is not None:
        values, colors_all, legend = _color_by(graph, color_by)
        values, shown_colors = values[sample.keep], [colors_all[i] for i in sample.keep.tolist()]
    g = _induced(graph, sample.keep)
    community = _community_ids(g)
    comm_colors = _community_colors(graph)  # from the whole graph: a community keeps its colour when sampled
    if color_by is None:
        shown_colors, legend = [comm_colors.get(c, UNASSIGNED) for c in community.tolist()], {"kind": "communities"}
    freq = np.asarray([_num(v) for v in _column(g, "frequency", 0.0)])
    value = np.sqrt(freq / freq.max()) if len(freq) and freq.max() > 0 else np.full(len(freq), 0.5)
    pos = _page_positions(np.c_[[_num(v) for v in g.node_attrs["x"]], [_num(v) for v in g.node_attrs["y"]]])
    alt_mode, alt = _alternative(g, mode)
    alt = _page_positions(alt)
    spacing = _spacing(pos)
    edge_note = f"; {g.n_edges:,} of {graph.n_edges:,} edges (those among them)" if sample.note else ""
    common = dict(heading=title, legend=legend, note=sample.note + edge_note, n_total=n_all,
                  communities=_communities(graph, g, comm_colors), layouts={"current": mode, "alt": alt_mode},
                  focus_scale=round(40.0 / min(spacing, BOX / 9), 4))
    if renderer == "webgl":
        with _gc_paused():
            nodes = _node_records(g, pos, alt, value, shown_colors, values if color_by is not None else None, webgl=True)
            columns = _edge_columns(g)
        options = {"directed": bool(g.directed), "inside_alpha": 0.35, "between_alpha": 0.06,
                   "label_threshold": 7 if g.n_nodes > 2000 else 4}
        n_drawn = len(columns["drawn"])
        if n_drawn < g.n_edges:
            common["note"] = (common["note"] + "; " if common["note"] else "") + (
                f"drawing the {n_drawn:,} strongest of {g.n_edges:,} edges (each feature's strongest among them); "
                "a selected feature shows all of its edges")
        return _render("feature_graph_webgl.html", path, nodes=nodes, edge_columns=columns, options=options, **common)
    with _gc_paused():
        nodes = _node_records(g, pos, alt, value, shown_colors, values if color_by is not None else None)
        edges = _edge_records(g, comm_colors)
    options = {
        "physics": {"enabled": g.n_nodes <= physics_max_nodes, "stabilization": {"iterations": 150}, "barnesHut": {"springLength": 120}},
        "nodes": {"shape": "dot", "scaling": _scaling(spacing)},  # labels ("name") are drawn by the page, see feature_graph.html
        "edges": {"smooth": False, "color": {"inherit": False}, "scaling": {"min": 0.5, "max": 4},
                  "arrows": {"to": {"enabled": bool(g.directed), "scaleFactor": 0.4}}},
        "interaction": {"hover": True, "tooltipDelay": 120, "hideEdgesOnDrag": g.n_edges > 5000},
        "layout": {"improvedLayout": False},
    }
    return _render("feature_graph.html", path, nodes=nodes, edges=edges, options=options, **common)


def _node_records(g: FeatureGraph, pos: np.ndarray, alt: np.ndarray, value: np.ndarray, colors: list[str],
                  color_values: np.ndarray | None, webgl: bool = False) -> list[dict]:
    """Node records: position (and the other layout's), colour, size value, name and the panel's data (``info``);
    for vis-network also the tooltip and the strongest neighbours (a WebGL page reads those from its graph on
    demand, and gets a size in screen pixels)."""
    community = _community_ids(g)
    neighbours = None if webgl else _neighbours(g)
    hookpoints = [str(h) for h in g.meta.get("hookpoints", [])]
    nodes = []
    for i in range(g.n_nodes):
        node = g.node(i)
        info = _node_info(node, hookpoints)
        if color_values is not None:
            info["color_value"] = None if np.isnan(color_values[i]) else float(color_values[i])
        rec = {"id": node["id"], "name": str(node.get("label") or node["id"]), "community": int(community[i]),
               "color": colors[i], "value": round(float(value[i]), 4), "x": round(float(pos[i, 0]), 2),
               "y": round(float(pos[i, 1]), 2), "alt": [round(float(alt[i, 0]), 2), round(float(alt[i, 1]), 2)], "info": info}
        if webgl:
            rec["size"] = round(1.5 + 6.0 * float(value[i]), 2)
        else:
            info["neighbours"] = neighbours[i]
            rec["title"] = _tooltip(node)
        nodes.append(rec)
    return nodes


def _edge_columns(g: FeatureGraph) -> dict:
    """Edges as columns for the WebGL page: ends (node positions), weight, and every numeric edge attribute
    rounded to 4 significant digits (the panel's measures); non-finite values as None."""
    def clean(a: np.ndarray) -> list:
        a = _round_sig(np.asarray(a, dtype=np.float64))
        return [None if v != v or v in (np.inf, -np.inf) else v for v in a.tolist()]

    measures = {name: clean(col) for name, col in g.edge_attrs.items() if np.asarray(col).dtype.kind in "fiub"}
    w = np.nan_to_num(g.weights, nan=0.0, posinf=0.0, neginf=0.0) if g.n_edges else np.zeros(0)
    return {"src": g.edge_src.tolist(), "dst": g.edge_dst.tolist(), "w": _round_sig(w).tolist(), "measures": measures,
            "drawn": drawn_edges(g).tolist()}


WEBGL_DRAWN_EDGES = 30_000
"""Edges a WebGL page draws at most (headless Chromium's software WebGL draws ~50,000 lines a second; a GPU far
more): see :func:`drawn_edges`."""


def drawn_edges(g: FeatureGraph, limit: int = WEBGL_DRAWN_EDGES) -> np.ndarray:
    """Indices (ascending) of the edges a WebGL page draws: all of them up to ``limit``; above, each node's
    strongest edge (by |weight|; so no node with edges looks isolated), then the strongest of the rest, ``limit``
    in all (more only when the nodes' own strongest edges are more). The rest are in the page for the panel and
    are drawn with their feature when it is selected."""
    if g.n_edges <= limit:
        return np.arange(g.n_edges)
    w = np.abs(np.nan_to_num(g.weights, nan=0.0, posinf=0.0, neginf=0.0))
    order = np.lexsort((np.arange(g.n_edges), -w))  # strongest first, ties by index
    node = np.r_[g.edge_src[order], g.edge_dst[order]]  # each end of each edge, in that order
    edge = np.r_[order, order]
    rank = np.r_[np.arange(g.n_edges), np.arange(g.n_edges)]
    by_node = np.lexsort((rank, node))
    first = by_node[np.r_[True, node[by_node][1:] != node[by_node][:-1]]]  # each node's strongest edge
    keep = np.zeros(g.n_edges, dtype=bool)
    keep[edge[first]] = True
    room = max(0, limit - int(keep.sum()))
    keep[order[~keep[order]][:room]] = True
    return np.flatnonzero(keep)


def _edge_records(g: FeatureGraph, comm_colors: dict[int, str]) -> list[dict]:
    """vis-network edge records: inside a community its colour, half opaque; between communities (or without one)
    faint grey; width by weight."""
    community = _community_ids(g)
    w = np.nan_to_num(g.weights, nan=0.0, posinf=0.0, neginf=0.0).tolist() if g.n_edges else []
    src, dst = [g.node_ids[k] for k in g.edge_src.tolist()], [g.node_ids[k] for k in g.edge_dst.tolist()]
    cs, cd = community[g.edge_src].tolist(), community[g.edge_dst].tolist()
    styles = {c: {"color": col, "opacity": 0.45} for c, col in comm_colors.items()}
    faint = {"color": "#9e9e9e", "opacity": 0.08}
    return [{"id": k, "from": s, "to": d, "value": x, "title": f"{g.weight_key} {x:.3f}", "color": styles.get(a, faint) if a == b else faint}
            for k, (s, d, x, a, b) in enumerate(zip(src, dst, w, cs, cd))]


def pyvis_network(graph: FeatureGraph, height: str = "800px", width: str = "100%", notebook: bool = False,
                  max_nodes: int | None = None):
    """A pyvis ``Network`` of ``graph`` as :func:`write_html` draws it — the same positions (the graph's layout,
    computed on a copy when missing), community colours, sizes (by frequency), labels and tooltips, inter-community
    edges faint — with physics off and vis-network inlined (``cdn_resources="in_line"``), so
    ``net.write_html(path)`` / ``net.show(path)`` work offline. Nodes and edges are filled in directly (pyvis's
    ``add_edge`` checks every edge against all others: quadratic). ``max_nodes`` samples as the page does.

    Text stays text: pyvis shows a tooltip as HTML once any tooltip contains "href", so tooltips carry "href" as
    "hre\u200bf" (a zero-width space, invisible) and pyvis keeps vis-network's plain-text tooltips.
    """
    from pyvis.network import Network

    g = _with_layout(graph, None)
    if max_nodes is not None:
        g = _induced(g, sample_nodes(g, max_nodes).keep)
    community = _community_ids(g)
    comm_colors = _community_colors(g)
    pos = _page_positions(np.c_[[_num(v) for v in g.node_attrs["x"]], [_num(v) for v in g.node_attrs["y"]]])
    scaling = _scaling(_spacing(pos))
    freq = np.asarray([_num(v) for v in _column(g, "frequency", 0.0)])
    t = np.sqrt(freq / freq.max()) if len(freq) and freq.max() > 0 else np.full(len(freq), 0.5)
    size = scaling["min"] + t * (scaling["max"] - scaling["min"])
    net = Network(height=height, width=width, directed=g.directed, notebook=notebook, cdn_resources="in_line")
    safe = lambda text: text.replace("href", "hre\u200bf")  # noqa: E731
    with _gc_paused():
        for i in range(g.n_nodes):
            node = g.node(i)
            c = int(community[i])
            net.nodes.append({"id": node["id"], "label": str(node.get("label") or node["id"]), "title": safe(_tooltip(node)),
                              "color": comm_colors.get(c, UNASSIGNED), "size": round(float(size[i]), 2), "shape": "dot",
                              "x": round(float(pos[i, 0]), 2), "y": round(float(pos[i, 1]), 2), "physics": False})
        net.node_ids = list(g.node_ids)
        net.node_map = {n["id"]: n for n in net.nodes}
        for e in _edge_records(g, comm_colors):
            e.pop("id")
            e["width"] = 0.5 + 3.5 * min(abs(e.pop("value")), 1.0)
            net.edges.append(e)
    net.toggle_physics(False)
    _offline_template(net)
    return net


@lru_cache(maxsize=1)
def _pyvis_offline_template_text() -> str:
    """pyvis's page template without its Bootstrap <link>/<script> from a CDN (it styles menus we do not use); with
    ``cdn_resources="in_line"`` nothing else is fetched."""
    import pyvis

    text = (Path(pyvis.__file__).parent / "templates" / "template.html").read_text(encoding="utf-8")
    return re.sub(r"<(link|script)\s[^>]*cdn\.jsdelivr\.net/npm/bootstrap[^>]*>(\s*</script>)?", "", text)


def _offline_template(net) -> None:
    import pyvis
    from jinja2 import ChoiceLoader, DictLoader, Environment, FileSystemLoader

    text = _pyvis_offline_template_text()
    files = FileSystemLoader(str(Path(pyvis.__file__).parent / "templates"))  # the scripts it inlines
    net.templateEnv = Environment(loader=ChoiceLoader([DictLoader({net.path: text}), files]))
    net.template = net.templateEnv.get_template(net.path)  # what pyvis renders in a notebook


def _community_colors(g: FeatureGraph) -> dict[int, str]:
    """Community → colour: the nodes' own ``color`` where the graph has it (one per community), else the palette."""
    community = _community_ids(g)
    own = g.node_attrs.get("color")
    fallback = node_colors(g)
    out: dict[int, str] = {}
    for i, c in enumerate(community.tolist()):
        if c < 0 or c in out:
            continue
        col = own[i] if own is not None else None
        out[c] = col if isinstance(col, str) and re.fullmatch(r"#[0-9a-fA-F]{6}", col) else fallback[i]
    return out


# ---- the diff page -------------------------------------------------------------------------------------------------
def _edge_classes(diff) -> np.ndarray:
    """(E,) "gained" | "lost" | "reweighted" | "unchanged" (kept but not significantly changed)."""
    return np.where(diff.status == "kept", np.where(diff.reweighted, "reweighted", "unchanged"), diff.status)


def _diff_counts(diff) -> dict[str, int]:
    c = diff.counts
    return {"gained": c["gained"], "lost": c["lost"], "reweighted": c["reweighted"], "unchanged": c["kept"] - c["reweighted"]}


def _union_attrs(a: FeatureGraph, b: FeatureGraph, ids: list[str]) -> FeatureGraph:
    """A node-only graph over ``ids``: each node's attributes from b where it is a node of b, else from a;
    communities of a-only nodes are shifted past b's labels (used for the layout bands only)."""
    in_b = {n: i for i, n in enumerate(b.node_ids)}
    in_a = {n: i for i, n in enumerate(a.node_ids)}
    shift = max((int(c) for c in b.node_attrs.get("community", [])), default=-1) + 1
    rows = []
    for nid in ids:
        if nid in in_b:
            rows.append(b.node(in_b[nid]))
        else:
            row = a.node(in_a[nid])
            row["community"] = int(row.get("community", 0)) + shift
            rows.append(row)
    keys = sorted({k for r in rows for k in r} - {"id"})
    return FeatureGraph(list(ids), {k: [r.get(k) for r in rows] for k in keys}, meta={**a.meta, **b.meta})


def _moved(change, i: int) -> float | None:
    """The weight a feature's edges moved (``FeatureChange.moved``), where the FeatureChange has it."""
    moved = getattr(change, "moved", None)
    return None if moved is None else float(moved[i])


def _check_diff_inputs(a: FeatureGraph, b: FeatureGraph, diff, change) -> None:
    union = set(a.node_ids) | set(b.node_ids)
    if set(change.node_ids) != union:
        raise FeatgraphError("the FeatureChange does not cover the nodes of these two graphs; "
                             "pass feature_change(a, b) computed from the same a and b")
    unknown = (set(diff.source.tolist()) | set(diff.target.tolist())) - union
    if unknown:
        raise FeatgraphError(f"the EdgeDiff names {len(unknown)} node(s) in neither graph (e.g. {sorted(unknown)[0]!r}); "
                             "pass edge_diff(a, b) computed from the same a and b")


def write_diff_html(
    a: FeatureGraph,
    b: FeatureGraph,
    diff,
    change,
    path: str | os.PathLike,
    title: str = "feature graph diff",
    names: tuple[str, str] = ("a", "b"),
    physics_max_nodes: int = 300,
    max_nodes: int = DEFAULT_MAX_NODES,
) -> Path:
    """Write the change from stage ``a`` to stage ``b`` as one self-contained HTML page; returns the path.

    Nodes are the union of both stages (attributes from b where present), shaped by status (dot = in both,
    triangle = appeared in b, square = disappeared from a) and coloured by the
    :func:`~featgraph.diff.feature_change` score (grey 0 → orange 1). Every row of ``diff`` is an edge: gained
    green, lost red (dashed), reweighted dark grey, unchanged faint grey; width = 1 + 5 |Δw| / max |Δw|. The side
    panel lists features in the order of ``change.order()`` with their score and moved weight (click one to focus it and list its changed edges); the
    legend gives the counts of ``diff`` and toggles each status. Above ``max_nodes`` features the page keeps the
    most changed ones (and the edges among them) and says so.

    Parameters
    ----------
    a, b : FeatureGraph
        The two stages.
    diff : EdgeDiff
        ``edge_diff(a, b, ...)``.
    change : FeatureChange
        ``feature_change(a, b)``.
    names : (str, str)
        What to call the stages on the page (e.g. ``("S", "DF")``).
    physics_max_nodes : int
        Force-directed physics runs only up to this many shown nodes (the precomputed layout is kept above).
    max_nodes : int
        Above this many features the page shows the most changed ones and says so.
    """
    _check_diff_inputs(a, b, diff, change)
    if max_nodes < 1:
        raise FeatgraphError(f"max_nodes must be at least 1; got {max_nodes}")
    order = change.order()
    shown = np.sort(order[:max_nodes])
    ids = [change.node_ids[i] for i in shown.tolist()]
    at = {n: k for k, n in enumerate(ids)}
    g = _union_attrs(a, b, ids)
    community = np.asarray(_column(g, "community", 0), dtype=np.int64)
    pos = layout_positions(g, community)
    size = _sizes(np.asarray([float(v or 0.0) for v in _column(g, "frequency", 0.0)]))
    score = change.score[shown]
    colors = [f"#{r:02x}{gg:02x}{bb:02x}" for r, gg, bb in
              np.rint(_hex_rgb("#cfd8dc") + (_hex_rgb("#e65100") - _hex_rgb("#cfd8dc")) * score[:, None]).astype(int)]
    shape = {"kept": "dot", "appeared": "triangle", "disappeared": "square"}
    hookpoints = list(g.meta.get("hookpoints", []))
    nodes = []
    for k, i in enumerate(shown.tolist()):
        node = g.node(k)
        info = _node_info(node, hookpoints)
        info.update(status=str(change.status[i]), score=float(change.score[i]), moved=_moved(change, i), degree=[int(change.degree_a[i]), int(change.degree_b[i])],
                    strength=[float(change.strength_a[i]), float(change.strength_b[i])])
        nodes.append({"id": node["id"], "label": str(node.get("label") or node["id"]), "color": colors[k],
                      "shape": shape[str(change.status[i])], "size": float(size[k]), "x": float(pos[k, 0]), "y": float(pos[k, 1]),
                      "title": f"{node['id']}  {change.status[i]}\nchange {change.score[i]:.3f}", "info": info})
    cls = _edge_classes(diff)
    top = float(np.abs(diff.delta).max()) if len(diff.delta) else 0.0
    edges = []
    for k in range(len(diff.delta)):
        s, t = str(diff.source[k]), str(diff.target[k])
        if s not in at or t not in at:
            continue
        d = float(diff.delta[k])
        edges.append({"id": k, "from": s, "to": t, "status": str(cls[k]), "color": EDGE_STYLE[str(cls[k])],
                      "width": 1.0 + 5.0 * abs(d) / top if top > 0 else 1.0, "dashes": bool(cls[k] == "lost"),
                      "w_a": float(diff.w_a[k]), "w_b": float(diff.w_b[k]), "delta": d,
                      "title": f"{cls[k]}: {names[0]} {diff.w_a[k]:.3f} → {names[1]} {diff.w_b[k]:.3f} (Δ {d:+.3f})"})
    ranked = [{"id": change.node_ids[i], "score": float(change.score[i]), "moved": _moved(change, i), "status": str(change.status[i])}
              for i in order[: min(max_nodes, 500)].tolist()]
    note = ""
    if len(ids) < len(change.node_ids):
        note = (f"showing {len(ids):,} of {len(change.node_ids):,} features: the most changed; "
                f"{len(edges):,} of {len(diff.delta):,} edges (those among them)")
    options = {
        "physics": {"enabled": len(ids) <= physics_max_nodes, "stabilization": {"iterations": 150}, "barnesHut": {"springLength": 120}},
        "nodes": {"font": {"size": 10}},
        "edges": {"smooth": False, "arrows": {"to": {"enabled": bool(a.directed), "scaleFactor": 0.4}}},
        "interaction": {"hover": True, "tooltipDelay": 120, "hideEdgesOnDrag": len(edges) > 5000},
        "layout": {"improvedLayout": False},
    }
    return _render("diff_graph.html", path, heading=title, nodes=nodes, edges=edges, options=options, ranked=ranked,
                   counts=_diff_counts(diff), edge_colors=EDGE_STYLE, names=list(names), note=note, notes=list(diff.notes),
                   test=str(diff.test))
