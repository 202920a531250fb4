"""Graph files: GraphML (Gephi, Cytoscape, networkx) and featgraph JSON, carrying the same nodes, edges and attributes.

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

from .graph import FeatureGraph

__all__ = ["write_graphml", "read_graphml", "write_json", "read_json"]


def _scalar(v):
    if isinstance(v, np.generic):
        v = v.item()
    if v is None:
        return ""
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v)
    return v


def write_graphml(graph: FeatureGraph, path: str | os.PathLike) -> Path:
    import networkx as nx

    g = graph.to_networkx()
    for _, d in g.nodes(data=True):
        d.update({k: _scalar(v) for k, v in d.items()})
    for _, _, d in g.edges(data=True):
        d.update({k: _scalar(v) for k, v in d.items()})
    g.graph = {k: _scalar(v) for k, v in g.graph.items()}
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
