"""Where nodes go and what colour they are: a community-aware force-directed layout, the layer view, and a palette
made for many categories.

* :func:`community_layout` — the default for co-activation and interaction graphs. Each community is a disc
  (radius ∝ √size) placed by a Fruchterman–Reingold layout of the *community quotient graph* (communities as
  super-nodes, joined by the summed weight of the edges between them), discs pushed apart until none overlap; then
  each community's members are laid out by Fruchterman–Reingold on the edges inside it and fitted into its disc.
  So a community is always one compact, separate region, and communities that share many edges sit side by side
  (the picture Gephi's ForceAtlas2 gives after a "partition" layout). Deterministic from ``seed``.
* :func:`layer_layout` — x by peak hookpoint (layer), one block per layer with communities as bands; for a
  per-prompt graph one column per layer, ranked by the feature's activation on the prompt. The default for stack
  and per-prompt graphs, where layers are the point.
* :func:`community_palette` — greedy max–min colours in CIELAB (Glasbey et al. 2007, "Colour displays for
  categorical images"): each next colour is the candidate farthest (ΔE*ab, CIE76) from every colour chosen so far
  and from white (the page), black and :data:`UNASSIGNED` grey.
* :func:`add_layout` — sets node ``x``, ``y``, ``color`` and ``meta["layout"]`` on a graph.

Coordinates are in a fixed box, |x|, |y| ≤ :data:`BOX` (community layout) or on a 22-unit grid (layer layout);
a page or an export may scale them.
"""

from __future__ import annotations

import logging
import random
from contextlib import contextmanager
from functools import lru_cache
from typing import Iterator, Literal

import numpy as np

from crosscoder.errors import FeatgraphError

from .graph import FeatureGraph

__all__ = ["BOX", "LAYOUT_MODES", "UNASSIGNED", "add_layout", "community_layout", "community_palette", "default_mode",
           "delta_e", "layer_layout", "node_colors", "srgb_to_lab"]

log = logging.getLogger(__name__)

BOX = 1000.0
"""The community layout spans [-BOX, BOX] on its longer axis (Gephi-like units)."""
UNASSIGNED = "#a0a0a0"
"""Colour of nodes without a community (community None or negative)."""
LAYOUT_MODES = ("community", "layers")
MAX_DISTINCT = 256
"""Distinct palette colours; past this many communities the palette repeats."""
FR_GRID_FROM = 300
"""Fruchterman–Reingold uses igraph's grid variant above this many nodes."""
GRID_GAP = 22.0
"""Grid spacing of the layer layout."""


# ---- colours -------------------------------------------------------------------------------------------------------
def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) sRGB in 0..255 → (..., 3) CIELAB (D65 white).

    >>> srgb_to_lab(np.array([255, 0, 0])).round(1).tolist()
    [53.2, 80.1, 67.2]
    """
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    M = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]])
    xyz = lin @ M.T / np.array([0.95047, 1.0, 1.08883])
    eps = (6 / 29) ** 3
    f = np.where(xyz > eps, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def _rgb(hex_color: str) -> np.ndarray:
    return np.array([int(hex_color[k : k + 2], 16) for k in (1, 3, 5)], dtype=np.float64)


def delta_e(a: str, b: str) -> float:
    """CIE76 colour difference ΔE*ab between two ``#rrggbb`` colours (≈ 2.3 is a just-noticeable difference).

    >>> round(delta_e("#000000", "#ffffff"), 1)
    100.0
    """
    return float(np.linalg.norm(srgb_to_lab(_rgb(a)) - srgb_to_lab(_rgb(b))))


@lru_cache(maxsize=1)
def _candidates() -> tuple[np.ndarray, np.ndarray]:
    """Candidate colours: an sRGB grid (step 5, channels 20–235, so no pure primaries) kept where
    35 ≤ L* ≤ 80 (readable on white, not black) and chroma ≥ 30 (no greys: grey means unassigned)."""
    levels = np.arange(20, 236, 5)
    rgb = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    lab = srgb_to_lab(rgb)
    keep = (lab[:, 0] >= 35) & (lab[:, 0] <= 80) & (np.hypot(lab[:, 1], lab[:, 2]) >= 30)
    return rgb[keep].astype(np.int64), lab[keep]


@lru_cache(maxsize=8)
def _greedy_palette(n: int) -> tuple[str, ...]:
    rgb, lab = _candidates()
    anchors = srgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], _rgb(UNASSIGNED)]))
    d2 = ((lab[:, None, :] - anchors[None]) ** 2).sum(-1).min(1)  # squared distance to the nearest chosen colour
    first = int(np.argmin(((rgb - np.array([31, 119, 180])) ** 2).sum(1)))  # start from the familiar Tableau blue
    out = []
    for k in range(min(n, len(rgb))):
        i = first if k == 0 else int(np.argmax(d2))
        out.append("#%02x%02x%02x" % tuple(rgb[i]))
        d2 = np.minimum(d2, ((lab - lab[i]) ** 2).sum(1))
    return tuple(out)


def community_palette(n: int) -> list[str]:
    """``n`` colours for communities 0..n-1, the most distinct first (community 0 is the largest).

    Greedy max–min in CIELAB (Glasbey): the first 20 are ≥ 30 ΔE*ab apart and from white, black and grey; the
    list for ``n`` is a prefix of the list for any larger ``n``, so a community keeps its colour when more are
    added. Past :data:`MAX_DISTINCT` the colours repeat (communities beyond the 256 largest are tiny).

    >>> community_palette(3)
    ['#1e78b4', '#14e114', '#eb14eb']
    """
    if n <= 0:
        return []
    base = _greedy_palette(min(MAX_DISTINCT, max(32, 1 << (n - 1).bit_length())))  # cached by powers of two
    return [base[k % len(base)] for k in range(n)]


def node_colors(graph: FeatureGraph) -> list[str]:
    """Each node's community colour (:data:`UNASSIGNED` grey where the community is missing or negative)."""
    comm = _community_ids(graph)
    palette = community_palette(int(comm.max()) + 1 if len(comm) and comm.max() >= 0 else 0)
    return [palette[c] if c >= 0 else UNASSIGNED for c in comm.tolist()]


def _community_ids(graph: FeatureGraph) -> np.ndarray:
    """(N,) int community of each node; -1 where there is none (attribute absent, None, negative or not an int)."""
    col = graph.node_attrs.get("community")
    if col is None:
        return np.full(graph.n_nodes, -1, dtype=np.int64)
    out = np.full(graph.n_nodes, -1, dtype=np.int64)
    for i, c in enumerate(col):
        if isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c >= 0:
            out[i] = int(c)
    return out


# ---- the community layout ------------------------------------------------------------------------------------------
@contextmanager
def _igraph_seed(seed: int) -> Iterator[None]:
    """igraph draws from Python's ``random`` module; give it a private generator seeded with ``seed`` for the
    duration (and hand back the module's default after)."""
    import igraph as ig

    ig.set_random_number_generator(random.Random(seed))
    try:
        yield
    finally:
        ig.set_random_number_generator(random)


def _layout_edges(graph: FeatureGraph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undirected edges without self-loops and their layout weights: |w| / mean |w|, clipped to [0.05, 20]
    (non-finite or missing weights count as 1)."""
    src, dst = graph.edge_src, graph.edge_dst
    if graph.n_edges and graph.weight_key in graph.edge_attrs:
        try:
            w = np.abs(np.asarray(graph.edge_attrs[graph.weight_key], dtype=np.float64))
        except (TypeError, ValueError):
            w = np.ones(graph.n_edges)
    else:
        w = np.ones(graph.n_edges)
    w = np.where(np.isfinite(w), w, 0.0)
    keep = src != dst
    src, dst, w = src[keep], dst[keep], w[keep]
    mean = w[w > 0].mean() if (w > 0).any() else 1.0
    return src, dst, np.clip(w / mean, 0.05, 20.0)


def _fr(n: int, src: np.ndarray, dst: np.ndarray, w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) Fruchterman–Reingold positions from a seeded random start (igraph; its grid variant, which repels
    only nearby nodes, above :data:`FR_GRID_FROM` nodes: the exact one costs n² per step)."""
    import igraph as ig

    if n == 1:
        return np.zeros((1, 2))
    g = ig.Graph(n=n, edges=np.c_[src, dst].tolist(), directed=False)
    start = rng.normal(size=(n, 2)) * np.sqrt(n)
    niter = 500 if n <= 1000 else 300
    pos = g.layout_fruchterman_reingold(weights=w.tolist() if len(w) else None, seed=start.tolist(), niter=niter,
                                        grid="grid" if n > FR_GRID_FROM else "nogrid")
    return np.asarray(pos.coords, dtype=np.float64).reshape(n, 2)


def _fit_disc(pos: np.ndarray, radius: float) -> np.ndarray:
    """Centre ``pos`` on its mean and scale it so 95 % of its points lie within ``radius`` (a few stragglers of
    a loosely connected community may poke out)."""
    pos = pos - pos.mean(0)
    r = np.quantile(np.linalg.norm(pos, axis=1), 0.95) if len(pos) > 1 else 0.0
    return pos * (radius / r) if r > 0 else pos


def _separate(P: np.ndarray, r: np.ndarray, pad: float, rng: np.random.Generator, max_iter: int = 300) -> np.ndarray:
    """Push discs (centres ``P``, radii ``r``) apart until no two overlap (gap ≥ ``pad``); a disc moves in inverse
    proportion to its area, so large communities stay put and small ones make room."""
    from scipy.spatial import cKDTree

    P = P.copy()
    area = r**2 + 1e-9
    reach = 2 * r.max() + pad
    for _ in range(max_iter):
        pairs = cKDTree(P).query_pairs(reach, output_type="ndarray")
        if not len(pairs):
            break
        i, j = pairs[:, 0], pairs[:, 1]
        delta = P[j] - P[i]
        d = np.linalg.norm(delta, axis=1)
        over = r[i] + r[j] + pad - d
        hit = over > 1e-9
        if not hit.any():
            break
        i, j, delta, d, over = i[hit], j[hit], delta[hit], d[hit], over[hit]
        same = d < 1e-9  # coincident centres: a random direction
        delta[same] = rng.normal(size=(int(same.sum()), 2))
        unit = delta / np.linalg.norm(delta, axis=1, keepdims=True)
        share_i = area[j] / (area[i] + area[j])
        move = (0.8 * over + 1e-6)[:, None] * unit  # 80 % of each overlap per step: converges without overshooting
        np.add.at(P, i, -move * share_i[:, None])
        np.add.at(P, j, move * (1 - share_i)[:, None])
    return P


def _quotient(group: np.ndarray, n_groups: int, src: np.ndarray, dst: np.ndarray, w: np.ndarray):
    """Edges between groups with their summed weights (each unordered pair once), normalised to mean 1."""
    a, b = group[src], group[dst]
    inter = a != b
    lo, hi = np.minimum(a[inter], b[inter]), np.maximum(a[inter], b[inter])
    key, inv = np.unique(lo * n_groups + hi, return_inverse=True)
    qw = np.bincount(inv, weights=w[inter], minlength=len(key)) if len(key) else np.zeros(0)
    return key // n_groups, key % n_groups, qw / qw.mean() if len(qw) else qw


def community_layout(graph: FeatureGraph, seed: int = 0) -> np.ndarray:
    """(N, 2) positions: communities as separate discs placed by their shared edges, members inside by their own.

    1. Groups: the node attribute ``community``; nodes without one (None or negative) are groups of their own; no
       ``community`` at all makes the whole graph one group (a plain force-directed layout).
    2. Nodes without any edge are set aside on a grid under the picture (they have no neighbours to sit near).
    3. The quotient graph — one super-node per group, edge weight Σ of the weights between two groups —
       is laid out by Fruchterman–Reingold (weights = attraction), scaled so neighbouring discs of radius
       √(size) nearly touch, and the discs are pushed apart until none overlap.
    4. Each group's members are laid out by Fruchterman–Reingold on the edges inside the group (weights
       |w| / mean |w|) and fitted into the group's disc.
    5. The whole picture is centred and scaled so its longer side spans [-BOX, BOX].

    Deterministic for a given graph and ``seed`` (igraph's random numbers come from ``random.Random(seed)``,
    starting positions from ``numpy.random.default_rng(seed)``).
    """
    n = graph.n_nodes
    if n == 0:
        return np.zeros((0, 2))
    rng = np.random.default_rng(seed)
    src, dst, w = _layout_edges(graph)
    comm = _community_ids(graph)
    if "community" not in graph.node_attrs:
        comm = np.zeros(n, dtype=np.int64)
    degree = np.bincount(src, minlength=n) + np.bincount(dst, minlength=n)
    loose = degree == 0
    # groups: communities, then one per unassigned node; loose nodes take no part
    _, group = np.unique(np.where(comm >= 0, comm, -1 - np.arange(n)), return_inverse=True)
    placed = np.flatnonzero(~loose)
    pos = np.zeros((n, 2))
    with _igraph_seed(seed):
        if len(placed):
            _, g_of = np.unique(group[placed], return_inverse=True)  # groups renumbered over placed nodes
            group_p = np.full(n, -1, dtype=np.int64)
            group_p[placed] = g_of
            n_groups = int(g_of.max()) + 1
            size = np.bincount(g_of, minlength=n_groups).astype(np.float64)
            radius = np.sqrt(size)
            centres = _centres(n_groups, radius, *_quotient(group_p, n_groups, src, dst, w), rng)
            for gi, (members, es, ed, ew) in enumerate(_split_by_group(placed, group_p, n_groups, src, dst, w)):
                pos[members] = centres[gi] + _members(len(members), es, ed, ew, radius[gi], rng)
        if loose.any():
            pos[loose] = _grid_below(pos[placed] if len(placed) else np.zeros((0, 2)), int(loose.sum()))
    return _to_box(pos)


def _centres(n_groups: int, radius: np.ndarray, qs: np.ndarray, qd: np.ndarray, qw: np.ndarray, rng) -> np.ndarray:
    """Centres of the group discs: FR on the quotient graph, scaled so discs nearly touch, then separated."""
    if n_groups == 1:
        return np.zeros((1, 2))
    P = _fr(n_groups, qs, qd, qw, rng)
    from scipy.spatial import cKDTree

    d_nn, j_nn = cKDTree(P).query(P, k=2)
    d_nn, j_nn = d_nn[:, 1], j_nn[:, 1]
    want = radius + radius[j_nn] + 1.0
    ok = d_nn > 1e-9
    if ok.any():
        P = P * (np.median(want[ok]) / np.median(d_nn[ok]))
    pad = max(1.0, 0.15 * float(np.median(radius)))
    P = _separate(P, radius, pad=pad, rng=rng)
    for _ in range(20):  # pull in outliers (a community with few edges to the rest drifts off and shrinks the picture)
        moved = _compact(P, radius, max_gap=2 * pad + float(np.median(radius)))
        P = _separate(moved, radius, pad=pad, rng=rng)
        if np.allclose(moved, P):
            break
    return P


def _compact(P: np.ndarray, r: np.ndarray, max_gap: float) -> np.ndarray:
    """Move each disc whose gap to its nearest disc exceeds ``max_gap`` toward the area-weighted centre of all
    discs, by the excess (never past the centre)."""
    from scipy.spatial import cKDTree

    if len(P) < 3:
        return P
    d, j = cKDTree(P).query(P, k=2)
    gap = d[:, 1] - r - r[j[:, 1]]
    centre = (P * (r**2)[:, None]).sum(0) / (r**2).sum()
    to_centre = centre - P
    dist = np.linalg.norm(to_centre, axis=1)
    step = np.minimum(np.clip(gap - max_gap, 0, None), dist)
    out = P.copy()
    far = step > 0
    out[far] += to_centre[far] / dist[far, None] * step[far, None]
    return out


def _split_by_group(placed, group_p, n_groups, src, dst, w):
    """Per group (in order): its members (node indices) and the edges inside it, with ends as member positions."""
    order = placed[np.argsort(group_p[placed], kind="stable")]
    node_bounds = np.searchsorted(group_p[order], np.arange(n_groups + 1))
    local = np.zeros(group_p.shape[0], dtype=np.int64)
    local[order] = np.arange(len(order)) - node_bounds[group_p[order]]
    inside = np.flatnonzero(group_p[src] == group_p[dst])
    inside = inside[np.argsort(group_p[src[inside]], kind="stable")]
    edge_bounds = np.searchsorted(group_p[src[inside]], np.arange(n_groups + 1))
    for gi in range(n_groups):
        e = inside[edge_bounds[gi] : edge_bounds[gi + 1]]
        yield order[node_bounds[gi] : node_bounds[gi + 1]], local[src[e]], local[dst[e]], w[e]


def _members(k: int, src, dst, w, radius: float, rng) -> np.ndarray:
    """(k, 2) positions of one group's members around (0, 0), fitted into a disc of ``radius``."""
    if k == 1:
        return np.zeros((1, 2))
    return _fit_disc(_fr(k, src, dst, w, rng), 0.92 * radius)


def _grid_below(pos: np.ndarray, k: int) -> np.ndarray:
    """``k`` positions on a grid under the bounding box of ``pos`` (unit spacing 2, rows as wide as the picture)."""
    (x0, _), (x1, y1) = (pos.min(0), pos.max(0)) if len(pos) else ((0.0, 0.0), (0.0, 0.0))
    gap = 2.0
    cols = max(1, int((x1 - x0) // gap) + 1, int(np.ceil(np.sqrt(k))))
    i = np.arange(k)
    x = x0 + (i % cols) * gap
    y = y1 + 3 * gap + (i // cols) * gap
    return np.c_[x, y]


def _to_box(pos: np.ndarray) -> np.ndarray:
    lo, hi = pos.min(0), pos.max(0)
    centre, half = (lo + hi) / 2, float((hi - lo).max()) / 2
    return (pos - centre) * (BOX / half) if half > 0 else pos - centre


# ---- the layer layout ----------------------------------------------------------------------------------------------
def _layer_column(graph: FeatureGraph) -> np.ndarray:
    n = graph.n_nodes
    col = graph.node_attrs.get("layer", graph.node_attrs.get("peak_layer"))
    if col is None:
        return np.zeros(n, dtype=np.int64)
    return np.array([int(v) if isinstance(v, (int, float, np.integer, np.floating)) and np.isfinite(v) else 0 for v in col],
                    dtype=np.int64)


def _floats(graph: FeatureGraph, name: str) -> np.ndarray:
    col = graph.node_attrs.get(name, [0.0] * graph.n_nodes)
    out = np.zeros(graph.n_nodes)
    for i, v in enumerate(col):
        try:
            out[i] = float(v) if v is not None else 0.0
        except (TypeError, ValueError):
            pass
    return np.nan_to_num(out)


def layer_layout(graph: FeatureGraph, gap: float = GRID_GAP) -> np.ndarray:
    """(N, 2) positions with x by layer (node attribute ``layer``, else ``peak_layer``; 0 when absent).

    A co-activation or stack graph: one block per layer, left to right; inside a block, nodes fill a grid row by
    row, sorted by community then frequency, so each community is a band. A per-prompt graph (meta kind
    ``"prompt"``): one column per layer, 15·gap apart, nodes ranked top-down by ``prompt_activation`` (as
    :func:`featgraph.crosslayer.prompt_graph` orders them), 2·gap apart.
    """
    n = graph.n_nodes
    layer = _layer_column(graph)
    pos = np.zeros((n, 2))
    if n == 0:
        return pos
    if graph.meta.get("kind") == "prompt":
        act = _floats(graph, "prompt_activation")
        order = np.lexsort((np.arange(n), -act, layer))
        starts = np.r_[0, np.flatnonzero(np.diff(layer[order])) + 1]
        sizes = np.diff(np.r_[starts, n])
        rank = np.arange(n) - np.repeat(starts, sizes)
        pos[order, 0] = layer[order] * 15 * gap
        pos[order, 1] = (rank - (np.repeat(sizes, sizes) - 1) / 2) * 2 * gap
        return pos
    community = _community_ids(graph)
    freq = _floats(graph, "frequency")
    layers, sizes = np.unique(layer, return_counts=True)
    n_cols = {lay: max(1, int(np.ceil(np.sqrt(k) / 1.5))) for lay, k in zip(layers.tolist(), sizes.tolist())}
    block = (max(n_cols.values()) + 4) * gap
    for lay in layers.tolist():
        idx = np.flatnonzero(layer == lay)
        idx = idx[np.lexsort((-freq[idx], community[idx]))]
        k = np.arange(len(idx))
        pos[idx, 0] = lay * block + (k % n_cols[lay]) * gap
        pos[idx, 1] = (k // n_cols[lay] - len(idx) / n_cols[lay] / 2) * gap
    return pos


# ---- on a graph ----------------------------------------------------------------------------------------------------
def default_mode(graph: FeatureGraph) -> Literal["community", "layers"]:
    """"layers" for stack graphs (meta kind ``"stack"``) and per-prompt graphs (kind ``"prompt"``, or nodes with
    ``prompt_activation``/``prompt_positions``), where layers are the point; "community" otherwise."""
    kind = str(graph.meta.get("kind", ""))
    if kind in ("stack", "prompt") or "prompt" in graph.meta or \
            "prompt_activation" in graph.node_attrs or "prompt_positions" in graph.node_attrs:
        return "layers"
    return "community"


def add_layout(graph: FeatureGraph, seed: int = 0, mode: str | None = None) -> FeatureGraph:
    """Set node ``x``, ``y`` (floats), ``color`` (``#rrggbb``, the community's palette colour) and
    ``meta["layout"]`` on ``graph`` in place; returns it.

    ``mode`` is "community" (:func:`community_layout`) or "layers" (:func:`layer_layout`); None picks
    :func:`default_mode`.
    """
    mode = mode or default_mode(graph)
    if mode not in LAYOUT_MODES:
        raise FeatgraphError(f"unknown layout {mode!r}; choose one of {', '.join(LAYOUT_MODES)}")
    pos = community_layout(graph, seed) if mode == "community" else layer_layout(graph)
    graph.set_node_attr("x", [round(float(v), 3) for v in pos[:, 0]])
    graph.set_node_attr("y", [round(float(v), 3) for v in pos[:, 1]])
    graph.set_node_attr("color", node_colors(graph))
    graph.meta["layout"] = mode
    return graph
