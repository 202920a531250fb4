"""Graph files: GraphML, GEXF (Gephi, laid out and coloured), node-link JSON (networkx), Cytoscape.js JSON, CSV,
carrying the same nodes, edges and attributes, and Neuronpedia's attribution-graph JSON.

GraphML allows only scalar attributes, so list- and dict-valued ones (layer profiles, top contexts) are
stored there as JSON strings; :func:`read_graphml` decodes them back. The JSON file is networkx's node-link
layout (``nodes``, ``links``, ``graph``) with native lists, readable by ``networkx.node_link_graph``.

Neuronpedia (:func:`write_neuronpedia`) follows the attribution-graph schema of Neuronpedia's graph viewer
(hijohnnylin/neuronpedia ``apps/webapp/app/api/graph/graph-schema.json``: top level ``metadata``, ``qParams``,
``nodes``, ``links``) and circuit-tracer's front-end models (safety-research/circuit-tracer
``circuit_tracer/frontend/graph_models.py``, ``schema_version`` 1). Our features map onto it as follows:

* ``layer`` — the node's ``layer`` attribute (a per-layer SAE of a stack), else its ``peak_layer`` (the hookpoint
  index where its decoder norm peaks), else 0; written as a string, as circuit-tracer does;
* ``feature`` — Cantor pairing (layer + i)(layer + i + 1)/2 + i of the layer and the feature index i (the
  ``feature`` attribute, else the digits of the id), which is what the viewer decodes for ``schema_version`` 1;
* ``ctx_idx`` — 0 (a dataset-wide graph has no token axis; ``prompt_tokens`` is then one placeholder token that
  names the graph), or, for a per-prompt graph whose nodes carry ``prompt_positions``, the first position where
  the feature fires (one node per feature, not one per position: co-activation edges are not position-specific);
* ``node_id`` = ``{layer}_{i}_{ctx_idx}`` and ``jsNodeId`` = ``{layer}_{i}-0``, as circuit-tracer's feature nodes;
  ``feature_type`` = "cross layer transcoder" (a crosscoder feature reads and writes several layers, and the viewer
  treats this type as a feature with details); ``featgraph_id`` keeps our id;
* ``clerp`` (the label) — the node's ``label`` attribute, else ``{id} "{top token}"``;
* ``activation`` — ``prompt_activation`` (per-prompt graphs), else ``max_act``;
* ``influence`` — circuit-tracer's cumulative influence, with node strength s_i = Σ_j |w_ij| standing in for
  influence on the logits: sort nodes by s descending, influence_i = (Σ of s over i and every node before it) / Σ s,
  so the viewer's pruning threshold τ keeps the strongest nodes holding a share τ of the total strength;
* ``links`` — one per edge with its weight; an undirected edge points from the lower (layer, ctx_idx, feature)
  node to the higher, since the viewer draws links bottom-up;
* ``qParams`` — the ``n_pinned`` strongest nodes pinned, grouped into one supernode per community with at least
  two pinned members, the strongest node clicked.

The file validates against the schema and opens in circuit-tracer's local viewer. Neuronpedia hosts uploaded
graphs only for models it knows: pass its model id as ``scan`` for a real model (the embedded model has none).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from crosscoder.errors import FeatgraphError
from crosscoder.io import atomic_dir, atomic_file

from .graph import FeatureGraph, _py

__all__ = ["write_graphml", "read_graphml", "write_json", "read_json", "write_gexf", "read_gexf", "write_cytoscape", "write_csv",
           "write_neuronpedia", "cantor_pair", "FORMATS", "export_graph"]

log = logging.getLogger(__name__)


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
    """A graph.json written by featgraph (networkx node-link JSON); anything else is one clear error line."""
    import networkx as nx

    path = Path(path)
    fix = "pass a graph.json written by `featgraph demo`, `graph build` or `interactions rank`"
    if path.is_dir():
        raise FeatgraphError(f"{path} is a folder, not a graph file; {fix} (e.g. {path / 'graph.json'})")
    if not path.is_file():
        raise FeatgraphError(f"{path} does not exist; {fix}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FeatgraphError(f"{path} is not a JSON graph ({' '.join(str(e).split())[:120]}); {fix}") from None
    except OSError as e:
        raise FeatgraphError(f"{path} cannot be read ({e.strerror or e}); check its permissions") from None
    if not isinstance(doc, dict) or not {"nodes", "links", "graph"} <= set(doc):
        raise FeatgraphError(f"{path} is JSON but not a featgraph graph (no nodes/links/graph); {fix}")
    try:
        g = nx.node_link_graph(doc, edges="links")
        return FeatureGraph.from_networkx(g, weight_key=doc["graph"].get("weight_key", "weight"))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise FeatgraphError(f"{path} is not a well-formed featgraph graph ({type(e).__name__}: {e}); {fix}") from None


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
    """``nodes.csv`` and ``edges.csv`` in ``folder`` (list and dict attributes as JSON strings), written as a unit: both
    files appear together (or the old folder stays)."""
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        _write_rows(tmp / "nodes.csv", ["id", *graph.node_attrs], (graph.node(i) for i in range(graph.n_nodes)))
        _write_rows(tmp / "edges.csv", ["source", "target", *graph.edge_attrs], (graph.edge(e) for e in range(graph.n_edges)))
    return folder


def cantor_pair(x: int, y: int) -> int:
    """Cantor pairing, the ``feature`` of a Neuronpedia node from (layer, index).

    >>> cantor_pair(3, 1024), cantor_pair(0, 0), cantor_pair(1, 0)
    (528902, 0, 1)
    """
    return (x + y) * (x + y + 1) // 2 + y


def _feature_index(graph: FeatureGraph, i: int) -> int:
    col = graph.node_attrs.get("feature")
    if col is not None and col[i] is not None:
        return int(col[i])
    m = re.search(r"(\d+)$", graph.node_ids[i])
    if m is None:
        raise FeatgraphError(f"node {graph.node_ids[i]!r} has no 'feature' attribute and no digits in its id; "
                             "give every node a 'feature' index to export it to Neuronpedia")
    return int(m.group(1))


def _clerp(node: dict) -> str:
    if node.get("label"):
        return str(node["label"])
    contexts = node.get("top_contexts") or []
    return f'{node["id"]} "{contexts[0]["token"]}"' if contexts else str(node["id"])


def _slug(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", text.lower())).strip("-") or "featgraph-graph"


def _influence(graph: FeatureGraph) -> np.ndarray:
    """(n,) cumulative share of node strength Σ_j |w_ij|, strongest node first (see the module docstring)."""
    w = np.abs(graph.weights) if graph.n_edges else np.zeros(0)
    strength = np.bincount(graph.edge_src, weights=w, minlength=graph.n_nodes)
    strength += np.bincount(graph.edge_dst, weights=w, minlength=graph.n_nodes)
    order = np.lexsort((np.arange(graph.n_nodes), -strength))
    total = strength.sum()
    out = np.empty(graph.n_nodes)
    out[order] = np.cumsum(strength[order]) / total if total > 0 else np.linspace(1 / max(graph.n_nodes, 1), 1, graph.n_nodes)
    return out


def write_neuronpedia(
    graph: FeatureGraph,
    path: str | os.PathLike,
    slug: str | None = None,
    scan: str | None = None,
    prompt: str | None = None,
    prompt_tokens: list[str] | None = None,
    n_pinned: int = 12,
) -> Path:
    """Neuronpedia / circuit-tracer attribution-graph JSON (mapping in the module docstring).

    Parameters
    ----------
    slug : str, optional
        The graph's name in the viewer (lowercase letters, digits, dashes); default ``meta["slug"]``, else the file
        name.
    scan : str, optional
        The model id the viewer knows the graph by; default ``meta["model"]``, else "embedded".
    prompt, prompt_tokens : optional
        The prompt and its tokens; default ``meta["prompt"]``/``meta["prompt_tokens"]``; a per-prompt graph without
        tokens gets placeholders ``[0]``, ``[1]``, … up to its last position, a dataset-wide graph one token
        naming the graph.
    n_pinned : int
        How many of the strongest nodes ``qParams`` pins (0 pins none).
    """
    if graph.n_nodes == 0:
        raise FeatgraphError("the graph has no nodes, so there is nothing to show; build it with a lower threshold or more rows")
    w = graph.weights if graph.n_edges else np.zeros(0)
    if not np.isfinite(w).all():
        raise FeatgraphError(f"{int((~np.isfinite(w)).sum())} edge weights are NaN or infinite, which JSON cannot hold; "
                             "drop those edges or rebuild the graph")
    layers = [int(v) for v in graph.node_attrs.get("layer", graph.node_attrs.get("peak_layer", [0] * graph.n_nodes))]
    index = [_feature_index(graph, i) for i in range(graph.n_nodes)]
    positions = graph.node_attrs.get("prompt_positions")
    ctx = [int(p[0]) if p else 0 for p in positions] if positions is not None else [0] * graph.n_nodes
    seen: dict[tuple[int, int], str] = {}
    for nid, key in zip(graph.node_ids, zip(layers, index)):
        if key in seen:
            raise FeatgraphError(f"nodes {seen[key]!r} and {nid!r} both map to layer {key[0]}, feature {key[1]}; "
                                 "give every node a distinct 'feature' (or 'layer') attribute")
        seen[key] = nid
    if prompt_tokens is None:
        prompt_tokens = graph.meta.get("prompt_tokens")
    if prompt is None:
        prompt = graph.meta.get("prompt") or (
            "".join(prompt_tokens) if prompt_tokens else
            f"featgraph {graph.meta.get('kind', 'feature')} graph ({graph.n_nodes} features, {graph.n_edges} edges)")
    if prompt_tokens is None:
        prompt_tokens = [f"[{p}]" for p in range(max(ctx) + 1)] if positions is not None else [prompt]
    prompt_tokens = [str(t) for t in prompt_tokens]
    if max(ctx) >= len(prompt_tokens):
        raise FeatgraphError(f"a node fires at position {max(ctx)} but the prompt has {len(prompt_tokens)} tokens; "
                             "pass the prompt_tokens the graph was built from")
    if max(layers) == 0:
        log.warning("every node is at layer 0; Neuronpedia's viewer needs a node above layer 0 to lay the graph out")

    node_ids = [f"{lay}_{i}_{c}" for lay, i, c in zip(layers, index, ctx)]
    influence = _influence(graph)
    act_col = graph.node_attrs.get("prompt_activation", graph.node_attrs.get("max_act"))
    community = graph.node_attrs.get("community", [0] * graph.n_nodes)
    nodes = []
    for k in range(graph.n_nodes):
        node = graph.node(k)
        nodes.append({
            "node_id": node_ids[k], "feature": cantor_pair(layers[k], index[k]), "layer": str(layers[k]), "ctx_idx": ctx[k],
            "feature_type": "cross layer transcoder", "jsNodeId": f"{layers[k]}_{index[k]}-0", "clerp": _clerp(node),
            "influence": float(influence[k]), "activation": None if act_col is None or act_col[k] is None else float(act_col[k]),
            "token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0,
            "featgraph_id": graph.node_ids[k], "community": _py(community[k]),
        })
    rank = {k: (layers[k], ctx[k], index[k]) for k in range(graph.n_nodes)}
    links = []
    for s, d, x in zip(graph.edge_src.tolist(), graph.edge_dst.tolist(), w.tolist()):
        if not graph.directed and rank[d] < rank[s]:
            s, d = d, s
        links.append({"source": node_ids[s], "target": node_ids[d], "weight": float(x)})

    pinned = np.argsort(influence, kind="stable")[: max(n_pinned, 0)].tolist()
    groups: dict[Any, list[str]] = {}
    for k in pinned:
        groups.setdefault(_py(community[k]), []).append(node_ids[k])
    supernodes = [[f"community {c}", *members] for c, members in groups.items() if len(members) >= 2]
    from importlib.metadata import PackageNotFoundError, version

    try:
        generator_version = version("featgraph")
    except PackageNotFoundError:
        generator_version = "unknown"
    doc = {
        "metadata": {
            "slug": _slug(slug or graph.meta.get("slug") or Path(path).name.split(".")[0]),
            "scan": str(scan or graph.meta.get("model") or "embedded"),
            "prompt_tokens": prompt_tokens, "prompt": str(prompt),
            "transcoder_list": [str(c) for c in graph.meta.get("crosscoders", [])], "schema_version": 1,
            "info": {"description": (f"featgraph {graph.meta.get('kind', 'feature')} graph: {graph.n_nodes} features, "
                                     f"{graph.n_edges} edges weighted by {graph.meta.get('measure', graph.weight_key)}; "
                                     "layer = peak hookpoint index, influence = cumulative share of edge strength"),
                     "generator": {"name": "featgraph", "version": generator_version}},
        },
        "qParams": {"pinnedIds": [node_ids[k] for k in pinned], "supernodes": supernodes, "linkType": "both",
                    "clickedId": node_ids[pinned[0]] if pinned else "", "sg_pos": ""},
        "nodes": nodes,
        "links": links,
    }
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(doc), encoding="utf-8")
    return Path(path)


FORMATS = {"graphml": (write_graphml, ".graphml"), "gexf": (write_gexf, ".gexf"), "json": (write_json, ".json"),
           "cytoscape": (write_cytoscape, ".cyjs"), "csv": (write_csv, ""), "neuronpedia": (write_neuronpedia, ".neuronpedia.json")}
"""Export format → (writer, file suffix; "" = a folder)."""


def export_graph(graph: FeatureGraph, fmt: str, out: str | os.PathLike, **options: Any) -> Path:
    """Write ``graph`` as ``fmt`` (one of :data:`FORMATS`) to ``out``; ``options`` go to that format's writer
    (e.g. ``scan`` and ``slug`` for neuronpedia)."""
    if fmt not in FORMATS:
        raise FeatgraphError(f"unknown export format {fmt!r}; choose one of {sorted(FORMATS)}")
    return FORMATS[fmt][0](graph, out, **options)
