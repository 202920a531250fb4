"""Graph files: GraphML, GEXF 1.3 (Gephi, laid out and coloured), node-link JSON (networkx), Cytoscape.js JSON, CSV,
carrying the same nodes, edges, labels and attributes, and Neuronpedia's attribution-graph JSON.

Labels. Every format names a node by its ``label`` attribute when the graph has one, else by its id: GraphML and
GEXF ``label``, Cytoscape.js ``name``, a ``label`` column in ``nodes.csv``, Neuronpedia ``clerp``.

Ids. GraphML types node ids as XML name tokens and Cytoscape.js looks nodes up with CSS-like ``#id`` selectors, so
a stack graph's ``L0/F0`` is neither. GraphML, GEXF and Cytoscape.js files therefore use :func:`safe_ids`
(``L0/F0`` → ``L0_F0``; the ids unchanged when every one is already safe) and keep the graph's own id in a
``featgraph_id`` attribute, from which :func:`read_graphml` and :func:`read_gexf` restore it.

Any text. Token text can hold anything a tokenizer decodes: C0 control characters, lone surrogates (byte-level
decoding of a split character), U+FFFE, right-to-left marks, emoji, ``<&"``. The JSON files are written with
``ensure_ascii`` (pure ASCII; a lone surrogate is the escape ``\\ud800``, which JSON allows and ``JSON.parse`` and
Python read back exactly) and strictly (NaN and ±inf become ``null``). XML 1.0 cannot hold C0 controls other than
tab, newline and carriage return, surrogates, U+FFFE or U+FFFF, even as character references, so in GraphML and
GEXF:

* list- and dict-valued attributes (top contexts, layer profiles, quantile examples, logits) and columns of mixed
  types are JSON text in which those characters are ``\\uXXXX`` escapes — exact: they read back unchanged;
* plain string attributes (labels, ids) get visible stand-ins (:func:`xml_text`): a C0 control becomes its
  Control Pictures symbol (U+0000 → ␀ U+2400, U+001B → ␛), a surrogate, U+FFFE or U+FFFF becomes U+FFFD; this is
  the one lossy step, and graph.json keeps the original;
* ``\\t``, ``\\n``, ``\\r``, ``&``, ``<``, ``>`` and ``"`` are written as character references, so they survive
  attribute-value normalisation.

CSV (UTF-8) cannot encode a lone surrogate and Python's csv reader rejects NUL, so plain CSV strings replace
surrogates with U+FFFD and NUL with ␀; JSON-valued cells are exact as in XML.

graph.json is networkx's node-link layout. networkx changed the key of the edge list: ``node_link_graph``'s
default is ``links`` on 3.0–3.5 (3.4 and 3.5 warn) and ``edges`` from 3.6, and each fails with a KeyError on the
other. The file therefore holds the edge list under both keys, so ``networkx.node_link_graph(data)`` with its
defaults reads it on every networkx ≥ 3.0; :func:`read_json` reads files with either key (older featgraph files
have ``links`` only).

GEXF keeps the graph's metadata (hookpoints, model, measure, options, community labels …) twice: as JSON in
``<meta><description>`` (exact; :func:`read_gexf` restores it) and as node attributes ``graph.<key>`` whose
``<default>`` holds the value, which Gephi shows as a column on every node (GEXF 1.3 has no graph-level attribute
class; Gephi rejects ``class="graph"``). It validates against the GEXF 1.3 RELAX NG grammar (gephi/gexf
``specs/1.3/gexf.rng``), which, unlike the 1.2draft and 1.3 XSDs, accepts the ``viz`` elements Gephi itself writes.

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
  the feature fires, with the prompt's tokens from ``meta["prompt_tokens"]``
  (:func:`featgraph.crosslayer.prompt_graph` records them) — one node per feature, not one per position:
  co-activation edges are not position-specific;
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
* ``qParams`` — every community of at least two features is a supernode ``[label, member node ids…]`` named by
  ``meta["community_labels"]`` (else "community N"). The viewer draws only pinned members of a supernode (and at
  most :data:`PIN_LIMIT` pins), so each such community's ``per_community`` strongest members are pinned, plus the
  ``n_pinned`` strongest nodes overall; the strongest node is clicked.

The file validates against the schema and opens in circuit-tracer's local viewer. Neuronpedia hosts uploaded
graphs only for models it knows: pass its model id as ``scan`` for a real model (the embedded model has none).

Attribution graphs (``meta["kind"] == "attribution"``, :meth:`featgraph.attribution.AttributionGraph.to_feature_graph`)
are written with circuit-tracer's own node conventions (``frontend/graph_models.py``, ``schema_version`` 1), one
Neuronpedia node per graph node:

* a feature of CLT layer l, index i at position p: ``node_id`` ``{l}_{i}_{p}``, ``feature`` = Cantor(l, i), ``layer``
  "l", ``jsNodeId`` ``{l}_{i}-0``, ``feature_type`` "cross layer transcoder";
* the MLP error node of layer l at p: ``{l}_-1_{p}``, ``feature`` −1, ``layer`` "l", ``jsNodeId`` ``{l}_{p}-0``,
  ``feature_type`` "mlp reconstruction error";
* the embedding of token id v at p: ``E_{v}_{p}``, ``feature`` p, ``layer`` "E", ``jsNodeId`` ``E_{v}-{p}``,
  ``feature_type`` "embedding";
* the logit of output token v (at the last position p): ``{L+1}_{v}_{p}``, ``feature`` v, ``layer`` "L+1" (L =
  ``meta["n_layers"]``; circuit-tracer writes ``num_layers + 1``, and the viewer puts logits one row above the top
  layer whatever the number), ``jsNodeId`` ``L_{v}-{p}``, ``feature_type`` "logit", ``token_prob`` = its
  probability, ``is_target_logit`` for the most likely one, and circuit-tracer's ``clerp``
  ``Output "{token}" (p=0.123)``, from which the viewer reads the token and the probability;

``ctx_idx`` is the node's ``position``, ``clerp`` its ``label`` (logits above), ``influence`` and ``activation`` the
node attributes as they are (the real cumulative influence, smaller = more influential; the viewer always shows
embeddings and logits), ``prompt_tokens`` ``meta["prompt_tokens"]``. Links are the directed edges source → target
with their signed weights as they are. ``metadata.node_threshold`` (the viewer's default pruning slider) and
``pruning_settings`` / ``generation_settings`` come from ``meta["attribution_config"]``. ``qParams`` pins every logit
(the most likely is clicked), then the supernodes' members and the most influential nodes as above, with the
supernodes from ``community`` / ``meta["community_labels"]`` (:func:`featgraph.supernodes.find_supernodes`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from crosscoder.errors import FeatgraphError
from crosscoder.io import atomic_dir, atomic_file

from .graph import FeatureGraph, _py, json_ready

__all__ = ["write_graphml", "read_graphml", "write_json", "read_json", "write_gexf", "read_gexf", "write_cytoscape", "write_csv",
           "write_neuronpedia", "cantor_pair", "safe_ids", "xml_text", "FORMATS", "export_graph", "PIN_LIMIT"]

log = logging.getLogger(__name__)

GRAPHML_NS = "http://graphml.graphdrawing.org/xmlns"
GEXF_NS = "http://gexf.net/1.3"
GEXF_VIZ_NS = "http://gexf.net/1.3/viz"
PIN_LIMIT = 200
"""Most pinned nodes circuit-tracer's subgraph view shows (``init-cg-subgraph.js``: ``pinnedIds.slice(0, 200)``)."""
_BOX = 1000.0  # GEXF / Cytoscape.js positions span [-_BOX, _BOX] on the longer axis (Gephi-like units)


# ---- text that every format can hold ---------------------------------------------------------------------------
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_JSON_UNSAFE = re.compile("[\ud800-\udfff\ufffe\uffff]")
_XML_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\t": "&#9;", "\n": "&#10;", "\r": "&#13;"})
_SAFE_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")
_HEX = re.compile(r"#[0-9a-fA-F]{6}\Z")


def xml_text(text: str) -> str:
    """``text`` with the characters XML 1.0 cannot hold replaced by visible stand-ins: a C0 control (other than tab,
    newline, carriage return) by its Control Pictures symbol U+2400 + code; a surrogate, U+FFFE or U+FFFF by U+FFFD.

    >>> xml_text("a\\x00b\\x1bc\\ud800\\ufffe\\t")
    'a␀b␛c��\\t'
    """
    return _XML_ILLEGAL.sub(lambda m: chr(0x2400 + ord(m.group())) if m.group() < " " else "\ufffd", text)


def _json_text(v: Any) -> str:
    """JSON text of ``v`` that UTF-8 and XML can hold and ``json.loads`` returns exactly: non-ASCII text stays
    readable; lone surrogates, U+FFFE and U+FFFF become ``\\uXXXX`` escapes (JSON already escapes C0 controls)."""
    text = json.dumps(json_ready(v), ensure_ascii=False, allow_nan=False)
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _dumps(doc: Any) -> str:
    """Strict, pure-ASCII JSON (see the module docstring)."""
    return json.dumps(json_ready(doc), allow_nan=False)


def _esc(text: str) -> str:
    """``text`` for an XML attribute value or element text (both escaped the same way)."""
    return xml_text(text).translate(_XML_ESCAPES)


def safe_ids(ids: list[str]) -> list[str]:
    """Node ids that are XML name tokens (GraphML) and Cytoscape.js ``#id`` selectors: ``[A-Za-z_][A-Za-z0-9_-]*``.

    The ids themselves when every one already is; else each with other characters replaced by ``_`` (and ``n_``
    before one that would start with a digit or ``-``); ``n0, n1, …`` when that makes two ids equal.

    >>> safe_ids(["F0", "F12"]), safe_ids(["L0/F0", "L1/F3", "7"]), safe_ids(["a/b", "a_b"])
    (['F0', 'F12'], ['L0_F0', 'L1_F3', 'n_7'], ['n0', 'n1'])
    """
    if all(_SAFE_ID.match(i) for i in ids):
        return list(ids)
    cand = [re.sub(r"[^A-Za-z0-9_-]", "_", i) for i in ids]
    cand = [c if _SAFE_ID.match(c) else f"n_{c}" for c in cand]
    return cand if len(set(cand)) == len(cand) else [f"n{k}" for k in range(len(ids))]


def _kind(values: list) -> str:
    """How an attribute column is written to XML: "boolean", "long", "double", "string" or "json" (list or dict
    values, or a mix of types, as JSON text)."""
    present = [_py(v) for v in values if v is not None]
    if any(isinstance(v, (list, tuple, dict, np.ndarray)) for v in present):
        return "json"
    if all(isinstance(v, bool) for v in present):
        return "boolean" if present else "string"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "long"
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return "double"
    if all(isinstance(v, str) for v in present):
        return "string"
    return "json"


def _xml_value(v: Any, kind: str) -> str | None:
    """The text of one value of a column of ``kind`` (escaped); None = leave it out (missing or non-finite)."""
    v = _py(v)
    if v is None or (kind == "double" and not math.isfinite(float(v))):
        return None
    if kind == "json":
        return _esc(_json_text(v))
    if kind == "boolean":
        return "true" if v else "false"
    if kind == "double":
        return repr(float(v))
    return _esc(str(v))


def _decode_json_attrs(d: dict, names) -> None:
    """Decode, in place, the values of ``d`` that were written as JSON text: those in ``names``, or — for files
    written before featgraph recorded which they were — every string that starts with ``[`` or ``{`` and parses."""
    for k, v in d.items():
        if not isinstance(v, str):
            continue
        if (k in names) if names is not None else v[:1] in ("[", "{"):
            try:
                d[k] = json.loads(v)
            except json.JSONDecodeError:
                pass  # not JSON after all (edited by hand, or an old file's plain string): keep the text


# ---- positions, colours, labels shared by the drawn formats ----------------------------------------------------
def _labels(graph: FeatureGraph) -> list[str]:
    col = graph.node_attrs.get("label")
    return [str(col[i]) if col is not None and col[i] not in (None, "") else graph.node_ids[i] for i in range(graph.n_nodes)]


def _positions(graph: FeatureGraph) -> np.ndarray:
    """(n, 2) positions scaled to span [-_BOX, _BOX] on the longer axis: node ``x``/``y`` when every node has them,
    else :func:`featgraph.layout.layer_layout`."""
    pos = None
    if "x" in graph.node_attrs and "y" in graph.node_attrs:
        try:
            pos = np.c_[np.asarray(graph.node_attrs["x"], dtype=float), np.asarray(graph.node_attrs["y"], dtype=float)]
        except (TypeError, ValueError):
            pos = None
        if pos is not None and not np.isfinite(pos).all():
            pos = None
    if pos is None:
        from .layout import layer_layout

        pos = layer_layout(graph)
    if len(pos) == 0:
        return pos.reshape(0, 2)
    lo, hi = pos.min(0), pos.max(0)
    half = float((hi - lo).max()) / 2
    return (pos - (lo + hi) / 2) * (_BOX / half if half > 0 else 1.0)


def _colors(graph: FeatureGraph) -> list[str]:
    """Each node's ``color`` attribute when it is ``#rrggbb``, else its community's palette colour."""
    from .layout import node_colors

    col = graph.node_attrs.get("color")
    fallback = node_colors(graph)
    return [col[i] if col is not None and isinstance(col[i], str) and _HEX.match(col[i]) else fallback[i] for i in range(graph.n_nodes)]


def _sizes(graph: FeatureGraph) -> np.ndarray:
    """Node size 4 + 16·√(frequency / max frequency), as the page draws it."""
    freq = np.nan_to_num(np.array([v if isinstance(_py(v), (int, float)) else 0.0 for v in graph.node_attrs.get("frequency", [0.0] * graph.n_nodes)],
                                  dtype=float))
    top = freq.max() if graph.n_nodes and freq.max() > 0 else 1.0
    return 4 + 16 * np.sqrt(np.clip(freq, 0, None) / top)


# ---- GraphML ---------------------------------------------------------------------------------------------------
def write_graphml(graph: FeatureGraph, path: str | os.PathLike) -> Path:
    """GraphML (valid against graphml.graphdrawing.org's XSD): node ids from :func:`safe_ids` with the graph's id
    in ``featgraph_id``, ``label`` on every node, the graph's metadata as graph data; list and dict attributes as
    JSON text, named in the graph data ``featgraph_json`` so :func:`read_graphml` decodes exactly those."""
    ids = safe_ids(graph.node_ids)
    node_cols = {"featgraph_id": list(graph.node_ids), **graph.node_attrs, "label": _labels(graph)}
    edge_cols = dict(graph.edge_attrs)
    meta = {**graph.meta, "weight_key": graph.weight_key}
    keys, lines = [], []

    def declare(scope: str, cols: dict) -> list[tuple[str, str, str, list]]:
        out = []
        for name, col in cols.items():
            kind = _kind(list(col) if scope != "graph" else [col])
            key = f"d{len(keys)}"
            xml_type = "string" if kind == "json" else kind
            keys.append(f'  <key id="{key}" for="{scope}" attr.name="{_esc(str(name))}" attr.type="{xml_type}"/>')
            out.append((key, str(name), kind, col))
        return out

    json_names = {}
    graph_keys = declare("graph", meta)
    node_keys = declare("node", node_cols)
    edge_keys = declare("edge", edge_cols)
    for scope, declared in (("graph", graph_keys), ("node", node_keys), ("edge", edge_keys)):
        json_names[scope] = [name for _, name, kind, _ in declared if kind == "json"]
    marker = f"d{len(keys)}"
    keys.append(f'  <key id="{marker}" for="graph" attr.name="featgraph_json" attr.type="string"/>')

    def data(key: str, text: str | None) -> str:
        return "" if text is None else f'<data key="{key}">{text}</data>'

    edgedefault = "directed" if graph.directed else "undirected"
    lines.append(f'  <graph id="G" edgedefault="{edgedefault}">')
    lines.append("    " + data(marker, _esc(_json_text(json_names))))
    lines.extend("    " + data(key, text) for key, _, kind, value in graph_keys if (text := _xml_value(value, kind)) is not None)
    for i in range(graph.n_nodes):
        lines.append(f'    <node id="{ids[i]}">' + "".join(data(key, _xml_value(col[i], kind)) for key, _, kind, col in node_keys) + "</node>")
    for k in range(graph.n_edges):
        eid = f' id="e{k}"' if graph.multigraph else ""
        lines.append(f'    <edge{eid} source="{ids[graph.edge_src[k]]}" target="{ids[graph.edge_dst[k]]}">'
                     + "".join(data(key, _xml_value(col[k], kind)) for key, _, kind, col in edge_keys) + "</edge>")
    lines.append("  </graph>")
    head = ['<?xml version="1.0" encoding="UTF-8"?>',
            f'<graphml xmlns="{GRAPHML_NS}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            f'xsi:schemaLocation="{GRAPHML_NS} http://graphml.graphdrawing.org/xmlns/1.0/graphml.xsd">']
    with atomic_file(path) as tmp:
        tmp.write_text("\n".join([*head, *keys, *lines, "</graphml>", ""]), encoding="utf-8")
    return Path(path)


def _restore_ids(g):
    """Relabel a read networkx graph to the ``featgraph_id`` its nodes carry, dropping that attribute, and drop
    ``label`` where every label is just the node's id (the writer's stand-in for a graph without labels)."""
    import networkx as nx

    if g.number_of_nodes() and all("featgraph_id" in d for _, d in g.nodes(data=True)):
        mapping = {n: str(d.pop("featgraph_id")) for n, d in g.nodes(data=True)}
        g = nx.relabel_nodes(g, mapping, copy=True)
    if all(d.get("label") in (None, str(n)) for n, d in g.nodes(data=True)):
        for _, d in g.nodes(data=True):
            d.pop("label", None)
    return g


def read_graphml(path: str | os.PathLike) -> FeatureGraph:
    """A GraphML file written by :func:`write_graphml` (or an older featgraph) back as a graph: the original ids,
    JSON attributes decoded, metadata restored."""
    import networkx as nx

    g = nx.read_graphml(path)
    marker = g.graph.pop("featgraph_json", None)
    names = json.loads(marker) if isinstance(marker, str) else None  # None: an older file, JSON told by its first character
    for scope in ("node_default", "edge_default"):
        g.graph.pop(scope, None)
    for scope, dicts in (("node", (d for _, d in g.nodes(data=True))), ("edge", (d for *_, d in g.edges(data=True))), ("graph", [g.graph])):
        for d in dicts:
            _decode_json_attrs(d, None if names is None else set(names.get(scope, [])))
    if g.is_multigraph():
        for *_, d in g.edges(data=True):
            d.pop("id", None)
    return FeatureGraph.from_networkx(_restore_ids(g), weight_key=g.graph.get("weight_key", "weight") if names is not None else "weight")


# ---- node-link JSON --------------------------------------------------------------------------------------------
def write_json(graph: FeatureGraph, path: str | os.PathLike) -> Path:
    """networkx node-link JSON with the edge list under both ``edges`` and ``links`` (see the module docstring), so
    ``networkx.node_link_graph(json.load(f))`` reads it with its defaults on any networkx ≥ 3.0."""
    nodes = [graph.node(i) for i in range(graph.n_nodes)]
    edges = [graph.edge(k) for k in range(graph.n_edges)]
    doc = {"directed": graph.directed, "multigraph": graph.multigraph, "graph": {**graph.meta, "weight_key": graph.weight_key},
           "nodes": nodes, "edges": edges, "links": edges}
    with atomic_file(path) as tmp:
        tmp.write_text(_dumps(doc), encoding="utf-8")
    return Path(path)


def _node_link_graph(doc: dict, key: str):
    """``networkx.node_link_graph`` reading the edge list under ``key`` on any networkx ≥ 3.0 (the keyword is
    ``link`` before 3.4, ``edges`` after)."""
    import inspect

    import networkx as nx

    params = inspect.signature(nx.node_link_graph).parameters
    return nx.node_link_graph(doc, **{"edges" if "edges" in params else "link": key})


def read_json(path: str | os.PathLike) -> FeatureGraph:
    """A graph.json written by featgraph (networkx node-link JSON, edges under ``edges`` and/or ``links``); anything
    else is one clear error line."""
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
    key = "edges" if isinstance(doc, dict) and "edges" in doc else "links"
    if not isinstance(doc, dict) or not {"nodes", key, "graph"} <= set(doc):
        raise FeatgraphError(f"{path} is JSON but not a featgraph graph (no nodes/links/graph); {fix}")
    try:
        g = _node_link_graph(doc, key)
        return FeatureGraph.from_networkx(g, weight_key=doc["graph"].get("weight_key", "weight"))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise FeatgraphError(f"{path} is not a well-formed featgraph graph ({type(e).__name__}: {e}); {fix}") from None


# ---- GEXF ------------------------------------------------------------------------------------------------------
def write_gexf(graph: FeatureGraph, path: str | os.PathLike) -> Path:
    """GEXF 1.3 for Gephi: ``label`` from the node's label (else its id), ``viz`` colour (node ``color``, else the
    community palette), size (by frequency) and position (node ``x``/``y``, else the layer layout; scaled to
    ±1000), the metadata in ``<meta>`` and as ``graph.<key>`` attribute defaults (see the module docstring)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        generator = f"featgraph {version('featgraph')}"
    except PackageNotFoundError:
        generator = "featgraph"
    ids = safe_ids(graph.node_ids)
    labels, pos, colors, sizes = _labels(graph), _positions(graph), _colors(graph), _sizes(graph)
    node_cols = {"featgraph_id": list(graph.node_ids), **{k: v for k, v in graph.node_attrs.items() if k != "label"}}
    weight_col = graph.edge_attrs.get("weight", graph.edge_attrs.get(graph.weight_key))
    edge_cols = {k: v for k, v in graph.edge_attrs.items() if k != "weight"}  # "weight" is the edge's own weight
    node_kinds = {k: _kind(list(v)) for k, v in node_cols.items()}
    edge_kinds = {k: _kind(list(v)) for k, v in edge_cols.items()}
    json_names = {"node": [k for k, t in node_kinds.items() if t == "json"], "edge": [k for k, t in edge_kinds.items() if t == "json"]}
    description = {**graph.meta, "weight_key": graph.weight_key,
                   "featgraph_json": {**json_names, "weight_column": "weight" in graph.edge_attrs}}
    kind, measure = graph.meta.get("kind", "feature"), graph.meta.get("measure", graph.weight_key)

    def gexf_type(t: str) -> str:
        return "string" if t == "json" else t

    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<gexf xmlns="{GEXF_NS}" xmlns:viz="{GEXF_VIZ_NS}" version="1.3">',
           f"  <meta><creator>{_esc(generator)}</creator><keywords>{_esc(f'featgraph, {kind} graph, {measure}')}</keywords>"
           f"<description>{_esc(_json_text(description))}</description></meta>",
           f'  <graph defaultedgetype="{"directed" if graph.directed else "undirected"}" mode="static">',
           '    <attributes class="node" mode="static">']
    for name, t in node_kinds.items():
        out.append(f'      <attribute id="{_esc(name)}" title="{_esc(name)}" type="{gexf_type(t)}"/>')
    for name, value in graph.meta.items():
        t = _kind([value])
        text = _xml_value(value, t)
        default = f"<default>{text}</default>" if text not in (None, "") else ""
        out.append(f'      <attribute id="graph.{_esc(str(name))}" title="graph.{_esc(str(name))}" type="{gexf_type(t)}">{default}</attribute>')
    out += ["    </attributes>", '    <attributes class="edge" mode="static">']
    out += [f'      <attribute id="{_esc(name)}" title="{_esc(name)}" type="{gexf_type(t)}"/>' for name, t in edge_kinds.items()]
    out += ["    </attributes>", f'    <nodes count="{graph.n_nodes}">']
    for i in range(graph.n_nodes):
        values = "".join(f'<attvalue for="{_esc(k)}" value="{text}"/>' for k, col in node_cols.items()
                         if (text := _xml_value(col[i], node_kinds[k])) is not None)
        r, g, b = (int(colors[i][k : k + 2], 16) for k in (1, 3, 5))
        out.append(f'      <node id="{ids[i]}" label="{_esc(labels[i])}"><attvalues>{values}</attvalues>'
                   f'<viz:color r="{r}" g="{g}" b="{b}" a="1.0"/><viz:position x="{pos[i, 0]:.4f}" y="{pos[i, 1]:.4f}" z="0.0"/>'
                   f'<viz:size value="{sizes[i]:.4f}"/></node>')
    out += ["    </nodes>", f'    <edges count="{graph.n_edges}">']
    types = graph.edge_attrs.get("type")
    for k in range(graph.n_edges):
        w = None if weight_col is None else _xml_value(weight_col[k], "double")
        extra = (f' weight="{w}"' if w is not None else "") + (f' kind="{_esc(str(types[k]))}"' if graph.multigraph and types is not None else "")
        values = "".join(f'<attvalue for="{_esc(name)}" value="{text}"/>' for name, col in edge_cols.items()
                         if (text := _xml_value(col[k], edge_kinds[name])) is not None)
        out.append(f'      <edge id="e{k}" source="{ids[graph.edge_src[k]]}" target="{ids[graph.edge_dst[k]]}"{extra}>'
                   f"<attvalues>{values}</attvalues></edge>")
    out += ["    </edges>", "  </graph>", "</gexf>", ""]
    with atomic_file(path) as tmp:
        tmp.write_text("\n".join(out), encoding="utf-8")
    return Path(path)


def _gexf_value(text: str, gexf_type: str) -> Any:
    if gexf_type in ("integer", "long", "short", "byte", "biginteger"):
        return int(text)
    if gexf_type in ("double", "float", "bigdecimal"):
        return float(text)
    if gexf_type == "boolean":
        return text.strip().lower() in ("true", "1")
    return text


def read_gexf(path: str | os.PathLike) -> FeatureGraph:
    """A GEXF file written by :func:`write_gexf` (or by an older featgraph, GEXF 1.2draft) back as a graph: the
    original ids, labels, JSON attributes decoded and, from ``<meta><description>``, the metadata.

    Parsed here rather than with ``networkx.read_gexf``, which reads GEXF 1.3 only from networkx 3.6 (Python ≥ 3.11).
    """
    import xml.etree.ElementTree as ET

    def local(el) -> str:
        return el.tag.rsplit("}", 1)[-1]

    def children(el, name: str) -> list:
        return [c for c in el if local(c) == name]

    root = ET.parse(Path(path)).getroot()
    description = next((d.text for m in children(root, "meta") for d in children(m, "description")), None)
    try:
        recorded = json.loads(description) if description else None
    except json.JSONDecodeError:
        recorded = None
    if not isinstance(recorded, dict) or not isinstance(recorded.get("featgraph_json"), dict):
        recorded = None  # an older featgraph file: ids as labels, no metadata, JSON recognised by its first character
    names = recorded.pop("featgraph_json") if recorded is not None else None
    graph_el = children(root, "graph")[0]
    declared = {cls: {a.get("id"): (a.get("title") or a.get("id"), a.get("type", "string")) for block in children(graph_el, "attributes")
                      if block.get("class") == cls for a in children(block, "attribute")} for cls in ("node", "edge")}

    def values(el, cls: str) -> dict:
        out = {}
        for block in children(el, "attvalues"):
            for v in children(block, "attvalue"):
                title, gexf_type = declared[cls].get(v.get("for"), (v.get("for"), "string"))
                out[title] = _gexf_value(v.get("value", ""), gexf_type)
        _decode_json_attrs(out, None if names is None else set(names.get(cls, [])))
        return out

    nodes = [(n.get("id"), n.get("label"), values(n, "node")) for block in children(graph_el, "nodes") for n in children(block, "node")]
    file_ids = [nid for nid, _, _ in nodes]
    ids = [str(d.pop("featgraph_id", nid)) for nid, _, d in nodes]
    if names is not None and any(label not in (None, nid) for nid, (_, label, _) in zip(ids, nodes)):
        for nid, (_, label, d) in zip(ids, nodes):
            d["label"] = label if label is not None else nid
    index = {fid: i for i, fid in enumerate(file_ids)}
    src, dst, eattrs = [], [], []
    keep_weight = names is None or names.get("weight_column", True)
    for block in children(graph_el, "edges"):
        for e in children(block, "edge"):
            src.append(index[e.get("source")])
            dst.append(index[e.get("target")])
            d = values(e, "edge")
            if keep_weight and e.get("weight") is not None:
                d["weight"] = float(e.get("weight"))
            eattrs.append(d)
    node_keys = sorted({k for _, _, d in nodes for k in d})
    edge_keys = sorted({k for d in eattrs for k in d})
    pairs = [(a, b) if graph_el.get("defaultedgetype") == "directed" else tuple(sorted((a, b))) for a, b in zip(src, dst)]
    meta = recorded if recorded is not None else {}
    return FeatureGraph(
        ids, {k: [d.get(k) for _, _, d in nodes] for k in node_keys}, np.array(src, dtype=np.int64), np.array(dst, dtype=np.int64),
        {k: np.array([d.get(k) for d in eattrs]) for k in edge_keys}, weight_key=meta.get("weight_key", "weight"),
        directed=graph_el.get("defaultedgetype") == "directed", meta=meta, multigraph=len(set(pairs)) < len(pairs),
    )


# ---- Cytoscape.js ----------------------------------------------------------------------------------------------
def write_cytoscape(graph: FeatureGraph, path: str | os.PathLike) -> Path:
    """Cytoscape.js JSON (``elements: {nodes: [{data, position}], edges: [{data}]}``, plus a ``style`` that colours
    nodes by ``data(color)`` and names them by ``data(name)``), readable by ``networkx.cytoscape_graph``.

    Node ``data.id`` (= ``value``) is from :func:`safe_ids`, so ``cy.$('#L0_F0')`` works; ``featgraph_id`` keeps
    the graph's id, ``name`` the label, ``color`` the node colour; ``position`` is the layout scaled to ±1000.
    """
    ids = safe_ids(graph.node_ids)
    labels, pos, colors = _labels(graph), _positions(graph), _colors(graph)
    nodes = []
    for i in range(graph.n_nodes):
        attrs = {k: v for k, v in graph.node(i).items() if k != "id"}
        data = {**attrs, "id": ids[i], "value": ids[i], "name": labels[i], "featgraph_id": graph.node_ids[i], "color": colors[i]}
        nodes.append({"data": data, "position": {"x": round(float(pos[i, 0]), 3), "y": round(float(pos[i, 1]), 3)}})
    edge_ids = [f"e{k}" for k in range(graph.n_edges)]
    if set(edge_ids) & set(ids):
        edge_ids = [f"edge_{k}" for k in range(graph.n_edges)]
    edges = []
    for k in range(graph.n_edges):
        e = graph.edge(k)
        data = {**e, "id": edge_ids[k], "source": ids[graph.edge_src[k]], "target": ids[graph.edge_dst[k]]}
        if graph.multigraph:
            data["key"] = k  # networkx.cytoscape_graph keys parallel edges by it
        edges.append({"data": data})
    style = [{"selector": "node", "style": {"background-color": "data(color)", "label": "data(name)"}},
             {"selector": "edge", "style": {"line-color": "#c8c8c8", "opacity": 0.6}}]
    doc = {"format_version": "1.0", "generated_by": "featgraph", "target_cytoscapejs_version": "~3",
           "data": graph.meta, "directed": graph.directed, "multigraph": graph.multigraph,
           "elements": {"nodes": nodes, "edges": edges}, "style": style}
    with atomic_file(path) as tmp:
        tmp.write_text(_dumps(doc), encoding="utf-8")
    return Path(path)


# ---- CSV -------------------------------------------------------------------------------------------------------
def _csv_cell(v: Any) -> Any:
    v = _py(v)
    if v is None:
        return ""
    if isinstance(v, (list, tuple, dict, np.ndarray)):
        return _json_text(v)
    if isinstance(v, str):
        return _JSON_UNSAFE.sub("\ufffd", v).replace("\x00", "\u2400")
    return v


def _write_rows(path: Path, header: list[str], rows) -> None:
    import csv

    with atomic_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for row in rows:
            w.writerow([_csv_cell(row.get(k)) for k in header])


def write_csv(graph: FeatureGraph, folder: str | os.PathLike) -> Path:
    """``nodes.csv`` (``id``, ``label``, then every attribute; ``label`` is the id where the graph has none) and
    ``edges.csv`` in ``folder`` (list and dict attributes as JSON text), written as a unit: both files appear
    together (or the old folder stays). Gephi's spreadsheet import reads the id/label/source/target/weight columns."""
    folder = Path(folder)
    labels = _labels(graph)
    header = ["id", "label", *[k for k in graph.node_attrs if k != "label"]]
    with atomic_dir(folder) as tmp:
        _write_rows(tmp / "nodes.csv", header, ({**graph.node(i), "label": labels[i]} for i in range(graph.n_nodes)))
        _write_rows(tmp / "edges.csv", ["source", "target", *graph.edge_attrs], (graph.edge(e) for e in range(graph.n_edges)))
    return folder


# ---- Neuronpedia -----------------------------------------------------------------------------------------------
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


def _pins_and_supernodes(graph: FeatureGraph, influence: np.ndarray, node_ids: list[str], n_pinned: int,
                         per_community: int) -> tuple[list[int], list[list[str]]]:
    """Pinned node indices (strongest first) and one supernode ``[label, pinned member ids…]`` per community of at
    least two features (see the module docstring)."""
    order = np.argsort(influence, kind="stable").tolist()  # strongest first
    community = graph.node_attrs.get("community", [None] * graph.n_nodes)
    members: dict[Any, list[int]] = {}
    for k in order:
        c = _py(community[k])
        if c is not None and not isinstance(c, (list, dict)):
            members.setdefault(c, []).append(k)
    groups = [c for c, m in members.items() if len(m) >= 2]  # strongest community first
    wanted: list[int] = []
    for quota in (2, max(per_community, 2)):  # two each first, so the pin limit cuts depth before breadth
        for c in groups:
            wanted += members[c][:quota]
    wanted += order[: max(n_pinned, 0)]
    pins: list[int] = []
    for k in dict.fromkeys(wanted):
        if len(pins) == PIN_LIMIT:
            break
        pins.append(k)
    pinned = set(pins)
    labels = {str(k): str(v) for k, v in (graph.meta.get("community_labels") or {}).items()}
    supernodes, names = [], set()
    for c in groups:
        shown = [node_ids[k] for k in members[c] if k in pinned]
        if len(shown) < 2:
            continue
        name = labels.get(str(c)) or f"community {c}"
        if name in names or name in node_ids:
            name = f"{name} (community {c})"
        names.add(name)
        supernodes.append([name, *shown])
    if len(supernodes) < len(groups):
        log.warning("%d of %d communities have too few pinned members to show as supernodes (the viewer pins at most %d nodes)",
                    len(groups) - len(supernodes), len(groups), PIN_LIMIT)
    rank = {k: r for r, k in enumerate(order)}
    return sorted(pins, key=rank.__getitem__), supernodes


def write_neuronpedia(
    graph: FeatureGraph,
    path: str | os.PathLike,
    slug: str | None = None,
    scan: str | None = None,
    prompt: str | None = None,
    prompt_tokens: list[str] | None = None,
    n_pinned: int = 12,
    per_community: int = 3,
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
        How many of the strongest nodes ``qParams`` pins besides each community's members (0 pins none).
    per_community : int
        How many of each community's strongest members are pinned and shown in its supernode (at least 2).

    An attribution graph (``meta["kind"] == "attribution"``) is written with circuit-tracer's own node conventions
    instead (module docstring, "Attribution graphs").
    """
    if graph.meta.get("kind") == "attribution":
        return _write_attribution_neuronpedia(graph, path, slug, scan, prompt, prompt_tokens, n_pinned, per_community)
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
            "".join(str(t) for t in prompt_tokens) if prompt_tokens else
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

    pinned, supernodes = _pins_and_supernodes(graph, influence, node_ids, n_pinned, per_community)
    generator_version = _generator_version()
    doc = {
        "metadata": {
            "slug": _slug(slug or graph.meta.get("slug") or Path(path).name.split(".")[0]),
            "scan": str(scan or graph.meta.get("model") or "embedded"),
            "prompt_tokens": prompt_tokens, "prompt": str(prompt),
            "transcoder_list": [str(c) for c in graph.meta.get("crosscoders", [])], "schema_version": 1,
            "info": {"description": (f"featgraph {graph.meta.get('kind', 'feature')} graph: {graph.n_nodes} features, "
                                     f"{graph.n_edges} edges weighted by {graph.meta.get('measure', graph.weight_key)}; "
                                     "layer = peak hookpoint index, influence = cumulative share of edge strength; "
                                     "supernodes = communities"),
                     "generator": {"name": "featgraph", "version": generator_version}},
        },
    }
    return _write_viewer_doc(path, doc, node_ids, pinned, supernodes, nodes, links)


def _generator_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("featgraph")
    except PackageNotFoundError:
        return "unknown"


def _process_token(token: str) -> str:
    """circuit-tracer's ``process_token`` (frontend/utils.py): newline, tab and carriage return made visible."""
    return token.replace("\n", "⏎").replace("\t", "→").replace("\r", "↵")


def _attribution_column(graph: FeatureGraph, name: str, kinds: tuple[str, ...] = ("feature", "error", "embedding", "logit")) -> list[int]:
    """An integer node attribute that every node of ``kinds`` needs (FeatgraphError naming the first without it)."""
    col = graph.node_attrs.get(name, [None] * graph.n_nodes)
    kind = graph.node_attrs["kind"]
    out = []
    for i, v in enumerate(col):
        v = _py(v)
        if kind[i] in kinds and (isinstance(v, bool) or not isinstance(v, (int, float)) or not float(v).is_integer()):
            raise FeatgraphError(f"{kind[i]} node {graph.node_ids[i]!r} has {name} {v!r}, not an integer; "
                                 "export attribution graphs built by AttributionGraph.to_feature_graph")
        out.append(int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer() else -1)
    return out


def _attribution_nodes(graph: FeatureGraph, n_layers: int, prompt_tokens: list[str]) -> tuple[list[str], list[dict]]:
    """circuit-tracer's node records (``frontend/graph_models.py`` ``Node.feature_node`` / ``error_node`` /
    ``token_node`` / ``logit_node``) of an attribution graph's nodes, with their ids."""
    kind = [str(k) for k in graph.node_attrs["kind"]]
    layer, position = _attribution_column(graph, "layer"), _attribution_column(graph, "position")
    feature = _attribution_column(graph, "feature", ("feature",))
    token = _attribution_column(graph, "token", ("embedding", "logit"))
    influence = graph.node_attrs.get("influence", [None] * graph.n_nodes)
    activation = graph.node_attrs.get("activation", [None] * graph.n_nodes)
    token_text = graph.node_attrs.get("token_text", [""] * graph.n_nodes)
    community = graph.node_attrs.get("community", [None] * graph.n_nodes)
    labels = _labels(graph)
    probs = [(float(activation[i]) if activation[i] is not None else 0.0) for i in range(graph.n_nodes)]
    logits = [i for i in range(graph.n_nodes) if kind[i] == "logit"]
    target = min(logits, key=lambda i: (-probs[i], i)) if logits else -1  # circuit-tracer: the most likely logit
    ids, nodes = [], []
    for i in range(graph.n_nodes):
        k, lay, pos = kind[i], layer[i], position[i]
        if pos < 0 or pos >= len(prompt_tokens):
            raise FeatgraphError(f"node {graph.node_ids[i]!r} is at position {pos} but the prompt has {len(prompt_tokens)} tokens; "
                                 "pass the prompt_tokens the graph was built from")
        rec = {"feature_type": "", "token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0, "clerp": labels[i]}
        if k == "feature":
            rec.update(node_id=f"{lay}_{feature[i]}_{pos}", feature=cantor_pair(lay, feature[i]), layer=str(lay),
                       feature_type="cross layer transcoder", jsNodeId=f"{lay}_{feature[i]}-0")
        elif k == "error":
            rec.update(node_id=f"{lay}_-1_{pos}", feature=-1, layer=str(lay), feature_type="mlp reconstruction error",
                       jsNodeId=f"{lay}_{pos}-0")
        elif k == "embedding":
            rec.update(node_id=f"E_{token[i]}_{pos}", feature=pos, layer="E", feature_type="embedding", jsNodeId=f"E_{token[i]}-{pos}")
        elif k == "logit":
            text = _process_token(str(token_text[i] if token_text[i] is not None else token[i]))
            rec.update(node_id=f"{n_layers + 1}_{token[i]}_{pos}", feature=token[i], layer=str(n_layers + 1), feature_type="logit",
                       jsNodeId=f"L_{token[i]}-{pos}", token_prob=probs[i], is_target_logit=i == target,
                       clerp=f'Output "{text}" (p={probs[i]:.3f})')
        else:
            raise FeatgraphError(f"node {graph.node_ids[i]!r} has kind {k!r}; an attribution graph's kinds are feature, error, embedding, logit")
        infl, act = _py(influence[i]), _py(activation[i])
        rec.update(ctx_idx=pos, influence=float(infl) if isinstance(infl, (int, float)) and math.isfinite(infl) else None,
                   activation=float(act) if isinstance(act, (int, float)) and math.isfinite(act) else None,
                   featgraph_id=graph.node_ids[i], community=_py(community[i]))
        ids.append(rec["node_id"])
        nodes.append({key: rec[key] for key in ("node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob", "is_target_logit",
                                                 "run_idx", "reverse_ctx_idx", "jsNodeId", "clerp", "influence", "activation",
                                                 "featgraph_id", "community")})
    seen: dict[str, str] = {}
    for nid, fid in zip(ids, graph.node_ids):
        if nid in seen:
            raise FeatgraphError(f"nodes {seen[nid]!r} and {fid!r} both map to Neuronpedia node {nid!r}; "
                                 "an attribution graph has one node per (kind, layer, feature or token, position)")
        seen[nid] = fid
    return ids, nodes


def _write_attribution_neuronpedia(graph: FeatureGraph, path, slug, scan, prompt, prompt_tokens, n_pinned: int, per_community: int) -> Path:
    """:func:`write_neuronpedia` for an attribution graph (module docstring, "Attribution graphs")."""
    if graph.n_nodes == 0:
        raise FeatgraphError("the attribution graph has no nodes; prune it with a higher node_threshold")
    if "kind" not in graph.node_attrs:
        raise FeatgraphError("the attribution graph's nodes have no 'kind' (feature/error/embedding/logit); "
                             "build it with AttributionGraph.to_feature_graph")
    w = graph.weights if graph.n_edges else np.zeros(0)
    if not np.isfinite(w).all():
        raise FeatgraphError(f"{int((~np.isfinite(w)).sum())} edge weights are NaN or infinite, which JSON cannot hold; "
                             "drop those edges or rebuild the graph")
    kind = [str(k) for k in graph.node_attrs["kind"]]
    n_layers = graph.meta.get("n_layers")
    if not isinstance(n_layers, int) or isinstance(n_layers, bool):
        inner = [int(lay) for lay, k in zip(graph.node_attrs.get("layer", []), kind) if k in ("feature", "error")]
        n_layers = max(inner) + 1 if inner else 1
    if prompt_tokens is None:
        prompt_tokens = graph.meta.get("prompt_tokens")
    if prompt_tokens is None:
        top = max(int(p) for p in graph.node_attrs.get("position", [0]) if p is not None)
        prompt_tokens = [f"[{p}]" for p in range(top + 1)]
    prompt_tokens = [str(t) for t in prompt_tokens]
    if prompt is None:
        prompt = graph.meta.get("prompt") or "".join(prompt_tokens)
    node_ids, nodes = _attribution_nodes(graph, n_layers, prompt_tokens)
    links = [{"source": node_ids[s], "target": node_ids[d], "weight": float(x)}
             for s, d, x in zip(graph.edge_src.tolist(), graph.edge_dst.tolist(), w.tolist())]

    # pins: every logit (most likely first), then the supernodes' strongest members and the most influential nodes
    influence = np.array([n["influence"] if n["influence"] is not None else np.inf for n in nodes], dtype=np.float64)
    pins, supernodes = _pins_and_supernodes(graph, influence, node_ids, n_pinned, per_community)
    logits = sorted((i for i in range(graph.n_nodes) if kind[i] == "logit"), key=lambda i: (-nodes[i]["token_prob"], i))
    pins = [*logits, *(k for k in pins if kind[k] != "logit")][:PIN_LIMIT]
    pinned = {node_ids[k] for k in pins}
    supernodes = [sn[:1] + [m for m in sn[1:] if m in pinned] for sn in supernodes]
    supernodes = [sn for sn in supernodes if len(sn) >= 3]
    cfg = graph.meta.get("attribution_config") or {}
    metadata = {
        "slug": _slug(slug or graph.meta.get("slug") or Path(path).name.split(".")[0]),
        "scan": str(scan or graph.meta.get("model") or "embedded"),
        "prompt_tokens": prompt_tokens, "prompt": str(prompt),
        "transcoder_list": [str(c) for c in graph.meta.get("crosscoders", [])], "schema_version": 1,
        "info": {"description": (f"featgraph attribution graph: {graph.n_nodes} nodes, {graph.n_edges} edges (direct effects, "
                                 f"source → target); replacement score {graph.meta.get('replacement_score')}, completeness score "
                                 f"{graph.meta.get('completeness_score')}; supernodes = Leiden communities of the features"),
                 "generator": {"name": "featgraph", "version": _generator_version()}},
    }
    if isinstance(cfg.get("node_threshold"), (int, float)):
        metadata["node_threshold"] = float(cfg["node_threshold"])
        metadata["pruning_settings"] = {k: float(cfg[k]) for k in ("node_threshold", "edge_threshold") if isinstance(cfg.get(k), (int, float))}
    settings = {"max_n_logits": cfg.get("max_logits"), "desired_logit_prob": cfg.get("logit_probability"), "batch_size": cfg.get("batch_size")}
    if any(v is not None for v in settings.values()):
        metadata["generation_settings"] = {k: v for k, v in settings.items() if v is not None}
    return _write_viewer_doc(path, {"metadata": metadata}, node_ids, pins, supernodes, nodes, links)


def _write_viewer_doc(path, doc: dict, node_ids: list[str], pins: list[int], supernodes: list, nodes: list, links: list) -> Path:
    """``doc`` (its ``metadata``) completed with the viewer's ``qParams`` (pins, supernodes, the first pin clicked),
    ``nodes`` and ``links``, written atomically."""
    doc = {**doc, "qParams": {"pinnedIds": [node_ids[k] for k in pins], "supernodes": supernodes, "linkType": "both",
                              "clickedId": node_ids[pins[0]] if pins else "", "sg_pos": ""},
           "nodes": nodes, "links": links}
    with atomic_file(path) as tmp:
        tmp.write_text(_dumps(doc), encoding="utf-8")
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
