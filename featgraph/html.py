"""A self-contained, offline, interactive HTML page of a feature graph (pyvis / vis-network 9.1.2).

pyvis's ``add_edge`` is quadratic, so the node and edge lists are filled directly. The page inlines
vis-network (no CDN), is laid out in advance (x by peak hookpoint, communities in bands along y, physics off
above ``physics_max_nodes``), colours nodes by community and sizes them by frequency. Text from the model or the
data reaches the page only as JSON (``tojson`` escapes ``<``, ``>``, ``&``, ``'``) rendered with ``textContent``
or as vis-network's plain-text tooltip, so a token such as ``</script><img onerror=...>`` shows as text.
"""

from __future__ import annotations

import colorsys
import os
from pathlib import Path

import numpy as np

from crosscoder.io import atomic_file

from .graph import FeatureGraph

__all__ = ["write_html", "community_colors"]

TEMPLATE_DIR = Path(__file__).parent / "templates"


def community_colors(n: int) -> list[str]:
    """``n`` distinguishable colours (golden-ratio hues), the same for the same ``n``."""
    out = []
    for k in range(n):
        h = (0.61803398875 * k) % 1.0
        r, g, b = colorsys.hls_to_rgb(h, 0.5, 0.65)
        out.append(f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}")
    return out


def layout_positions(graph: FeatureGraph, community: np.ndarray, gap: float = 22.0) -> np.ndarray:
    """(n, 2) positions: one block per peak layer, left to right; inside a block, nodes fill a grid row by row,
    sorted by community then frequency, so each community is a band."""
    if "x" in graph.node_attrs and "y" in graph.node_attrs:  # laid out already (e.g. a per-prompt graph)
        return np.c_[np.asarray(graph.node_attrs["x"], float) * 15 * gap, np.asarray(graph.node_attrs["y"], float) * 2 * gap]
    layer = np.asarray(graph.node_attrs.get("layer", graph.node_attrs.get("peak_layer", [0] * graph.n_nodes)))
    freq = np.asarray(graph.node_attrs.get("frequency", [0.0] * graph.n_nodes))
    layers, sizes = np.unique(layer, return_counts=True)
    n_cols = {lay: max(1, int(np.ceil(np.sqrt(n) / 1.5))) for lay, n in zip(layers, sizes)}
    block = (max(n_cols.values(), default=1) + 4) * gap
    pos = np.zeros((graph.n_nodes, 2))
    for lay in layers:
        idx = np.flatnonzero(layer == lay)
        idx = idx[np.lexsort((-freq[idx], community[idx]))]
        k = np.arange(len(idx))
        pos[idx, 0] = lay * block + (k % n_cols[lay]) * gap
        pos[idx, 1] = (k // n_cols[lay] - len(idx) / n_cols[lay] / 2) * gap
    return pos


def _tooltip(node: dict) -> str:
    lines = [f"{node['id']}  community {node.get('community', '?')}", f"frequency {node.get('frequency', 0):.2e}"]
    if "peak_hookpoint" in node:
        lines.append(f"peak {node['peak_hookpoint']}")
    if node.get("layer_profile"):
        lines.append("layer profile " + " ".join(f"{v:.2f}" for v in node["layer_profile"]))
    for c in node.get("top_contexts", [])[:2]:
        lines.append(f"…{c['left']}[{c['token']}]{c['right']}")
    return "\n".join(lines)


def write_html(graph: FeatureGraph, path: str | os.PathLike, title: str = "feature graph", physics_max_nodes: int = 300) -> Path:
    """Write ``graph`` as one self-contained HTML page; returns the path. Needs node attribute ``community``."""
    from jinja2 import Environment, FileSystemLoader
    from pyvis.network import Network

    community = np.asarray(graph.node_attrs.get("community", [0] * graph.n_nodes), dtype=np.int64)
    colors = community_colors(int(community.max()) + 1 if graph.n_nodes else 0)
    freq = np.asarray(graph.node_attrs.get("frequency", [0.0] * graph.n_nodes), dtype=np.float64)
    size = 6 + 24 * np.sqrt(freq / freq.max()) if graph.n_nodes and freq.max() > 0 else np.full(graph.n_nodes, 10.0)
    pos = layout_positions(graph, community)
    physics = graph.n_nodes <= physics_max_nodes
    hookpoints = graph.meta.get("hookpoints", [])

    net = Network(height="100vh", width="100%", cdn_resources="in_line", heading=title)
    net.templateEnv = Environment(loader=FileSystemLoader([str(TEMPLATE_DIR), str(Path(net.template_dir))]))
    net.path = "feature_graph.html"
    for i in range(graph.n_nodes):
        node = graph.node(i)
        net.nodes.append({
            "id": node["id"], "label": node["id"], "title": _tooltip(node), "group": int(community[i]),
            "color": colors[community[i]], "size": float(size[i]), "x": float(pos[i, 0]), "y": float(pos[i, 1]),
            "info": {
                "frequency": float(node.get("frequency", 0.0)), "max_act": float(node.get("max_act", 0.0)),
                "peak_hookpoint": str(node.get("peak_hookpoint", "")), "hookpoints": hookpoints,
                "layer_profile": node.get("layer_profile", [0.0] * len(hookpoints)), "top_contexts": node.get("top_contexts", []),
            },
        })
        net.node_ids.append(node["id"])
    w = graph.weights if graph.n_edges else np.zeros(0)
    for k in range(graph.n_edges):
        net.edges.append({
            "from": graph.node_ids[graph.edge_src[k]], "to": graph.node_ids[graph.edge_dst[k]],
            "value": float(w[k]), "title": f"{graph.weight_key} {w[k]:.3f}",
        })
    net.options = {
        "physics": {"enabled": physics, "stabilization": {"iterations": 150}, "barnesHut": {"springLength": 120}},
        "nodes": {"shape": "dot", "font": {"size": 10}},
        "edges": {"smooth": False, "color": {"color": "#9e9e9e", "opacity": 0.5}, "scaling": {"min": 0.5, "max": 4}},
        "interaction": {"hover": True, "tooltipDelay": 120, "hideEdgesOnDrag": graph.n_edges > 5000},
        "layout": {"improvedLayout": False},
    }
    html = net.generate_html(name="graph.html")
    with atomic_file(path) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return Path(path)
