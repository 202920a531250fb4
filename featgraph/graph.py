"""The feature graph: one object owns node identity, node order and attributes, and the edges.

Node ids are stable strings (``F1024`` for a crosscoder feature), never ``hash()``. Attributes are columns
(one list per attribute, in node order); edges are index arrays with one array per edge attribute. The graph
converts to networkx and igraph without loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crosscoder.errors import FeatgraphError

__all__ = ["FeatureGraph"]


@dataclass
class FeatureGraph:
    """An undirected (or directed) graph over features with columnar attributes.

    ``edge_src[k] -> edge_dst[k]`` are indices into ``node_ids``; the edge weight used by community detection
    and layout is ``edge_attrs[weight_key]``.
    """

    node_ids: list[str]
    node_attrs: dict[str, list[Any]] = field(default_factory=dict)
    edge_src: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    edge_dst: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    edge_attrs: dict[str, np.ndarray] = field(default_factory=dict)
    weight_key: str = "weight"
    directed: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    multigraph: bool = False
    """Parallel edges allowed (e.g. co-activation and interaction edges between one pair, told apart by ``type``)."""

    def __post_init__(self) -> None:
        if len(set(self.node_ids)) != len(self.node_ids):
            raise ValueError("node ids must be unique")
        for k, col in self.node_attrs.items():
            if len(col) != len(self.node_ids):
                raise ValueError(f"node attribute {k!r} has {len(col)} values for {len(self.node_ids)} nodes")
        self.edge_src = np.asarray(self.edge_src, dtype=np.int64)
        self.edge_dst = np.asarray(self.edge_dst, dtype=np.int64)
        for k, col in self.edge_attrs.items():
            if len(col) != len(self.edge_src):
                raise ValueError(f"edge attribute {k!r} has {len(col)} values for {len(self.edge_src)} edges")
        self._index = {nid: i for i, nid in enumerate(self.node_ids)}

    @property
    def n_nodes(self) -> int:
        return len(self.node_ids)

    @property
    def n_edges(self) -> int:
        return len(self.edge_src)

    @property
    def weights(self) -> np.ndarray:
        return np.asarray(self.edge_attrs[self.weight_key], dtype=np.float64)

    def index(self, node_id: str) -> int:
        return self._index[node_id]

    def node(self, i: int) -> dict[str, Any]:
        """All attributes of node ``i`` (with its ``id``)."""
        return {"id": self.node_ids[i], **{k: col[i] for k, col in self.node_attrs.items()}}

    def edge(self, k: int) -> dict[str, Any]:
        attrs = {name: _py(col[k]) for name, col in self.edge_attrs.items()}
        return {"source": self.node_ids[self.edge_src[k]], "target": self.node_ids[self.edge_dst[k]], **attrs}

    def set_node_attr(self, name: str, values: list[Any]) -> None:
        if len(values) != self.n_nodes:
            raise ValueError(f"{name}: {len(values)} values for {self.n_nodes} nodes")
        self.node_attrs[name] = list(values)

    def require_edges(self) -> None:
        if self.n_edges == 0:
            raise FeatgraphError(
                f"the graph has {self.n_nodes} nodes and no edges; use more tokens, a lower min_cocount or a lower edge threshold"
            )

    # ---- conversions -------------------------------------------------------------------------
    def to_networkx(self):
        """A networkx (Di)Graph with every node and edge attribute; graph attributes from ``meta``."""
        import networkx as nx

        if self.multigraph:
            g = nx.MultiDiGraph() if self.directed else nx.MultiGraph()
        else:
            g = nx.DiGraph() if self.directed else nx.Graph()
        g.graph.update(self.meta)
        g.add_nodes_from((self.node_ids[i], {k: col[i] for k, col in self.node_attrs.items()}) for i in range(self.n_nodes))
        g.add_edges_from((e.pop("source"), e.pop("target"), e) for e in (self.edge(k) for k in range(self.n_edges)))
        return g

    def to_igraph(self):
        """An igraph Graph with vertex ``name`` = node id and all attributes."""
        import igraph as ig

        g = ig.Graph(n=self.n_nodes, edges=list(zip(self.edge_src.tolist(), self.edge_dst.tolist())), directed=self.directed)
        g.vs["name"] = list(self.node_ids)
        for k, col in self.node_attrs.items():
            g.vs[k] = list(col)
        for k, col in self.edge_attrs.items():
            g.es[k] = [_py(v) for v in col]
        return g

    def to_pyvis(self, height: str = "800px", width: str = "100%", notebook: bool = False, max_nodes: int | None = None):
        """A pyvis ``Network`` drawn as featgraph's page draws this graph (positions, colours, sizes, labels,
        tooltips; physics off; vis-network inlined, so it renders offline): see :func:`featgraph.html.pyvis_network`.

        >>> net = graph.to_pyvis()            # doctest: +SKIP
        >>> net.write_html("graph.html")      # doctest: +SKIP
        """
        from .html import pyvis_network  # the page module builds on this one (and pyvis loads only when asked)

        return pyvis_network(self, height=height, width=width, notebook=notebook, max_nodes=max_nodes)

    @classmethod
    def from_networkx(cls, g, weight_key: str = "weight") -> "FeatureGraph":
        node_ids = [str(n) for n in g.nodes]
        keys = sorted({k for _, d in g.nodes(data=True) for k in d})
        node_attrs = {k: [d.get(k) for _, d in g.nodes(data=True)] for k in keys}
        index = {n: i for i, n in enumerate(g.nodes)}
        edges = list(g.edges(data=True))
        ekeys = sorted({k for _, _, d in edges for k in d})
        return cls(
            node_ids, node_attrs,
            np.array([index[u] for u, _, _ in edges], dtype=np.int64),
            np.array([index[v] for _, v, _ in edges], dtype=np.int64),
            {k: np.array([d.get(k) for _, _, d in edges]) for k in ekeys},
            weight_key=weight_key, directed=g.is_directed(), meta=dict(g.graph), multigraph=g.is_multigraph(),
        )


def _py(v: Any) -> Any:
    """numpy scalar → Python scalar (for JSON, GraphML, igraph)."""
    return v.item() if isinstance(v, np.generic) else v


def json_ready(v: Any) -> Any:
    """A JSON-ready copy: numpy scalars and arrays as Python values, tuples as lists, dict keys as str, non-finite floats
    as None (strict JSON).

    >>> json_ready({1: (np.float32(0.5), float("nan")), "a": np.arange(2)})
    {'1': [0.5, None], 'a': [0, 1]}
    """
    if isinstance(v, np.ndarray):
        return [json_ready(x) for x in v.tolist()]
    v = _py(v)
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): json_ready(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_ready(x) for x in v]
    return v
