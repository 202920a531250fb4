"""Graph files: GraphML, GEXF (Gephi, laid out and coloured), node-link JSON (networkx), Cytoscape.js JSON and CSV,
carrying the same nodes, edges and attributes.

GraphML allows only scalar attributes, so list- and dict-valued ones (layer profiles, top contexts) are
stored there as JSON strings; :func:`read_graphml` decodes them back. The JSON file is networkx's node-link
layout (``nodes``, ``links``, ``graph``) with native lists, readable by ``networkx.node_link_graph``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from crosscoder.io import atomic_file

from .graph import FeatureGraph, _py

__all__ = ["write_graphml", "read_graphml", "write_json", "read_json", "write_gexf", "read_gexf", "write_cytoscape", "write_csv",
           "FORMATS", "export_graph"]


def _scalar(v):
    v = _py(v)
    if v is None:
        return ""
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v)
    return v


def write_graphml(graph: FeatureGraph, path: str | os.PathLike) -> Path:
    import networkx as nx

    g = _scalar_graph(graph)
    with atomic_file(path) as tmp:
        nx.write_graphml(g, tmp)
    return Path(path)


def _decode(v):
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    return v


def read_graphml(path: str | os.PathLike) -> FeatureGraph:
    import networkx as nx

    g = nx.read_graphml(path)
    for _, d in g.nodes(data=True):
        d.update({k: _decode(v) for k, v in d.items()})
    g.graph = {k: _decode(v) for k, v in g.graph.items()}
    return FeatureGraph.from_networkx(g)


def write_json(graph: FeatureGraph, path: str | os.PathLike) -> Path:
    nodes = [graph.node(i) for i in range(graph.n_nodes)]
    links = [graph.edge(k) for k in range(graph.n_edges)]
    doc = {"directed": graph.directed, "multigraph": graph.multigraph, "graph": {**graph.meta, "weight_key": graph.weight_key},
           "nodes": nodes, "links": links}
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(doc, default=_scalar), encoding="utf-8")
    return Path(path)


def read_json(path: str | os.PathLike) -> FeatureGraph:
    import networkx as nx

    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    g = nx.node_link_graph(doc, edges="links")
    return FeatureGraph.from_networkx(g, weight_key=doc["graph"].get("weight_key", "weight"))


def _scalar_graph(graph: FeatureGraph):
    """A networkx graph with every attribute made scalar (lists and dicts as JSON strings)."""
    g = graph.to_networkx()
    for _, d in g.nodes(data=True):
        d.update({k: _scalar(v) for k, v in d.items()})
    for *_, d in g.edges(data=True):
        d.update({k: _scalar(v) for k, v in d.items()})
    g.graph = {k: _scalar(v) for k, v in g.graph.items()}
    return g


def write_gexf(graph: FeatureGraph, path: str | os.PathLike) -> Path:
    """GEXF 1.2 with ``viz`` colour (by community), size (by frequency) and position (the HTML page's layout), so
    Gephi opens it laid out."""
    import networkx as nx

    from .html import community_colors, layout_positions

    g = _scalar_graph(graph)
    community = np.asarray(graph.node_attrs.get("community", [0] * graph.n_nodes), dtype=np.int64)
    colors = community_colors(int(community.max()) + 1 if graph.n_nodes else 0)
    pos = layout_positions(graph, community)
    freq = np.asarray(graph.node_attrs.get("frequency", [0.0] * graph.n_nodes), dtype=float)
    top = freq.max() if graph.n_nodes and freq.max() > 0 else 1.0
    for i, nid in enumerate(graph.node_ids):
        r, gr, b = (int(colors[community[i]][k : k + 2], 16) for k in (1, 3, 5))
        g.nodes[nid]["viz"] = {"color": {"r": r, "g": gr, "b": b, "a": 1.0},
                               "position": {"x": float(pos[i, 0]), "y": float(pos[i, 1]), "z": 0.0},
                               "size": float(4 + 16 * np.sqrt(freq[i] / top))}
    with atomic_file(path) as tmp:
        nx.write_gexf(g, tmp)
    return Path(path)


def read_gexf(path: str | os.PathLike) -> FeatureGraph:
    import networkx as nx

    g = nx.read_gexf(path)
    for _, d in g.nodes(data=True):
        d.pop("viz", None)
        d.pop("label", None)
        d.update({k: _decode(v) for k, v in d.items()})
    for *_, d in g.edges(data=True):
        d.pop("id", None)
    g.graph = {k: _decode(v) for k, v in g.graph.items() if k not in ("mode",)}
    return FeatureGraph.from_networkx(g)


def write_cytoscape(graph: FeatureGraph, path: str | os.PathLike) -> Path:
    """Cytoscape.js JSON (``elements: {nodes: [{data}], edges: [{data}]}``), readable by networkx.cytoscape_graph."""
    nodes = [{"data": {**{k: _py(v) for k, v in graph.node(i).items()}, "name": graph.node_ids[i], "value": graph.node_ids[i]}}
             for i in range(graph.n_nodes)]
    edges = [{"data": {k: _py(v) for k, v in graph.edge(e).items()}} for e in range(graph.n_edges)]
    doc = {"data": {k: _py(v) for k, v in graph.meta.items()}, "directed": graph.directed, "multigraph": graph.multigraph,
           "elements": {"nodes": nodes, "edges": edges}}
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(doc), encoding="utf-8")
    return Path(path)


def _write_rows(path: Path, header: list[str], rows) -> None:
    import csv

    with atomic_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for row in rows:
            w.writerow([_scalar(row[k]) for k in header])


def write_csv(graph: FeatureGraph, folder: str | os.PathLike) -> Path:
    """``nodes.csv`` and ``edges.csv`` in ``folder`` (list and dict attributes as JSON strings)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_rows(folder / "nodes.csv", ["id", *graph.node_attrs], (graph.node(i) for i in range(graph.n_nodes)))
    _write_rows(folder / "edges.csv", ["source", "target", *graph.edge_attrs], (graph.edge(e) for e in range(graph.n_edges)))
    return folder


FORMATS = {"graphml": (write_graphml, ".graphml"), "gexf": (write_gexf, ".gexf"), "json": (write_json, ".json"),
           "cytoscape": (write_cytoscape, ".cyjs"), "csv": (write_csv, "")}
"""Export format → (writer, file suffix; "" = a folder)."""


def export_graph(graph: FeatureGraph, fmt: str, out: str | os.PathLike) -> Path:
    """Write ``graph`` as ``fmt`` (one of :data:`FORMATS`) to ``out``."""
    from crosscoder.errors import FeatgraphError

    if fmt not in FORMATS:
        raise FeatgraphError(f"unknown export format {fmt!r}; choose one of {sorted(FORMATS)}")
    return FORMATS[fmt][0](graph, out)
